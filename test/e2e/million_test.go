//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/test/harness"
)

// millionLists is how many source ConfigMaps the million numbers are in.
const millionLists = 6

// testMillionNumberListIsPublishedAndEnforced: a policy with a million
// numbers in six gzipped ConfigMaps, in a namespace of its own, is published
// by the operator, loaded by both receiver pods, and enforced; a feed update
// to one list is enforced on both. The times and the pods' memory are
// recorded as figures.
func testMillionNumberListIsPublishedAndEnforced(t *testing.T) {
	ctx := context.Background()
	const mns, name = "callguard-e2e-million", "blocklist"
	if err := cluster.EnsureNamespace(ctx, mns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cluster.Client.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: mns}})
	})
	lists := make([][]string, millionLists)
	objs := []client.Object{
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: mns, Name: "bot"},
			StringData: map[string]string{"client-secret": harness.BotSecret}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: mns, Name: "graph-emulator-ca"},
			Data: map[string]string{"ca.crt": string(emu.CAPEM)}},
	}
	var refs []callsv1alpha1.NumberList
	for i := range lists {
		lists[i] = harness.RandomNumbers(1_000_000/millionLists, uint64(i+1))
		objs = append(objs, harness.NumberListConfigMap(mns, fmt.Sprintf("feed-%d", i), lists[i]))
		refs = append(refs, callsv1alpha1.NumberList{ConfigMapKeyRef: callsv1alpha1.ConfigMapKeyReference{
			Name: fmt.Sprintf("feed-%d", i), Key: harness.NumberListKey}})
	}
	if err := cluster.Apply(ctx, objs...); err != nil {
		t.Fatal(err)
	}
	cp := samplePolicy.PolicyIn(mns, emu, 2)
	cp.Name = name
	cp.Spec.Receiver.Expose = nil
	cp.Spec.Bot.Credentials.SecretRef.Name = "bot"
	cp.Spec.Rules = []callsv1alpha1.Rule{{Name: "feeds", Action: callsv1alpha1.ActionReject, Reason: callsv1alpha1.ReasonBusy,
		Match: callsv1alpha1.Match{Callers: &callsv1alpha1.CallerMatch{NumberLists: refs}}}}
	cp.Spec.Receiver.Replicas = ptr.To[int32](2)
	// The default memory limit (the million numbers must fit it), but a
	// tenth of the default CPU request: the demo's, the elastic policy's and
	// these receivers share this 2-core node, and at 500m each the last
	// would not be scheduled.
	res := callsv1alpha1.DefaultReceiverResources()
	res.Requests[corev1.ResourceCPU] = resource.MustParse("50m")
	cp.Spec.Receiver.Resources = &res

	start := time.Now()
	if err := cluster.Apply(ctx, cp); err != nil {
		t.Fatal(err)
	}
	hash, published, live, err := cluster.WaitPolicyLive(ctx, mns, name, "", start, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.WaitReady(ctx, mns, name, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	ready := time.Since(start)
	cb, err := cluster.CallbackURL(ctx, mns, name, callsv1alpha1.DefaultCallbackPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := harness.WaitCallbackReachable(ctx, cb, time.Minute); err != nil {
		t.Fatal(err)
	}
	call := func(number string) *harness.Record {
		t.Helper()
		id, err := emu.PlaceCall(ctx, cb, phone(number), []string{"audio"})
		if err != nil {
			t.Fatal(err)
		}
		rec, err := emu.WaitAction(ctx, id, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return rec
	}
	for _, n := range []string{lists[0][0], lists[5][len(lists[5])-1], lists[3][77777]} {
		if rec := call(n); rec.Action != "reject" || rec.Reason != "busy" {
			t.Errorf("listed %s: Graph saw %q (%q), want reject (busy)", n, rec.Action, rec.Reason)
		}
	}
	if rec := call("+12015550000"); rec.Action != "" {
		t.Errorf("an unlisted number: Graph saw %q, want no action (the default Allow)", rec.Action)
	}

	// A feed update: a tenth of one list replaced.
	fresh := harness.RandomNumbers(len(lists[2])/10, 4242)
	copy(lists[2], fresh)
	start = time.Now()
	if err := cluster.Apply(ctx, harness.NumberListConfigMap(mns, "feed-2", lists[2])); err != nil {
		t.Fatal(err)
	}
	_, updPublished, updLive, err := cluster.WaitPolicyLive(ctx, mns, name, hash, start, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if rec := call(fresh[0]); rec.Action != "reject" {
		t.Errorf("a number the update added: Graph saw %q, want reject", rec.Action)
	}

	rss := peakRSS("/receiver\x00", "--policy-configmap\x00"+mns+"/")
	// The cluster's operator, by the probe address its manifest gives: the
	// machine may run other managers (test/scale's, with probes off).
	opPeak := peakRSS("/manager\x00", "--health-probe-bind-address=:8081\x00")
	if len(rss) != 2 || len(opPeak) != 1 {
		t.Errorf("found %d receiver and %d operator processes in /proc, want 2 and 1", len(rss), len(opPeak))
	}
	fig := fmt.Sprintf("million-numbers publish=%s live=%s ready=%s update-published=%s update-live=%s receiver-peak-rss-MiB=%v operator-peak-rss-MiB=%v",
		published.Round(time.Millisecond), live.Round(time.Millisecond), ready.Round(time.Millisecond),
		updPublished.Round(time.Millisecond), updLive.Round(time.Millisecond), rss, opPeak)
	t.Log(fig)
	writeFigure(t, fig)
	if live > 30*time.Second {
		t.Errorf("a million numbers took %s to be live on every receiver, want < 30 s", live)
	}
	if updLive > 5*time.Second {
		t.Errorf("a feed update took %s to be live on every receiver, want < 5 s", updLive)
	}
}

// peakRSS returns the peak resident memory in MiB of the processes whose
// command line contains all of args.
func peakRSS(args ...string) []float64 {
	var out []float64
	for _, pid := range harness.ProcessesWith(args...) {
		_, peak := harness.ProcessMemory(pid)
		out = append(out, float64(int(peak)))
	}
	return out
}
