package policy

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
)

// benchList returns n distinct US numbers, one a line, every 50th a prefix.
func benchList(n int) (text string, numbers []string) {
	r := rand.New(rand.NewPCG(1, 2))
	seen := make(map[uint64]bool, n)
	var sb strings.Builder
	sb.Grow(n * 14)
	numbers = make([]string, 0, n)
	for len(numbers) < n {
		v := 2_000_000_000 + r.Uint64N(8_000_000_000)
		if seen[v] {
			continue
		}
		seen[v] = true
		line := fmt.Sprintf("+1%d", v)
		if len(numbers)%50 == 49 {
			line = line[:9] + "*"
		}
		numbers = append(numbers, line)
		sb.WriteString(line)
		sb.WriteByte('\n')
	}
	return sb.String(), numbers
}

// benchRules returns n rules that a phone call from +1425… with audio at
// wed does not match, cycling through the cheap match fields. mixed adds
// regexes, and withCEL an expression every 100 rules, as a policy grown over
// years would have.
func benchRules(n int, mixed, withCEL bool) []v1alpha1.Rule {
	rules := make([]v1alpha1.Rule, 0, n)
	for i := range n {
		name := fmt.Sprintf("rule-%d", i)
		var m v1alpha1.Match
		switch k := i % 10; {
		case k == 0:
			m = callers(v1alpha1.CallerMatch{Numbers: []string{fmt.Sprintf("+4420%08d", i), fmt.Sprintf("+4421%08d", i)}})
		case k == 1:
			m = callers(v1alpha1.CallerMatch{NumberPrefixes: []string{fmt.Sprintf("+44%d", 100+i), "+1900"}})
		case k == 2:
			m = callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"user", "guest"}})
		case k == 3:
			m = v1alpha1.Match{Modalities: []v1alpha1.Modality{"video", "videoBasedScreenSharing"}}
		case k == 4:
			m = v1alpha1.Match{Schedule: &v1alpha1.Schedule{TimeZone: "America/Los_Angeles", Windows: []v1alpha1.Window{
				{Days: []v1alpha1.Weekday{"Mon", "Tue", "Wed", "Thu", "Fri"}, Start: "18:00", End: "02:00"}}}}
		case k == 5:
			m = callers(v1alpha1.CallerMatch{IDs: []string{fmt.Sprintf("8a34a46b-3d17-4adc-8dce-%012d", i)}})
		case k == 6:
			m = callers(v1alpha1.CallerMatch{TenantIDs: []string{fmt.Sprintf("0b3f5c1d-8a2e-4a77-b0c4-%012d", i)}})
		case k == 7:
			m = v1alpha1.Match{Callers: &v1alpha1.CallerMatch{NumberPrefixes: []string{"+1425"}}, Modalities: []v1alpha1.Modality{"video"}}
		case k == 8 && mixed:
			m = callers(v1alpha1.CallerMatch{NumberPatterns: []string{fmt.Sprintf(`^\+44%d\d+$`, i)}})
		case k == 9 && withCEL && i%100 == 99:
			m = v1alpha1.Match{Expression: fmt.Sprintf(`caller.type == "phone" && caller.number.startsWith("+44%d")`, i)}
		case k == 9 && mixed:
			m = callers(v1alpha1.CallerMatch{DisplayNamePatterns: []string{fmt.Sprintf(`(?i)robo%d`, i)}})
		default:
			m = callers(v1alpha1.CallerMatch{Numbers: []string{fmt.Sprintf("+3319%07d", i)}, IdentityTypes: []v1alpha1.IdentityType{"phone"}})
		}
		rules = append(rules, reject(name, m))
	}
	return rules
}

// listPolicy is 49 rules that do not match followed by the list rule.
func listPolicy(b *testing.B, n int) (*Policy, []string) {
	text, numbers := benchList(n)
	src := testSource(append(benchRules(49, false, false), reject("robocallers", callers(v1alpha1.CallerMatch{
		NumberLists: []v1alpha1.NumberList{{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "robocallers", Key: "numbers.txt"}}},
	})))...)
	src.Lists = map[ListRef]string{{"robocallers", "numbers.txt"}: text}
	return mustCompile(b, src), numbers
}

// expiringList is text with an expiry (far ahead) on every tenth line.
func expiringList(text string) string {
	lines := strings.SplitAfter(text, "\n")
	for i := 0; i < len(lines); i += 10 {
		if l := strings.TrimSuffix(lines[i], "\n"); l != "" {
			lines[i] = l + " expires=2100-01-01\n"
		}
	}
	return strings.Join(lines, "")
}

