//go:build linux

package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/test/harness/redisserver"
)

// BenchmarkRepeatCallers measures a policy that counts calls in a shared
// store: the bench policy with a first rule that rejects (forbidden) a
// caller's third call within 10 minutes (match.callers.repeat), and
// state.redis, decided by two receiver children sharing one real
// redis-server, against the same load on the bench policy alone (no repeat
// rule, no store: the baseline), in pairs of runs (baseline, then repeat),
// as BenchmarkReceiverAcknowledgement does.
//
// Each run sends its notifications paced at Graph's per-tenant ceiling
// (3,400/s, or CALLGUARD_BENCH_RATE) from one load generator, alternately
// to the two receivers. One notification position in repeatEvery belongs to
// a repeating caller, who calls three times repeatGap notifications apart
// (about 0.3 s; repeatGap is odd, so a caller's calls alternate between the
// receivers and the third is decided where the second was not); every other
// caller calls once. Every call is counted in the store. Graph (the
// emulator) must have every call rejected: each repeating caller's third
// with forbidden and every other call with busy, but for third calls
// missed because the store did not answer in time (see run). The store is
// flushed before each run, so that no count carries over.
//
// Metrics (medians over the pairs; the baseline's prefixed "baseline-"):
// p50 and p99 acknowledgement; p99-action-ms, from the load generator's
// write of a notification to the arrival of its reject at the emulator (the
// emulator's record); p99-receiver-action-ms, the receivers' own log of
// arrival to Graph's answer; the receivers' CPU per notification (both
// together); for the repeat runs, the store's requests (one per batch:
// callguard_receiver_state_requests_total) and round trips (batches asking
// at once share one: state_round_trips_total) per call, redis-server's script runs
// (EVALSHA) and commands per call (INFO commandstats and stats; a script's
// own commands count too) and its CPU per call (INFO cpu), the calls
// decided without the store (state_errors_total) and the third calls they
// made it miss; the receivers' garbage collections (gc-cycles, both
// together: with GOMAXPROCS=1 a collection's marking holds the receiver's
// one P, and both receivers share a CPU) and bytes allocated per
// notification; and the 1-minute load average at the start and end. The
// receivers share the handler's CPU (one each, GOMAXPROCS=1); redis-server
// runs on the driver's CPUs with the emulator and the load generator, as a
// store on another machine would not share the receivers' CPU.
//
//	go test ./test/bench -run '^$' -bench RepeatCallers -benchtime 170000x
//
// makes five pairs of 10 s runs (34,000 notifications each);
// CALLGUARD_BENCH_PAIRS sets the pairs. CALLGUARD_BENCH_CPUPROFILE=FILE
// profiles each receiver child into FILE.baseline-0 … FILE.repeat-1.
func BenchmarkRepeatCallers(b *testing.B) {
	b.StopTimer()
	e := startRepeatEnv(b)
	defer e.stop()
	rate := float64(benchRate)
	if r, err := strconv.ParseFloat(os.Getenv(rateEnv), 64); err == nil && r > 0 {
		rate = r
	}
	// The warm-up's first calls find no connection to the store yet.
	var warmErrors float64
	for _, kind := range repeatKinds {
		m, err := e.run(b, kind, benchWarmup, rate)
		if err != nil {
			b.Fatalf("%s warm-up: %v", kind, err)
		}
		warmErrors += m["state-errors"]
	}
	pairs := benchPairs
	if p, err := strconv.Atoi(os.Getenv(pairsEnv)); err == nil && p > 0 {
		pairs = p
	}
	pairs = min(pairs, b.N)
	// Other work on the machine shares its CPUs with the receivers and
	// the driver: the 1-minute load averages are figures too.
	load0 := loadAverage()
	runs := map[string][]map[string]float64{}
	for i := range pairs {
		n := b.N / pairs
		if i < b.N%pairs {
			n++
		}
		for _, kind := range repeatKinds {
			m, err := e.run(b, kind, n, rate)
			if err != nil {
				b.Fatalf("pair %d, %s: %v", i+1, kind, err)
			}
			runs[kind] = append(runs[kind], m)
		}
	}
	for _, kind := range repeatKinds {
		prefix := ""
		if kind == "baseline" {
			prefix = "baseline-"
		}
		for unit := range runs[kind][0] {
			var col []float64
			for _, m := range runs[kind] {
				col = append(col, m[unit])
			}
			b.ReportMetric(median(col), prefix+unit)
		}
	}
	b.ReportMetric(warmErrors, "warmup-state-errors")
	for unit, load := range map[string]string{"load1-start": load0, "load1-end": loadAverage()} {
		if v, err := strconv.ParseFloat(strings.Fields(load)[0], 64); err == nil {
			b.ReportMetric(v, unit)
		}
	}
}

