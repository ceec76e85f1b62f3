//go:build linux

package bench

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkCPULimit runs the real receiver child in a cgroup v1 cpu cgroup
// of its own, as a container runtime does, under each CPU limit of
// cpuLimits (cpu.cfs_period_us 100,000 and cpu.cfs_quota_us 50,000 = 500m,
// the old default limit; 100,000 = one core; -1 = no limit, the default
// since issue 14), and measures for each (issue 14, part 2):
//
//   - closed: a closed loop (benchConcurrency notifications in flight) of
//     cpuLimitClosedN notifications, the most it carries;
//   - paced: cpuLimitPacedSeconds at Graph's per-tenant ceiling (3,400/s, or
//     CALLGUARD_BENCH_RATE), the achieved rate and the acknowledgement
//     latencies;
//
// each with the cgroup's cpu.stat over the sending (nr_periods,
// nr_throttled, throttled_time). GOMAXPROCS is left to the Go runtime, which
// reads the cgroup's quota (v1 and v2) at start: max(2, ceil(quota/period)),
// at most the CPUs the process may run on, and none for no limit. The
// receiver is not pinned (a pod's may run on every CPU of its node); the
// benchmark process (the emulator) and the load generators are pinned to
// all CPUs but the last unless CALLGUARD_BENCH_PIN=0.
//
// One iteration (b.N) is CALLGUARD_BENCH_ROUNDS rounds (default 3; the
// default -benchtime makes one iteration), a round each limit in turn,
// closed then paced, the limits in a rotated order each round, so that
// drift and other work on the machine fall on them alike. Each metric is the median over the
// rounds, named limit-mode-unit (e.g. limit500m-paced-p99-ack-ms); every
// run's figures are written to stderr as well ("cpulimit: round …").
// Without root and a writable cgroup v1 cpu hierarchy it skips.
func BenchmarkCPULimit(b *testing.B) {
	b.StopTimer()
	parent, why := cpuCgroupV1Parent()
	if why != "" {
		b.Skip("no cgroup v1 cpu cgroup for the receiver: " + why)
	}
	e := &limitEnv{}
	defer e.close(b)
	if why := e.start(b, parent); why != "" {
		b.Skip("no cgroup v1 cpu cgroup for the receiver: " + why)
	}
	rate := float64(benchRate)
	if r, err := strconv.ParseFloat(os.Getenv(rateEnv), 64); err == nil && r > 0 {
		rate = r
	}
	load0 := loadAverage()
	b.Logf("load average at the start: %s", load0)
	runs := map[string][]map[string]float64{} // by limit-mode
	b.ResetTimer()
	b.StartTimer()
	rounds := cpuLimitRounds
	if r, err := strconv.Atoi(os.Getenv(roundsEnv)); err == nil && r > 0 {
		rounds = r
	}
	for round := range b.N * rounds {
		for k := range cpuLimits {
			l := cpuLimits[(round+k)%len(cpuLimits)]
			for _, mode := range []string{"closed", "paced"} {
				n, r := cpuLimitClosedN, 0.0
				if mode == "paced" {
					n, r = int(rate*cpuLimitPacedSeconds), rate
				}
				m, refusal, err := e.measure(l, n, r)
				if err != nil {
					b.Fatalf("round %d, %s %s: %v", round+1, l.name, mode, err)
				}
				// On stderr: the testing package keeps ten lines of a
				// benchmark's log.
				fmt.Fprintf(os.Stderr, "cpulimit: round %d %s %s: %s (load average %s)\n", round+1, l.name, mode, formatMetrics(m), loadAverage())
				if refusal != nil {
					fmt.Fprintf(os.Stderr, "cpulimit: round %d %s %s: %v\n", round+1, l.name, mode, refusal)
				}
				runs[l.name+"-"+mode] = append(runs[l.name+"-"+mode], m)
			}
		}
	}
	b.StopTimer()
	load1 := loadAverage()
	b.Logf("load average at the end: %s", load1)
	// The 1-minute load averages, as figures: other work on the machine
	// shares its CPUs with the receiver and the driver.
	for unit, load := range map[string]string{"load1-start": load0, "load1-end": load1} {
		if v, err := strconv.ParseFloat(strings.Fields(load)[0], 64); err == nil {
			b.ReportMetric(v, unit)
		}
	}
	for key, ms := range runs {
		cols := map[string][]float64{}
		for _, m := range ms {
			for unit, v := range m {
				cols[unit] = append(cols[unit], v) // p99-action-ms is not in a run with refusals
			}
		}
		for unit, col := range cols {
			b.ReportMetric(median(col), key+"-"+unit)
		}
	}
	for _, l := range cpuLimits {
		b.ReportMetric(e.gomaxprocs[l.name], l.name+"-gomaxprocs")
	}
}

