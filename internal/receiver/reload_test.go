package receiver_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
	"github.com/callguard/callguard/internal/receiver"
	"github.com/callguard/callguard/test/harness/local"
)

const flipNumber = "+14255550900"

func TestPolicyFileChangeTakesEffect(t *testing.T) {
	e := startEnv(t, envOptions{})
	if rec := e.acted(e.placeCall(flipNumber)); rec.Reason != "busy" {
		t.Fatalf("before the change: %+v", rec)
	}
	oldHash := e.srv.PolicyHash()
	p := e.params
	p.FlipReason = "forbidden"
	changed := time.Now()
	e.writePolicy(p)
	eventually(t, 10*time.Second, "new policy live", func() bool { return e.srv.PolicyHash() != oldHash })
	t.Logf("policy file change live after %v", time.Since(changed))
	if rec := e.acted(e.placeCall(flipNumber)); rec.Reason != "forbidden" {
		t.Fatalf("after the change: %+v", rec)
	}
	if got := e.metric("callguard_receiver_policy_info", map[string]string{"hash": e.srv.PolicyHash()}); got != 1 {
		t.Fatalf("policy_info for the new hash = %v", got)
	}
	if got := e.metric("callguard_receiver_policy_info", map[string]string{"hash": oldHash}); got != 0 {
		t.Fatalf("policy_info still reports the old hash")
	}
	// Both versions went live from the file, and each load was timed.
	if got := e.metric("callguard_receiver_policy_load_seconds", nil); got != 2 {
		t.Fatalf("policy_load_seconds counted %v loads, want 2", got)
	}
}

func TestBrokenPolicyKeepsOldOneLive(t *testing.T) {
	e := startEnv(t, envOptions{})
	oldHash := e.srv.PolicyHash()
	p := e.params
	p.Extra = "    - name: broken\n      action: Reject\n      match: {callers: {numberPatterns: [\"(unclosed\"]}}\n"
	e.writePolicy(p)
	eventually(t, 10*time.Second, "broken policy refused", func() bool {
		return e.metric("callguard_receiver_policy_reloads_total", map[string]string{"result": "error"}) >= 1
	})
	e.writeFile([]byte("not: [yaml"))
	eventually(t, 10*time.Second, "unparsable policy refused", func() bool {
		return e.metric("callguard_receiver_policy_reloads_total", map[string]string{"result": "error"}) >= 2
	})
	if e.srv.PolicyHash() != oldHash {
		t.Fatal("a broken policy replaced the live one")
	}
	if rec := e.acted(e.placeCall(numBusy)); rec.Reason != "busy" {
		t.Fatalf("old policy not deciding: %+v", rec)
	}
	if !strings.Contains(e.logs.String(), "policy refused") {
		t.Fatal("refusal not logged")
	}
}

// TestSwapsAreAtomic posts notifications while two policy versions replace
// each other; every decision must be wholly one version's: rule "flip"
// rejects with busy in one and forbidden in the other, and the mode differs
// too. Run with -race.
func TestSwapsAreAtomic(t *testing.T) {
	e := startEnv(t, envOptions{mode: "DryRun"})
	versions := map[string]struct{ reason, mode string }{}
	var compiled []*policy.Policy
	for _, v := range []struct{ reason, mode string }{{"busy", "DryRun"}, {"forbidden", "Enforce"}} {
		p := e.params
		p.FlipReason, p.Mode = v.reason, v.mode
		// The Enforce version must not reach Graph: its flip rule targets
		// a number nobody calls from, and the posted calls come from
		// another number that its catch-all rule decides.
		if v.mode == "Enforce" {
			p.FlipNumber = "+14255550901"
			p.Extra = "    - name: flip-enforce\n      action: Allow\n      match: {callers: {numbers: [\"" + flipNumber + "\"]}}\n"
		}
		bundle, err := policy.LoadYAML("v", bytes.NewReader(renderPolicy(t, p)))
		if err != nil {
			t.Fatal(err)
		}
		pol, err := policy.Compile(bundle.Source)
		if err != nil {
			t.Fatal(err)
		}
		compiled = append(compiled, pol)
		versions[pol.Hash()] = v
	}
	secretData := map[string][]byte{graph.SecretKeyClientSecret: []byte(secret)}

	stop := make(chan struct{})
	var swaps sync.WaitGroup
	swaps.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := e.srv.Apply(compiled[i%2], secretData); err != nil {
				t.Error(err)
				return
			}
		}
	})
	auth := e.genuineAuth()
	var posts sync.WaitGroup
	const workers, perWorker = 4, 50
	for w := range workers {
		posts.Go(func() {
			for i := range perWorker {
				id := fmt.Sprintf("swap-%d-%d", w, i)
				body := createdBody(t, &graph.Call{ID: id, State: "incoming", Source: &graph.ParticipantInfo{Identity: phone(flipNumber)}})
				if status, _ := e.post(http.MethodPost, auth, body); status != http.StatusAccepted {
					t.Errorf("post %s: %d", id, status)
				}
			}
		})
	}
	posts.Wait()
	close(stop)
	swaps.Wait()

	eventually(t, 20*time.Second, "all decisions logged", func() bool {
		return len(e.logs.decisions(t)) == workers*perWorker
	})
	seen := map[string]int{}
	for _, d := range e.logs.decisions(t) {
		hash, _ := d["policy"].(string)
		v, ok := versions[hash]
		if !ok {
			t.Fatalf("decision by unknown policy %q: %v", hash, d)
		}
		seen[hash]++
		switch v.mode {
		case "DryRun":
			if d["rule"] != "flip" || d["reason"] != "busy" || d["mode"] != "DryRun" {
				t.Fatalf("decision mixes versions: %v", d)
			}
		case "Enforce":
			if d["rule"] != "flip-enforce" || d["action"] != "Allow" || d["mode"] != "Enforce" {
				t.Fatalf("decision mixes versions: %v", d)
			}
		}
	}
	t.Logf("decisions per policy version: %v", seen)
	if n := e.graphActions(); n != 0 {
		t.Fatalf("Graph got %d actions", n)
	}
}

