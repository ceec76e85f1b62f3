package policycli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/callguard/callguard/api/v1alpha1"
)

const (
	hashA = "sha256:aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111"
	hashB = "sha256:bbbbbbbbbbbb2222222222222222222222222222222222222222222222222222"
)

// metricsOf is a receiver's /metrics with the series status reads.
func metricsOf(hash string, extra string) string {
	return `# HELP callguard_receiver_policy_info The live policy: 1 for its hash.
# TYPE callguard_receiver_policy_info gauge
callguard_receiver_policy_info{hash="` + hash + `"} 1
# HELP callguard_receiver_decisions_total Calls decided, by rule (empty for the default), action and mode.
# TYPE callguard_receiver_decisions_total counter
callguard_receiver_decisions_total{action="Reject",mode="Enforce",rule="robocallers"} 3
callguard_receiver_decisions_total{action="Allow",mode="Enforce",rule=""} 2
callguard_receiver_decisions_total{action="Allow",mode="Enforce",rule="vip-always"} 1
# HELP callguard_receiver_graph_actions_total Reject and redirect actions.
# TYPE callguard_receiver_graph_actions_total counter
callguard_receiver_graph_actions_total{operation="reject",result="success"} 3
# HELP callguard_receiver_auth_failures_total Callback requests refused for their bearer token, by reason.
# TYPE callguard_receiver_auth_failures_total counter
callguard_receiver_auth_failures_total{reason="bad_signature"} 1
# HELP callguard_receiver_policy_reloads_total Policy loads, by result.
# TYPE callguard_receiver_policy_reloads_total counter
callguard_receiver_policy_reloads_total{result="success"} 1
` + extra
}