// repeatKinds are the policies in the order each pair runs them.
var repeatKinds = []string{"baseline", "repeat"}

const (
	// repeatGap is how many notifications apart a repeating caller's
	// calls are: odd, so that they alternate between the two receivers.
	repeatGap = 1001
	// repeatEvery: one notification position in repeatEvery is a
	// repeating caller's.
	repeatEvery = 10
	// repeatReason is the repeat rule's reject reason; the bench policy's
	// list rejects with busy.
	repeatReason = "forbidden"
)

// repeatEnv is the emulator, a redis-server, and two receivers of each
// policy ("baseline-0", "baseline-1", "repeat-0", "repeat-1").
type repeatEnv struct {
	s     *benchEnv
	redis *redis.Client
	runs  int
}

func startRepeatEnv(b *testing.B) *repeatEnv {
	e := &repeatEnv{s: &benchEnv{}}
	ok := false
	defer func() {
		if !ok {
			e.stop()
		}
	}()
	basePath, caFile, err := e.s.prepare()
	if err != nil {
		b.Fatal(err)
	}
	cpu, err := e.s.pinDriver()
	if err != nil {
		b.Fatal(err)
	}
	// Started after pinning: redis-server inherits the driver's CPUs.
	password := rand.Text()
	srv := redisserver.Start(b, "--requirepass", password)
	e.redis = redis.NewClient(&redis.Options{Addr: srv.Addr(), Password: password})
	stateDir := filepath.Join(e.s.dir, "state")
	if err := os.Mkdir(stateDir, 0o700); err != nil {
		b.Fatal(err)
	}
	for name, content := range map[string]string{"key": rand.Text(), "redis-password": password} {
		if err := os.WriteFile(filepath.Join(stateDir, name), []byte(content), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	base, err := os.ReadFile(basePath)
	if err != nil {
		b.Fatal(err)
	}
	repeatPath := filepath.Join(e.s.dir, "repeat.yaml")
	if err := os.WriteFile(repeatPath, repeatPolicy(base, srv.Addr()), 0o600); err != nil {
		b.Fatal(err)
	}
	e.s.children = map[string]*child{}
	profile := os.Getenv(cpuProfileEnv)
	for _, kind := range repeatKinds {
		path := basePath
		if kind == "repeat" {
			path = repeatPath
		}
		for i := range 2 {
			env := []string{childStateEnv + "=" + stateDir}
			if profile != "" {
				// A profile per child (FILE.repeat-0, …): they would
				// otherwise all write the one file.
				env = append(env, fmt.Sprintf("%s=%s.%s-%d", cpuProfileEnv, profile, kind, i))
			}
			c, err := startChild("receiver", path, caFile, e.s.emu.URL(), cpu, env...)
			if err != nil {
				b.Fatalf("%s receiver %d: %v", kind, i, err)
			}
			e.s.children[fmt.Sprintf("%s-%d", kind, i)] = c
		}
	}
	ok = true
	return e
}

func (e *repeatEnv) stop() {
	if e.redis != nil {
		_ = e.redis.Close()
	}
	e.s.stop()
}

// repeatPolicy is the bench policy with the repeat rule first, and the
// store.
func repeatPolicy(base []byte, redisAddr string) []byte {
	return []byte(strings.Replace(string(base), "  rules:\n", `  state:
    redis: {address: "`+redisAddr+`"}
  rules:
    - name: repeat
      action: Reject
      reason: `+repeatReason+`
      match: {callers: {repeat: {calls: 3, within: 10m}}}
`, 1))
}

// repeatLoad is the callers of a run: notification i's caller, and whether
// it is a repeating caller's third call.
type repeatLoad struct {
	numbers            []string
	third              []bool
	callers, repeaters int
}

// repeatCallers lays out n notifications: in each block of 3 × repeatGap,
// position p < repeatGap with p%repeatEvery == 0 starts a repeating caller
// (calls at p, p+repeatGap and p+2×repeatGap), while the run has room for
// all three; every other position is a caller of its own.
func repeatCallers(n int) (repeatLoad, error) {
	l := repeatLoad{numbers: make([]string, n), third: make([]bool, n)}
	for i := range n {
		if l.numbers[i] != "" {
			continue
		}
		num := benchNumber(l.callers)
		l.callers++
		l.numbers[i] = num
		if p := i % (3 * repeatGap); p < repeatGap && p%repeatEvery == 0 && i+2*repeatGap < n {
			l.numbers[i+repeatGap], l.numbers[i+2*repeatGap] = num, num
			l.third[i+2*repeatGap] = true
			l.repeaters++
		}
	}
	// Callers are distinct numbers of the bench policy's list.
	if l.callers > benchListSize {
		return l, fmt.Errorf("%d callers in a run, the list has %d numbers: make the runs shorter", l.callers, benchListSize)
	}
	return l, nil
}

// repeatStats is what the store and its server have done so far.
type repeatStats struct {
	commands, scripts, cpuSec, requests, roundTrips, errors float64
	// gcs and allocated are the receivers' garbage collections and bytes
	// allocated, together.
	gcs, allocated float64
}

func (e *repeatEnv) stats(kind string) (repeatStats, error) {
	var st repeatStats
	for i := range 2 {
		ops := e.s.children[fmt.Sprintf("%s-%d", kind, i)].ops + "/metrics"
		n, err := metricSum(ops, "callguard_receiver_state_round_trips_total")
		if err != nil {
			return st, err
		}
		st.roundTrips += n
		if n, err = metricSum(ops, "callguard_receiver_state_requests_total"); err != nil {
			return st, err
		}
		st.requests += n
		if n, err = metricSum(ops, "callguard_receiver_state_errors_total"); err != nil {
			return st, err
		}
		st.errors += n
		if n, err = metricSum(ops, "go_gc_duration_seconds_count"); err != nil {
			return st, err
		}
		st.gcs += n
		if n, err = metricSum(ops, "go_memstats_alloc_bytes_total"); err != nil {
			return st, err
		}
		st.allocated += n
	}
	if kind != "repeat" {
		return st, nil
	}
	info, err := e.redis.Info(context.Background(), "stats", "cpu", "commandstats").Result()
	if err != nil {
		return st, fmt.Errorf("redis INFO: %w", err)
	}
	fields := map[string]float64{}
	for line := range strings.Lines(info) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			fields[k] = f
		}
		// cmdstat_evalsha:calls=N,usec=…
		if cmd, ok := strings.CutPrefix(k, "cmdstat_"); ok && (cmd == "eval" || cmd == "evalsha") {
			calls, _, _ := strings.Cut(strings.TrimPrefix(v, "calls="), ",")
			if f, err := strconv.ParseFloat(calls, 64); err == nil {
				st.scripts += f
			}
		}
	}
	st.commands = fields["total_commands_processed"]
	st.cpuSec = fields["used_cpu_sys"] + fields["used_cpu_user"]
	return st, nil
}

