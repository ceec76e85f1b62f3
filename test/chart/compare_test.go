package chart

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// The chart and config/ are one source of truth: with the same settings they
// render the same objects (kinds, names, namespaces, RBAC rules, the
// manager's container, the CRD's schema, the monitors, rules and dashboard).
// Only labels differ (Helm's standard ones), and the chart may add
// annotations (helm.sh/resource-policy on the CRD).
func TestChartMatchesKustomize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		monitoring bool
		set        []string
	}{
		// The image tag: config/manager pins callguard:dev, the chart its appVersion.
		{"defaults", false, []string{"--set", "image.tag=dev"}},
		{"with config/prometheus", true, []string{"--set", "image.tag=dev",
			"--set", "metrics.serviceMonitor.enabled=true,metrics.receivers.podMonitor.enabled=true,prometheusRule.enabled=true,dashboard.enabled=true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			want := index(kustomizeBuild(t, tc.monitoring))
			delete(want, "Namespace /"+releaseNamespace) // Helm installs into an existing namespace
			got := index(helmTemplate(t, tc.set...))
			if gk, wk := keys(got), keys(want); !reflect.DeepEqual(gk, wk) {
				t.Fatalf("objects differ:\nchart:     %s\nkustomize: %s", strings.Join(gk, ", "), strings.Join(wk, ", "))
			}
			for k, w := range want {
				g := got[k]
				compareMeta(t, k, g, w)
				gs, ws := strip(g), strip(w)
				if d := diff("", gs.Object, ws.Object); len(d) > 0 {
					t.Errorf("%s differs from config/ at:\n  %s", k, strings.Join(d, "\n  "))
				}
			}
		})
	}
}

// compareMeta checks the labels and annotations that mean something: the
// RBAC aggregation labels, the pod template's labels (the chart may add
// some), and config/'s annotations (the chart may add some).
func compareMeta(t *testing.T, k string, got, want *unstructured.Unstructured) {
	t.Helper()
	agg := func(o *unstructured.Unstructured) map[string]string {
		m := map[string]string{}
		for l, v := range o.GetLabels() {
			if strings.HasPrefix(l, "rbac.authorization.k8s.io/") || l == "grafana_dashboard" || l == "control-plane" {
				m[l] = v
			}
		}
		return m
	}
	if g, w := agg(got), agg(want); !reflect.DeepEqual(g, w) {
		t.Errorf("%s: labels %v, config/ has %v", k, g, w)
	}
	if got.GetLabels()["app.kubernetes.io/name"] != "callguard" {
		t.Errorf("%s: label app.kubernetes.io/name = %q, want callguard", k, got.GetLabels()["app.kubernetes.io/name"])
	}
	for a, v := range want.GetAnnotations() {
		if got.GetAnnotations()[a] != v {
			t.Errorf("%s: annotation %s = %q, config/ has %q", k, a, got.GetAnnotations()[a], v)
		}
	}
	if got.GetKind() == "Deployment" {
		gl, _, _ := unstructured.NestedStringMap(got.Object, "spec", "template", "metadata", "labels")
		wl, _, _ := unstructured.NestedStringMap(want.Object, "spec", "template", "metadata", "labels")
		for l, v := range wl {
			if gl[l] != v {
				t.Errorf("%s: pod template label %s = %q, config/ has %q", k, l, gl[l], v)
			}
		}
	}
}

// strip drops what compareMeta checked.
func strip(o *unstructured.Unstructured) *unstructured.Unstructured {
	c := o.DeepCopy()
	unstructured.RemoveNestedField(c.Object, "metadata", "labels")
	unstructured.RemoveNestedField(c.Object, "metadata", "annotations")
	if c.GetKind() == "Deployment" {
		unstructured.RemoveNestedField(c.Object, "spec", "template", "metadata", "labels")
	}
	return c
}

// diff lists the paths at which a and b differ.
func diff(path string, a, b any) []string {
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: chart %T, config/ %T", path, a, b)}
		}
		var out []string
		ks := map[string]bool{}
		for k := range av {
			ks[k] = true
		}
		for k := range bv {
			ks[k] = true
		}
		sorted := make([]string, 0, len(ks))
		for k := range ks {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		for _, k := range sorted {
			x, inA := av[k]
			y, inB := bv[k]
			switch {
			case !inA:
				out = append(out, fmt.Sprintf("%s.%s: only in config/ (%v)", path, k, short(y)))
			case !inB:
				out = append(out, fmt.Sprintf("%s.%s: only in the chart (%v)", path, k, short(x)))
			default:
				out = append(out, diff(path+"."+k, x, y)...)
			}
		}
		return out
	case []any:
		bv, ok := b.([]any)
		if !ok || len(av) != len(bv) {
			return []string{fmt.Sprintf("%s: chart %v, config/ %v", path, short(a), short(b))}
		}
		var out []string
		for i := range av {
			out = append(out, diff(fmt.Sprintf("%s[%d]", path, i), av[i], bv[i])...)
		}
		return out
	default:
		if !reflect.DeepEqual(normal(a), normal(b)) {
			return []string{fmt.Sprintf("%s: chart %v, config/ %v", path, short(a), short(b))}
		}
		return nil
	}
}

// normal makes numbers comparable whatever decoded them.
func normal(v any) any {
	switch n := v.(type) {
	case int64:
		return float64(n)
	case int:
		return float64(n)
	}
	return v
}

func short(v any) string {
	s := fmt.Sprint(v)
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}
