//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/receiver"
)

// The connection benchmarks (BenchmarkIdleConnections,
// BenchmarkConnectionFloods) open connections to a receiver that any pod
// able to reach its port could open, while Graph (the emulator) delivers
// genuine notifications (notify) whose calls must still be acted on. Each
// run gets a fresh receiver (cappedReceiver) set up as one in a container
// with 256 MiB of memory.

const (
	cappedReceiverChild = "capped-receiver"
	// maxConnsEnv is the receiver child's Options.MaxConnections.
	maxConnsEnv = "CALLGUARD_BENCH_MAX_CONNECTIONS"
	// cgroupEnv is the cgroup directory the receiver child moves itself
	// into first thing, so that all its memory is charged there.
	cgroupEnv = "CALLGUARD_BENCH_CGROUP"
	// receiverFilesEnv raises the receiver child's descriptor limit (as
	// root): a pod's is usually 1,048,576, this machine's 20,000, which
	// would cap the unbounded receiver by itself.
	receiverFilesEnv = "CALLGUARD_BENCH_RECEIVER_NOFILE"

	// containerMemory is the receiver's container memory.
	containerMemory = 256 << 20
	cgroupRoot      = "/sys/fs/cgroup"
)

// connEnv is the emulator and policy a connection benchmark's runs share.
type connEnv struct {
	dir, caFile, policy string
	emu                 *emulator.Server
	auth                string
	runs                int
	// handlerCPU is the receiver's CPU, or -1 unpinned; restore puts this
	// process back on the CPUs it had.
	handlerCPU int
	restore    func()
}

func newConnEnv() (*connEnv, error) {
	e := &connEnv{handlerCPU: -1, restore: func() {}}
	var err error
	if e.dir, err = os.MkdirTemp("", "callguard-conns"); err != nil {
		return nil, err
	}
	e.emu, err = emulator.New(emulator.Config{Bots: []emulator.Bot{{AppID: appID, TenantID: tenantID, Secret: secret}}, MissedAfter: time.Hour})
	if err == nil {
		err = e.emu.Start()
	}
	if err != nil {
		e.close()
		return nil, err
	}
	e.caFile = filepath.Join(e.dir, "ca.crt")
	e.policy = filepath.Join(e.dir, "policy.yaml")
	if err := os.WriteFile(e.caFile, e.emu.CACertPEM(), 0o600); err != nil {
		e.close()
		return nil, err
	}
	if err := os.WriteFile(e.policy, benchPolicy(e.emu.URL()), 0o600); err != nil {
		e.close()
		return nil, err
	}
	tok, err := e.emu.SignInboundToken(emulator.InboundClaims(appID, tenantID))
	if err != nil {
		e.close()
		return nil, err
	}
	e.auth = "Bearer " + tok
	// The receiver gets a CPU of its own, as in the other benchmarks; this
	// process, the client processes (which inherit its CPUs) and the
	// emulator share the rest.
	if os.Getenv(pinEnv) != "0" {
		var before unix.CPUSet
		if unix.SchedGetaffinity(0, &before) == nil {
			if cpu, driver, _, ok := splitCPUs(); ok && pinProcess(driver) == nil {
				procs := runtime.GOMAXPROCS(driver.Count())
				e.handlerCPU = cpu
				e.restore = func() {
					_ = pinProcess(&before)
					runtime.GOMAXPROCS(procs)
				}
			}
		}
	}
	return e, nil
}

func (e *connEnv) close() {
	e.restore()
	if e.emu != nil {
		_ = e.emu.Close()
	}
	_ = os.RemoveAll(e.dir)
}

// cappedReceiver is a receiver child as in the other benchmarks (a CPU of
// its own, GOMAXPROCS=1, the 100,000-entry policy) inside what a container
// with 256 MiB of memory gives it: a connection cap (maxConns; the
// receiver's own is receiver.ConnectionLimit(256 MiB)), GOMEMLIMIT at 90 %
// of 256 MiB as receiver.TuneGC sets inside one, and, as root with a
// writable cgroup hierarchy (v2, else v1), a memory cgroup of its own
// limited to 256 MiB without swap. While it runs, its peak RSS (VmHWM is
// gone with the process) and open connections are sampled.
type cappedReceiver struct {
	*child
	// cg is nil when no cgroup could be made (logged).
	cg                *memoryCgroup
	peakKiB, peakOpen atomic.Int64
	sampling, sampled chan struct{}
}