// run sends n notifications of kind's policy, paced at rate, alternately to
// its two receivers, checks Graph's action on every call, and returns the
// run's metrics by unit.
//
// A call the receiver decided without the store's answer (it took over
// the 100 ms budget: state_errors_total) is decided as state.onError
// (Ignore) says: the repeat condition does not hold and the call is not
// counted, so a repeating caller's third call may be rejected busy. Such
// misses are counted (repeat-misses); the run fails if there are more of
// them than calls decided without the store, or if any other call was
// rejected as a repeat. The benchmark's timer runs while the repeat
// policy's notifications are sent.
func (e *repeatEnv) run(b *testing.B, kind string, n int, rate float64) (map[string]float64, error) {
	e.runs++
	load, err := repeatCallers(n)
	if err != nil {
		return nil, err
	}
	if err := e.redis.FlushAll(context.Background()).Err(); err != nil {
		return nil, fmt.Errorf("redis FLUSHALL: %w", err)
	}
	auth, err := e.s.token()
	if err != nil {
		return nil, err
	}
	cs := []*child{e.s.children[kind+"-0"], e.s.children[kind+"-1"]}
	plan := loadPlan{Path: "/api/calls", Auth: auth, Rate: rate, Conns: benchConcurrency, MaxConns: 64,
		IDs: make([]string, n), Numbers: load.numbers}
	ids := make([][]string, len(cs)) // by receiver
	for _, c := range cs {
		u, err := url.Parse(c.callback)
		if err != nil {
			return nil, err
		}
		plan.Addrs = append(plan.Addrs, u.Host)
		plan.Path = u.Path
	}
	for i := range n {
		plan.IDs[i] = fmt.Sprintf("repeat-%s-%d-%d", kind, e.runs, i)
		ids[i%len(cs)] = append(ids[i%len(cs)], plan.IDs[i])
		if _, err := e.s.emu.PlaceCall(context.Background(), emulator.PlaceCallRequest{
			AppID: appID, CallbackURI: cs[i%len(cs)].callback, Deliver: new(false),
			Source: &graph.IdentitySet{Phone: &graph.Identity{ID: load.numbers[i]}},
			Call:   map[string]any{"id": plan.IDs[i]},
		}); err != nil {
			return nil, err
		}
	}
	runtime.GC()
	before, err := e.stats(kind)
	if err != nil {
		return nil, err
	}
	var cpuBefore time.Duration
	var cpuErr error
	res, err := runLoad(plan, func() {
		cpuBefore, cpuErr = childrenCPU(cs)
		if kind == "repeat" {
			b.StartTimer()
		}
	})
	b.StopTimer()
	if err != nil {
		return nil, err
	}
	if cpuErr != nil {
		return nil, cpuErr
	}
	if res.Refused > 0 {
		return nil, fmt.Errorf("%d of %d notifications not acknowledged with 202; first: %s", res.Refused, n, res.Error)
	}
	var logged []float64
	for j, c := range cs {
		l, err := c.actionLatencies(ids[j], 60*time.Second)
		if err != nil {
			return nil, fmt.Errorf("receiver %d: %w", j, err)
		}
		logged = append(logged, l...)
	}
	cpuAfter, err := childrenCPU(cs)
	if err != nil {
		return nil, err
	}
	after, err := e.stats(kind)
	if err != nil {
		return nil, err
	}
	stateErrors := after.errors - before.errors
	actions := make([]float64, n)
	var misses []string
	for i, id := range plan.IDs {
		rec, _ := e.s.emu.Call(id)
		want := "busy"
		if kind == "repeat" && load.third[i] {
			want = repeatReason
		}
		if rec.Action != "reject" || rec.Reason != want && !(want == repeatReason && rec.Reason == "busy") {
			return nil, fmt.Errorf("call %s (caller %s, a repeating caller's third call: %v): Graph has action %q reason %q, want reject %s",
				id, load.numbers[i], load.third[i], rec.Action, rec.Reason, want)
		}
		if rec.Reason != want {
			misses = append(misses, id)
		}
		actions[i] = float64(rec.ActedAt.UnixNano()-res.Sent[i]) / 1e6
	}
	if float64(len(misses)) > stateErrors {
		return nil, fmt.Errorf("%d repeating callers' third calls rejected busy, not %s (first: %s), and only %v calls decided without the store's answer",
			len(misses), repeatReason, misses[0], stateErrors)
	}
	var counted int64
	if kind == "repeat" {
		if counted, err = e.countedCalls(); err != nil {
			return nil, err
		}
		// A call whose answer came too late may still have been counted.
		if float64(counted) < float64(n)-stateErrors || counted > int64(n) {
			return nil, fmt.Errorf("the store holds %d counted calls of %d, %v decided without its answer", counted, n, stateErrors)
		}
	}
	e.s.emu.ForgetEnded()
	slices.Sort(actions)
	slices.Sort(logged)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	m := map[string]float64{
		"p50-ack-ms":             ms(percentile(res.Acks, 0.50)),
		"p99-ack-ms":             ms(percentile(res.Acks, 0.99)),
		"p99-action-ms":          percentile(actions, 0.99),
		"p99-receiver-action-ms": percentile(logged, 0.99),
		"p99-late-ms":            ms(percentile(res.Late, 0.99)),
		"cpu-us/notification":    float64((cpuAfter - cpuBefore).Microseconds()) / float64(n),
		"callers":                float64(load.callers),
		"repeating-callers":      float64(load.repeaters),
		// Collections pause a receiver's one P: they show in the p99s.
		"gc-cycles":                after.gcs - before.gcs,
		"alloc-bytes/notification": (after.allocated - before.allocated) / float64(n),
	}
	if kind == "repeat" {
		m["counted/call"] = float64(counted) / float64(n)
		m["repeat-rejects"] = float64(load.repeaters - len(misses))
		m["repeat-misses"] = float64(len(misses))
		// A batch is one request; concurrent batches' requests share
		// round trips.
		m["store-requests/call"] = (after.requests - before.requests) / float64(n)
		m["store-round-trips/call"] = (after.roundTrips - before.roundTrips) / float64(n)
		// Less the INFO that read the first figure; the commands a
		// script runs count too.
		m["redis-commands/call"] = (after.commands - before.commands - 1) / float64(n)
		m["redis-scripts/call"] = (after.scripts - before.scripts) / float64(n)
		m["redis-cpu-us/call"] = (after.cpuSec - before.cpuSec) * 1e6 / float64(n)
		m["state-errors"] = stateErrors
	}
	return m, nil
}

// countedCalls is how many calls the store holds counted: the members of
// the bench policy's callers' sorted sets of calls.
func (e *repeatEnv) countedCalls() (int64, error) {
	ctx := context.Background()
	var total int64
	var cursor uint64
	for {
		keys, next, err := e.redis.Scan(ctx, cursor, "callguard:default/bench:c:*", 1000).Result()
		if err != nil {
			return 0, fmt.Errorf("redis SCAN: %w", err)
		}
		pipe := e.redis.Pipeline()
		cards := make([]*redis.IntCmd, len(keys))
		for i, k := range keys {
			cards[i] = pipe.ZCard(ctx, k)
		}
		if len(keys) > 0 {
			if _, err := pipe.Exec(ctx); err != nil {
				return 0, fmt.Errorf("redis ZCARD: %w", err)
			}
		}
		for _, c := range cards {
			total += c.Val()
		}
		if cursor = next; cursor == 0 {
			return total, nil
		}
	}
}

// childrenCPU is the children's CPU time so far, together.
func childrenCPU(cs []*child) (time.Duration, error) {
	var sum time.Duration
	for _, c := range cs {
		t, err := c.cpuTime()
		if err != nil {
			return 0, err
		}
		sum += t
	}
	return sum, nil
}