func benchDecide(b *testing.B, p *Policy, call *graph.Call, wantRule string) {
	b.Helper()
	benchDecideIn(b, p, call, "", wantRule)
}

// benchDecideIn is benchDecide for a call arriving in a tenant.
func benchDecideIn(b *testing.B, p *Policy, call *graph.Call, tenant, wantRule string) {
	b.Helper()
	if d := p.DecideIn(call, wed, tenant); d.Rule != wantRule {
		b.Fatalf("Decide = %+v, want rule %q", d, wantRule)
	}
	// The garbage of compiling must not be collected, nor its memory returned
	// to the OS, on the clock.
	debug.FreeOSMemory()
	b.ReportAllocs()
	n, start := 0, cpuTime()
	for b.Loop() {
		p.DecideIn(call, wed, tenant)
		n++
	}
	b.ReportMetric(float64(cpuTime()-start)/float64(n), "cpu-ns/op")
}

// cpuTime is the CPU time the process has used. The machine the benchmarks
// run on is shared with other builds; CPU time per operation, unlike wall
// time, does not grow when the benchmark waits for a core.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkDecide(b *testing.B) {
	b.Run("rules=10", func(b *testing.B) {
		p := mustCompile(b, testSource(benchRules(10, false, false)...))
		benchDecide(b, p, phoneCall("+14255550100"), "")
	})
	b.Run("rules=500-mixed", func(b *testing.B) {
		p := mustCompile(b, testSource(benchRules(500, true, true)...))
		benchDecide(b, p, phoneCall("+14255550100"), "")
	})
	b.Run("rules=500-mixed-no-cel", func(b *testing.B) {
		p := mustCompile(b, testSource(benchRules(500, true, false)...))
		benchDecide(b, p, phoneCall("+14255550100"), "")
	})
	b.Run("rules=10-tenants=1000", func(b *testing.B) {
		// Nine rules for 100 tenants each that the call's tenant is not
		// one of, then one for the 100 it is one of: per-customer rules.
		tenants := make([]string, 1000)
		for i := range tenants {
			tenants[i] = fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)
		}
		rules := benchRules(0, false, false)
		for i := range 10 {
			rules = append(rules, reject(fmt.Sprintf("customer-%d", i), v1alpha1.Match{Tenants: tenants[i*100 : (i+1)*100]}))
		}
		p := mustCompile(b, testSource(rules...))
		benchDecideIn(b, p, phoneCall("+14255550100"), strings.ToUpper(tenants[950]), "customer-9")
	})
	for _, n := range []int{100_000, 1_000_000} {
		name := fmt.Sprintf("list=%dk", n/1000)
		if n == 1_000_000 {
			name = "list=1M"
		}
		b.Run(name, func(b *testing.B) {
			p, numbers := listPolicy(b, n)
			hit := numbers[n/2]
			b.Run("hit", func(b *testing.B) { benchDecide(b, p, phoneCall(hit), "robocallers") })
			b.Run("hit-formatted", func(b *testing.B) {
				formatted := hit[:2] + " (" + hit[2:5] + ") " + hit[5:8] + "-" + hit[8:]
				benchDecide(b, p, phoneCall(formatted), "robocallers")
			})
			b.Run("prefix-hit", func(b *testing.B) {
				benchDecide(b, p, phoneCall(strings.TrimSuffix(numbers[49], "*")+"12"), "robocallers")
			})
			b.Run("miss", func(b *testing.B) { benchDecide(b, p, phoneCall("+14255550100"), "") })
		})
	}
	b.Run("list=1M-expires", func(b *testing.B) {
		// Every tenth entry expires (in 2100): what a list with expiries
		// costs a lookup, for entries that expire and entries that do not.
		p, numbers := listPolicy(b, 1_000_000)
		src := testSource(p.Spec().Rules...)
		src.Lists = map[ListRef]string{{"robocallers", "numbers.txt"}: expiringList(benchListText(1_000_000))}
		p = mustCompile(b, src)
		b.Run("hit-expiring", func(b *testing.B) { benchDecide(b, p, phoneCall(numbers[500_000]), "robocallers") })
		b.Run("hit", func(b *testing.B) { benchDecide(b, p, phoneCall(numbers[500_001]), "robocallers") })
		b.Run("miss", func(b *testing.B) { benchDecide(b, p, phoneCall("+14255550100"), "") })
	})
}

