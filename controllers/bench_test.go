package controllers

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

// convergePolicies is how many CallPolicies BenchmarkConverge creates:
// $CALLGUARD_CONVERGE_POLICIES, 200 when unset.
func convergePolicies(b *testing.B) int {
	v := os.Getenv("CALLGUARD_CONVERGE_POLICIES")
	if v == "" {
		return 200
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("CALLGUARD_CONVERGE_POLICIES=%q: want a positive number of policies", v)
	}
	return n
}

// BenchmarkConverge measures how long CALLGUARD_CONVERGE_POLICIES (default
// 200) CallPolicies take from creation to Ready on envtest (the test plays
// the Deployment controller), and the peak RSS of this process, which hosts
// the manager. It follows Deployments and policies with watches: polling
// with lists of thousands of objects loaded the API server and the 2 cores
// it shares with the manager (1,000 policies: 102 s polling every 50 ms,
// 54 s every 250 ms).
func BenchmarkConverge(b *testing.B) {
	n := convergePolicies(b)
	// About 0.05 s a policy on a quiet 2-core machine; leave room for a busy one.
	limit := max(5*time.Minute, time.Duration(n)*time.Second)
	ctx := context.Background()
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: k8s.Scheme()})
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ns := newNamespace(b)
		if err := k8s.Create(ctx, testSecret(ns, "bot", "s3cret")); err != nil {
			b.Fatal(err)
		}
		if err := k8s.Create(ctx, testList(ns, "robocallers", "+12125550143\n+1555010*\n")); err != nil {
			b.Fatal(err)
		}
		// Play the Deployment controller (every replica available) off the
		// event loop, so that the watches are drained: the API server ends
		// the watches of clients that fall behind.
		available := make(chan *appsv1.Deployment, 4*n)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for d := range available {
					r := *d.Spec.Replicas
					d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: r, UpdatedReplicas: r, ReadyReplicas: r, AvailableReplicas: r}
					// A conflict means a newer version, whose event follows.
					if err := k8s.Status().Update(ctx, d); err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
						b.Error(err)
					}
				}
			})
		}
		ready := map[string]bool{}
		deps := newRewatch(b, ctx, wc, ns, &appsv1.DeploymentList{}, func(o client.Object) {
			if d, ok := o.(*appsv1.Deployment); ok && d.Status.ObservedGeneration != d.Generation {
				available <- d
			}
		})
		cps := newRewatch(b, ctx, wc, ns, &callsv1alpha1.CallPolicyList{}, func(o client.Object) {
			cp, ok := o.(*callsv1alpha1.CallPolicy)
			if ok && meta.IsStatusConditionTrue(cp.Status.Conditions, ConditionReady) && cp.Status.ObservedGeneration == cp.Generation {
				ready[cp.Name] = true
			}
		})
		b.StartTimer()
		start := time.Now()
		for j := 0; j < n; j++ {
			if err := k8s.Create(ctx, testPolicy(ns, fmt.Sprintf("p%04d", j))); err != nil {
				b.Fatal(err)
			}
		}
		created := time.Since(start)
		timeout := time.After(limit)
		for len(ready) < n {
			select {
			case <-timeout:
				b.Fatalf("only %d/%d policies Ready after %v", len(ready), n, limit)
			case ev, ok := <-deps.w.ResultChan():
				deps.event(ev, ok)
			case ev, ok := <-cps.w.ResultChan():
				cps.event(ev, ok)
			}
		}
		b.ReportMetric(time.Since(start).Seconds(), "s-all-Ready")
		b.ReportMetric(created.Seconds(), "s-all-created")
		b.ReportMetric(float64(n), "policies")
		b.ReportMetric(float64(deps.restarts+cps.restarts), "watch-restarts")
		deps.w.Stop()
		cps.w.Stop()
		close(available)
		wg.Wait()
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		b.ReportMetric(float64(ru.Maxrss)/1024, "peak-RSS-MiB")
	}
}

// rewatch is a watch of one kind in one namespace that, when the API server
// ends it, lists to catch up and watches again from there.
type rewatch struct {
	b        *testing.B
	ctx      context.Context
	c        client.WithWatch
	ns       string
	list     client.ObjectList
	handle   func(client.Object)
	w        watch.Interface
	restarts int
}

func newRewatch(b *testing.B, ctx context.Context, c client.WithWatch, ns string, list client.ObjectList, handle func(client.Object)) *rewatch {
	r := &rewatch{b: b, ctx: ctx, c: c, ns: ns, list: list, handle: handle}
	r.start()
	return r
}

func (r *rewatch) start() {
	l := r.list.DeepCopyObject().(client.ObjectList)
	if err := r.c.List(r.ctx, l, client.InNamespace(r.ns)); err != nil {
		r.b.Fatal(err)
	}
	if err := meta.EachListItem(l, func(o runtime.Object) error {
		r.handle(o.(client.Object))
		return nil
	}); err != nil {
		r.b.Fatal(err)
	}
	w, err := r.c.Watch(r.ctx, r.list.DeepCopyObject().(client.ObjectList), client.InNamespace(r.ns),
		&client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: l.GetResourceVersion()}})
	if err != nil {
		r.b.Fatal(err)
	}
	r.w = w
}

func (r *rewatch) event(ev watch.Event, ok bool) {
	if !ok || ev.Type == watch.Error {
		r.w.Stop()
		r.restarts++
		r.start()
		return
	}
	if o, isObj := ev.Object.(client.Object); isObj {
		r.handle(o)
	}
}
