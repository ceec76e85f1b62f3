package policy

import (
	"testing"

	"github.com/callguard/callguard/api/v1alpha1"
)

// numberForms are one number written the ways callers and policy authors
// write it: what Graph sends, what people type, and what they paste.
var numberForms = []struct{ name, in string }{
	{"e164", "+15550001111"},
	{"formatted", "+1 (555) 000-1111"},
	{"tel", "tel:+1-555-000-1111;ext=22"},
	{"fullwidth", "＋１５５５０００１１１１"},
	{"zwsp", "+1555\u200b0001111"},
}

// BenchmarkNormalizeNumber is the normalizer alone: appendNormalized into a
// stack buffer, as Decide calls it.
func BenchmarkNormalizeNumber(b *testing.B) {
	for _, f := range numberForms {
		b.Run(f.name, func(b *testing.B) {
			var buf numberBuf
			b.ReportAllocs()
			n, start := 0, cpuTime()
			for b.Loop() {
				_, _ = appendNormalized(buf[:0], f.in)
				n++
			}
			b.ReportMetric(float64(cpuTime()-start)/float64(n), "cpu-ns/op")
		})
	}
}

// BenchmarkDecideNumberForms decides a call from each form of the number
// against the 10 rules of Decide/rules=10 plus a last rule on +15550001111.
func BenchmarkDecideNumberForms(b *testing.B) {
	rules := append(benchRules(10, false, false),
		reject("blocked", callers(v1alpha1.CallerMatch{Numbers: []string{"+15550001111"}})))
	p := mustCompile(b, testSource(rules...))
	for _, f := range numberForms {
		b.Run(f.name, func(b *testing.B) {
			want := "blocked"
			if _, ok := NormalizeNumber(f.in); !ok {
				want = "" // before the normalizer knew this form
			}
			benchDecide(b, p, phoneCall(f.in), want)
		})
	}
}
