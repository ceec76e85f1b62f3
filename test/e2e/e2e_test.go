//go:build e2e

// Package e2e runs callguard on the local cluster (make cluster-up, make
// images, the operator installed from dist/install.yaml) with the Graph
// emulator, as `make e2e` sets it up.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policycli"
	"github.com/callguard/callguard/test/harness"
	"github.com/callguard/callguard/test/harness/ingress"
)

var (
	cluster *harness.Cluster
	emu     *harness.Emulator
	pub     *ingress.Env
	ns      = "callguard-e2e"
	// placed holds the ids of the calls place placed, in order.
	placed   []string
	callback string
	// samplePolicy is config/samples, the policy every test starts from.
	samplePolicy *harness.Sample
	// redisAddr is the Redis of ns (its Service's ClusterIP:port).
	redisAddr string
	// hotlineCallback is the hotline policy's public https URL (through the
	// ingress); callback is its Service's, for the tests that need speed.
	hotlineCallback string
)

// hotline is the name of the sample's policy.
const hotline = "hotline"

// hotlinePolicy is the sample policy as the tests run it: pointed at the
// emulator, exposed through the ingress (its announcement is fetched
// there), its state in the namespace's Redis.
func hotlinePolicy() *callsv1alpha1.CallPolicy {
	cp := samplePolicy.PolicyIn(ns, emu, 2)
	ingress.Expose(cp, pub.Host(hotline), hotline+"-tls")
	harness.UseRedis(cp, redisAddr, callsv1alpha1.StateOnErrorIgnore)
	return cp
}

func TestMain(m *testing.M) {
	os.Exit(setup(m))
}