// cpuLimit is one CPU limit the receiver runs under.
type cpuLimit struct {
	name  string // the metrics' prefix
	quota int    // cpu.cfs_quota_us; -1 is no limit
}

var cpuLimits = []cpuLimit{{"limit500m", 50_000}, {"limit1000m", 100_000}, {"nolimit", -1}}

const (
	// roundsEnv=N sets BenchmarkCPULimit's rounds per iteration.
	roundsEnv      = "CALLGUARD_BENCH_ROUNDS"
	cpuLimitRounds = 3
	cpuPeriodUs    = 100_000
	// cpuLimitClosedN is the closed loop's notifications: 4–10 s here.
	cpuLimitClosedN = 30_000
	// cpuLimitPacedSeconds is how long the paced run sends.
	cpuLimitPacedSeconds = 10
)

// limitEnv is the emulator and a receiver child per limit, each in its
// cgroup.
type limitEnv struct {
	s          benchEnv
	cgroups    map[string]*cpuCgroup
	gomaxprocs map[string]float64
}

// start makes the cgroups under parent and starts the children (before
// this process is pinned, so that they are not), or says why it cannot
// make a cgroup.
func (e *limitEnv) start(b *testing.B, parent string) string {
	e.cgroups = map[string]*cpuCgroup{}
	e.gomaxprocs = map[string]float64{}
	for _, l := range cpuLimits {
		cg, why := newCPUCgroup(filepath.Join(parent, fmt.Sprintf("callguard-bench-cpu-%d-%s", os.Getpid(), l.name)), l.quota)
		if cg == nil {
			return why
		}
		e.cgroups[l.name] = cg
	}
	policyPath, caFile, err := e.s.prepare()
	if err != nil {
		b.Fatal(err)
	}
	e.s.children = map[string]*child{}
	for _, l := range cpuLimits {
		c, err := startLimitedReceiver(policyPath, caFile, e.s.emu.URL(), e.cgroups[l.name])
		if err != nil {
			b.Fatalf("%s: %v", l.name, err)
		}
		e.s.children[l.name] = c
		m, err := scrapeMetrics(c.ops + "/metrics")
		if err != nil {
			b.Fatalf("%s metrics: %v", l.name, err)
		}
		procs, ok := m["go_sched_gomaxprocs_threads"]
		if !ok {
			b.Fatalf("%s: no go_sched_gomaxprocs_threads on the metrics page", l.name)
		}
		e.gomaxprocs[l.name] = procs
		b.Logf("%s: receiver pid %d in %s (cpu.cfs_quota_us %d, cpu.cfs_period_us %d), GOMAXPROCS %v as the Go runtime chose",
			l.name, c.cmd.Process.Pid, e.cgroups[l.name].dir, l.quota, cpuPeriodUs, procs)
	}
	if _, err := e.s.pinDriver(); err != nil {
		b.Fatal(err)
	}
	for _, l := range cpuLimits {
		if _, _, err := e.s.drive(e.s.children[l.name], l.name, benchWarmup, 0, func() {}, func() {}); err != nil {
			b.Fatalf("%s warm-up: %v", l.name, err)
		}
	}
	return ""
}

