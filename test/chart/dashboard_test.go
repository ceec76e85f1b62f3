package chart

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	promparser "github.com/prometheus/prometheus/promql/parser"
)

type panel struct {
	ID      int     `json:"id"`
	Type    string  `json:"type"`
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

// grafanaVars are Grafana's variables as PromQL the parser takes.
var grafanaVars = regexp.MustCompile(`\$(__rate_interval|__interval|__range)\b|\$\{?[A-Za-z_]\w*\}?`)

func promQL(expr string) string {
	return grafanaVars.ReplaceAllStringFunc(expr, func(v string) string {
		if strings.HasPrefix(v, "$__") {
			return "5m"
		}
		return "x"
	})
}

// Every panel of the dashboard queries metrics the receiver registers, with
// PromQL that parses, selecting the receivers' job: no dead panels.
func TestDashboardQueriesUseRegisteredMetrics(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(root, "config", "prometheus", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID        string  `json:"uid"`
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" {
		t.Error("the dashboard has no uid (Grafana would import a copy at every sidecar sync)")
	}
	metrics := receiverMetrics(t)
	used := map[string]bool{}
	ids := map[int]bool{}
	queries := 0
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
			}
			ids[p.ID] = true
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				queries++
				expr := promQL(tg.Expr)
				e, err := promQLParser.ParseExpr(expr)
				if err != nil {
					t.Errorf("panel %q: %q: %v", p.Title, tg.Expr, err)
					continue
				}
				promparser.Inspect(e, func(n promparser.Node, _ []promparser.Node) error {
					if vs, ok := n.(*promparser.VectorSelector); ok && !strings.Contains(vs.String(), `job="callguard-receiver"`) {
						t.Errorf("panel %q: %s does not select job=\"callguard-receiver\"", p.Title, vs)
					}
					return nil
				})
				for _, m := range metricNames(t, expr) {
					used[m] = true
					if !metrics[m] && m != "up" {
						t.Errorf("panel %q: %s is not a metric the receiver registers", p.Title, m)
					}
				}
			}
		}
	}
	walk(d.Panels)
	// The variables' label_values(selector, label) queries too.
	lv := regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)
	for _, v := range d.Templating.List {
		q, _ := v.Query.(map[string]any)
		s, _ := q["query"].(string)
		if s == "" {
			continue
		}
		m := lv.FindStringSubmatch(s)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(selector, label)", v.Name, s)
			continue
		}
		for _, name := range metricNames(t, promQL(m[1])) {
			if !metrics[name] {
				t.Errorf("variable %s: %s is not a metric the receiver registers", v.Name, name)
			}
		}
	}
	if queries < 20 {
		t.Errorf("only %d queries", queries)
	}
	// The rows the issue asks for.
	for _, m := range []string{"callguard_receiver_decisions_total", "callguard_receiver_decision_to_graph_seconds_bucket",
		"callguard_receiver_graph_actions_total", "callguard_receiver_requests_total", "callguard_receiver_auth_failures_total",
		"callguard_receiver_policy_reloads_total", "callguard_receiver_policy_info", "callguard_receiver_queue_depth",
		"callguard_receiver_connections_open", "process_cpu_seconds_total", "process_resident_memory_bytes"} {
		if !used[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
}
