package policycli

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

const sample = "../policy/testdata/sample-policy.yaml"

// mixed gives all four number fields in one rule and reads a list from a
// binaryData key ending in .gz.
const mixed = "testdata/mixed-gz.yaml"

// tenantPolicy is a multi-tenant bot's policy with a rule for one customer.
const tenantPolicy = `apiVersion: calls.callguard.dev/v1alpha1
kind: CallPolicy
metadata: {name: isv, namespace: telephony}
spec:
  bot:
    appId: 6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10
    tenantId: 0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55
    additionalTenants: ["*"]
    credentials: {secretRef: {name: isv-bot}}
  rules:
    - name: customer-a
      action: Reject
      reason: busy
      match: {tenants: [aaaaaaaa-0000-4000-8000-000000000001]}
`

func TestRun(t *testing.T) {
	sampleYAML, err := os.ReadFile(sample)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		stdin      string
		code       int
		stdout     string // exact
		stderrHas  []string
		stderrNone bool
	}{
		{
			name:   "Graph's example notification after hours: user caller with video",
			args:   []string{"test", "-f", sample, "--notification", "testdata/seed-notification.json", "--at", "2026-03-04T19:00:00-08:00"},
			stdout: `{"callId":"57DAB8B1894C409AB240BD8BEAE78896","action":"Redirect","reason":"","rule":"after-hours-video","mode":"Enforce","redirect":{"targets":[{"phone":"+14255550199"}],"timeoutSeconds":30}}` + "\n",
		},
		// --tenant is the tenant the call arrives in, which match.tenants
		// compares (lower-cased, as the receiver reads the token's claim).
		{
			name:   "match.tenants: the call's tenant",
			args:   []string{"test", "-f", "-", "--number", "+14255550111", "--tenant", "AAAAAAAA-0000-4000-8000-000000000001"},
			stdin:  tenantPolicy,
			stdout: `{"callId":"callpolicy-test","action":"Reject","reason":"busy","rule":"customer-a","mode":"Enforce","tenant":"aaaaaaaa-0000-4000-8000-000000000001"}` + "\n",
		},
		{
			name:   "match.tenants: another tenant",
			args:   []string{"test", "-f", "-", "--number", "+14255550111", "--tenant", "bbbbbbbb-0000-4000-8000-000000000002"},
			stdin:  tenantPolicy,
			stdout: `{"callId":"callpolicy-test","action":"Allow","reason":"","rule":"","mode":"Enforce","tenant":"bbbbbbbb-0000-4000-8000-000000000002"}` + "\n",
		},
		{
			name:   "match.tenants: no tenant given",
			args:   []string{"test", "-f", "-", "--number", "+14255550111"},
			stdin:  tenantPolicy,
			stdout: `{"callId":"callpolicy-test","action":"Allow","reason":"","rule":"","mode":"Enforce"}` + "\n",
		},
		{
			name:   "Graph's example notification in hours: default",
			args:   []string{"test", "-f", sample, "--notification", "testdata/seed-notification.json", "--at", "2026-03-04T12:00:00-08:00"},
			stdout: `{"callId":"57DAB8B1894C409AB240BD8BEAE78896","action":"Allow","reason":"","rule":"","mode":"Enforce"}` + "\n",
		},
		{
			name: "only created incoming calls are decided",
			args: []string{"test", "-f", sample, "--notification", "testdata/two-calls.json", "--at", "2026-03-04T12:00:00Z"},
			stdout: `{"callId":"1a2b","action":"Reject","reason":"busy","rule":"robocallers","mode":"Enforce"}` + "\n" +
				`{"callId":"5e6f","action":"Reject","reason":"forbidden","rule":"anonymous-guests","mode":"Enforce"}` + "\n",
		},
		{
			name:       "notification without an incoming call prints nothing",
			args:       []string{"test", "-f", sample, "--notification", "testdata/no-incoming.json"},
			stderrNone: true,
		},
		{
			name:   "number",
			args:   []string{"test", "-f", sample, "--number", "+1 (900) 555-0100"},
			stdout: `{"callId":"callpolicy-test","action":"Reject","reason":"forbidden","rule":"premium-rate","mode":"Enforce"}` + "\n",
		},
		{
			name:   "number on the VIP list",
			args:   []string{"test", "-f", sample, "--number", "0014255550100"},
			stdout: `{"callId":"callpolicy-test","action":"Allow","reason":"","rule":"vip-always","mode":"Enforce"}` + "\n",
		},
		{
			name:   "call resource",
			args:   []string{"test", "-f", sample, "--call", "testdata/call.json", "--at", "2026-03-04T12:00:00-08:00"},
			stdout: `{"callId":"7f8e9d00-1111-2222-3333-444455556666","action":"Reject","reason":"none","rule":"cel-escape-hatch","mode":"Enforce"}` + "\n",
		},
		{
			name:   "call from stdin",
			args:   []string{"test", "-f", sample, "--call", "-", "--at", "2026-03-04T12:00:00Z"},
			stdin:  `{"id":"c1","source":{"identity":{"guest":{"id":"g"}}}}`,
			stdout: `{"callId":"c1","action":"Reject","reason":"forbidden","rule":"anonymous-guests","mode":"Enforce"}` + "\n",
		},
		{
			name:  "policy from stdin, table",
			args:  []string{"test", "-f", "-", "--notification", "testdata/two-calls.json", "--at", "2026-03-04T12:00:00Z", "-o", "table"},
			stdin: string(sampleYAML),
			stdout: "CALL ID   ACTION   REASON      RULE               MODE\n" +
				"1a2b      Reject   busy        robocallers        Enforce\n" +
				"5e6f      Reject   forbidden   anonymous-guests   Enforce\n",
		},
		{
			name:   "mixed number fields: numbers",
			args:   []string{"test", "-f", mixed, "--number", "+14255550100"},
			stdout: `{"callId":"callpolicy-test","action":"Reject","reason":"busy","rule":"blocked","mode":"Enforce"}` + "\n",
		},
		{
			name:   "mixed number fields: numberPrefixes",
			args:   []string{"test", "-f", mixed, "--number", "+1 900 555 0000"},
			stdout: `{"callId":"callpolicy-test","action":"Reject","reason":"busy","rule":"blocked","mode":"Enforce"}` + "\n",
		},
		{
			name:   "mixed number fields: numberPatterns",
			args:   []string{"test", "-f", mixed, "--number", "+442071234567"},
			stdout: `{"callId":"callpolicy-test","action":"Reject","reason":"busy","rule":"blocked","mode":"Enforce"}` + "\n",
		},
		{
			name:   "mixed number fields: .gz list number",
			args:   []string{"test", "-f", mixed, "--number", "+13125550111"},
			stdout: `{"callId":"callpolicy-test","action":"Reject","reason":"busy","rule":"blocked","mode":"Enforce"}` + "\n",
		},
		{
			name:   "mixed number fields: .gz list prefix",
			args:   []string{"test", "-f", mixed, "--number", "+12065550000"},
			stdout: `{"callId":"callpolicy-test","action":"Reject","reason":"busy","rule":"blocked","mode":"Enforce"}` + "\n",
		},
		{
			name:   "mixed number fields: data list",
			args:   []string{"test", "-f", mixed, "--number", "+15035550199"},
			stdout: `{"callId":"callpolicy-test","action":"Reject","reason":"busy","rule":"blocked","mode":"Enforce"}` + "\n",
		},
		{
			name:   "mixed number fields: none holds",
			args:   []string{"test", "-f", mixed, "--number", "+4420712345678"},
			stdout: `{"callId":"callpolicy-test","action":"Allow","reason":"","rule":"","mode":"Enforce"}` + "\n",
		},
		{
			name:   "mixed number fields AND modality: audio only",
			args:   []string{"test", "-f", mixed, "--number", "+15555550100"},
			stdout: `{"callId":"callpolicy-test","action":"Allow","reason":"","rule":"","mode":"Enforce"}` + "\n",
		},
		{
			name:   "mixed number fields AND modality: video",
			args:   []string{"test", "-f", mixed, "--call", "-"},
			stdin:  `{"id":"c1","source":{"identity":{"phone":{"id":"+15555550100"}}},"requestedModalities":["audio","video"]}`,
			stdout: `{"callId":"c1","action":"Reject","reason":"forbidden","rule":"video-from-uk","mode":"Enforce"}` + "\n",
		},
		{
			name:   "mixed number fields AND modality: video from the UK",
			args:   []string{"test", "-f", mixed, "--call", "-"},
			stdin:  `{"id":"c2","source":{"identity":{"phone":{"id":"+447700900123"}}},"requestedModalities":["video"]}`,
			stdout: `{"callId":"c2","action":"Reject","reason":"forbidden","rule":"video-from-uk","mode":"Enforce"}` + "\n",
		},
		{
			name:   "table shows the default",
			args:   []string{"test", "-f", sample, "--number", "+14255550111", "-o", "table"},
			stdout: "CALL ID           ACTION   REASON   RULE        MODE\ncallpolicy-test   Allow    -        (default)   Enforce\n",
		},
		{
			name: "bad policy names file, line and field path",
			args: []string{"test", "-f", "testdata/bad-policy.yaml", "--number", "+14255550100"},
			code: 2,
			stderrHas: []string{
				`error: testdata/bad-policy.yaml:22: spec.rules[1].match.schedule.timeZone: unknown IANA time zone "Europe/Atlantis"`,
				"error: testdata/bad-policy.yaml:31: spec.rules[2].match.callers.numberPatterns[0]: error parsing regexp: missing closing ): `^\\+1(900`",
			},
		},
		{
			name:      "malformed JSON names the byte offset",
			args:      []string{"test", "-f", sample, "--notification", "testdata/malformed.json"},
			code:      2,
			stderrHas: []string{"error: testdata/malformed.json: invalid JSON at byte offset 70"},
		},
		{
			name:      "malformed call",
			args:      []string{"test", "-f", sample, "--call", "-"},
			stdin:     `{"id": 5}`,
			code:      2,
			stderrHas: []string{"error: -: invalid JSON at byte offset 8"},
		},
		{
			name:      "legacy notification",
			args:      []string{"test", "-f", sample, "--notification", "-"},
			stdin:     `{"id":"abc","conversationResult":{}}`,
			code:      2,
			stderrHas: []string{"not a Graph notification"},
		},
		{
			name:      "missing notification file",
			args:      []string{"test", "-f", sample, "--notification", "testdata/nope.json"},
			code:      2,
			stderrHas: []string{"nope.json"},
		},
		{
			name:      "missing list",
			args:      []string{"test", "-f", "-", "--number", "+1"},
			stdin:     strings.Split(string(sampleYAML), "\n---\n")[0],
			code:      2,
			stderrHas: []string{"error: <stdin>:36: spec.rules[2].match.callers.numberLists[0]: configmap robocallers key numbers.txt: not found"},
		},
		{
			name:      "YAML problem",
			args:      []string{"test", "-f", "-", "--number", "+1"},
			stdin:     strings.Replace(string(sampleYAML), "defaultAction: Allow", "defaultAction: Allow\n  defaultActon: Reject", 1),
			code:      2,
			stderrHas: []string{"error: <stdin>:18: document 1 (CallPolicy hotline): spec.defaultActon: unknown field"},
		},
		{name: "no input", args: []string{"test", "-f", sample}, code: 1, stderrHas: []string{"exactly one of --notification, --number or --call"}},
		{name: "two inputs", args: []string{"test", "-f", sample, "--number", "+1", "--call", "x"}, code: 1, stderrHas: []string{"exactly one of"}},
		{name: "no file", args: []string{"test", "--number", "+1"}, code: 1, stderrHas: []string{"-f is required"}},
		{name: "bad number", args: []string{"test", "-f", sample, "--number", "call me"}, code: 2, stderrHas: []string{`--number "call me" is not a phone number`}},
		{name: "bad time", args: []string{"test", "-f", sample, "--number", "+1", "--at", "tomorrow"}, code: 1, stderrHas: []string{"--at must be an RFC 3339 time"}},
		{name: "bad output", args: []string{"test", "-f", sample, "--number", "+1", "-o", "xml"}, code: 1, stderrHas: []string{"-o must be json, table or yaml"}},
		{name: "yaml output", args: []string{"test", "-f", sample, "--number", "+1 (900) 555-0100", "-o", "yaml"},
			stdout: "- action: Reject\n  callId: callpolicy-test\n  mode: Enforce\n  reason: forbidden\n  rule: premium-rate\n", stderrNone: true},
		{name: "stdin twice", args: []string{"test", "-f", "-", "--call", "-"}, code: 1, stderrHas: []string{"stdin (-) can be read only once"}},
		{name: "unknown flag", args: []string{"test", "--policy", sample}, code: 1, stderrHas: []string{"flag provided but not defined: -policy"}},
		{name: "stray argument", args: []string{"test", "-f", sample, "extra"}, code: 1, stderrHas: []string{`unexpected argument "extra"`}},
		{name: "unknown command", args: []string{"simulate"}, code: 1, stderrHas: []string{`unknown command "simulate"`}},
		{name: "no command", args: nil, code: 1, stderrHas: []string{"Usage:"}},

		{name: "lint clean", args: []string{"lint", "-f", sample}, stdout: "telephony/hotline: 6 rules, 0 warnings\n", stderrNone: true},
		{
			name:      "lint warnings",
			args:      []string{"lint", "--filename", "testdata/unreachable.yaml"},
			stdout:    "closed: 2 rules, 1 warning\n",
			stderrHas: []string{`warning: testdata/unreachable.yaml:15: spec.rules[1]: rule "never" never matches: rule "everyone" (spec.rules[0]) has an empty match and decides every call first`},
		},
		{
			name:      "lint errors",
			args:      []string{"lint", "-f", "testdata/bad-policy.yaml"},
			code:      2,
			stderrHas: []string{"error: testdata/bad-policy.yaml:22: spec.rules[1].match.schedule.timeZone", "error: testdata/bad-policy.yaml:31: spec.rules[2]"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Run(tt.args, strings.NewReader(tt.stdin), &stdout, &stderr)
			checkRun(t, code, stdout.String(), stderr.String(), tt.code, tt.stdout, tt.stderrHas)
			if tt.stderrNone && stderr.Len() > 0 {
				t.Errorf("stderr: %s", stderr.String())
			}
		})
	}
}

