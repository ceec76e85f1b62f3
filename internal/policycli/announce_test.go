package policycli

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/callguard/callguard/internal/policy"
	"github.com/callguard/callguard/internal/wav"
)

// policyHeader starts a policy file: the CallPolicy up to its rules.
const policyHeader = `apiVersion: calls.callguard.dev/v1alpha1
kind: CallPolicy
metadata: {name: hotline, namespace: telephony}
spec:
  bot:
    appId: 6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10
    tenantId: 0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55
    credentials: {secretRef: {name: hotline-bot}}
  rules:
`

// expiringPolicy blocks callers from a list whose entries expire: one at
// an instant, a prefix at a date (00:00 UTC), one never.
const expiringPolicy = policyHeader + `    - name: temporary
      action: Reject
      reason: busy
      match:
        callers:
          numberLists: [{configMapKeyRef: {name: temporary, key: numbers.txt}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: temporary, namespace: telephony}
data:
  numbers.txt: |
    # expire when the campaign ends
    +14255550123 expires=2027-01-31T12:00:00+01:00
    +1900* expires=2027-02-01
    +14255550199
`

// TestTestAt judges number list entries with expires= at --at: an entry
// matches before its instant and nothing from it on.
func TestTestAt(t *testing.T) {
	reject := `{"callId":"callpolicy-test","action":"Reject","reason":"busy","rule":"temporary","mode":"Enforce"}` + "\n"
	allow := `{"callId":"callpolicy-test","action":"Allow","reason":"","rule":"","mode":"Enforce"}` + "\n"
	tests := []struct {
		name, number, at, want string
	}{
		{"instant: just before", "+14255550123", "2027-01-31T10:59:59.999Z", reject},
		{"instant: at it, in another zone", "+14255550123", "2027-01-31T03:00:00-08:00", allow},
		{"instant: after", "+14255550123", "2027-03-01T00:00:00Z", allow},
		{"date prefix: the day before", "+19005550100", "2027-01-31T23:59:59Z", reject},
		{"date prefix: from 00:00 UTC", "+19005550100", "2027-02-01T00:00:00Z", allow},
		{"no expiry", "+14255550199", "2099-01-01T00:00:00Z", reject},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := Run([]string{"test", "-f", "-", "--number", tt.number, "--at", tt.at}, strings.NewReader(expiringPolicy), &stdout, &stderr)
			if code != 0 || stdout.String() != tt.want || stderr.Len() != 0 {
				t.Errorf("exit %d\nstdout: %s\nwant:   %s\nstderr: %s", code, stdout.String(), tt.want, stderr.String())
			}
		})
	}
}

// announcePolicy announces to two numbers: from a URL, and from a WAV file
// kept in a ConfigMap, with the default maxSeconds.
func announcePolicy(prompt []byte) string {
	return policyHeader + `    - name: withheld-info
      action: Announce
      announce:
        prompt: {url: "https://prompts.example.com/withheld.wav"}
        maxSeconds: 20
      match: {callers: {numbers: ["+14255550123"]}}
    - name: closed
      action: Announce
      announce:
        prompt: {configMapKeyRef: {name: prompts, key: closed.wav}}
      match: {callers: {numbers: ["+14255550124"]}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: prompts, namespace: telephony}
binaryData:
  closed.wav: ` + base64.StdEncoding.EncodeToString(prompt) + "\n"
}

// TestTestAnnounce prints an Announce decision's prompt and maxSeconds,
// in JSON and in the table (whose columns for them appear only when a
// decision announces).
func TestTestAnnounce(t *testing.T) {
	prompt := wav.Tone(time.Second)
	sum := sha256.Sum256(prompt)
	sha := hex.EncodeToString(sum[:])
	pol := announcePolicy(prompt)
	tests := []struct {
		name   string
		args   []string
		stdout string
	}{
		{
			name:   "url prompt, json",
			args:   []string{"--number", "+14255550123"},
			stdout: `{"callId":"callpolicy-test","action":"Announce","reason":"","rule":"withheld-info","mode":"Enforce","announce":{"promptUrl":"https://prompts.example.com/withheld.wav","maxSeconds":20}}` + "\n",
		},
		{
			name:   "configmap prompt, json",
			args:   []string{"--number", "+14255550124"},
			stdout: `{"callId":"callpolicy-test","action":"Announce","reason":"","rule":"closed","mode":"Enforce","announce":{"promptSha256":"` + sha + `","maxSeconds":30}}` + "\n",
		},
		{
			name: "url prompt, table",
			args: []string{"--number", "+14255550123", "-o", "table"},
			stdout: "CALL ID           ACTION     REASON   RULE            MODE      PROMPT                                     MAX SECONDS\n" +
				"callpolicy-test   Announce   -        withheld-info   Enforce   https://prompts.example.com/withheld.wav   20\n",
		},
		{
			name: "configmap prompt, table",
			args: []string{"--number", "+14255550124", "-o", "table"},
			stdout: "CALL ID           ACTION     REASON   RULE     MODE      PROMPT" + strings.Repeat(" ", 3+len("sha256:")+len(sha)-len("PROMPT")) + "MAX SECONDS\n" +
				"callpolicy-test   Announce   -        closed   Enforce   sha256:" + sha + "   30\n",
		},
		{
			name: "no announcement: no prompt columns",
			args: []string{"--number", "+14255550111", "-o", "table"},
			stdout: "CALL ID           ACTION   REASON   RULE        MODE\n" +
				"callpolicy-test   Allow    -        (default)   Enforce\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := Run(append([]string{"test", "-f", "-"}, tt.args...), strings.NewReader(pol), &stdout, &stderr)
			if code != 0 || stdout.String() != tt.stdout || stderr.Len() != 0 {
				t.Errorf("exit %d\nstdout:\n%s\nwant:\n%s\nstderr: %s", code, stdout.String(), tt.stdout, stderr.String())
			}
		})
	}
}

