package policycli

import (
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
	"github.com/callguard/callguard/internal/receiver"
	"github.com/callguard/callguard/test/harness/local"
	"github.com/callguard/callguard/test/harness/redisserver"
)

// receiverPolicy is the receivers' standalone policy file, on the emulator.
func receiverPolicy(emu string) []byte {
	return local.PolicyFile{Emulator: emu, Spec: `  defaultAction: Allow
  rules:
    - name: robocallers
      action: Reject
      reason: busy
      match: {callers: {numbers: ["+14255550001"]}}
    - name: after-hours
      action: Redirect
      redirect:
        targets: [{phone: "+14255550199"}]
      match: {callers: {numbers: ["+14255550004"]}}
`}.YAML()
}

// startReceiver runs a receiver with its metrics port on ip, where the API
// server's pod proxy reaches it, and returns its callback URL and metrics
// port.
func startReceiver(t *testing.T, ip, policyFile, caFile string) (string, int) {
	t.Helper()
	r := local.StartReceiver(t, local.Options{MetricsHost: ip, Options: receiver.Options{PolicyFile: policyFile, CAFile: caFile}})
	return r.Callback, r.MetricsPort
}

// TestReceiversBehindPodProxy runs two real receivers deciding calls placed
// on the Graph emulator, as the pods of a CallPolicy, and reads them with
// decisions and status through the API server's pod proxy.
func TestReceiversBehindPodProxy(t *testing.T) {
	cluster(t)
	ip := podIP(t)
	ns := newNamespace(t)

	emu, caFile := local.StartEmulator(t, nil)
	policyFile := filepath.Join(t.TempDir(), "policy.yaml")
	local.WriteFile(t, policyFile, receiverPolicy(emu.URL()))
	callbackA, portA := startReceiver(t, ip, policyFile, caFile)
	callbackB, portB := startReceiver(t, ip, policyFile, caFile)

	// The CallPolicy as the operator would report it: the receivers' hash.
	b, err := policy.LoadFiles(policyFile)
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Compile(b.Source)
	if err != nil {
		t.Fatal(err)
	}
	callPolicy(t, ns, "hotline", b.Source.Spec, p.Hash(), metav1.ConditionTrue)
	receivers(t, ns, "hotline", ip, portA, portB)

	// Three calls, one after the other, alternating between the pods.
	type placed struct{ id, pod, rule, action, result string }
	var calls []placed
	for _, c := range []struct{ number, callback, pod, rule, action, result string }{
		{"+14255550001", callbackA, "hotline-callguard-a", "robocallers", "Reject", "success"},
		{"+14255550004", callbackB, "hotline-callguard-b", "after-hours", "Redirect", "success"},
		{"+14255550100", callbackA, "hotline-callguard-a", "", "Allow", "none"},
	} {
		call, err := emu.PlaceCall(context.Background(), emulator.PlaceCallRequest{
			AppID: local.AppID, CallbackURI: c.callback,
			Source: &graph.IdentitySet{Phone: &graph.Identity{ID: c.number}},
		})
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, placed{call.ID, c.pod, c.rule, c.action, c.result})
		waitFor(t, "the decision of call "+call.ID, func() bool {
			_, out, _ := kubectl(t, context.Background(), "decisions", "hotline", "-n", ns, "-o", "json")
			return strings.Contains(out, call.ID)
		})
	}

	code, out, stderr := kubectl(t, context.Background(), "decisions", "hotline", "-n", ns, "-o", "json")
	if code != 0 || stderr != "" {
		t.Fatalf("decisions: exit %d, stderr %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(calls) {
		t.Fatalf("decisions:\n%s\nwant %d", out, len(calls))
	}
	for i, line := range lines {
		var d map[string]any
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			t.Fatal(err)
		}
		c := calls[i]
		if d["callId"] != c.id || d["pod"] != c.pod || d["rule"] != c.rule || d["action"] != c.action || d["result"] != c.result || d["policy"] != p.Hash() {
			t.Errorf("decision %d: %s\nwant %+v", i, line, c)
		}
	}
	_, table, _ := kubectl(t, context.Background(), "decisions", "hotline", "-n", ns)
	t.Logf("kubectl callpolicy decisions hotline:\n%s", table)

	code, out, stderr = kubectl(t, context.Background(), "status", "hotline", "-n", ns)
	t.Logf("kubectl callpolicy status hotline:\n%s", out)
	for _, want := range []string{
		"hotline-callguard-a   Running   true    " + policy.ShortHash(p.Hash()) + " (current)",
		"all 2 running pods run status.policyHash",
		"robocallers   Reject     Enforce   1",
		"after-hours   Redirect   Enforce   1",
		"(default)     Allow      Enforce   1",
		"redirect    success   1",
		"reject      success   1",
		"success   2",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status does not contain %q", want)
		}
	}
	if code != 0 || stderr != "" {
		t.Errorf("status: exit %d, stderr %s", code, stderr)
	}
}

