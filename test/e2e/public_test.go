//go:build e2e

package e2e

// The public callback and autoscaling (issue 14): a CallPolicy exposed
// through the local cluster's real ingress controller (Traefik, TLS with a
// certificate of the project's CA) and sized by a HorizontalPodAutoscaler fed
// by a real metrics-server (hack/local-cluster/addons.sh). The emulator
// delivers every notification to the policy's public https URL, never to
// its Service.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/test/harness"
	"github.com/callguard/callguard/test/harness/ingress"
)

const (
	// elastic is the exposed, autoscaled policy; its host is elastic.<domain>.
	elastic = "elastic"
	// Autoscaling bounds and target of the elastic policy. Its receivers
	// request 100m CPU (not the 500m default) so that four fit on the
	// 2-core node beside the hotline policy's two.
	elasticMin, elasticMax = 2, 4
	elasticTargetCPU       = 25
	// loadRate is the emulator's call rate during the autoscaling run, and
	// loadWorkers how many calls may be in flight at once.
	loadRate    = 150
	loadWorkers = 8
)

// elasticCallback is the elastic policy's public URL (status.receiver.callbackURL).
var elasticCallback string

func elasticPolicy() *callsv1alpha1.CallPolicy {
	cp := samplePolicy.PolicyIn(ns, emu, 2)
	cp.Name = elastic
	cp.Spec.Receiver.Replicas = nil
	ingress.Expose(cp, pub.Host(elastic), elastic+"-tls")
	cp.Spec.Receiver.Autoscaling = &callsv1alpha1.AutoscalingSpec{
		MinReplicas: ptr.To(int32(elasticMin)), MaxReplicas: elasticMax,
		TargetCPUUtilizationPercentage: ptr.To(int32(elasticTargetCPU)),
	}
	cp.Spec.Receiver.Resources = &corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
	return cp
}

// testCallsThroughTheIngressWithTLSAreDecided applies the elastic policy and
// places calls to its public URL: the emulator's TLS connection to Traefik
// verifies the certificate for the host against the project's ingress CA,
// Traefik routes by host and path to the receivers, and they decide.
func testCallsThroughTheIngressWithTLSAreDecided(t *testing.T) {
	ctx := context.Background()
	secret, err := pub.TLSSecret(ns, elastic+"-tls")
	if err != nil {
		t.Fatal(err)
	}
	if err := cluster.Apply(ctx, secret, elasticPolicy()); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.WaitReady(ctx, ns, elastic, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	url, err := ingress.WaitCallbackURL(ctx, cluster, ns, elastic, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if want := "https://" + pub.Host(elastic) + "/api/calls"; url != want {
		t.Fatalf("status.receiver.callbackURL = %q, want %q", url, want)
	}
	elasticCallback = url

	ing := &networkingv1.Ingress{}
	waitFor(t, time.Minute, "the Ingress to be admitted by Traefik (status address "+strings.Split(pub.Address, ":")[0]+")", func() bool {
		if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: callsv1alpha1.ReceiverName(elastic)}, ing); err != nil {
			return false
		}
		lb := ing.Status.LoadBalancer.Ingress
		return len(lb) > 0 && lb[0].IP == strings.Split(pub.Address, ":")[0]
	})
	if ptr.Deref(ing.Spec.IngressClassName, "") != ingress.ClassName || len(ing.Spec.TLS) != 1 || ing.Spec.TLS[0].SecretName != elastic+"-tls" {
		t.Errorf("Ingress spec: class %v, tls %+v", ing.Spec.IngressClassName, ing.Spec.TLS)
	}
	if err := pub.WaitReachable(ctx, url, time.Minute); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name           string
		number         string
		action, reason string
	}{
		{"robocaller rejected busy", "+12125550143", "reject", "busy"},
		{"premium rejected forbidden", "+19005550123", "reject", "forbidden"},
		{"vip allowed", "+14255550100", "", ""},
	}
	var ids []string
	for _, tt := range tests {
		id, err := emu.PlaceCall(ctx, url, phone(tt.number), []string{"audio"})
		if err != nil {
			t.Fatalf("%s: place call: %v", tt.name, err)
		}
		ids = append(ids, id)
		rec, err := emu.WaitAction(ctx, id, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if !rec.Delivered() {
			t.Errorf("%s: the created notification was not acknowledged through %s: %+v", tt.name, url, rec.History)
		}
		if rec.Action != tt.action || rec.Reason != tt.reason {
			t.Errorf("%s: Graph action %q (%q), want %q (%q)", tt.name, rec.Action, rec.Reason, tt.action, tt.reason)
		}
	}
	// The receivers of the elastic policy decided them (not hotline's).
	waitFor(t, 20*time.Second, "the elastic receivers' decision log lines", func() bool {
		d, err := cluster.Decisions(ctx, ns, elastic)
		if err != nil {
			return false
		}
		for _, id := range ids {
			if _, ok := d[id]; !ok {
				return false
			}
		}
		return true
	})
	writeFigure(t, fmt.Sprintf("ingress-tls calls placed=%d decided=%d via %s (Traefik, certificate of the project's ingress CA)", len(ids), len(ids), url))
}