func setup(m *testing.M) int {
	kubeconfig, state := os.Getenv("KUBECONFIG"), os.Getenv("E2E_STATE_DIR")
	if kubeconfig == "" || state == "" {
		fmt.Fprintln(os.Stderr, "KUBECONFIG and E2E_STATE_DIR must be set: run `make e2e`")
		return 1
	}
	ctx := context.Background()
	var err error
	if cluster, err = harness.Connect(kubeconfig); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The emulator delivers to the elastic policy's public URL through the
	// cluster's ingress (hack/local-cluster/addons.sh), so it runs with
	// --resolve and --callback-ca; one started without them is stopped.
	if pub, err = ingress.FromEnv(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if samplePolicy, err = harness.LoadSample(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	emuDir := filepath.Join(state, "emulator")
	harness.StopEmulator(emuDir)
	if emu, err = harness.StartEmulator(ctx, "../../bin/graph-emulator", envOr("E2E_EMULATOR_LISTEN", "10.213.0.1:8443"), emuDir,
		append(pub.EmulatorArgs(pub.Host(elastic), pub.Host(hotline)), samplePolicy.EmulatorBotArgs()...)...); err != nil {
		fmt.Fprintln(os.Stderr, "emulator:", err)
		return 1
	}
	_ = cluster.Client.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	for i := 0; i < 120; i++ {
		if err := cluster.Client.Get(ctx, client.ObjectKey{Name: ns}, &corev1.Namespace{}); apierrors.IsNotFound(err) {
			break
		}
		time.Sleep(time.Second)
	}
	if err := cluster.EnsureNamespace(ctx, ns); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if redisAddr, err = cluster.DeployRedis(ctx, ns, 2*time.Minute); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	tlsSecret, err := pub.TLSSecret(ns, hotline+"-tls")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	objs := append([]client.Object{tlsSecret}, samplePolicy.Objects(ns, emu, 2)...)
	objs[len(objs)-1] = hotlinePolicy()
	if err := cluster.Apply(ctx, objs...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cp, err := cluster.WaitReady(ctx, ns, "hotline", 3*time.Minute)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if callback, err = cluster.CallbackURL(ctx, ns, "hotline", cp.Status.Receiver.CallbackPath); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := harness.WaitCallbackReachable(ctx, callback, time.Minute); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if hotlineCallback, err = ingress.WaitCallbackURL(ctx, cluster, ns, hotline, time.Minute); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := pub.WaitReachable(ctx, hotlineCallback, time.Minute); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func phone(n string) *graph.IdentitySet { return &graph.IdentitySet{Phone: &graph.Identity{ID: n}} }

// place places a call and returns the emulator's record once Graph was acted
// on (or 2 s passed without action: an allowed call).
func place(t *testing.T, src *graph.IdentitySet, modalities ...string) *harness.Record {
	t.Helper()
	if len(modalities) == 0 {
		modalities = []string{"audio"}
	}
	ctx := context.Background()
	id, err := emu.PlaceCall(ctx, callback, src, modalities)
	if err != nil {
		t.Fatalf("place call: %v", err)
	}
	placed = append(placed, id)
	rec, err := emu.WaitAction(ctx, id, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestOnCluster runs the end-to-end tests as subtests in this order: they
// share the hotline policy, and the last one deletes it. Top-level tests run
// in source order only until someone adds one below the deletion or runs
// with -shuffle; subtests run in the order they are called.
func TestOnCluster(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"PodsRunReadyUnderRestrictedSecurityContext", testPodsRunReadyUnderRestrictedSecurityContext},
		{"PolicyReadyForCurrentGeneration", testPolicyReadyForCurrentGeneration},
		{"EveryActionIsEnforced", testEveryActionIsEnforced},
		{"PolicyChangesAreEnforcedWithinTwoSecondsAtP99", testPolicyChangesAreEnforcedWithinTwoSecondsAtP99},
		{"RulesOnlyChangeReachesEveryReceiver", testRulesOnlyChangeReachesEveryReceiver},
		// Before the tests that replace receiver pods (and their decisions).
		{"DecisionsListEveryCallPlaced", testDecisionsListEveryCallPlaced},
		// Shared state (Redis) and Announce; the last one kills a receiver pod.
		{"RepeatCallerOverTwoPodsIsRejectedAndBlocked", testRepeatCallerOverTwoPodsIsRejectedAndBlocked},
		{"RedisGoneCallsDecidedPerOnError", testRedisGoneCallsDecidedPerOnError},
		{"WithheldCallerHearsTheAnnouncement", testWithheldCallerHearsTheAnnouncement},
		{"AnnouncementSurvivesTheAnsweringPod", testAnnouncementSurvivesTheAnsweringPod},
		{"SecretChangeRollsReceiversWithoutLosingCalls", testSecretChangeRollsReceiversWithoutLosingCalls},
		{"ReceiverPodDeletionAndOperatorRestartLoseNoDecision", testReceiverPodDeletionAndOperatorRestartLoseNoDecision},
		{"HelmUpgradeLosesNoDecision", testHelmUpgradeLosesNoDecision},
		// Issue 14: a second policy, exposed through the ingress and autoscaled.
		{"CallsThroughTheIngressWithTLSAreDecided", testCallsThroughTheIngressWithTLSAreDecided},
		{"LoadScalesReceiversOutAndBackWithoutLosingCalls", testLoadScalesReceiversOutAndBackWithoutLosingCalls},
		{"DeletingTheElasticPolicyCollectsIngressAndAutoscaler", testDeletingTheElasticPolicyCollectsIngressAndAutoscaler},
		// Issue 12: its own namespace and policy, deleted at its end.
		{"MillionNumberListIsPublishedAndEnforced", testMillionNumberListIsPublishedAndEnforced},
		{"DeletingThePolicyCollectsEveryChild", testDeletingThePolicyCollectsEveryChild},
		{"HelmUninstallRemovesTheOperatorAndKeepsTheCRD", testHelmUninstallRemovesTheOperatorAndKeepsTheCRD},
	} {
		t.Run(tc.name, tc.run)
	}
}

func testPodsRunReadyUnderRestrictedSecurityContext(t *testing.T) {
	ctx := context.Background()
	for _, sel := range []struct{ ns, labels string }{
		{"callguard-system", "control-plane=controller-manager"},
		{ns, "app.kubernetes.io/name=callguard-receiver,app.kubernetes.io/instance=hotline"},
	} {
		pods, err := cluster.Clientset.CoreV1().Pods(sel.ns).List(ctx, metav1.ListOptions{LabelSelector: sel.labels})
		if err != nil || len(pods.Items) == 0 {
			t.Fatalf("pods %s in %s: %v (%d)", sel.labels, sel.ns, err, len(pods.Items))
		}
		for _, p := range pods.Items {
			if p.Status.Phase != corev1.PodRunning || !ready(&p) {
				t.Errorf("pod %s/%s: phase %s, ready %v", p.Namespace, p.Name, p.Status.Phase, ready(&p))
			}
			psc := p.Spec.SecurityContext
			if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("pod %s: pod security context %+v", p.Name, psc)
			}
			for _, c := range p.Spec.Containers {
				sc := c.SecurityContext
				if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
					sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
					t.Errorf("pod %s container %s: security context %+v", p.Name, c.Name, sc)
				}
			}
		}
	}
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func testPolicyReadyForCurrentGeneration(t *testing.T) {
	cp, err := cluster.WaitReady(context.Background(), ns, "hotline", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Status.Receiver.ReadyReplicas != 2 || int(cp.Status.Rules) != len(samplePolicy.Policy.Spec.Rules) {
		t.Errorf("status = %+v", cp.Status)
	}
}

func testEveryActionIsEnforced(t *testing.T) {
	tests := []struct {
		name       string
		src        *graph.IdentitySet
		modalities []string
		action     string
		reason     string
	}{
		{"vip allowed", phone("+14255550100"), nil, "", ""},
		{"premium rejected forbidden", phone("+19005550123"), nil, "reject", "forbidden"},
		{"robocaller rejected busy", phone("+12125550143"), nil, "reject", "busy"},
		{"list range rejected busy", phone("+15550101234"), nil, "reject", "busy"},
		{"video redirected", phone("+14255550111"), []string{"audio", "video"}, "redirect", ""},
		{"anonymous answered (announcement)", nil, nil, "answer", ""},
		{"guest rejected", &graph.IdentitySet{Guest: &graph.Identity{ID: "3f6e2d90-5b1c-4e53-a7f0-9c0b8d2e4a11"}}, nil, "reject", "forbidden"},
		{"ordinary caller allowed", phone("+14255550111"), nil, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := place(t, tt.src, tt.modalities...)
			if rec.Action != tt.action || (tt.reason != "" && rec.Reason != tt.reason) {
				t.Errorf("Graph action = %q (%q), want %q (%q)", rec.Action, rec.Reason, tt.action, tt.reason)
			}
			if !rec.Delivered() {
				t.Errorf("notification not acknowledged: %+v", rec.History)
			}
		})
	}
}

// policyChanges is how many changes the p99 is taken over: with fewer than
// 100, the p99 is the maximum, and one outlier would fail a goal that allows it.
const policyChanges = 100

// testPolicyChangesAreEnforcedWithinTwoSecondsAtP99 changes the policy
// policyChanges times, measures from the kubectl patch to every receiver
// enforcing it, checks each change with a real call, and holds the p99 to
// the goal of 2 s; the maximum is reported, not asserted. A change not live
// after 10 s fails at once: that is a lost update, not an outlier.
func testPolicyChangesAreEnforcedWithinTwoSecondsAtP99(t *testing.T) {
	ctx := context.Background()
	// Even after a failed change: the later tests need the demo policy.
	t.Cleanup(func() { restore(t) })
	var took []time.Duration
	for i := range policyChanges {
		cp := &callsv1alpha1.CallPolicy{}
		if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "hotline"}, cp); err != nil {
			t.Fatal(err)
		}
		// Each change rejects a number no earlier policy names, so a call
		// from it is rejected only once this change is enforced (Allow is
		// the default: an allowed call would prove nothing). The reason
		// alternates so that Graph's reason is checked too.
		number := fmt.Sprintf("+16465550%03d", i)
		reason := []string{"busy", "forbidden"}[i%2]
		patch := fmt.Sprintf(`{"spec":{"rules":[{"name":"flip","action":"Reject","reason":%q,"match":{"callers":{"numbers":[%q]}}}]}}`, reason, number)
		start := time.Now()
		// A merge patch replaces the rule list: the flip rule alone, then
		// the demo rules come back at the end.
		if _, err := cluster.Kubectl(ctx, nil, "-n", ns, "patch", "callpolicy", "hotline", "--type=merge", "-p", patch); err != nil {
			t.Fatal(err)
		}
		_, _, live, err := cluster.WaitPolicyLive(ctx, ns, "hotline", cp.Status.PolicyHash, start, 10*time.Second)
		if err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
		took = append(took, live)
		if rec := place(t, phone(number)); rec.Action != "reject" || rec.Reason != reason {
			t.Errorf("change %d: call after the change got %q (%q), want reject (%q)", i, rec.Action, rec.Reason, reason)
		}
	}
	slices.Sort(took)
	p50, p99, most := percentile(took, 50), percentile(took, 99), took[len(took)-1]
	t.Logf("policy change → enforced on every receiver: p50 %s, p99 %s, max %s (n=%d)", p50, p99, most, len(took))
	writeFigure(t, fmt.Sprintf("change-to-enforcement p50=%s p99=%s max=%s n=%d", p50, p99, most, len(took)))
	if p99 > 2*time.Second {
		t.Errorf("p99 of %d policy changes to enforcement = %s, want ≤ 2 s", len(took), p99)
	}
}

// percentile is the nearest-rank p-th percentile (0 < p ≤ 100) of sorted
// (not empty): the smallest value with at least p % of the values at or
// below it.
// testDecisionsListEveryCallPlaced: `kubectl callpolicy decisions`, through
// the API server's pod proxy to every receiver, lists each call placed so
// far with the action Graph saw.
func testDecisionsListEveryCallPlaced(t *testing.T) {
	if len(placed) == 0 {
		t.Fatal("no calls were placed before this test")
	}
	var out, errOut bytes.Buffer
	args := []string{"decisions", "hotline", "-n", ns, "--kubeconfig", os.Getenv("KUBECONFIG"), "--since", "1h", "-o", "json"}
	if code := policycli.Run(args, nil, &out, &errOut); code != 0 {
		t.Fatalf("kubectl callpolicy %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
	}
	listed := map[string]string{}
	pods := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var d struct {
			CallID string `json:"callId"`
			Pod    string `json:"pod"`
			Action string `json:"action"`
		}
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			t.Fatalf("decision line %q: %v", line, err)
		}
		listed[d.CallID] = d.Action
		pods[d.Pod] = true
	}
	var missing []string
	for _, id := range placed {
		if _, ok := listed[id]; !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d calls placed are not listed by decisions (%d pods answered): %v", len(missing), len(placed), len(pods), missing)
	}
	t.Logf("decisions lists all %d calls placed, from %d receiver pods", len(placed), len(pods))
}