// blockingPolicy is a standalone policy whose robocallers are under a
// temporary block once rejected: in the Redis at redisAddr, or without it
// in each receiver's memory.
func blockingPolicy(emu, redisAddr string) []byte {
	spec := `  defaultAction: Allow
  rules:
    - name: robocallers
      action: Reject
      reason: busy
      blockFor: 1h
      match: {callers: {numbers: ["+14255550001", "+14255550002"]}}
`
	if redisAddr != "" {
		spec += "  state:\n    redis: {address: \"" + redisAddr + "\"}\n"
	}
	return local.PolicyFile{Emulator: emu, Spec: spec}.YAML()
}

// blockingReceivers runs two real receivers of blockingPolicy as the pods
// hotline-callguard-a and -b of the CallPolicy hotline in a new namespace,
// sharing a state key (as the operator's Secret gives them), places a call
// from each number on one of them in turn and waits until blocks lists its
// block. It returns the namespace.
func blockingReceivers(t *testing.T, redisAddr string) string {
	t.Helper()
	cluster(t)
	ip := podIP(t)
	ns := newNamespace(t)

	emu, caFile := local.StartEmulator(t, nil)
	policyFile := filepath.Join(t.TempDir(), "policy.yaml")
	local.WriteFile(t, policyFile, blockingPolicy(emu.URL(), redisAddr))
	stateDir := t.TempDir()
	local.WriteFile(t, filepath.Join(stateDir, v1alpha1.StateSecretKey), []byte("a key both replicas share, 32 b"))
	b, err := policy.LoadFiles(policyFile)
	if err != nil {
		t.Fatal(err)
	}
	callPolicy(t, ns, "hotline", b.Source.Spec, "", "")
	receivers(t, ns, "hotline", ip)
	var callbacks []string
	for _, pod := range []string{"hotline-callguard-a", "hotline-callguard-b"} {
		r := local.StartReceiver(t, local.Options{MetricsHost: ip, Options: receiver.Options{PolicyFile: policyFile, CAFile: caFile, StateDir: stateDir}})
		callbacks = append(callbacks, r.Callback)
		receiverPod(t, ns, "hotline", pod, corev1.PodRunning, ip, r.MetricsPort)
	}
	for i, number := range []string{"+14255550001", "+14255550002"} {
		_, err := emu.PlaceCall(context.Background(), emulator.PlaceCallRequest{
			AppID: local.AppID, CallbackURI: callbacks[i],
			Source: &graph.IdentitySet{Phone: &graph.Identity{ID: number}},
		})
		if err != nil {
			t.Fatal(err)
		}
		masked := number[len(number)-4:]
		waitFor(t, "the block of "+number, func() bool {
			_, out, _ := kubectl(t, context.Background(), "blocks", "hotline", "-n", ns, "-o", "json")
			return strings.Contains(out, masked+`","rule":"robocallers"`)
		})
	}
	return ns
}