// startCapped starts a cappedReceiver for a run of the benchmark name,
// sampled every interval; close ends it.
func (e *connEnv) startCapped(b *testing.B, name string, maxConns int, interval time.Duration) *cappedReceiver {
	e.runs++
	r := &cappedReceiver{sampling: make(chan struct{}), sampled: make(chan struct{})}
	var why string
	r.cg, why = newMemoryCgroup(fmt.Sprintf("callguard-bench-%s-%d-%d", name, os.Getpid(), e.runs))
	if r.cg == nil {
		b.Logf("no memory cgroup: %s; the receiver runs without a 256 MiB limit (GOMEMLIMIT and the cap as in one)", why)
	} else {
		b.Logf("receiver in cgroup %s, memory limit 256M", r.cg.dir)
		b.Setenv(cgroupEnv, r.cg.dir)
	}
	b.Setenv(maxConnsEnv, strconv.Itoa(maxConns))
	b.Setenv("GOMEMLIMIT", strconv.Itoa(containerMemory*9/10))
	var err error
	if r.child, err = startChild(cappedReceiverChild, e.policy, e.caFile, e.emu.URL(), e.handlerCPU); err != nil {
		r.removeCgroup(b)
		b.Fatal(err)
	}
	go r.sample(interval)
	return r
}

func (r *cappedReceiver) sample(interval time.Duration) {
	defer close(r.sampled)
	pid := r.cmd.Process.Pid
	for {
		if hwm, _, err := procMemory(pid); err == nil {
			r.peakKiB.Store(max(r.peakKiB.Load(), hwm))
		}
		if m, err := scrapeMetrics(r.ops + "/metrics"); err == nil {
			r.peakOpen.Store(max(r.peakOpen.Load(), int64(m["callguard_receiver_connections_open"])))
		}
		select {
		case <-r.sampling:
			return
		case <-r.exited:
			return
		case <-time.After(interval):
		}
	}
}

// end stops the sampling and returns whether the receiver is alive, its
// peak and current RSS in KiB, and its unlabelled metrics (none when it
// died).
func (r *cappedReceiver) end(b *testing.B) (alive bool, peakKiB, rssKiB int64, m map[string]float64) {
	var hwm int64
	select {
	case <-r.exited:
		b.Logf("the receiver exited during the run (%v)", r.cmd.ProcessState)
	default:
		alive = true
		var err error
		if hwm, rssKiB, err = procMemory(r.cmd.Process.Pid); err != nil {
			b.Logf("receiver memory: %v", err)
		}
	}
	close(r.sampling)
	<-r.sampled
	m = map[string]float64{}
	if alive {
		var err error
		if m, err = scrapeMetrics(r.ops + "/metrics"); err != nil {
			b.Logf("receiver metrics: %v", err)
		}
	}
	return alive, max(r.peakKiB.Load(), hwm), rssKiB, m
}

// close stops the receiver and removes its cgroup.
func (r *cappedReceiver) close(b *testing.B) {
	r.stop()
	r.removeCgroup(b)
}

func (r *cappedReceiver) removeCgroup(b *testing.B) {
	if r.cg == nil {
		return
	}
	if err := r.cg.remove(); err != nil {
		b.Logf("removing the cgroup: %v", err)
	}
}

// notifyResult is what notify sent: the call ids, how many were answered
// 202, and the first failure.
type notifyResult struct {
	ids      []string
	acked    int
	firstErr string
}

