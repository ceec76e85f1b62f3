package chart

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	promparser "github.com/prometheus/prometheus/promql/parser"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	_ "github.com/callguard/callguard/controllers" // registers the operator's metrics
	"github.com/callguard/callguard/internal/receiver"
	"github.com/callguard/callguard/internal/telemetry"
)

// operatorMetric reports whether the operator registers a metric of this
// name in controller-runtime's registry (controllers registers its own in
// init, e.g. callguard_callpolicy_condition): registering another collector
// of that name must fail.
func operatorMetric(name string) bool {
	probe := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: "probe"})
	if err := ctrlmetrics.Registry.Register(probe); err != nil {
		return true
	}
	ctrlmetrics.Registry.Unregister(probe)
	return false
}

// receiverMetrics are the series names a receiver exposes: what a receiver's
// registry gathers (the Go and process collectors, the metrics without
// labels), plus every metric declared in internal/receiver with
// Namespace: namespace (vectors appear in a gather only once used, and the
// connection gauges are registered when the listener starts). Histograms
// count with their _bucket, _sum and _count series.
func receiverMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	add := func(name string, histogram bool) {
		names[name] = true
		if histogram {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[name+s] = true
			}
		}
	}
	srv := receiver.New(receiver.Config{})
	defer srv.Close()
	mfs, err := srv.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		add(mf.GetName(), mf.GetType() == dto.MetricType_HISTOGRAM)
	}

	// Every prometheus.*Opts{Namespace: namespace, Name: "…"} in the package.
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(root, "internal", "receiver", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	declared := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(af, func(n ast.Node) bool {
			lit, ok := n.(*ast.CompositeLit)
			if !ok {
				return true
			}
			sel, ok := lit.Type.(*ast.SelectorExpr)
			if !ok || !strings.HasSuffix(sel.Sel.Name, "Opts") {
				return true
			}
			var ns, name string
			for _, e := range lit.Elts {
				kv, ok := e.(*ast.KeyValueExpr)
				if !ok {
					continue
				}
				switch kv.Key.(*ast.Ident).Name {
				case "Namespace":
					if id, ok := kv.Value.(*ast.Ident); ok && id.Name == "namespace" {
						ns = "callguard_receiver"
					}
				case "Name":
					switch v := kv.Value.(type) {
					case *ast.BasicLit:
						name, _ = strconv.Unquote(v.Value)
					case *ast.SelectorExpr:
						// A full name from package telemetry.
						full, ok := telemetryNames[v.Sel.Name]
						if !ok {
							t.Fatalf("%s: metric name telemetry.%s is not in telemetryNames", fset.Position(v.Pos()), v.Sel.Name)
						}
						ns, name = "", full
					}
				}
			}
			if ns == "" && strings.HasPrefix(name, telemetry.Namespace+"_") {
				add(name, sel.Sel.Name == "HistogramOpts")
				declared++
			} else if ns != "" && name != "" {
				add(ns+"_"+name, sel.Sel.Name == "HistogramOpts")
				declared++
			}
			return true
		})
	}
	if declared < 15 || !names["process_cpu_seconds_total"] || !names["callguard_receiver_connections_open"] {
		t.Fatalf("found %d metrics declared in internal/receiver (%v): has the way they are declared changed?", declared, keys(names))
	}
	return names
}

// telemetryNames are the metric names package telemetry defines, by the
// constant's name, as internal/receiver declares some of its metrics.
var telemetryNames = map[string]string{
	"MetricPolicyInfo":        telemetry.MetricPolicyInfo,
	"MetricPolicyLoadSeconds": telemetry.MetricPolicyLoadSeconds,
	"MetricPolicyReloads":     telemetry.MetricPolicyReloads,
	"MetricDecisions":         telemetry.MetricDecisions,
	"MetricGraphActions":      telemetry.MetricGraphActions,
	"MetricAuthFailures":      telemetry.MetricAuthFailures,
}

// metricNames returns the metric names an expression selects.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	e, err := promQLParser.ParseExpr(expr)
	if err != nil {
		t.Fatalf("parse %q: %v", expr, err)
	}
	var out []string
	promparser.Inspect(e, func(n promparser.Node, _ []promparser.Node) error {
		vs, ok := n.(*promparser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == "__name__" {
				name = m.Value
			}
		}
		if name == "" {
			t.Errorf("%q selects series without a metric name", expr)
		}
		out = append(out, name)
		return nil
	})
	return out
}

// promQLParser parses PromQL as Prometheus does by default (no experimental
// functions: a dashboard must work on a stock Prometheus).
var promQLParser = promparser.NewParser(promparser.Options{})
