package policycli

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
	"github.com/callguard/callguard/internal/receiver"
	"github.com/callguard/callguard/test/harness/local"
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
	receiverDeployment(t, ns, "hotline")
	receiverPod(t, ns, "hotline", "hotline-callguard-a", corev1.PodRunning, ip, portA)
	receiverPod(t, ns, "hotline", "hotline-callguard-b", corev1.PodRunning, ip, portB)

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
// temporary block once rejected; without state.redis each receiver keeps
// its own blocks in memory.
func blockingPolicy(emu string) []byte {
	return local.PolicyFile{Emulator: emu, Spec: `  defaultAction: Allow
  rules:
    - name: robocallers
      action: Reject
      reason: busy
      blockFor: 1h
      match: {callers: {numbers: ["+14255550001", "+14255550002"]}}
`}.YAML()
}

// TestBlocksBehindPodProxy runs two real receivers, each with its own
// memory store, as the pods of a CallPolicy: a call rejected by a blockFor
// rule on each puts its caller under a block there, which blocks lists
// through the API server's pod proxy and unblock lifts on the pod that
// holds it.
func TestBlocksBehindPodProxy(t *testing.T) {
	cluster(t)
	ip := podIP(t)
	ns := newNamespace(t)

	emu, caFile := local.StartEmulator(t, nil)
	policyFile := filepath.Join(t.TempDir(), "policy.yaml")
	local.WriteFile(t, policyFile, blockingPolicy(emu.URL()))
	callbackA, portA := startReceiver(t, ip, policyFile, caFile)
	callbackB, portB := startReceiver(t, ip, policyFile, caFile)
	b, err := policy.LoadFiles(policyFile)
	if err != nil {
		t.Fatal(err)
	}
	callPolicy(t, ns, "hotline", b.Source.Spec, "", "")
	receiverDeployment(t, ns, "hotline")
	receiverPod(t, ns, "hotline", "hotline-callguard-a", corev1.PodRunning, ip, portA)
	receiverPod(t, ns, "hotline", "hotline-callguard-b", corev1.PodRunning, ip, portB)

	start := time.Now()
	for _, c := range []struct{ number, callback, masked string }{
		{"+14255550001", callbackA, "0001"},
		{"+14255550002", callbackB, "0002"},
	} {
		_, err := emu.PlaceCall(context.Background(), emulator.PlaceCallRequest{
			AppID: local.AppID, CallbackURI: c.callback,
			Source: &graph.IdentitySet{Phone: &graph.Identity{ID: c.number}},
		})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the block of "+c.number, func() bool {
			_, out, _ := kubectl(t, context.Background(), "blocks", "hotline", "-n", ns, "-o", "json")
			return strings.Contains(out, c.masked+`","rule":"robocallers"`)
		})
	}

	code, out, stderr := kubectl(t, context.Background(), "blocks", "hotline", "-n", ns, "-o", "json")
	if code != 0 || stderr != "" {
		t.Fatalf("blocks: exit %d, stderr %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("blocks:\n%s\nwant 2", out)
	}
	for i, want := range []struct{ masked, pod string }{{"0001", "hotline-callguard-a"}, {"0002", "hotline-callguard-b"}} {
		var bl block
		if err := json.Unmarshal([]byte(lines[i]), &bl); err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(bl.Masked, want.masked) || strings.Contains(bl.Masked, "425555") || bl.Rule != "robocallers" ||
			len(bl.Pods) != 1 || bl.Pods[0] != want.pod ||
			bl.Since.Before(start.Add(-time.Second)) || bl.Until.Sub(bl.Since) != time.Hour {
			t.Errorf("block %d: %s\nwant the masked number ending %s, rule robocallers, pod %s, one hour from the call", i, lines[i], want.masked, want.pod)
		}
	}
	_, table, _ := kubectl(t, context.Background(), "blocks", "hotline", "-n", ns, "-o", "wide")
	t.Logf("kubectl callpolicy blocks hotline -o wide:\n%s", table)

	code, out, stderr = kubectl(t, context.Background(), "unblock", "hotline", "-n", ns, "--number", "+1 425 555 0001")
	if want := "1 block lifted (hotline-callguard-a: 1, hotline-callguard-b: 0)\n"; code != 0 || out != want || stderr != "" {
		t.Errorf("unblock --number: exit %d, stdout %q, want %q; stderr %s", code, out, want, stderr)
	}
	_, out, _ = kubectl(t, context.Background(), "blocks", "hotline", "-n", ns, "-o", "json")
	if strings.Contains(out, "0001") || !strings.Contains(out, "0002") {
		t.Errorf("blocks after unblock --number:\n%s", out)
	}

	code, out, stderr = kubectl(t, context.Background(), "unblock", "hotline", "-n", ns, "--all")
	if want := "1 block lifted (hotline-callguard-a: 0, hotline-callguard-b: 1)\n"; code != 0 || out != want || stderr != "" {
		t.Errorf("unblock --all: exit %d, stdout %q, want %q; stderr %s", code, out, want, stderr)
	}
	code, out, stderr = kubectl(t, context.Background(), "blocks", "hotline", "-n", ns)
	if code != 0 || out != "" || !strings.Contains(stderr, "No blocks found.") {
		t.Errorf("blocks after unblock --all: exit %d, stdout %q, stderr %s", code, out, stderr)
	}
}