func benchListText(n int) string {
	text, _ := benchList(n)
	return text
}

// BenchmarkBaselineLinearScan is the naive matcher the index replaces:
// normalize the caller, then compare against every list entry in turn.
func BenchmarkBaselineLinearScan(b *testing.B) {
	_, numbers := benchList(1_000_000)
	entries := make([]string, len(numbers))
	for i, n := range numbers {
		norm, _ := NormalizeNumber(strings.TrimSuffix(n, "*"))
		if strings.HasSuffix(n, "*") {
			norm += "*"
		}
		entries[i] = norm
	}
	match := func(number string) bool {
		num, ok := NormalizeNumber(number)
		if !ok {
			return false
		}
		for _, e := range entries {
			if p, isPrefix := strings.CutSuffix(e, "*"); isPrefix && strings.HasPrefix(num, p) || e == num {
				return true
			}
		}
		return false
	}
	hit := numbers[len(numbers)/2]
	for _, c := range []struct{ name, number string }{{"list=1M/hit", hit}, {"list=1M/miss", "+14255550100"}} {
		b.Run(c.name, func(b *testing.B) {
			if match(c.number) != (c.number == hit) {
				b.Fatal("baseline is wrong")
			}
			b.ReportAllocs()
			n, start := 0, cpuTime()
			for b.Loop() {
				match(c.number)
				n++
			}
			b.ReportMetric(float64(cpuTime()-start)/float64(n), "cpu-ns/op")
		})
	}
}

func BenchmarkCompile(b *testing.B) {
	b.Run("rules=10-tenants=1000", func(b *testing.B) {
		// Nine rules for 100 tenants each that the call's tenant is not
		// one of, then one for the 100 it is one of: per-customer rules.
		tenants := make([]string, 1000)
		for i := range tenants {
			tenants[i] = fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)
		}
		rules := benchRules(0, false, false)
		for i := range 10 {
			rules = append(rules, reject(fmt.Sprintf("customer-%d", i), v1alpha1.Match{Tenants: tenants[i*100 : (i+1)*100]}))
		}
		p := mustCompile(b, testSource(rules...))
		benchDecideIn(b, p, phoneCall("+14255550100"), strings.ToUpper(tenants[950]), "customer-9")
	})
	for _, n := range []int{100_000, 1_000_000} {
		name := fmt.Sprintf("list=%dk", n/1000)
		if n == 1_000_000 {
			name = "list=1M"
		}
		b.Run(name, func(b *testing.B) {
			text, _ := benchList(n)
			benchCompileList(b, text)
		})
	}
	// Every tenth entry expires: what expiries cost to compile and keep.
	b.Run("list=1M-expires", func(b *testing.B) { benchCompileList(b, expiringList(benchListText(1_000_000))) })
}

// benchCompileList compiles 49 rules and a list rule of text, and reports
// the heap compiling needs and the heap the policy keeps.
func benchCompileList(b *testing.B, text string) {
	src := testSource(append(benchRules(49, false, false), reject("robocallers", callers(v1alpha1.CallerMatch{
		NumberLists: []v1alpha1.NumberList{{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "robocallers", Key: "numbers.txt"}}},
	})))...)
	src.Lists = map[ListRef]string{{"robocallers", "numbers.txt"}: text}
	var peak, retained uint64
	b.ReportAllocs()
	for b.Loop() {
		var p *Policy
		runtime.GC()
		base := heapObjects()
		peak = max(peak, peakHeap(func() { p = mustCompile(b, src) }))
		runtime.GC()
		after := heapObjects()
		retained = after - min(base, after)
		runtime.KeepAlive(p)
	}
	// peak is what compiling needs on top of the source; retained is
	// what the compiled policy keeps.
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
	b.ReportMetric(float64(retained)/(1<<20), "policy-heap-MiB")
}

// peakHeap runs f and returns the most heap (objects, live or not yet
// swept) in use while it ran, above what was live before, sampled every
// millisecond.
func peakHeap(f func()) uint64 {
	runtime.GC()
	base := heapObjects()
	var peak atomic.Uint64
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			if h := heapObjects(); h > peak.Load() {
				peak.Store(h)
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	f()
	if h := heapObjects(); h > peak.Load() {
		peak.Store(h)
	}
	close(done)
	<-stopped
	return peak.Load() - min(base, peak.Load())
}

func heapObjects() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}
