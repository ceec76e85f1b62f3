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