// helm runs the helm that installed the operator (make e2e: dist/chart,
// release callguard in callguard-system).
func helm(t *testing.T, args ...string) {
	t.Helper()
	bin := os.Getenv("E2E_HELM")
	if bin == "" {
		t.Fatal("E2E_HELM is not set: run `make e2e`, which installs the operator with helm")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, "--kubeconfig", os.Getenv("KUBECONFIG"))...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helm %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// testHelmUpgradeLosesNoDecision: `helm upgrade` with a changed value rolls
// the operator while calls keep being decided, and the value takes effect.
func testHelmUpgradeLosesNoDecision(t *testing.T) {
	ctx := context.Background()
	const arg = "--max-concurrent-reconciles=8"
	callsThroughout(t, "helm-upgrade", func() {
		helm(t, "upgrade", "callguard", "../../dist/chart", "-n", "callguard-system", "--reuse-values",
			"--set", "extraArgs={"+arg+"}", "--wait", "--timeout", "3m")
		if _, err := cluster.WaitReady(ctx, ns, "hotline", 2*time.Minute); err != nil {
			t.Fatal(err)
		}
	})
	dep := &appsv1.Deployment{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: "callguard-system", Name: "callguard-controller-manager"}, dep); err != nil {
		t.Fatal(err)
	}
	if args := dep.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, arg) {
		t.Fatalf("manager args after the upgrade: %v, want %s among them", args, arg)
	}
}