// notify registers n calls on the emulator and posts their signed
// notifications to callback at rate a second, each on a kept-alive
// connection (a few in all), as Graph delivers. A notification whose
// connection the receiver closed is sent again on a new one, up to three
// times, as Graph retries delivery.
func (e *connEnv) notify(callback, tag string, n int, rate float64) notifyResult {
	res := notifyResult{ids: make([]string, n)}
	bodies := make([][]byte, n)
	for i := range n {
		res.ids[i] = fmt.Sprintf("bench-%s-%d", tag, i)
		number := benchNumber(i*7919 + len(tag))
		bodies[i] = benchBody(res.ids[i], number)
		if _, err := e.emu.PlaceCall(context.Background(), emulator.PlaceCallRequest{
			AppID: appID, CallbackURI: callback, Deliver: new(false),
			Source: &graph.IdentitySet{Phone: &graph.Identity{ID: number}},
			Call:   map[string]any{"id": res.ids[i]},
		}); err != nil {
			res.firstErr = err.Error()
			return res
		}
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	defer hc.CloseIdleConnections()
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		if d := time.Until(start.Add(time.Duration(float64(i) / rate * float64(time.Second)))); d > 0 {
			time.Sleep(d)
		}
		wg.Go(func() {
			var err error
			for range 3 {
				var req *http.Request
				req, err = http.NewRequest(http.MethodPost, callback, bytes.NewReader(bodies[i]))
				if err != nil {
					break
				}
				req.Header.Set("Authorization", e.auth)
				req.Header.Set("Content-Type", "application/json")
				var resp *http.Response
				if resp, err = hc.Do(req); err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					err = fmt.Errorf("HTTP %d", resp.StatusCode)
				}
				break
			}
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				res.acked++
			} else if res.firstErr == "" {
				res.firstErr = err.Error()
			}
		})
	}
	wg.Wait()
	return res
}

// decided waits up to timeout for Graph to have every call of ids
// rejected (busy) and returns how many it has.
func (e *connEnv) decided(ids []string, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		n := 0
		for _, id := range ids {
			if rec, _ := e.emu.Call(id); rec.Action == "reject" && rec.Reason == "busy" {
				n++
			}
		}
		if n == len(ids) || time.Now().After(deadline) {
			return n
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// procMemory returns a process's VmHWM and VmRSS in KiB.
func procMemory(pid int) (hwm, rss int64, err error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(raw)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmHWM:":
			hwm, _ = strconv.ParseInt(f[1], 10, 64)
		case "VmRSS:":
			rss, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return hwm, rss, nil
}

// scrapeMetrics reads the unlabelled samples of a Prometheus text page.
func scrapeMetrics(u string) (map[string]float64, error) {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil {
			out[name] = v
		}
	}
	return out, sc.Err()
}

// memoryCgroup is a cgroup v2 directory with memory.max set, or a cgroup
// v1 memory directory with memory.limit_in_bytes set.
type memoryCgroup struct {
	dir string
	v1  bool
}

// cgroupV1Memory is where a cgroup v1 hierarchy mounts the memory
// controller.
const cgroupV1Memory = cgroupRoot + "/memory"

// newMemoryCgroup makes a cgroup of name with a memory limit of 256 MiB and
// no swap: under the cgroup v2 root, else under the cgroup v1 memory
// controller; or says why it cannot (not root, neither hierarchy, not
// writable).
func newMemoryCgroup(name string) (*memoryCgroup, string) {
	if os.Geteuid() != 0 {
		return nil, "not running as root"
	}
	cg, why := newMemoryCgroupV2(name)
	if cg != nil {
		return cg, ""
	}
	if _, err := os.Stat(filepath.Join(cgroupV1Memory, "memory.limit_in_bytes")); err != nil {
		return nil, why + "; no cgroup v1 memory controller at " + cgroupV1Memory
	}
	cg = &memoryCgroup{dir: filepath.Join(cgroupV1Memory, name), v1: true}
	if err := os.Mkdir(cg.dir, 0o755); err != nil {
		return nil, "cannot make a cgroup v1 memory cgroup: " + err.Error()
	}
	limit := []byte(strconv.Itoa(containerMemory))
	if err := os.WriteFile(filepath.Join(cg.dir, "memory.limit_in_bytes"), limit, 0); err != nil {
		_ = cg.remove()
		return nil, "cannot set memory.limit_in_bytes: " + err.Error()
	}
	// No swap, as in a container (where the kernel accounts swap).
	_ = os.WriteFile(filepath.Join(cg.dir, "memory.memsw.limit_in_bytes"), limit, 0)
	return cg, ""
}

func newMemoryCgroupV2(name string) (*memoryCgroup, string) {
	controllers, err := os.ReadFile(filepath.Join(cgroupRoot, "cgroup.controllers"))
	if err != nil {
		return nil, cgroupRoot + " is not a cgroup v2 hierarchy (" + err.Error() + ")"
	}
	if !slices.Contains(strings.Fields(string(controllers)), "memory") {
		return nil, "the cgroup v2 hierarchy at " + cgroupRoot + " has no memory controller"
	}
	subtree, err := os.ReadFile(filepath.Join(cgroupRoot, "cgroup.subtree_control"))
	if err != nil {
		return nil, err.Error()
	}
	if !slices.Contains(strings.Fields(string(subtree)), "memory") {
		if err := os.WriteFile(filepath.Join(cgroupRoot, "cgroup.subtree_control"), []byte("+memory"), 0); err != nil {
			return nil, "cannot enable the memory controller for child cgroups: " + err.Error()
		}
	}
	cg := &memoryCgroup{dir: filepath.Join(cgroupRoot, name)}
	if err := os.Mkdir(cg.dir, 0o755); err != nil {
		return nil, "cannot make a cgroup: " + err.Error()
	}
	if err := os.WriteFile(filepath.Join(cg.dir, "memory.max"), []byte(strconv.Itoa(containerMemory)), 0); err != nil {
		_ = cg.remove()
		return nil, "cannot set memory.max: " + err.Error()
	}
	// A container has no swap to spill to either (where swap exists).
	_ = os.WriteFile(filepath.Join(cg.dir, "memory.swap.max"), []byte("0"), 0)
	return cg, ""
}

// oomKills reads the oom_kill count: memory.events (v2) or
// memory.oom_control (v1).
func (cg *memoryCgroup) oomKills() (int, error) {
	file := "memory.events"
	if cg.v1 {
		file = "memory.oom_control"
	}
	raw, err := os.ReadFile(filepath.Join(cg.dir, file))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(raw)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "oom_kill "); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, errors.New("no oom_kill in " + file)
}

