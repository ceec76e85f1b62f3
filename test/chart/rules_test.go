package chart

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

type prometheusRule struct {
	Spec struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Record      string            `json:"record"`
				Expr        string            `json:"expr"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

func readRules(t *testing.T) (prometheusRule, map[string]any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "config", "prometheus", "rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var pr prometheusRule
	var raw map[string]any
	if err := yaml.Unmarshal(b, &pr); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	return pr, raw
}

// The alerts pass `promtool check rules` and their unit tests
// (config/prometheus/tests, `promtool test rules`).
func TestRules(t *testing.T) {
	t.Parallel()
	promtool := tool(t, "PROMTOOL", "promtool")
	_, raw := readRules(t)
	spec, err := yaml.Marshal(raw["spec"])
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), spec, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, dir, promtool, "check", "rules", "rules.yaml")
	tests, err := filepath.Glob(filepath.Join(root, "config", "prometheus", "tests", "*.yaml"))
	if err != nil || len(tests) == 0 {
		t.Fatalf("no rule tests in config/prometheus/tests (%v)", err)
	}
	args := []string{"test", "rules"}
	for _, f := range tests {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, filepath.Base(f))
	}
	out := run(t, dir, promtool, args...)
	t.Logf("%s", out)
}

// Every alert has a unit test that sees it fire, a severity, a summary, and
// a runbook in docs/monitoring.md that its runbook_url points at; every
// metric it uses is one the receiver or the operator registers (or up).
func TestRulesAreTestedDocumentedAndUseRealMetrics(t *testing.T) {
	t.Parallel()
	pr, _ := readRules(t)
	fired := map[string]bool{}
	tests, _ := filepath.Glob(filepath.Join(root, "config", "prometheus", "tests", "*.yaml"))
	for _, f := range tests {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Tests []struct {
				AlertRuleTest []struct {
					Alertname string `json:"alertname"`
					ExpAlerts []any  `json:"exp_alerts"`
				} `json:"alert_rule_test"`
			} `json:"tests"`
		}
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, tc := range doc.Tests {
			for _, a := range tc.AlertRuleTest {
				if len(a.ExpAlerts) > 0 {
					fired[a.Alertname] = true
				}
			}
		}
	}
	docs, err := os.ReadFile(filepath.Join(root, "docs", "monitoring.md"))
	if err != nil {
		t.Fatal(err)
	}
	metrics := receiverMetrics(t)
	alerts := 0
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			if !fired[r.Alert] {
				t.Errorf("%s: no unit test in config/prometheus/tests sees it fire", r.Alert)
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: no summary or description", r.Alert)
			}
			if want := "docs/monitoring.md#" + strings.ToLower(r.Alert); !strings.HasSuffix(r.Annotations["runbook_url"], want) {
				t.Errorf("%s: runbook_url %q does not end in %s", r.Alert, r.Annotations["runbook_url"], want)
			}
			if !regexp.MustCompile(`(?m)^### ` + r.Alert + `$`).Match(docs) {
				t.Errorf("%s: no runbook (a heading \"### %s\") in docs/monitoring.md", r.Alert, r.Alert)
			}
			for _, m := range metricNames(t, r.Expr) {
				if !metrics[m] && m != "up" && !operatorMetric(m) {
					t.Errorf("%s uses %s, which nothing registers", r.Alert, m)
				}
			}
		}
	}
	if alerts < 10 {
		t.Errorf("only %d alerts", alerts)
	}
	if !operatorMetric("callguard_callpolicy_condition") || operatorMetric("callguard_no_such_metric") {
		t.Error("operatorMetric cannot tell a registered metric from an unregistered one")
	}
}

// The chart's copies of config/ files (dist/chart/files, refreshed by
// `make chart-files`, which `make manifests` runs) are current.
func TestChartFilesMatchConfig(t *testing.T) {
	t.Parallel()
	for chartFile, src := range map[string]string{
		"files/crds/calls.callguard.dev_callpolicies.yaml": "config/crd/bases/calls.callguard.dev_callpolicies.yaml",
		"files/manager-role.yaml":                          "config/rbac/role.yaml",
		"files/prometheus-rules.yaml":                      "config/prometheus/rules.yaml",
		"files/dashboard.json":                             "config/prometheus/dashboard.json",
	} {
		a, err := os.ReadFile(filepath.Join(root, chartDir, chartFile))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(root, src))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("dist/chart/%s differs from %s: run `make chart-files`", chartFile, src)
		}
	}
	crds, _ := filepath.Glob(filepath.Join(root, "config", "crd", "bases", "*.yaml"))
	copies, _ := filepath.Glob(filepath.Join(root, chartDir, "files", "crds", "*.yaml"))
	if len(crds) != len(copies) {
		t.Errorf("%d CRDs in config/crd/bases, %d in dist/chart/files/crds: run `make chart-files`", len(crds), len(copies))
	}
}