// testHelmUninstallRemovesTheOperatorAndKeepsTheCRD: `helm uninstall`
// removes the operator and its RBAC but keeps the CRD (resource-policy
// keep), so no CallPolicy in the cluster is lost with the release.
func testHelmUninstallRemovesTheOperatorAndKeepsTheCRD(t *testing.T) {
	ctx := context.Background()
	helm(t, "uninstall", "callguard", "-n", "callguard-system", "--wait", "--timeout", "3m")
	gone := []client.Object{
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "callguard-system", Name: "callguard-controller-manager"}},
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "callguard-manager-role"}},
	}
	for _, o := range gone {
		waitFor(t, time.Minute, client.ObjectKeyFromObject(o).String()+" removed", func() bool {
			return apierrors.IsNotFound(cluster.Client.Get(ctx, client.ObjectKeyFromObject(o), o))
		})
	}
	if out, err := cluster.Kubectl(ctx, nil, "get", "crd", "callpolicies.calls.callguard.dev"); err != nil {
		t.Fatalf("the CRD after helm uninstall: %v %s (it must be kept)", err, out)
	}
}

func percentile(sorted []time.Duration, p int) time.Duration {
	rank := (p*len(sorted) + 99) / 100 // ⌈p·n/100⌉ in integers
	return sorted[rank-1]
}