// peak reads the most memory the cgroup was charged (the limit is
// enforced on this, socket buffers and page cache included): memory.peak
// (v2) or memory.max_usage_in_bytes (v1).
func (cg *memoryCgroup) peak() (int64, error) {
	file := "memory.peak"
	if cg.v1 {
		file = "memory.max_usage_in_bytes"
	}
	raw, err := os.ReadFile(filepath.Join(cg.dir, file))
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(raw)), 10, 64)
}

// remove removes the cgroup once its processes have left it.
func (cg *memoryCgroup) remove() error { return removeCgroup(cg.dir) }

// removeCgroup removes a cgroup directory once its processes have left it.
func removeCgroup(dir string) error {
	var err error
	for range 50 {
		if err = os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// runCappedReceiverChild is runReceiverChild with the connection cap from
// maxConnsEnv, in the cgroup of cgroupEnv if set.
func runCappedReceiverChild() int {
	if dir := os.Getenv(cgroupEnv); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			fmt.Fprintln(os.Stderr, "joining the cgroup:", err)
			return 1
		}
	}
	if n, err := strconv.ParseUint(os.Getenv(receiverFilesEnv), 10, 64); err == nil {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: n}); err != nil {
			fmt.Fprintln(os.Stderr, "raising the descriptor limit:", err)
		}
	}
	maxConns, err := strconv.Atoi(os.Getenv(maxConnsEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, maxConnsEnv+":", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	log := childLogger()
	receiver.TuneGC(log)
	if err := receiver.Run(ctx, receiver.Options{
		PolicyFile:     os.Getenv(childPolicyEnv),
		CAFile:         os.Getenv(childCAEnv),
		Listen:         "127.0.0.1:0",
		MetricsListen:  "127.0.0.1:0",
		Logger:         log,
		ShutdownGrace:  10 * time.Millisecond,
		MaxConnections: maxConns,
	}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