// TestWriteAnnounceTable prints a mixed batch: calls that do not announce
// get "-" in the prompt columns.
func TestWriteAnnounceTable(t *testing.T) {
	var stdout, stderr strings.Builder
	code := Run([]string{"test", "-f", "-", "--notification", "testdata/announce-notification.json", "-o", "table"}, strings.NewReader(announcePolicy(wav.Tone(time.Second))), &stdout, &stderr)
	want := "CALL ID   ACTION     REASON   RULE            MODE      PROMPT                                     MAX SECONDS\n" +
		"c1        Announce   -        withheld-info   Enforce   https://prompts.example.com/withheld.wav   20\n" +
		"c2        Allow      -        (default)       Enforce   -                                          -\n"
	if code != 0 || stdout.String() != want {
		t.Errorf("exit %d\nstdout:\n%s\nwant:\n%s\nstderr: %s", code, stdout.String(), want, stderr.String())
	}
}

// TestTestAnnounceAgainstCluster reads an Announce rule's prompt from its
// ConfigMap in the cluster: the same decision as offline; without the
// ConfigMap the policy does not compile.
func TestTestAnnounceAgainstCluster(t *testing.T) {
	cluster(t)
	prompt := wav.Tone(time.Second)
	b, err := policy.LoadFilesFrom(strings.NewReader(announcePolicy(prompt)), "-")
	if err != nil {
		t.Fatal(err)
	}
	ns := newNamespace(t)
	create(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "prompts"}, BinaryData: map[string][]byte{"closed.wav": prompt}})
	callPolicy(t, ns, "hotline", b.Source.Spec, "", "")
	bare := newNamespace(t)
	callPolicy(t, bare, "hotline", b.Source.Spec, "", "")

	for _, number := range []string{"+14255550123", "+14255550124"} {
		var want, offlineErr strings.Builder
		if code := Run([]string{"test", "-f", "-", "--number", number}, strings.NewReader(announcePolicy(prompt)), &want, &offlineErr); code != 0 {
			t.Fatalf("offline: exit %d, stderr %s", code, offlineErr.String())
		}
		code, got, stderr := kubectl(t, context.Background(), "test", "hotline", "-n", ns, "--number", number)
		if code != 0 || got != want.String() || stderr != "" {
			t.Errorf("%s: exit %d\nstdout: %s\nwant (offline): %s\nstderr: %s", number, code, got, want.String(), stderr)
		}
	}
	code, out, stderr := kubectl(t, context.Background(), "test", "hotline", "-n", bare, "--number", "+14255550124")
	want := "error: CallPolicy " + bare + "/hotline: spec.rules[1].announce.prompt.configMapKeyRef: configmap prompts key closed.wav: not found"
	if code != 2 || out != "" || !strings.Contains(stderr, want) {
		t.Errorf("without the ConfigMap: exit %d, stdout %q\nstderr: %s\nwant: %s", code, out, stderr, want)
	}
}

// TestTestStateless decides a policy with callers.repeat and blockFor as
// for a caller's first call, and says so on stderr.
func TestTestStateless(t *testing.T) {
	pol := policyHeader + `    - name: redial
      action: Reject
      reason: busy
      match: {callers: {repeat: {calls: 2, within: 10m}}}
    - name: robocallers
      action: Reject
      blockFor: 1h
      match: {callers: {numbers: ["+14255550123"]}}
`
	for _, tt := range []struct{ number, want string }{
		{"+14255550123", `{"callId":"callpolicy-test","action":"Reject","reason":"none","rule":"robocallers","mode":"Enforce"}` + "\n"},
		{"+14255550111", `{"callId":"callpolicy-test","action":"Allow","reason":"","rule":"","mode":"Enforce"}` + "\n"},
	} {
		var stdout, stderr strings.Builder
		code := Run([]string{"test", "-f", "-", "--number", tt.number}, strings.NewReader(pol), &stdout, &stderr)
		if code != 0 || stdout.String() != tt.want || !strings.Contains(stderr.String(), "note: test keeps no state: callers.repeat never holds") {
			t.Errorf("%s: exit %d\nstdout: %s\nwant:   %s\nstderr: %s", tt.number, code, stdout.String(), tt.want, stderr.String())
		}
	}
	// A policy that keeps no state gets no note.
	var stdout, stderr strings.Builder
	if code := Run([]string{"test", "-f", sample, "--number", "+14255550111"}, nil, &stdout, &stderr); code != 0 || stderr.Len() != 0 {
		t.Errorf("sample policy: exit %d, stderr %s", code, stderr.String())
	}
}
