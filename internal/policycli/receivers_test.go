package policycli

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
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
)

const (
	appID    = "6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10"
	tenantID = "0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55"
	secret   = "emulated~secret"
)

// receiverPolicy is a standalone receiver's policy file, on the emulator.
func receiverPolicy(emu string) string {
	return `apiVersion: calls.callguard.dev/v1alpha1
kind: CallPolicy
metadata:
  name: hotline
  namespace: telephony
spec:
  bot:
    appId: ` + appID + `
    tenantId: ` + tenantID + `
    credentials:
      secretRef:
        name: hotline-bot
  graph:
    endpoint: ` + emu + `
    authorityHost: ` + emu + `/
    openIDConfigURL: ` + emu + `/v1/.well-known/OpenIdConfiguration
  defaultAction: Allow
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
---
apiVersion: v1
kind: Secret
metadata:
  name: hotline-bot
  namespace: telephony
stringData:
  client-secret: ` + secret + `
`
}

// startReceiver runs a receiver (receiver.Run, as cmd/receiver does) with
// its metrics port on ip, where the API server's pod proxy reaches it, and
// returns its callback URL and metrics port.
func startReceiver(t *testing.T, ip, policyFile, caFile string) (string, int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- receiver.Run(ctx, receiver.Options{
			PolicyFile:      policyFile,
			CAFile:          caFile,
			CredentialsDir:  filepath.Join(t.TempDir(), "none"),
			Logger:          slog.New(slog.NewJSONHandler(io.Discard, nil)),
			Listener:        ln,
			MetricsListener: mln,
			ShutdownGrace:   10 * time.Millisecond,
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("receiver.Run: %v", err)
		}
	})
	metrics := mln.Addr().String()
	waitFor(t, "receiver ready", func() bool {
		resp, err := http.Get("http://" + metrics + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return "http://" + ln.Addr().String() + "/api/calls", mln.Addr().(*net.TCPAddr).Port
}

// TestReceiversBehindPodProxy runs two real receivers deciding calls placed
// on the Graph emulator, as the pods of a CallPolicy, and reads them with
// decisions and status through the API server's pod proxy.
func TestReceiversBehindPodProxy(t *testing.T) {
	cluster(t)
	ip := podIP(t)
	ns := newNamespace(t)

	emu, err := emulator.New(emulator.Config{Bots: []emulator.Bot{{AppID: appID, TenantID: tenantID, Secret: secret}}, MissedAfter: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := emu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = emu.Close() })
	dir := t.TempDir()
	caFile, policyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(caFile, emu.CACertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(policyFile, []byte(receiverPolicy(emu.URL())), 0o600); err != nil {
		t.Fatal(err)
	}
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
			AppID: appID, CallbackURI: c.callback,
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