// checkRun checks a run of the plugin: its exit code, its whole stdout,
// and that its stderr has each of stderrHas.
func checkRun(t *testing.T, code int, stdout, stderr string, wantCode int, wantStdout string, stderrHas []string) {
	t.Helper()
	if code != wantCode {
		t.Errorf("exit %d, want %d; stderr:\n%s", code, wantCode, stderr)
	}
	if stdout != wantStdout {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout, wantStdout)
	}
	for _, want := range stderrHas {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr:\n%s\ndoes not contain:\n%s", stderr, want)
		}
	}
}

func TestHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := Run([]string{"--help"}, nil, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "kubectl callpolicy test") {
		t.Errorf("help: exit %d, stdout %q", code, stdout.String())
	}
}

// TestVerbHelp: --help and -h on every verb, and help VERB, print the
// verb's usage on stdout and exit 0.
func TestVerbHelp(t *testing.T) {
	tests := []struct {
		args []string
		has  []string
	}{
		{[]string{"test", "--help"}, []string{"kubectl callpolicy test -f POLICY.yaml", "kubectl callpolicy test NAME", "--number", "--kubeconfig", "-n, --namespace"}},
		{[]string{"test", "-h"}, []string{"kubectl callpolicy test NAME"}},
		{[]string{"test", "-f", sample, "--help"}, []string{"kubectl callpolicy test NAME"}},
		{[]string{"lint", "--help"}, []string{"kubectl callpolicy lint -f POLICY.yaml"}},
		{[]string{"status", "--help"}, []string{"kubectl callpolicy status NAME", "-o, --output", "--context"}},
		{[]string{"status", "hotline", "-h"}, []string{"kubectl callpolicy status NAME"}},
		{[]string{"decisions", "--help"}, []string{"kubectl callpolicy decisions NAME", "--since", "--follow", "--kubeconfig"}},
		{[]string{"version", "--help"}, []string{"kubectl callpolicy version"}},
		{[]string{"help", "decisions"}, []string{"kubectl callpolicy decisions NAME"}},
		{[]string{"help"}, []string{"kubectl callpolicy status NAME", "kubectl callpolicy version"}},
		{[]string{"-h"}, []string{"kubectl callpolicy decisions NAME"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Run(tt.args, nil, &stdout, &stderr)
			if code != 0 || stderr.Len() > 0 {
				t.Errorf("exit %d, stderr %q", code, stderr.String())
			}
			for _, want := range tt.has {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("stdout:\n%s\ndoes not contain %q", stdout.String(), want)
				}
			}
		})
	}
}

func TestVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := Run([]string{"version"}, nil, &stdout, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "kubectl-callpolicy (devel) go1.") || stderr.Len() > 0 {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	defer func(v string) { version = v }(version)
	version = "v0.1.0"
	stdout.Reset()
	if code := Run([]string{"version"}, nil, &stdout, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "kubectl-callpolicy v0.1.0 go1.") {
		t.Errorf("with -X version: exit %d, stdout %q", code, stdout.String())
	}
	if code := Run([]string{"version", "extra"}, nil, &stdout, &stderr); code != 1 {
		t.Errorf("version extra: exit %d", code)
	}
}