func (e *limitEnv) close(b *testing.B) {
	e.s.stop()
	for _, cg := range e.cgroups {
		if err := removeCgroup(cg.dir); err != nil {
			b.Errorf("removing the cgroup %s: %v", cg.dir, err)
		}
	}
}

// measure makes one run of n notifications to the receiver under l (paced
// at rate, or a closed loop if 0) and returns its metrics by unit, and
// what was wrong when some were not acknowledged with 202 (counted in
// "refused").
func (e *limitEnv) measure(l cpuLimit, n int, rate float64) (m map[string]float64, refusal, err error) {
	c, cg := e.s.children[l.name], e.cgroups[l.name]
	var stat0, stat1 cpuStat
	var cpu0, cpu1 time.Duration
	var errs [4]error
	res, actions, err := e.s.drive(c, l.name, n, rate, func() {
		stat0, errs[0] = cg.stat()
		cpu0, errs[1] = c.cpuTime()
	}, func() {
		cpu1, errs[2] = c.cpuTime()
		stat1, errs[3] = cg.stat()
	})
	if res == nil || (err != nil && res.Refused == 0) {
		return nil, nil, err
	}
	if err := errors.Join(errs[:]...); err != nil {
		return nil, nil, err
	}
	refusal = err
	m = map[string]float64{"refused": float64(res.Refused)}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	secs := res.Elapsed.Seconds()
	// Acknowledged ones: a receiver whose work queue is full answers 503
	// at once (Retry-After), as it does when Graph's answers to its
	// actions fall behind its acknowledgements.
	m["notifications/s"] = float64(n-res.Refused) / secs
	m["p50-ack-ms"] = ms(percentile(res.Acks, 0.50))
	m["p99-ack-ms"] = ms(percentile(res.Acks, 0.99))
	m["max-ack-ms"] = ms(res.Acks[len(res.Acks)-1])
	if res.Refused == 0 {
		slices.Sort(actions)
		m["p99-action-ms"] = percentile(actions, 0.99)
	}
	if rate > 0 {
		m["p99-late-ms"] = ms(percentile(res.Late, 0.99))
	}
	m["cores"] = (cpu1 - cpu0).Seconds() / secs
	m["cpu-us/notification"] = float64((cpu1 - cpu0).Microseconds()) / float64(n)
	periods, throttled := stat1.periods-stat0.periods, stat1.throttled-stat0.throttled
	m["nr_periods"] = float64(periods)
	m["nr_throttled"] = float64(throttled)
	m["throttled-ms"] = float64(stat1.throttledNs-stat0.throttledNs) / 1e6
	if periods > 0 {
		m["throttled-%"] = 100 * float64(throttled) / float64(periods)
	} else {
		m["throttled-%"] = 0
	}
	return m, refusal, nil
}

// formatMetrics is m in a line, sorted by unit.
func formatMetrics(m map[string]float64) string {
	var out []string
	for _, unit := range slices.Sorted(maps.Keys(m)) {
		out = append(out, fmt.Sprintf("%s %.4g", unit, m[unit]))
	}
	return strings.Join(out, ", ")
}

// loadAverage is /proc/loadavg's 1, 5 and 15 minute load averages.
func loadAverage() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(raw))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// startLimitedReceiver starts a receiver child inside cg from its first
// instruction, so that the Go runtime sees the cgroup's quota when it
// sets GOMAXPROCS: a shell moves itself into the cgroup and execs the
// child. GOMAXPROCS is not set, nor the child pinned.
func startLimitedReceiver(policyPath, caFile, graphURL string, cg *cpuCgroup) (*child, error) {
	cmd := exec.Command("/bin/sh", "-c", `echo $$ > "$1" && exec "$0"`, os.Args[0], filepath.Join(cg.dir, "cgroup.procs"))
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOMAXPROCS=") && !strings.HasPrefix(kv, childCPUEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, childEnv+"=receiver", childPolicyEnv+"="+policyPath,
		childCAEnv+"="+caFile, childGraphEnv+"="+graphURL)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c, err := serveChild("receiver", cmd)
	if err != nil {
		return nil, err
	}
	// The child must be in cg, not merely started by a shell that was.
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", c.cmd.Process.Pid))
	if err != nil || !strings.Contains(string(raw), filepath.Base(cg.dir)) {
		c.stop()
		return nil, fmt.Errorf("the receiver child is not in %s: %s %v", cg.dir, raw, err)
	}
	return c, nil
}