// The chart's alerts never fire for a scrape target its values did not turn
// on. For each choice of monitors, the rendered PrometheusRule goes through
// promtool with the series a healthy install gives from what IS scraped (each
// scraped target up, a Ready policy with its receiver up): no alert may fire
// in the first three hours. Before the chart kept only the alerts whose
// targets are scraped, CallguardOperatorDown fired for ever with
// prometheusRule.enabled and no manager ServiceMonitor.
func TestChartAlertsOnlyForScrapedTargets(t *testing.T) {
	t.Parallel()
	promtool := tool(t, "PROMTOOL", "promtool")
	for _, tt := range []struct {
		name              string
		manager, receiver bool
		args              []string
		wantAlerts        int
	}{
		{"nothing scraped", false, false, nil, 0},
		{"manager only", true, false, []string{"--set", "metrics.serviceMonitor.enabled=true"}, 3},
		{"receivers only (PodMonitor)", false, true, []string{"--set", "metrics.receivers.podMonitor.enabled=true"}, 9},
		{"receivers only (ServiceMonitor)", false, true, []string{"--set", "metrics.receivers.serviceMonitor.enabled=true"}, 9},
		{"manager metrics off, its monitor on", false, true, []string{"--set", "metrics.enabled=false", "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.receivers.podMonitor.enabled=true"}, 9},
		{"both", true, true, []string{"--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.receivers.podMonitor.enabled=true"}, 13},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var spec any
			alerts := 0
			var names []string
			for _, o := range helmTemplate(t, append([]string{"--set", "prometheusRule.enabled=true"}, tt.args...)...) {
				if o.GetKind() != "PrometheusRule" {
					continue
				}
				spec = o.Object["spec"]
				b, _ := yaml.Marshal(spec)
				var pr prometheusRule
				if err := yaml.Unmarshal(append([]byte("spec:\n"), indent(b)...), &pr); err != nil {
					t.Fatal(err)
				}
				for _, g := range pr.Spec.Groups {
					for _, r := range g.Rules {
						if r.Alert != "" {
							alerts++
							names = append(names, r.Alert)
						}
					}
				}
			}
			if !tt.manager && !tt.receiver {
				if spec != nil {
					t.Fatalf("a PrometheusRule with nothing scraped: %v", names)
				}
				return
			}
			if spec == nil {
				t.Fatal("no PrometheusRule rendered")
			}
			if alerts != tt.wantAlerts {
				t.Errorf("%d alerts kept (%v), want %d", alerts, names, tt.wantAlerts)
			}
			dir := t.TempDir()
			rules, err := yaml.Marshal(spec)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), rules, 0o644); err != nil {
				t.Fatal(err)
			}
			var series []map[string]string
			if tt.manager {
				series = append(series,
					map[string]string{"series": `up{job="callguard-controller-manager-metrics",namespace="callguard-system"}`, "values": "1x180"},
					map[string]string{"series": `callguard_callpolicy_condition{namespace="telephony",name="hotline",type="Ready",status="True"}`, "values": "1x180"},
					map[string]string{"series": `callguard_callpolicy_condition{namespace="telephony",name="hotline",type="Ready",status="False"}`, "values": "0x180"},
					map[string]string{"series": `callguard_callpolicy_condition{namespace="telephony",name="hotline",type="Stalled",status="True"}`, "values": "0x180"})
			}
			if tt.receiver {
				series = append(series,
					map[string]string{"series": `up{job="callguard-receiver",namespace="telephony",policy="hotline",pod="hotline-callguard-a"}`, "values": "1x180"},
					map[string]string{"series": `callguard_receiver_policy_info{job="callguard-receiver",namespace="telephony",policy="hotline",pod="hotline-callguard-a",hash="sha256:aa"}`, "values": "1x180"})
			}
			var checks []map[string]any
			for _, at := range []string{"15m", "1h", "3h"} {
				for _, a := range names {
					checks = append(checks, map[string]any{"eval_time": at, "alertname": a, "exp_alerts": []any{}})
				}
			}
			test, err := yaml.Marshal(map[string]any{
				"rule_files":          []string{"rules.yaml"},
				"evaluation_interval": "1m",
				"tests": []any{map[string]any{
					"interval": "1m", "input_series": series, "alert_rule_test": checks,
				}},
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "quiet_test.yaml"), test, 0o644); err != nil {
				t.Fatal(err)
			}
			run(t, dir, promtool, "test", "rules", "quiet_test.yaml")
		})
	}
}

func indent(b []byte) []byte {
	return regexp.MustCompile(`(?m)^`).ReplaceAll(b, []byte("  "))
}
