//go:build linux

package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
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
		m, err := e.measure(kind, manyTenantsWarmup, rate)
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
			m, err := e.measure(kind, n, rate)
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
	b.ReportMetric(float64(len(e.tenants)), "tenants")
	b.ReportMetric(float64(e.emulatorTokenRequests()), "emulator-token-requests")
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

type manyTenantsEnv struct {
	dir      string
	emu      *emulator.Server
	tenants  []string
	auths    []string // a callback token per tenant
	children map[string]*child
	runs     int
	unpinned func()
}

// startManyTenants starts the emulator, with the bot registered in every
// tenant, and two receivers: "single" with the one-tenant bench policy and
// "many" with the 999 other tenants as bot.additionalTenants.
func startManyTenants() (_ *manyTenantsEnv, err error) {
	e := &manyTenantsEnv{children: map[string]*child{}}
	defer func() {
		if err != nil {
			e.stop()
		}
	}()
	if e.dir, err = os.MkdirTemp("", "callguard-bench-tenants"); err != nil {
		return nil, err
	}
	bots := []emulator.Bot{{AppID: appID, TenantID: tenantID, Secret: secret}}
	for i := range manyTenantsCount {
		t := manyTenantID(i)
		e.tenants = append(e.tenants, t)
		if i > 0 {
			bots = append(bots, emulator.Bot{AppID: appID, TenantID: t})
		}
	}
	if e.emu, err = emulator.New(emulator.Config{Bots: bots, MissedAfter: time.Hour}); err != nil {
		return nil, err
	}
	if err := e.emu.Start(); err != nil {
		return nil, err
	}
	for _, t := range e.tenants {
		tok, err := e.emu.SignInboundToken(emulator.InboundClaims(appID, t))
		if err != nil {
			return nil, err
		}
		e.auths = append(e.auths, "Bearer "+tok)
	}
	caFile := filepath.Join(e.dir, "ca.crt")
	if err := os.WriteFile(caFile, e.emu.CACertPEM(), 0o600); err != nil {
		return nil, err
	}
	single := benchPolicy(e.emu.URL())
	extra := "    additionalTenants:\n"
	for _, t := range e.tenants[1:] {
		extra += "      - " + t + "\n"
	}
	many := []byte(strings.Replace(string(single), "    credentials:", extra+"    credentials:", 1))
	handlerCPU := -1
	if os.Getenv(pinEnv) != "0" {
		if cpu, driver, all, ok := splitCPUs(); ok {
			if err := pinProcess(driver); err != nil {
				return nil, err
			}
			procs := runtime.GOMAXPROCS(driver.Count())
			e.unpinned = func() {
				_ = pinProcess(all)
				runtime.GOMAXPROCS(procs)
			}
			handlerCPU = cpu
		}
	}
	for kind, policy := range map[string][]byte{"single": single, "many": many} {
		path := filepath.Join(e.dir, kind+".yaml")
		if err := os.WriteFile(path, policy, 0o600); err != nil {
			return nil, err
		}
		c, err := startChild("receiver", path, caFile, e.emu.URL(), handlerCPU)
		if err != nil {
			return nil, fmt.Errorf("%s receiver: %w", kind, err)
		}
		e.children[kind] = c
	}
	return e, nil
}

func (e *manyTenantsEnv) stop() {
	for _, c := range e.children {
		c.stop()
	}
	if e.emu != nil {
		_ = e.emu.Close()
	}
	if e.dir != "" {
		_ = os.RemoveAll(e.dir)
	}
	if e.unpinned != nil {
		e.unpinned()
	}
}

// measure registers n calls, spread over the tenants of kind in turn, has a
// load generator post their notifications paced at rate, each with its
// tenant's token, checks that every one was rejected on Graph, and returns
// the run's metrics by unit.
func (e *manyTenantsEnv) measure(kind string, n int, rate float64) (map[string]float64, error) {
	c := e.children[kind]
	e.runs++
	tenants, auths := e.tenants[:1], e.auths[:1]
	if kind == "many" {
		tenants, auths = e.tenants, e.auths
	}
	u, err := url.Parse(c.callback)
	if err != nil {
		return nil, err
	}
	plan := loadPlan{Addr: u.Host, Path: u.Path, Auths: auths, Rate: rate, Conns: benchConcurrency, MaxConns: 64,
		IDs: make([]string, n), Numbers: make([]string, n)}
	for i := range n {
		plan.IDs[i] = fmt.Sprintf("tenants-%s-%d-%d", kind, e.runs, i)
		plan.Numbers[i] = benchNumber(e.runs*7919 + i)
		if _, err := e.emu.PlaceCall(context.Background(), emulator.PlaceCallRequest{
			AppID: appID, TenantID: tenants[i%len(tenants)], CallbackURI: c.callback, Deliver: new(false),
			Source: &graph.IdentitySet{Phone: &graph.Identity{ID: plan.Numbers[i]}},
			Call:   map[string]any{"id": plan.IDs[i]},
		}); err != nil {
			return nil, err
		}
	}
	runtime.GC()
	var cpuBefore time.Duration
	res, err := runLoad(plan, func() { cpuBefore, _ = c.cpuTime() })
	if err != nil {
		return nil, err
	}
	if res.Refused > 0 {
		return nil, fmt.Errorf("%d of %d notifications not acknowledged with 202; first: %s", res.Refused, n, res.Error)
	}
	actions, err := c.actionLatencies(plan.IDs, 60*time.Second)
	if err != nil {
		return nil, err
	}
	cpuAfter, err := c.cpuTime()
	if err != nil {
		return nil, err
	}
	for i, id := range plan.IDs {
		rec, _ := e.emu.Call(id)
		if rec.Action != "reject" || !strings.EqualFold(rec.TenantID, tenants[i%len(tenants)]) {
			return nil, fmt.Errorf("call %s: Graph has action %q in tenant %s, want reject in %s", id, rec.Action, rec.TenantID, tenants[i%len(tenants)])
		}
	}
	e.emu.ForgetEnded()
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
func (e *manyTenantsEnv) emulatorTokenRequests() int {
	n := 0
	for route, byStatus := range e.emu.Stats().Requests {
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