// restore puts the demo policy back.
func restore(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if err := cluster.Apply(ctx, hotlinePolicy()); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.WaitReady(ctx, ns, "hotline", time.Minute); err != nil {
		t.Fatal(err)
	}
}

func writeFigure(t *testing.T, line string) {
	if f := os.Getenv("E2E_FIGURES"); f != "" {
		fh, err := os.OpenFile(f, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			t.Log(err)
			return
		}
		defer fh.Close()
		fmt.Fprintln(fh, line)
	}
}

// callsThroughout places robocaller calls from a second before disrupt until
// two seconds after it returns, and fails the test unless every one was
// decided (rejected on Graph).
func callsThroughout(t *testing.T, figure string, disrupt func()) {
	t.Helper()
	stop := make(chan struct{})
	type result struct {
		placed, decided int
		failures        []string
	}
	done := make(chan result, 1)
	go func() {
		p, d, f := callsDuring(t, stop)
		done <- result{p, d, f}
	}()
	var once sync.Once
	stopCalls := func() { once.Do(func() { close(stop) }) }
	// If disrupt fails the test (t.Fatal), the calls still stop.
	defer stopCalls()
	time.Sleep(time.Second)
	disrupt()
	time.Sleep(2 * time.Second)
	stopCalls()
	r := <-done
	t.Logf("%s: %d calls placed, %d decided", figure, r.placed, r.decided)
	writeFigure(t, fmt.Sprintf("%s calls placed=%d decided=%d", figure, r.placed, r.decided))
	if r.placed == 0 || r.decided != r.placed || len(r.failures) > 0 {
		t.Errorf("%d/%d calls decided; failures: %s", r.decided, r.placed, strings.Join(r.failures, "; "))
	}
}