// cpuCgroup is a cgroup v1 cpu cgroup with a CFS quota.
type cpuCgroup struct{ dir string }

// cpuCgroupV1Parent returns the directory of this process's cgroup in the
// cgroup v1 hierarchy of the cpu controller, or says why there is none.
func cpuCgroupV1Parent() (string, string) {
	if os.Geteuid() != 0 {
		return "", "not running as root"
	}
	own := ""
	raw, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err.Error()
	}
	for line := range strings.Lines(string(raw)) {
		f := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(f) == 3 && slices.Contains(strings.Split(f[1], ","), "cpu") {
			own = f[2]
		}
	}
	if own == "" {
		return "", "this process is in no cgroup v1 cpu hierarchy (/proc/self/cgroup; cgroup v2 only is not supported)"
	}
	raw, err = os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err.Error()
	}
	for line := range strings.Lines(string(raw)) {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 || g[0] != "cgroup" || !slices.Contains(strings.Split(g[2], ","), "cpu") {
			continue
		}
		rel, ok := strings.CutPrefix(own, f[3])
		if !ok {
			return "", fmt.Sprintf("this process's cpu cgroup %s is outside the mounted %s", own, f[3])
		}
		return filepath.Join(f[4], rel), ""
	}
	return "", "no cgroup v1 hierarchy with the cpu controller is mounted"
}

// newCPUCgroup makes the cgroup dir with cpu.cfs_period_us cpuPeriodUs and
// cpu.cfs_quota_us quota, or says why it cannot.
func newCPUCgroup(dir string, quota int) (*cpuCgroup, string) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, "cannot make a cgroup: " + err.Error()
	}
	cg := &cpuCgroup{dir: dir}
	for _, w := range [][2]string{{"cpu.cfs_period_us", strconv.Itoa(cpuPeriodUs)}, {"cpu.cfs_quota_us", strconv.Itoa(quota)}} {
		if err := os.WriteFile(filepath.Join(dir, w[0]), []byte(w[1]), 0); err != nil {
			_ = removeCgroup(dir)
			return nil, fmt.Sprintf("cannot set %s: %v", w[0], err)
		}
	}
	return cg, ""
}

// cpuStat is a cgroup v1 cpu.stat's bandwidth counters.
type cpuStat struct{ periods, throttled, throttledNs int64 }

func (cg *cpuCgroup) stat() (cpuStat, error) {
	raw, err := os.ReadFile(filepath.Join(cg.dir, "cpu.stat"))
	if err != nil {
		return cpuStat{}, err
	}
	var s cpuStat
	fields := map[string]*int64{"nr_periods": &s.periods, "nr_throttled": &s.throttled, "throttled_time": &s.throttledNs}
	for line := range strings.Lines(string(raw)) {
		f := strings.Fields(line)
		if len(f) == 2 && fields[f[0]] != nil {
			if *fields[f[0]], err = strconv.ParseInt(f[1], 10, 64); err != nil {
				return cpuStat{}, fmt.Errorf("cpu.stat: %w", err)
			}
			delete(fields, f[0])
		}
	}
	if len(fields) > 0 {
		return cpuStat{}, fmt.Errorf("cpu.stat of %s lacks %d of nr_periods, nr_throttled, throttled_time", cg.dir, len(fields))
	}
	return s, nil
}
