//go:build linux

package bench

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/emulator"
)

// BenchmarkManyTenants: a multi-tenant bot (bot.additionalTenants) whose
// calls arrive from 1,000 tenants, each call's notification signed with its
// tenant's claim and its reject made with a token of that tenant (the
// emulator refuses another tenant's), paced at Graph's per-tenant ceiling
// (3,400/s), against the same receiver with one tenant, in pairs of runs
// (single, then many) on one CPU. It reports both handlers' p50 and p99
// acknowledgement and p99 notification-to-action latency (medians over the
// pairs; the single-tenant one prefixed "single-"), the first run's, when
// every tenant's token is requested while calls arrive ("cold-"), and the
// token requests each receiver made over the whole benchmark, counted by
// the receiver (callguard_receiver_graph_token_requests_total) and by the
// emulator's token endpoint: one per tenant per token lifetime (an hour).
func BenchmarkManyTenants(b *testing.B) {
	e, err := startManyTenants()
	if err != nil {
		b.Fatal(err)
	}
	defer e.stop()
	b.ResetTimer()
	b.StopTimer()

	rate := float64(benchRate)
	if r, err := strconv.ParseFloat(os.Getenv(rateEnv), 64); err == nil && r > 0 {
		rate = r
	}
	// The first run of each: the many-tenant receiver requests every
	// tenant's token while the calls arrive.
	cold := map[string]map[string]float64{}
	for _, kind := range []string{"single", "many"} {
		m, err := measureTenants(e, kind, manyTenantsWarmup, rate)
		if err != nil {
			b.Fatalf("%s first run: %v", kind, err)
		}
		cold[kind] = m
	}
	pairs := benchPairs
	if p, err := strconv.Atoi(os.Getenv(pairsEnv)); err == nil && p > 0 {
		pairs = p
	}
	pairs = min(pairs, b.N)
	runs := map[string][]map[string]float64{}
	for i := range pairs {
		n := b.N / pairs
		if i < b.N%pairs {
			n++
		}
		for _, kind := range []string{"single", "many"} {
			if kind == "many" {
				b.StartTimer()
			}
			m, err := measureTenants(e, kind, n, rate)
			b.StopTimer()
			if err != nil {
				b.Fatalf("pair %d, %s: %v", i+1, kind, err)
			}
			runs[kind] = append(runs[kind], m)
		}
	}
	for kind, ms := range runs {
		prefix := ""
		if kind == "single" {
			prefix = "single-"
		}
		for unit := range ms[0] {
			var col []float64
			for _, m := range ms {
				col = append(col, m[unit])
			}
			b.ReportMetric(median(col), prefix+unit)
		}
	}
	for _, unit := range []string{"p99-ack-ms", "p99-action-ms"} {
		b.ReportMetric(cold["many"][unit], "cold-"+unit)
		b.ReportMetric(cold["single"][unit], "cold-single-"+unit)
	}
	for kind, c := range e.children {
		n, err := metricSum(c.ops+"/metrics", "callguard_receiver_graph_token_requests_total")
		if err != nil {
			b.Fatal(err)
		}
		prefix := ""
		if kind == "single" {
			prefix = "single-"
		}
		b.ReportMetric(n, prefix+"token-requests")
	}
	b.ReportMetric(float64(len(e.tenantIDs)), "tenants")
	b.ReportMetric(float64(emulatorTokenRequests(e.emu)), "emulator-token-requests")
}

const (
	// manyTenantsCount is how many tenants the calls come from: the home
	// tenant and 999 additional ones.
	manyTenantsCount = 1000
	// manyTenantsWarmup is the first, cold run: five calls per tenant.
	manyTenantsWarmup = 5 * manyTenantsCount
)

// manyTenantID is the i-th tenant, the home tenant first.
func manyTenantID(i int) string {
	if i == 0 {
		return tenantID
	}
	return fmt.Sprintf("%08x-0000-4000-8000-%012x", 0x70000000+i, i)
}

// startManyTenants starts the emulator, with the bot registered in every
// tenant, and two receivers: "single" with the one-tenant bench policy and
// "many" with the 999 other tenants as bot.additionalTenants, whose calls
// come from every tenant in turn.
func startManyTenants() (_ *benchEnv, err error) {
	s := &benchEnv{tenants: manyTenantsCount}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	singlePath, caFile, err := s.prepare()
	if err != nil {
		return nil, err
	}
	policy, err := os.ReadFile(singlePath)
	if err != nil {
		return nil, err
	}
	extra := "    additionalTenants:\n"
	for _, t := range s.tenantIDs[1:] {
		extra += "      - " + t + "\n"
	}
	manyPath := filepath.Join(s.dir, "many.yaml")
	if err := os.WriteFile(manyPath, []byte(strings.Replace(string(policy), "    credentials:", extra+"    credentials:", 1)), 0o600); err != nil {
		return nil, err
	}
	handlerCPU, err := s.pinDriver()
	if err != nil {
		return nil, err
	}
	s.children = map[string]*child{}
	for kind, path := range map[string]string{"single": singlePath, "many": manyPath} {
		c, err := startChild("receiver", path, caFile, s.emu.URL(), handlerCPU)
		if err != nil {
			return nil, fmt.Errorf("%s receiver: %w", kind, err)
		}
		s.children[kind] = c
	}
	s.children["many"].tenants = manyTenantsCount
	return s, nil
}

// measureTenants makes one run of n notifications to the receiver kind,
// paced at rate, and returns its metrics by unit.
func measureTenants(s *benchEnv, kind string, n int, rate float64) (map[string]float64, error) {
	c := s.children[kind]
	var cpuBefore time.Duration
	res, actions, err := s.drive(c, kind, n, rate, func() { cpuBefore, _ = c.cpuTime() }, func() {})
	if err != nil {
		return nil, err
	}
	cpuAfter, err := c.cpuTime()
	if err != nil {
		return nil, err
	}
	slices.Sort(actions)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return map[string]float64{
		"p50-ack-ms":          ms(percentile(res.Acks, 0.50)),
		"p99-ack-ms":          ms(percentile(res.Acks, 0.99)),
		"p99-action-ms":       percentile(actions, 0.99),
		"p99-late-ms":         ms(percentile(res.Late, 0.99)),
		"cpu-us/notification": float64((cpuAfter - cpuBefore).Microseconds()) / float64(n),
	}, nil
}

// emulatorTokenRequests counts the token requests the emulator answered.
func emulatorTokenRequests(emu *emulator.Server) int {
	n := 0
	for route, byStatus := range emu.Stats().Requests {
		if strings.HasSuffix(route, "/oauth2/v2.0/token") {
			for _, c := range byStatus {
				n += c
			}
		}
	}
	return n
}

// metricSum sums every series of a metric on a Prometheus endpoint.
func metricSum(u, name string) (float64, error) {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(u)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum, sc.Err()
}