// callsDuring places robocaller calls continuously until stop is closed and
// returns how many were placed and how many were rejected.
func callsDuring(t *testing.T, stop <-chan struct{}) (placed, decided int, failures []string) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx := context.Background()
				id, err := emu.PlaceCall(ctx, callback, phone("+12125550143"), []string{"audio"})
				if err != nil {
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
					continue
				}
				rec, err := emu.WaitAction(ctx, id, 5*time.Second)
				mu.Lock()
				placed++
				if err == nil && rec.Action == "reject" {
					decided++
				} else if err != nil {
					failures = append(failures, err.Error())
				} else {
					failures = append(failures, fmt.Sprintf("call %s: action %q history %+v", id, rec.Action, rec.History))
				}
				mu.Unlock()
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	return placed, decided, failures
}

func testSecretChangeRollsReceiversWithoutLosingCalls(t *testing.T) {
	ctx := context.Background()
	dep := &appsv1.Deployment{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "hotline-callguard"}, dep); err != nil {
		t.Fatal(err)
	}
	oldHash := dep.Spec.Template.Annotations["callguard.dev/credentials-hash"]
	callsThroughout(t, "secret-rollout", func() {
		// A new key beside the same client secret: a credentials change the
		// emulator still accepts.
		secret := &corev1.Secret{}
		if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "hotline-bot"}, secret); err != nil {
			t.Fatal(err)
		}
		secret.Data["rotated-at"] = []byte(time.Now().Format(time.RFC3339Nano))
		if err := cluster.Client.Update(ctx, secret); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(3 * time.Minute)
		for {
			if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "hotline-callguard"}, dep); err != nil {
				t.Fatal(err)
			}
			rolled := dep.Spec.Template.Annotations["callguard.dev/credentials-hash"] != oldHash &&
				dep.Status.ObservedGeneration == dep.Generation && dep.Status.UpdatedReplicas == 2 &&
				dep.Status.AvailableReplicas == 2 && dep.Status.Replicas == 2
			if rolled {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("receivers did not roll: %+v", dep.Status)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
}

func testReceiverPodDeletionAndOperatorRestartLoseNoDecision(t *testing.T) {
	ctx := context.Background()
	callsThroughout(t, "pod-deletion+operator-restart", func() {
		pods, err := cluster.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=hotline"})
		if err != nil || len(pods.Items) == 0 {
			t.Fatalf("receiver pods: %v", err)
		}
		if err := cluster.Clientset.CoreV1().Pods(ns).Delete(ctx, pods.Items[0].Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		ops, err := cluster.Clientset.CoreV1().Pods("callguard-system").List(ctx, metav1.ListOptions{LabelSelector: "control-plane=controller-manager"})
		if err != nil || len(ops.Items) == 0 {
			t.Fatalf("operator pods: %v", err)
		}
		opName := ops.Items[0].Name
		if err := cluster.Clientset.CoreV1().Pods("callguard-system").Delete(ctx, opName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// Wait for a new operator pod and both receivers back before stopping the calls.
		waitFor(t, 2*time.Minute, "a new operator pod Ready and 2 receivers available", func() bool {
			ops, err := cluster.Clientset.CoreV1().Pods("callguard-system").List(ctx, metav1.ListOptions{LabelSelector: "control-plane=controller-manager"})
			if err != nil {
				return false
			}
			fresh := false
			for i := range ops.Items {
				fresh = fresh || (ops.Items[i].Name != opName && ready(&ops.Items[i]))
			}
			dep := &appsv1.Deployment{}
			return fresh && cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "hotline-callguard"}, dep) == nil &&
				dep.Status.AvailableReplicas == 2 && dep.Status.Replicas == 2
		})
		if _, err := cluster.WaitReady(ctx, ns, "hotline", 2*time.Minute); err != nil {
			t.Fatal(err)
		}
	})
}