// sample is the receivers' scale at one moment of the autoscaling run.
type sample struct {
	at                   time.Duration
	spec, ready, desired int32
	cpu                  int32 // the HPA's current average utilization, percent of the request; -1 unknown
}

func (s sample) String() string {
	cpu := "?"
	if s.cpu >= 0 {
		cpu = fmt.Sprintf("%d%%", s.cpu)
	}
	return fmt.Sprintf("+%ds %d/%d cpu=%s", int(s.at.Seconds()), s.ready, s.spec, cpu)
}

func scaleNow(ctx context.Context, start time.Time) (sample, error) {
	s := sample{at: time.Since(start), cpu: -1}
	dep := &appsv1.Deployment{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: callsv1alpha1.ReceiverName(elastic)}, dep); err != nil {
		return s, err
	}
	s.spec, s.ready = ptr.Deref(dep.Spec.Replicas, 0), dep.Status.ReadyReplicas
	hpa := &autoscalingv2.HorizontalPodAutoscaler{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: callsv1alpha1.ReceiverName(elastic)}, hpa); err != nil {
		return s, err
	}
	s.desired = hpa.Status.DesiredReplicas
	for _, m := range hpa.Status.CurrentMetrics {
		if m.Resource != nil && m.Resource.Name == corev1.ResourceCPU && m.Resource.Current.AverageUtilization != nil {
			s.cpu = *m.Resource.Current.AverageUtilization
		}
	}
	return s, nil
}