func TestConfigMapSource(t *testing.T) {
	dir := t.TempDir()
	emu, caFile := local.StartEmulator(t, nil)
	credDir := filepath.Join(dir, "credentials")
	if err := os.Mkdir(credDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(credDir, graph.SecretKeyClientSecret), []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	configMap := func(reason string) *corev1.ConfigMap {
		file := renderPolicy(t, policyParams{Emulator: emu.URL(), APIVersion: "v1.0", Mode: "Enforce", FlipReason: reason, FlipNumber: flipNumber})
		bundle, err := policy.LoadYAML("policy.yaml", bytes.NewReader(file))
		if err != nil {
			t.Fatal(err)
		}
		data, shards, _, err := policy.EncodeConfigMaps(bundle.Source, "hotline-callguard-policy")
		if err != nil || len(shards) > 0 {
			t.Fatalf("encode: %v, %d shards (this policy has no number lists)", err, len(shards))
		}
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "telephony", Name: "hotline-callguard-policy"}, Data: data}
	}
	kube := fake.NewClientset(
		configMap("busy"),
		// Another ConfigMap in the namespace must be ignored.
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "telephony", Name: "other"}, Data: map[string]string{"policy.json": "{"}},
	)

	logs := &logSink{}
	r := local.StartReceiver(t, local.Options{Options: receiver.Options{
		PolicyConfigMap: "telephony/hotline-callguard-policy",
		CAFile:          caFile,
		CredentialsDir:  credDir,
		Kube:            kube,
		Logger:          slog.New(slog.NewJSONHandler(logs, nil)),
		ShutdownGrace:   10 * time.Millisecond,
	}})
	srv := r.Server
	e := &env{t: t, emu: emu, srv: srv, callback: r.Callback, ops: r.Ops, logs: logs, rcv: r}

	if rec := e.acted(e.place(flipNumber, e.callback)); rec.Reason != "busy" {
		t.Fatalf("first policy: %+v", rec)
	}
	oldHash := srv.PolicyHash()
	cms := kube.CoreV1().ConfigMaps("telephony")
	if _, err := cms.Update(context.Background(), configMap("forbidden"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "updated ConfigMap live", func() bool { return srv.PolicyHash() != oldHash })
	if rec := e.acted(e.place(flipNumber, e.callback)); rec.Reason != "forbidden" {
		t.Fatalf("updated policy: %+v", rec)
	}

	liveHash := srv.PolicyHash()
	broken := configMap("busy")
	broken.Data[policy.ConfigMapKeyPolicy] = `{"spec":{"rules":[{"name":"x","action":"Reject","match":{"callers":{"numberPatterns":["(" ]}}}]}}`
	if _, err := cms.Update(context.Background(), broken, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitMetric("callguard_receiver_policy_reloads_total", map[string]string{"result": "error"}, 1)
	if srv.PolicyHash() != liveHash {
		t.Fatal("broken ConfigMap replaced the live policy")
	}
}

func TestShutdownFinishesQueuedWork(t *testing.T) {
	const grace = 2 * time.Second
	e := startEnv(t, envOptions{grace: grace})
	// Graph answers slowly, so the reject is still in flight at SIGTERM.
	e.fault(emulator.FaultRule{Path: rejectPath, LatencyMs: 1500})
	id := e.placeCall(numBusy)
	e.rcv.Shutdown()
	// Readiness fails while the listeners still serve (the grace period):
	// only a 503 counts, not a refused connection.
	eventually(t, grace, "readyz answering 503", func() bool {
		return statusOf(e.ops+"/readyz") == http.StatusServiceUnavailable
	})
	if err := e.rcv.Wait(); err != nil {
		t.Fatalf("Run returned %v", err)
	}
	if rec := e.record(id); rec.Action != "reject" {
		t.Fatalf("queued reject not finished before Run returned: %+v", rec)
	}
	if d := e.logs.decisionFor(t, id); d["error"] != nil {
		t.Fatalf("decision failed: %v", d)
	}
	if _, err := http.Get(e.callback); err == nil {
		t.Fatal("callback listener still open after Run returned")
	}
}