// testDeletingThePolicyCollectsEveryChild removes the policy the other tests
// use: TestOnCluster runs it last.
func testDeletingThePolicyCollectsEveryChild(t *testing.T) {
	ctx := context.Background()
	cp := &callsv1alpha1.CallPolicy{}
	if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "hotline"}, cp); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Client.Delete(ctx, cp); err != nil {
		t.Fatal(err)
	}
	children := map[string]client.Object{
		"hotline-callguard/Deployment": &appsv1.Deployment{}, "hotline-callguard/Service": &corev1.Service{},
		"hotline-callguard/ServiceAccount": &corev1.ServiceAccount{}, "hotline-callguard/Role": &rbacv1.Role{},
		"hotline-callguard/RoleBinding": &rbacv1.RoleBinding{}, "hotline-callguard/PodDisruptionBudget": &policyv1.PodDisruptionBudget{},
		"hotline-callguard-policy/ConfigMap": &corev1.ConfigMap{},
	}
	deadline := time.Now().Add(2 * time.Minute)
	for len(children) > 0 {
		for k, obj := range children {
			name := strings.Split(k, "/")[0]
			if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, obj); apierrors.IsNotFound(err) {
				delete(children, k)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not garbage-collected after 2 minutes: %v", keys(children))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func keys(m map[string]client.Object) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// testRulesOnlyChangeReachesEveryReceiver measures the product's own path
// for a change that touches rules only (the vip-always number; the number
// list and announcement shards stay the same): from the patch being sent
// (in-process, so no kubectl process start; the patch's own round trip
// counts) to every receiver reporting the new policy hash on its metrics,
// polled straight from the pod IPs (no API round trip in the loop). The
// switched hash must be the one the operator then reports. The goal is a
// p99 under 100 ms; the test holds it to 2 s like the kubectl figure, as a
// loaded machine may stall any one change, and records it.
func testRulesOnlyChangeReachesEveryReceiver(t *testing.T) {
	ctx := context.Background()
	t.Cleanup(func() { restore(t) })
	urls, err := cluster.ReceiverMetricsURLs(ctx, ns, hotline)
	if err != nil || len(urls) != 2 {
		t.Fatalf("receiver metrics URLs: %v %v", urls, err)
	}
	vip := ruleIndex(t, "vip-always")
	var took []time.Duration
	for i := range policyChanges {
		cp := &callsv1alpha1.CallPolicy{}
		if err := cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: hotline}, cp); err != nil {
			t.Fatal(err)
		}
		old := cp.Status.PolicyHash
		patch := fmt.Sprintf(`[{"op":"replace","path":"/spec/rules/%d/match/callers/numbers","value":["+1425555%04d"]}]`, vip, i)
		start := time.Now()
		if err := cluster.Client.Patch(ctx, cp, client.RawPatch(types.JSONPatchType, []byte(patch))); err != nil {
			t.Fatal(err)
		}
		hash, live, err := harness.WaitReceiversSwitch(ctx, urls, old, start, 10*time.Second)
		if err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
		took = append(took, live)
		waitFor(t, 10*time.Second, "status.policyHash "+hash, func() bool {
			return cluster.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: hotline}, cp) == nil && cp.Status.PolicyHash == hash
		})
	}
	slices.Sort(took)
	p50, p99, most := percentile(took, 50), percentile(took, 99), took[len(took)-1]
	t.Logf("rules-only change (patch accepted → every receiver live): p50 %s, p99 %s, max %s (n=%d)", p50, p99, most, len(took))
	writeFigure(t, fmt.Sprintf("rules-only-change-to-every-receiver p50=%s p99=%s max=%s n=%d", p50, p99, most, len(took)))
	if p99 > 2*time.Second {
		t.Errorf("p99 = %s, want ≤ 2 s", p99)
	}
}
