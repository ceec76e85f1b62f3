package controllers

import (
	"context"
	"testing"

	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

// conditionSeries returns the callguard_callpolicy_condition series of one
// policy as "type/status" → value, from the registry the manager serves.
func conditionSeries(t testing.TB, ns, name string) map[string]float64 {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "callguard_callpolicy_condition" {
			continue
		}
		for _, m := range f.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["namespace"] == ns && l["name"] == name {
				out[l["type"]+"/"+l["status"]] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

// TestPolicyConditionsAreExported: a stalled policy shows as Stalled=True
// in the operator's metrics, a recovered one as Stalled=False, and a deleted
// one not at all.
func TestPolicyConditionsAreExported(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	must(t, k8s.Create(ctx, testList(ns, "robocallers", "+12125550143\n")))
	cp := testPolicy(ns, "hotline")
	must(t, k8s.Create(ctx, cp))

	g.Eventually(func() map[string]float64 { return conditionSeries(t, ns, "hotline") }, eventually, poll).
		Should(And(HaveKeyWithValue("Stalled/True", 1.0), HaveKeyWithValue("Stalled/False", 0.0),
			HaveKeyWithValue("Ready/False", 1.0), HaveKeyWithValue("Ready/True", 0.0)))

	must(t, k8s.Create(ctx, testSecret(ns, "bot", "s3cret")))
	g.Eventually(func() map[string]float64 { return conditionSeries(t, ns, "hotline") }, eventually, poll).
		Should(And(HaveKeyWithValue("Stalled/True", 0.0), HaveKeyWithValue("Stalled/False", 1.0)))

	must(t, k8s.Delete(ctx, &callsv1alpha1.CallPolicy{ObjectMeta: cp.ObjectMeta}))
	g.Eventually(func() map[string]float64 { return conditionSeries(t, ns, "hotline") }, eventually, poll).Should(BeEmpty())
}