// testLoadScalesReceiversOutAndBackWithoutLosingCalls: the emulator places
// calls at loadRate/s to the public URL until the HPA has added receivers
// and they have decided calls for a while; every call placed must be
// decided (rejected on Graph, its notification acknowledged), the added
// receivers must have decided some, and once the load stops the receivers
// must scale back to the minimum.
func testLoadScalesReceiversOutAndBackWithoutLosingCalls(t *testing.T) {
	ctx := context.Background()
	if elasticCallback == "" {
		t.Fatal("the elastic policy is not exposed (the ingress subtest failed)")
	}
	hpa := &autoscalingv2.HorizontalPodAutoscaler{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: callsv1alpha1.ReceiverName(elastic)}, hpa); err != nil {
		t.Fatalf("the elastic policy's HorizontalPodAutoscaler: %v", err)
	}
	if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas != elasticMin || hpa.Spec.MaxReplicas != elasticMax {
		t.Errorf("HPA bounds %v..%d, want %d..%d", hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas, elasticMin, elasticMax)
	}
	// metrics-server must feed the HPA before the load: a CPU reading.
	waitFor(t, 3*time.Minute, "the HPA's first CPU reading from metrics-server", func() bool {
		s, err := scaleNow(ctx, time.Now())
		return err == nil && s.cpu >= 0 && s.ready == elasticMin
	})
	before, err := cluster.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + elastic})
	if err != nil {
		t.Fatal(err)
	}
	initial := map[string]bool{}
	for _, p := range before.Items {
		initial[p.Name] = true
	}

	start := time.Now()
	var (
		mu      sync.Mutex
		samples []sample
		last    sample
	)
	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			if s, err := scaleNow(ctx, start); err == nil {
				mu.Lock()
				if len(samples) == 0 || s.spec != last.spec || s.ready != last.ready || s.at-samples[len(samples)-1].at >= 10*time.Second {
					samples = append(samples, s)
				}
				last = s
				mu.Unlock()
			}
			select {
			case <-sampling:
				return
			case <-tick.C:
			}
		}
	}()
	current := func() sample { mu.Lock(); defer mu.Unlock(); return last }

	// The load: loadRate calls/s at most, loadWorkers in flight.
	stopLoad := make(chan struct{})
	var (
		ids      []string
		failures []string
		wg       sync.WaitGroup
	)
	tokens := make(chan struct{})
	go func() {
		tick := time.NewTicker(time.Second / loadRate)
		defer tick.Stop()
		defer close(tokens)
		for {
			select {
			case <-stopLoad:
				return
			case <-tick.C:
				select {
				case tokens <- struct{}{}:
				default: // every worker busy: the rate is what the machine carries
				}
			}
		}
	}()
	for range loadWorkers {
		wg.Go(func() {
			for range tokens {
				id, err := emu.PlaceCall(ctx, elasticCallback, phone("+12125550143"), []string{"audio"})
				mu.Lock()
				if err != nil {
					failures = append(failures, err.Error())
				} else {
					ids = append(ids, id)
				}
				mu.Unlock()
			}
		})
	}
	var scaledOutAt, addedReadyAt time.Duration
	deadline := start.Add(4 * time.Minute)
	for time.Now().Before(deadline) {
		s := current()
		if scaledOutAt == 0 && s.spec > elasticMin {
			scaledOutAt = s.at
		}
		if addedReadyAt == 0 && s.ready > elasticMin {
			addedReadyAt = s.at
		}
		// Keep the load on for 20 s after the added receivers are ready, so
		// they decide calls while more may still be added.
		if addedReadyAt > 0 && time.Since(start) > addedReadyAt+20*time.Second {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	close(stopLoad)
	wg.Wait()
	loadFor := time.Since(start)
	peak := current()
	mu.Lock()
	placed := slices.Clone(ids)
	mu.Unlock()

	// Every call placed is decided: rejected on Graph after its created
	// notification was acknowledged through the ingress.
	var undecided []string
	waitFor(t, 30*time.Second, "every call placed under load to be decided", func() bool {
		recs, err := emulatorRecords(ctx)
		if err != nil {
			return false
		}
		undecided = undecided[:0]
		for _, id := range placed {
			r, ok := recs[id]
			if !ok || r.Action != "reject" || !r.Delivered() {
				undecided = append(undecided, id)
			}
		}
		return len(undecided) == 0
	})
	decisions, err := cluster.Decisions(ctx, ns, elastic)
	if err != nil {
		t.Fatal(err)
	}
	byPod := map[string]int{}
	for _, id := range placed {
		if d, ok := decisions[id]; ok {
			byPod[d.Pod]++
		}
	}
	byAdded := 0
	for pod, n := range byPod {
		if !initial[pod] {
			byAdded += n
		}
	}

	// Scale-in once the load is gone.
	stopped := time.Since(start)
	var scaledInAt time.Duration
	waitFor(t, 4*time.Minute, fmt.Sprintf("the receivers to scale back to %d", elasticMin), func() bool {
		s := current()
		if s.spec == elasticMin && s.ready == elasticMin && s.at > stopped {
			scaledInAt = s.at
			return true
		}
		return false
	})
	close(sampling)
	<-sampled
	mu.Lock()
	timeline := make([]string, len(samples))
	for i, s := range samples {
		timeline[i] = s.String()
	}
	mu.Unlock()

	rate := float64(len(placed)) / loadFor.Seconds()
	t.Logf("autoscaling: %d calls placed in %s (%.0f/s), %d decided, %d failed to place; HPA scaled out at +%s, added receivers ready at +%s, peak %d/%d; calls decided by added receivers: %d; load stopped at +%s, back to %d at +%s",
		len(placed), loadFor.Round(time.Second), rate, len(placed)-len(undecided), len(failures), scaledOutAt.Round(time.Second), addedReadyAt.Round(time.Second),
		peak.ready, peak.spec, byAdded, stopped.Round(time.Second), elasticMin, scaledInAt.Round(time.Second))
	t.Logf("replicas (ready/spec) over time: %s", strings.Join(timeline, ", "))
	writeFigure(t, fmt.Sprintf("autoscaling load=%d/s-max workers=%d placed=%d decided=%d failed-to-place=%d rate=%.0f/s scale-out(HPA)=+%s added-ready=+%s peak=%d/%d decided-by-added=%d load-stopped=+%s scaled-in=+%s",
		loadRate, loadWorkers, len(placed), len(placed)-len(undecided), len(failures), rate, scaledOutAt.Round(time.Second), addedReadyAt.Round(time.Second),
		peak.ready, peak.spec, byAdded, stopped.Round(time.Second), scaledInAt.Round(time.Second)))
	writeFigure(t, "autoscaling replicas (ready/spec, HPA cpu of request): "+strings.Join(timeline, ", "))

	if scaledOutAt == 0 || addedReadyAt == 0 {
		t.Errorf("the receivers did not scale out within 4 minutes of load (peak %d/%d)", peak.ready, peak.spec)
	}
	if len(failures) > 0 || len(undecided) > 0 || len(placed) == 0 {
		t.Errorf("%d calls placed, %d not decided (%v), %d could not be placed (%v)", len(placed), len(undecided), first(undecided, 5), len(failures), first(failures, 5))
	}
	if addedReadyAt > 0 && byAdded == 0 {
		t.Errorf("no call was decided by a receiver the autoscaler added (decisions by pod: %v)", byPod)
	}
}

func first(s []string, n int) []string { return s[:min(n, len(s))] }

// emulatorRecords reads every call record of the emulator, by id.
func emulatorRecords(ctx context.Context) (map[string]harness.Record, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, emu.URL+"/emulator/calls", nil)
	if err != nil {
		return nil, err
	}
	resp, err := emu.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		Value []harness.Record `json:"value"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	recs := make(map[string]harness.Record, len(out.Value))
	for _, r := range out.Value {
		recs[r.ID] = r
	}
	return recs, nil
}

// testDeletingTheElasticPolicyCollectsIngressAndAutoscaler: its Ingress and
// HorizontalPodAutoscaler go with it, and Traefik stops routing the host.
func testDeletingTheElasticPolicyCollectsIngressAndAutoscaler(t *testing.T) {
	ctx := context.Background()
	cp := &callsv1alpha1.CallPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: elastic}}
	if err := cluster.Client.Delete(ctx, cp); err != nil {
		t.Fatal(err)
	}
	for _, o := range []client.Object{&networkingv1.Ingress{}, &autoscalingv2.HorizontalPodAutoscaler{}, &appsv1.Deployment{}} {
		waitFor(t, 2*time.Minute, fmt.Sprintf("%T %s-callguard to be garbage-collected", o, elastic), func() bool {
			return apierrors.IsNotFound(cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: callsv1alpha1.ReceiverName(elastic)}, o))
		})
	}
}
