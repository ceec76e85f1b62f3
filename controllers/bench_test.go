package controllers

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

// BenchmarkConverge200 measures how long 200 CallPolicies take from creation
// to Ready on envtest (the test plays the Deployment controller), and the
// peak RSS of this process, which hosts the manager.
func BenchmarkConverge200(b *testing.B) {
	const n = 200
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ns := newNamespace(b)
		if err := k8s.Create(ctx, testSecret(ns, "bot", "s3cret")); err != nil {
			b.Fatal(err)
		}
		if err := k8s.Create(ctx, testList(ns, "robocallers", "+12125550143\n+1555010*\n")); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		for j := 0; j < n; j++ {
			if err := k8s.Create(ctx, testPolicy(ns, fmt.Sprintf("p%03d", j))); err != nil {
				b.Fatal(err)
			}
		}
		ready := map[string]bool{}
		for len(ready) < n {
			if time.Since(start) > 5*time.Minute {
				b.Fatalf("only %d/%d policies Ready after 5 minutes", len(ready), n)
			}
			var deps appsv1.DeploymentList
			if err := k8s.List(ctx, &deps, client.InNamespace(ns)); err != nil {
				b.Fatal(err)
			}
			for k := range deps.Items {
				d := &deps.Items[k]
				if d.Status.ObservedGeneration != d.Generation {
					r := *d.Spec.Replicas
					d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: r, UpdatedReplicas: r, ReadyReplicas: r, AvailableReplicas: r}
					if err := k8s.Status().Update(ctx, d); err != nil && !apierrors.IsConflict(err) {
						b.Fatal(err)
					}
				}
			}
			var cps callsv1alpha1.CallPolicyList
			if err := k8s.List(ctx, &cps, client.InNamespace(ns)); err != nil {
				b.Fatal(err)
			}
			for k := range cps.Items {
				if meta.IsStatusConditionTrue(cps.Items[k].Status.Conditions, ConditionReady) &&
					cps.Items[k].Status.ObservedGeneration == cps.Items[k].Generation {
					ready[cps.Items[k].Name] = true
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms/200-policies")
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		b.ReportMetric(float64(ru.Maxrss)/1024, "peak-RSS-MiB")
	}
}