// TestStatus reads a CallPolicy's status and its receiver pods' metrics
// through the pod proxy: exit 0 only when Ready for the current generation,
// pods whose policy is not status.policyHash named.
func TestStatus(t *testing.T) {
	cluster(t)
	ip := podIP(t)
	ns := newNamespace(t)
	spec, _ := sampleSpec(t)

	a := servePod(t, ip, linesAfter(), metricsOf(hashA, ""))
	b := servePod(t, ip, linesAfter(), metricsOf(hashA, `callguard_receiver_graph_actions_total{operation="redirect",result="failed"} 2
callguard_receiver_policy_reloads_total{result="error"} 1
`))
	stale := servePod(t, ip, linesAfter(), metricsOf(hashB, ""))

	callPolicy(t, ns, "hotline", spec, hashA, metav1.ConditionTrue)
	receivers(t, ns, "hotline", ip, a.port, b.port)

	callPolicy(t, ns, "split", spec, hashA, metav1.ConditionTrue)
	receivers(t, ns, "split", ip, a.port, stale.port, 0)

	callPolicy(t, ns, "broken", spec, hashA, metav1.ConditionFalse)
	receivers(t, ns, "broken", ip, a.port)

	// Ready for generation 1; the spec has changed since.
	cp := callPolicy(t, ns, "changed", spec, hashA, metav1.ConditionTrue)
	cp.Spec.DefaultAction = v1alpha1.ActionReject
	if err := k8s.Update(context.Background(), cp); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		args      []string
		code      int
		stdout    string // exact, when set
		stdoutHas []string
		stderrHas []string
		check     func(t *testing.T, r map[string]any)
	}{
		{
			name: "ready, every pod on the policy",
			args: []string{"status", "hotline", "-n", ns},
			stdout: `CallPolicy ` + ns + `/hotline: Ready
  generation 1 (observed 1), mode Enforce, 6 rules, policy aaaaaaaaaaaa

Conditions:
  TYPE      STATUS   REASON               MESSAGE
  Ready     True     ReceiversAvailable   2 of 2 receivers available
  Stalled   False    Converged

Receiver:
  Deployment hotline-callguard: 2/2 ready, Service hotline-callguard, callback path /api/calls

Pods:
  NAME                  PHASE     READY   POLICY
  hotline-callguard-a   Running   true    aaaaaaaaaaaa (current)
  hotline-callguard-b   Running   true    aaaaaaaaaaaa (current)
  all 2 running pods run status.policyHash

Decisions (since each pod started, summed over 2 pods):
  RULE          ACTION   MODE      CALLS
  vip-always    Allow    Enforce   2
  robocallers   Reject   Enforce   6
  (default)     Allow    Enforce   4

Graph actions:
  OPERATION   RESULT    COUNT
  redirect    failed    2
  reject      success   6

Auth failures:
  REASON          COUNT
  bad_signature   2

Policy reloads:
  RESULT    COUNT
  error     1
  success   2
`,
		},
		{
			name:      "a pod on another policy",
			args:      []string{"status", "split", "-n", ns},
			stdoutHas: []string{"split-callguard-b   Running   true    bbbbbbbbbbbb (DIFFERS from status.policyHash)", "split-callguard-c   Pending   false   unknown: not running", "1 of 2 running pods do not run status.policyHash aaaaaaaaaaaa: split-callguard-b"},
		},
		{
			name: "json",
			args: []string{"status", "split", "-n", ns, "-o", "json"},
			check: func(t *testing.T, r map[string]any) {
				if r["ready"] != true || len(r["podsDisagreeing"].([]any)) != 1 || r["podsDisagreeing"].([]any)[0] != "split-callguard-b" {
					t.Errorf("ready %v, podsDisagreeing %v", r["ready"], r["podsDisagreeing"])
				}
				pods := r["pods"].([]any)
				if len(pods) != 3 || pods[1].(map[string]any)["policyHash"] != hashB || pods[0].(map[string]any)["current"] != true {
					t.Errorf("pods %v", pods)
				}
			},
		},
		{name: "yaml", args: []string{"status", "hotline", "-n", ns, "-o", "yaml"}, stdoutHas: []string{"\nready: true\n", "- action: Reject\n  calls: 6\n  mode: Enforce\n  rule: robocallers\n"}},
		{
			name:      "not ready",
			args:      []string{"status", "broken", "-n", ns},
			code:      1,
			stdoutHas: []string{"CallPolicy " + ns + "/broken: Not ready\n", "Ready     False    PolicyInvalid   spec.rules[1].match.callers.numberPatterns[0]: error parsing regexp: missing closing )"},
		},
		// The output format never changes the exit status.
		{name: "not ready, json", args: []string{"status", "broken", "-n", ns, "-o", "json"}, code: 1, stdoutHas: []string{`"ready": false`}},
		{name: "not ready, yaml", args: []string{"status", "broken", "-n", ns, "-o", "yaml"}, code: 1, stdoutHas: []string{"ready: false"}},
		{name: "ready for an older generation", args: []string{"status", "changed", "-n", ns}, code: 1, stdoutHas: []string{"Not ready (Ready=True is for generation 1; the policy is at generation 2)", "(no receiver pods)"}, stderrHas: []string{`warning: receiver Deployment "changed-callguard" not found`}},
		{name: "no such policy", args: []string{"status", "nope", "-n", ns}, code: 1, stderrHas: []string{`error: CallPolicy "nope" not found in namespace "` + ns + `"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := kubectl(t, context.Background(), tt.args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tt.code, stderr)
			}
			if tt.stdout != "" && stdout != tt.stdout {
				t.Errorf("stdout:\n%s\nwant:\n%s", stdout, tt.stdout)
			}
			for _, want := range tt.stdoutHas {
				if !strings.Contains(stdout, want) {
					t.Errorf("stdout:\n%s\ndoes not contain:\n%s", stdout, want)
				}
			}
			for _, want := range tt.stderrHas {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr:\n%s\ndoes not contain:\n%s", stderr, want)
				}
			}
			if tt.check != nil {
				var r map[string]any
				if err := json.Unmarshal([]byte(stdout), &r); err != nil {
					t.Fatalf("%v: %s", err, stdout)
				}
				tt.check(t, r)
			}
		})
	}
}