// TestBlocksBehindPodProxy lists and lifts the temporary blocks of two real
// receivers through the API server's pod proxy: with a store in each
// receiver's memory, each block is on the pod that decided the call; with
// a real Redis both pods list the same blocks, listed once.
func TestBlocksBehindPodProxy(t *testing.T) {
	tests := []struct {
		name  string
		redis bool
		// pods are the pods listing each block.
		pods [2][]string
		// unblocked is what unblock --number prints.
		unblocked []string
	}{
		{
			name:      "memory",
			pods:      [2][]string{{"hotline-callguard-a"}, {"hotline-callguard-b"}},
			unblocked: []string{"1 block lifted (hotline-callguard-a: 1, hotline-callguard-b: 0)\n"},
		},
		{
			name:  "redis",
			redis: true,
			pods:  [2][]string{{"hotline-callguard-a", "hotline-callguard-b"}, {"hotline-callguard-a", "hotline-callguard-b"}},
			// Both pods are asked at once: either lifts it from the store.
			unblocked: []string{
				"1 block lifted (hotline-callguard-a: 1, hotline-callguard-b: 0)\n",
				"1 block lifted (hotline-callguard-a: 0, hotline-callguard-b: 1)\n",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			var redisAddr string
			if tt.redis {
				redisAddr = redisserver.Start(t).Addr()
			}
			ns := blockingReceivers(t, redisAddr)

			code, out, stderr := kubectl(t, context.Background(), "blocks", "hotline", "-n", ns, "-o", "json")
			if code != 0 || stderr != "" {
				t.Fatalf("blocks: exit %d, stderr %s", code, stderr)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 2 {
				t.Fatalf("blocks:\n%s\nwant 2", out)
			}
			for i, masked := range []string{"0001", "0002"} {
				var bl block
				if err := json.Unmarshal([]byte(lines[i]), &bl); err != nil {
					t.Fatal(err)
				}
				if !strings.HasSuffix(bl.Masked, masked) || strings.Contains(bl.Masked, "425555") || bl.Rule != "robocallers" ||
					!slices.Equal(bl.Pods, tt.pods[i]) || bl.Since.Before(start.Add(-time.Second)) || bl.Until.Sub(bl.Since) != time.Hour {
					t.Errorf("block %d: %s\nwant the masked number ending %s, rule robocallers, pods %q, one hour from the call", i, lines[i], masked, tt.pods[i])
				}
			}
			_, table, _ := kubectl(t, context.Background(), "blocks", "hotline", "-n", ns, "-o", "wide")
			t.Logf("kubectl callpolicy blocks hotline -o wide:\n%s", table)

			code, out, stderr = kubectl(t, context.Background(), "unblock", "hotline", "-n", ns, "--number", "+1 425 555 0001")
			if code != 0 || !slices.Contains(tt.unblocked, out) || stderr != "" {
				t.Errorf("unblock --number: exit %d, stdout %q, want one of %q; stderr %s", code, out, tt.unblocked, stderr)
			}
			_, out, _ = kubectl(t, context.Background(), "blocks", "hotline", "-n", ns, "-o", "json")
			if strings.Contains(out, "0001") || !strings.Contains(out, "0002") {
				t.Errorf("blocks after unblock --number:\n%s", out)
			}

			code, out, stderr = kubectl(t, context.Background(), "unblock", "hotline", "-n", ns, "--all")
			if !strings.HasPrefix(out, "1 block lifted (") || code != 0 || stderr != "" {
				t.Errorf("unblock --all: exit %d, stdout %q; stderr %s", code, out, stderr)
			}
			code, out, stderr = kubectl(t, context.Background(), "blocks", "hotline", "-n", ns)
			if code != 0 || out != "" || !strings.Contains(stderr, "No blocks found.") {
				t.Errorf("blocks after unblock --all: exit %d, stdout %q, stderr %s", code, out, stderr)
			}
		})
	}
}
