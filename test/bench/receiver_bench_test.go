//go:build linux

// Package bench measures the receiver against a baseline bot from outside:
// only the receiver's exported API, the emulator and the Graph client, so
// that the receiver's own package holds nothing but the receiver and its
// tests.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
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
	"github.com/callguard/callguard/internal/telemetry"
)

// The benchmark runs the receiver, and a baseline handler, each in a child
// process (this test binary again) with GOMAXPROCS=1 on a CPU of its own,
// against the emulator in this process, and drives them with a load
// generator (loadgen_test.go) posting notifications signed by the
// emulator's callback-token key.
//
// Every notification is of a call registered on the emulator without
// delivery (placing one with delivery makes the emulator sign a callback
// token, RSA, about 1.8 ms of CPU, which two cores cannot do thousands of
// times a second besides the receiver); the load loop posts the
// notifications itself with one reused token, and the emulator answers the
// rejects as Graph does: 202, the call rejected once.
const (
	childEnv       = "CALLGUARD_BENCH_CHILD"
	childPolicyEnv = "CALLGUARD_BENCH_POLICY"
	childCAEnv     = "CALLGUARD_BENCH_CA"
	childGraphEnv  = "CALLGUARD_BENCH_GRAPH"
	// childStateEnv is a receiver child's state dir (Options.StateDir).
	childStateEnv = "CALLGUARD_BENCH_STATE_DIR"
	cpuProfileEnv = "CALLGUARD_BENCH_CPUPROFILE"
	memProfileEnv = "CALLGUARD_BENCH_MEMPROFILE"
	// childCPUEnv=N pins a child to CPU N.
	childCPUEnv = "CALLGUARD_BENCH_CPU"
	// pinEnv=0 leaves the processes where the scheduler puts them.
	pinEnv = "CALLGUARD_BENCH_PIN"
	// rateEnv=N sets BenchmarkReceiverAcknowledgement's rate.
	rateEnv = "CALLGUARD_BENCH_RATE"
	// pairsEnv=N sets how many pairs of runs a benchmark makes.
	pairsEnv = "CALLGUARD_BENCH_PAIRS"
	// benchPairs is the default number of pairs.
	benchPairs = 5

	// The bot the children serve; the secret only opens the emulator.
	appID    = "6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10"
	tenantID = "0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55"
	secret   = "emulated~secret"

	benchListSize = 100_000
	// benchConcurrency is how many notifications are in flight at once, as
	// Graph's delivery would have for a busy bot.
	benchConcurrency = 8
)

func TestMain(m *testing.M) {
	if cpu := os.Getenv(childCPUEnv); cpu != "" {
		n, err := strconv.Atoi(cpu)
		if err == nil {
			err = pinProcess(cpuSet(n))
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "pinning:", err)
			os.Exit(1)
		}
	}
	switch os.Getenv(childEnv) {
	case "receiver":
		os.Exit(runReceiverChild())
	case "baseline":
		os.Exit(runBaselineChild())
	case loadChild:
		os.Exit(runLoadChild())
	case cappedReceiverChild:
		os.Exit(runCappedReceiverChild())
	case idleClientsChild:
		os.Exit(runIdleClientsChild())
	}
	code := m.Run()
	benchSetup.stop()
	os.Exit(code)
}

func childLogger() *slog.Logger { return slog.New(slog.NewJSONHandler(os.Stderr, nil)) }

func runReceiverChild() int {
	// CALLGUARD_BENCH_CPUPROFILE=FILE profiles the receiver child, to see
	// where its time goes.
	if path := os.Getenv(cpuProfileEnv); path != "" {
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	// CALLGUARD_BENCH_MEMPROFILE=FILE writes its allocation profile at exit.
	if path := os.Getenv(memProfileEnv); path != "" {
		defer func() {
			f, err := os.Create(path)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return
			}
			defer f.Close()
			_ = pprof.Lookup("allocs").WriteTo(f, 0)
		}()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	log := childLogger()
	receiver.TuneGC(log) // as cmd/receiver does
	err := receiver.Run(ctx, receiver.Options{
		PolicyFile:    os.Getenv(childPolicyEnv),
		CAFile:        os.Getenv(childCAEnv),
		StateDir:      os.Getenv(childStateEnv),
		Listen:        "127.0.0.1:0",
		MetricsListen: "127.0.0.1:0",
		Logger:        log,
		ShutdownGrace: 10 * time.Millisecond,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// runBaselineChild serves the least a bot must do: verify the token,
// decode, acknowledge, and POST the reject from a goroutine per call; no
// policy, no deduplication, no pool. It logs one line per call, as the
// receiver does. It has as many Graph requests in flight at most as the
// receiver has workers, so that both use Graph alike: unbounded, a
// saturating load opened ever more HTTP/2 connections (each a TLS
// handshake at the emulator), Graph's answers slowed past the client's
// attempt timeout, and rejects Graph had carried out were sent again.
func runBaselineChild() int {
	log := childLogger()
	endpoint := os.Getenv(childGraphEnv)
	hc, err := graph.NewHTTPClient(os.Getenv(childCAEnv))
	if err != nil {
		log.Error("baseline", "error", err)
		return 1
	}
	keys := graph.NewKeySet(endpoint+"/v1/.well-known/OpenIdConfiguration", hc)
	if err := keys.Refresh(context.Background()); err != nil {
		log.Error("baseline", "error", err)
		return 1
	}
	v := &graph.Verifier{Keys: keys, Issuers: []string{emulator.InboundIssuer}, Audience: appID, TenantID: tenantID}
	cred, err := graph.NewCredential(graph.CredentialConfig{
		TenantID: tenantID, ClientID: appID, AuthorityHost: endpoint + "/", HTTPClient: hc,
		Secret: map[string][]byte{graph.SecretKeyClientSecret: []byte(secret)},
	})
	if err != nil {
		log.Error("baseline", "error", err)
		return 1
	}
	client, err := graph.NewClient(graph.ClientConfig{Endpoint: endpoint, APIVersion: "v1.0", Credential: cred, HTTPClient: hc})
	if err != nil {
		log.Error("baseline", "error", err)
		return 1
	}
	inFlight := make(chan struct{}, receiver.Workers)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("POST /api/calls", func(w http.ResponseWriter, r *http.Request) {
		arrival := time.Now()
		if err := v.Verify(r.Context(), r.Header.Get("Authorization")); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, receiver.MaxBody))
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		batch, err := graph.DecodeNotifications(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for _, n := range batch.Value {
			if !n.IsIncomingCall() {
				continue
			}
			go func() {
				ctx, cancel := context.WithDeadline(context.Background(), arrival.Add(receiver.DefaultDeadline))
				defer cancel()
				inFlight <- struct{}{}
				err := client.Reject(ctx, n.CallID(), "busy")
				<-inFlight
				rec := telemetry.Decision{Time: arrival, CallID: n.CallID(), LatencyMs: float64(time.Since(arrival).Microseconds()) / 1000}
				if err != nil {
					rec.Error = err.Error()
				}
				log.Info("decision", "decision", json.RawMessage(rec.AppendJSON(nil)))
			}()
		}
		w.WriteHeader(http.StatusAccepted)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Error("baseline", "error", err)
		return 1
	}
	log.Info("receiver listening", "listen", ln.Addr().String(), "metricsListen", ln.Addr().String())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		<-sig
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		log.Error("baseline", "error", err)
		return 1
	}
	return 0
}

// child is a running receiver or baseline process.
type child struct {
	cmd      *exec.Cmd
	callback string
	ops      string

	mu        sync.Mutex
	latencies map[string]float64 // call id → notification-to-action ms
	failures  int
	// firstFailure is the error of the first failed call.
	firstFailure string
	exited       chan struct{}
	warm         bool // had its unmeasured warm-up
	// tenants is how many of benchEnv's tenants its calls come from in
	// turn (0: the home tenant only).
	tenants int
}

// startChild starts a receiver or baseline child, pinned to cpu unless it
// is negative, with env (KEY=value) added to its environment.
func startChild(kind, policyPath, caFile, graphURL string, cpu int, env ...string) (*child, error) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"="+kind, childPolicyEnv+"="+policyPath,
		childCAEnv+"="+caFile, childGraphEnv+"="+graphURL, "GOMAXPROCS=1")
	cmd.Env = append(cmd.Env, env...)
	if cpu >= 0 {
		cmd.Env = append(cmd.Env, childCPUEnv+"="+strconv.Itoa(cpu))
	}
	// An interrupted benchmark leaves no child serving.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return serveChild(kind, cmd)
}

// serveChild starts cmd, a receiver or baseline child, reads its log and
// waits for it to be ready.
func serveChild(kind string, cmd *exec.Cmd) (*child, error) {
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s child: %w", kind, err)
	}
	c := &child{cmd: cmd, latencies: map[string]float64{}, exited: make(chan struct{})}
	addrs := make(chan [2]string, 1)
	go func() {
		defer close(c.exited)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if id, ms, errText, ok := decisionLine(sc.Bytes()); ok {
				c.decided(id, ms, errText)
				continue
			}
			var line struct {
				Msg      string             `json:"msg"`
				Listen   string             `json:"listen"`
				Metrics  string             `json:"metricsListen"`
				Decision telemetry.Decision `json:"decision"`
			}
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				continue
			}
			switch line.Msg {
			case "receiver listening":
				addrs <- [2]string{line.Listen, line.Metrics}
			case "decision":
				c.decided(line.Decision.CallID, line.Decision.LatencyMs, line.Decision.Error)
			}
		}
		_ = cmd.Wait()
	}()
	select {
	case a := <-addrs:
		c.callback = "http://" + a[0] + "/api/calls"
		c.ops = "http://" + a[1]
	case <-c.exited:
		return nil, fmt.Errorf("%s child exited before listening", kind)
	case <-time.After(30 * time.Second):
		c.stop()
		return nil, fmt.Errorf("%s child did not start listening", kind)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(c.ops + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return c, nil
			}
		}
		if time.Now().After(deadline) {
			c.stop()
			return nil, fmt.Errorf("%s child not ready", kind)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// decided records a decision the child logged.
func (c *child) decided(callID string, latencyMs float64, errText string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.latencies[callID] = latencyMs
	if errText != "" {
		if c.failures == 0 {
			c.firstFailure = errText
		}
		c.failures++
	}
}

// decisionLine reads the fields the benchmark needs from a "decision" log
// line without decoding all of it: this process shares the machine with
// the child, so its CPU per notification matters. It reports false for
// other lines, and for values with escapes, which json.Unmarshal reads.
func decisionLine(line []byte) (callID string, latencyMs float64, errText string, ok bool) {
	if !bytes.Contains(line, []byte(`"msg":"decision"`)) {
		return "", 0, "", false
	}
	callID, ok = jsonStringMember(line, "callId")
	if !ok {
		return "", 0, "", false
	}
	i := bytes.Index(line, []byte(`"latencyMs":`))
	if i < 0 {
		return "", 0, "", false
	}
	num := line[i+len(`"latencyMs":`):]
	if end := bytes.IndexAny(num, ",}"); end >= 0 {
		num = num[:end]
	}
	latencyMs, err := strconv.ParseFloat(string(num), 64)
	if err != nil {
		return "", 0, "", false
	}
	if bytes.Contains(line, []byte(`"error":"`)) {
		if errText, ok = jsonStringMember(line, "error"); !ok {
			return "", 0, "", false
		}
	}
	return callID, latencyMs, errText, true
}

// jsonStringMember returns the string member key of a one-line JSON
// object, unless it holds an escape.
func jsonStringMember(line []byte, key string) (string, bool) {
	prefix := `"` + key + `":"`
	i := bytes.Index(line, []byte(prefix))
	if i < 0 {
		return "", false
	}
	v := line[i+len(prefix):]
	end := bytes.IndexByte(v, '"')
	if end < 0 || bytes.IndexByte(v[:end], '\\') >= 0 {
		return "", false
	}
	return string(v[:end]), true
}

func (c *child) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

// cpuTime is the child's user plus system CPU time so far.
func (c *child) cpuTime() (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("child CPU time: %w", err)
	}
	// Fields after the parenthesised command name; utime and stime are
	// the 14th and 15th fields overall, in clock ticks (100 a second on Linux).
	fields := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	if len(fields) < 13 {
		return 0, errors.New("child CPU time: short /proc stat")
	}
	var utime, stime int64
	if _, err := fmt.Sscan(fields[11], &utime); err != nil {
		return 0, fmt.Errorf("child CPU time: %w", err)
	}
	if _, err := fmt.Sscan(fields[12], &stime); err != nil {
		return 0, fmt.Errorf("child CPU time: %w", err)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// actionLatencies waits for the decisions of ids and returns their
// latencies in ms.
func (c *child) actionLatencies(ids []string, timeout time.Duration) ([]float64, error) {
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		out := make([]float64, 0, len(ids))
		for _, id := range ids {
			if l, ok := c.latencies[id]; ok {
				out = append(out, l)
			}
		}
		failures, first := c.failures, c.firstFailure
		c.mu.Unlock()
		if failures > 0 {
			return nil, fmt.Errorf("%d calls failed; first: %s", failures, first)
		}
		if len(out) == len(ids) {
			for _, id := range ids {
				delete(c.latencies, id)
			}
			return out, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d decisions logged", len(out), len(ids))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// benchEnv is the emulator, the children's policy and CA files, and the
// children, with this process pinned apart from them. benchSetup, the
// baseline and receiver of the throughput and acknowledgement benchmarks,
// is set up once per test binary: making a 100k-entry policy, the emulator
// and two children takes a few seconds.
type benchEnv struct {
	// tenants, when above 1, registers the bot on the emulator in that many
	// tenants (manyTenantID), with a callback token signed for each.
	tenants int

	once      sync.Once
	err       error
	dir       string
	emu       *emulator.Server
	children  map[string]*child
	auth      string
	authAt    time.Time
	tenantIDs []string // the home tenant first
	auths     []string // a callback token per tenant of tenantIDs
	runs      atomic.Int64
	// unpinned is this process's CPU set before the benchmark pinned it.
	unpinned  *unix.CPUSet
	procs     int            // GOMAXPROCS before pinning
	gcPercent int            // before the benchmark set it
	stamps    net.PacketConn // see holdTimestamping
}

var benchSetup benchEnv

func (s *benchEnv) get(b *testing.B) *benchEnv {
	b.Helper()
	s.once.Do(func() { s.err = s.start() })
	if s.err != nil {
		b.Fatal(s.err)
	}
	return s
}

func (s *benchEnv) start() error {
	policyPath, caFile, err := s.prepare()
	if err != nil {
		return err
	}
	handlerCPU, err := s.pinDriver()
	if err != nil {
		return err
	}
	s.children = map[string]*child{}
	for _, kind := range []string{"baseline", "receiver"} {
		c, err := startChild(kind, policyPath, caFile, s.emu.URL(), handlerCPU)
		if err != nil {
			return err
		}
		s.children[kind] = c
	}
	return nil
}

// prepare starts the emulator and writes the children's policy and CA
// files.
func (s *benchEnv) prepare() (policyPath, caFile string, err error) {
	dir, err := os.MkdirTemp("", "callguard-bench")
	if err != nil {
		return "", "", err
	}
	s.dir = dir
	if s.stamps, err = holdTimestamping(); err != nil {
		return "", "", err
	}
	bots := []emulator.Bot{{AppID: appID, TenantID: tenantID, Secret: secret}}
	s.tenantIDs = []string{tenantID}
	for i := 1; i < s.tenants; i++ {
		s.tenantIDs = append(s.tenantIDs, manyTenantID(i))
		bots = append(bots, emulator.Bot{AppID: appID, TenantID: s.tenantIDs[i]})
	}
	s.emu, err = emulator.New(emulator.Config{Bots: bots, MissedAfter: time.Hour})
	if err != nil {
		return "", "", err
	}
	if err := s.emu.Start(); err != nil {
		return "", "", err
	}
	if s.tenants > 1 {
		for _, t := range s.tenantIDs {
			tok, err := s.emu.SignInboundToken(emulator.InboundClaims(appID, t))
			if err != nil {
				return "", "", err
			}
			s.auths = append(s.auths, "Bearer "+tok)
		}
	}
	caFile = filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, s.emu.CACertPEM(), 0o600); err != nil {
		return "", "", err
	}
	policyPath = filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyPath, benchPolicy(s.emu.URL()), 0o600); err != nil {
		return "", "", err
	}
	// The emulator plays Graph, whose collections are not under test: at
	// the default GOGC its pauses held Graph's answers back in bunches,
	// which then reached the handler at once.
	s.gcPercent = debug.SetGCPercent(400)
	return policyPath, caFile, nil
}

// pinDriver pins this process (the emulator, and the load generators it
// starts) to all CPUs but the last, and returns the last, the handler's,
// or -1 when pinning is off or there are fewer than two CPUs.
func (s *benchEnv) pinDriver() (int, error) {
	if os.Getenv(pinEnv) == "0" {
		return -1, nil
	}
	cpu, driver, all, ok := splitCPUs()
	if !ok {
		return -1, nil
	}
	if err := pinProcess(driver); err != nil {
		return -1, fmt.Errorf("pinning the benchmark: %w", err)
	}
	s.unpinned = all
	s.procs = runtime.GOMAXPROCS(driver.Count())
	return cpu, nil
}

func (s *benchEnv) stop() {
	for _, c := range s.children {
		c.stop()
	}
	if s.emu != nil {
		_ = s.emu.Close()
	}
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
	}
	if s.stamps != nil {
		_ = s.stamps.Close()
	}
	if s.unpinned != nil {
		_ = pinProcess(s.unpinned)
		runtime.GOMAXPROCS(s.procs)
	}
	if s.gcPercent != 0 {
		debug.SetGCPercent(s.gcPercent)
	}
}

// token returns a callback token, re-signed before it expires: Graph, too,
// reuses its callback tokens.
func (s *benchEnv) token() (string, error) {
	if time.Since(s.authAt) > 5*time.Minute {
		tok, err := s.emu.SignInboundToken(emulator.InboundClaims(appID, tenantID))
		if err != nil {
			return "", err
		}
		s.auth, s.authAt = "Bearer "+tok, time.Now()
	}
	return s.auth, nil
}

func benchNumber(i int) string { return fmt.Sprintf("+1555%07d", i%benchListSize) }

// benchPolicy rejects every number of a 100,000-entry list.
func benchPolicy(emulatorURL string) []byte {
	var list strings.Builder
	for i := range benchListSize {
		list.WriteString("      " + benchNumber(i) + "\n")
	}
	return []byte(`apiVersion: calls.callguard.dev/v1alpha1
kind: CallPolicy
metadata: {name: bench, namespace: default}
spec:
  bot:
    appId: ` + appID + `
    tenantId: ` + tenantID + `
    credentials: {secretRef: {name: bench-bot}}
  graph:
    endpoint: ` + emulatorURL + `
    authorityHost: ` + emulatorURL + `/
    openIDConfigURL: ` + emulatorURL + `/v1/.well-known/OpenIdConfiguration
  defaultAction: Allow
  rules:
    - name: vip
      action: Allow
      match: {callers: {numbers: ["+14255550100"]}}
    - name: premium-rate
      action: Reject
      reason: forbidden
      match: {callers: {numberPrefixes: ["+1900", "+44909"]}}
    - name: blocklist
      action: Reject
      reason: busy
      match:
        callers:
          numberLists:
            - configMapKeyRef: {name: blocklist, key: numbers.txt}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: blocklist, namespace: default}
data:
  numbers.txt: |
` + list.String() + `---
apiVersion: v1
kind: Secret
metadata: {name: bench-bot, namespace: default}
stringData:
  client-secret: ` + secret + `
`)
}

// BenchmarkReceiverThroughput drives the baseline and the receiver with a
// closed loop (benchConcurrency notifications in flight, the next sent as
// one is acknowledged), so it measures what they sustain at saturation:
// notifications/s, and the receiver's over the baseline's in each pair of
// runs (see compare). Its acknowledgement times are those of a saturated
// server, set by its queue.
func BenchmarkReceiverThroughput(b *testing.B) {
	benchSetup.get(b).compare(b, 0)
}

// benchRate is Graph's per-tenant ceiling: 50,000 requests per 15 s.
const benchRate = 3400

// BenchmarkReceiverAcknowledgement sends notifications at Graph's
// per-tenant ceiling (or CALLGUARD_BENCH_RATE a second), whatever the
// handler answers, and reports the p50 and p99 acknowledgement latency
// and p99 notification-to-action latency at that rate.
func BenchmarkReceiverAcknowledgement(b *testing.B) {
	s := benchSetup.get(b)
	rate := float64(benchRate)
	if r, err := strconv.ParseFloat(os.Getenv(rateEnv), 64); err == nil && r > 0 {
		rate = r
	}
	s.compare(b, rate)
}

// handlers are the children in the order each pair runs them.
var handlers = []string{"baseline", "receiver"}

// compare gives b.N notifications to each handler in pairs of runs: a
// baseline run, then a receiver run of the same size, then the next pair.
// The VM's speed drifts over minutes; with all baseline runs before all
// receiver runs that drift landed in their ratio (0.58–0.82 in one sitting,
// 1.05–1.15 twenty minutes later), while the two runs of a pair see about
// the same machine. It reports each metric's median over the pairs (the
// baseline's prefixed "baseline-") and, in the closed loop, each pair's
// throughput ratio and their median, x-baseline-median. The timer runs
// only while the receiver's notifications are sent, so ns/op is the
// receiver's.
func (s *benchEnv) compare(b *testing.B, rate float64) {
	b.StopTimer()
	b.ResetTimer()
	for _, kind := range handlers {
		c := s.children[kind]
		if c.warm {
			continue
		}
		if _, _, err := s.drive(c, kind, benchWarmup, 0, func() {}, func() {}); err != nil {
			b.Fatalf("%s warm-up: %v", kind, err)
		}
		c.warm = true
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
		for _, kind := range handlers {
			m, err := s.measure(b, kind, n, rate)
			if err != nil {
				b.Fatalf("pair %d, %s: %v", i+1, kind, err)
			}
			runs[kind] = append(runs[kind], m)
		}
	}
	column := func(kind, unit string) []float64 {
		var out []float64
		for _, m := range runs[kind] {
			out = append(out, m[unit])
		}
		return out
	}
	for _, kind := range handlers {
		prefix := ""
		if kind == "baseline" {
			prefix = "baseline-"
		}
		for unit := range runs[kind][0] {
			b.ReportMetric(median(column(kind, unit)), prefix+unit)
		}
	}
	// Paced, both handlers keep the set rate, so their ratio says nothing.
	if rate > 0 {
		return
	}
	base, recv := column("baseline", "notifications/s"), column("receiver", "notifications/s")
	ratios := make([]float64, pairs)
	for i := range ratios {
		ratios[i] = recv[i] / base[i]
		b.ReportMetric(ratios[i], fmt.Sprintf("x-baseline-pair%d", i+1))
	}
	b.ReportMetric(median(ratios), "x-baseline-median")
}

// drive registers n calls on the emulator (from c's tenants in turn, each
// notification with its tenant's token), has a load generator post their
// notifications to c (paced at rate, or a closed loop if rate is 0; started
// is called just before it sends, sent once it has every acknowledgement),
// and checks that every one was acknowledged with 202 and rejected (busy)
// on Graph in its tenant. It returns the generator's report and the
// notification-to-action latencies in ms; when some were not acknowledged,
// the report too with the error.
func (s *benchEnv) drive(c *child, kind string, n int, rate float64, started, sent func()) (*loadResult, []float64, error) {
	run := s.runs.Add(1)
	u, err := url.Parse(c.callback)
	if err != nil {
		return nil, nil, err
	}
	auth, err := s.token()
	if err != nil {
		return nil, nil, err
	}
	plan := loadPlan{Addr: u.Host, Path: u.Path, Auth: auth, Rate: rate, Conns: benchConcurrency, MaxConns: 64,
		IDs: make([]string, n), Numbers: make([]string, n)}
	tenants := max(c.tenants, 1)
	if tenants > 1 {
		plan.Auths = s.auths[:tenants]
	}
	for i := range n {
		plan.IDs[i] = fmt.Sprintf("bench-%s-%d-%d", kind, run, i)
		plan.Numbers[i] = benchNumber(int(run)*7919 + i)
		if _, err := s.emu.PlaceCall(context.Background(), emulator.PlaceCallRequest{
			AppID: appID, TenantID: s.tenantIDs[i%tenants], CallbackURI: c.callback, Deliver: new(false),
			Source: &graph.IdentitySet{Phone: &graph.Identity{ID: plan.Numbers[i]}},
			Call:   map[string]any{"id": plan.IDs[i]},
		}); err != nil {
			return nil, nil, err
		}
	}
	// The registrations' garbage is not the run's.
	runtime.GC()
	res, err := runLoad(plan, started)
	sent()
	if err != nil {
		return nil, nil, err
	}
	if res.Refused > 0 {
		return res, nil, fmt.Errorf("%d of %d notifications not acknowledged with 202; first: %s", res.Refused, n, res.Error)
	}
	actions, err := c.actionLatencies(plan.IDs, 60*time.Second)
	if err != nil {
		return nil, nil, err
	}
	for i, id := range plan.IDs {
		rec, _ := s.emu.Call(id)
		if want := s.tenantIDs[i%tenants]; rec.Action != "reject" || rec.Reason != "busy" || !strings.EqualFold(rec.TenantID, want) {
			return nil, nil, fmt.Errorf("call %s: Graph has action %q reason %q in tenant %s, want reject busy in %s", id, rec.Action, rec.Reason, rec.TenantID, want)
		}
	}
	s.emu.ForgetEnded()
	return res, actions, nil
}

// benchWarmup is how many notifications each handler gets, unmeasured,
// before its first measured run: the first run of a fresh process (HTTP/2
// connection, token, goroutine stacks, heap growth) was consistently slower.
const benchWarmup = 5000

// measure makes one run of n notifications to a handler and returns its
// metrics by unit.
func (s *benchEnv) measure(b *testing.B, kind string, n int, rate float64) (map[string]float64, error) {
	c := s.children[kind]
	var cpuBefore, selfBefore time.Duration
	var cpuErr error
	res, actions, err := s.drive(c, kind, n, rate, func() {
		cpuBefore, cpuErr = c.cpuTime()
		selfBefore = selfCPU()
		if kind == "receiver" {
			b.StartTimer()
		}
	}, b.StopTimer)
	if err == nil {
		err = cpuErr
	}
	if err != nil {
		return nil, err
	}
	cpuAfter, err := c.cpuTime()
	if err != nil {
		return nil, err
	}
	selfAfter := selfCPU()
	slices.Sort(actions)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	perN := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
	m := map[string]float64{
		"notifications/s": float64(n) / res.Elapsed.Seconds(),
		"p50-ack-ms":      ms(percentile(res.Acks, 0.50)),
		"p99-ack-ms":      ms(percentile(res.Acks, 0.99)),
		"p99-action-ms":   percentile(actions, 0.99),
		// CPU per notification tells what one core sustains even when
		// other work on the machine steals time from the child. The
		// driver's (the emulator in this process, and the load generator)
		// shares the machine with it: together they bound what two cores
		// can carry.
		"cpu-us/notification":        perN(cpuAfter - cpuBefore),
		"driver-cpu-us/notification": perN(selfAfter - selfBefore + res.CPU),
	}
	if rate > 0 {
		// A paced run means what it says only if the load generator kept
		// its pace.
		m["p99-late-ms"] = ms(percentile(res.Late, 0.99))
	}
	return m, nil
}

// selfCPU is this process's CPU time so far: the load loop and the
// emulator, which share the machine with the child.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// median is the middle of xs, or the mean of the two middle values.
func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func percentile[T any](sorted []T, p float64) T {
	var zero T
	if len(sorted) == 0 {
		return zero
	}
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]
}

func benchBody(id, number string) []byte {
	return []byte(`{"@odata.type":"#microsoft.graph.commsNotifications","value":[{"@odata.type":"#microsoft.graph.commsNotification","changeType":"created","resourceUrl":"/communications/calls/` + id +
		`","resourceData":{"@odata.type":"#microsoft.graph.call","@odata.id":"/communications/calls/` + id + `","id":"` + id +
		`","state":"incoming","direction":"incoming","callChainId":"` + id + `-chain","tenantId":"` + tenantID +
		`","source":{"@odata.type":"#microsoft.graph.participantInfo","identity":{"@odata.type":"#microsoft.graph.identitySet","phone":{"@odata.type":"#microsoft.graph.identity","id":"` + number +
		`"}}},"targets":[{"@odata.type":"#microsoft.graph.invitationParticipantInfo","identity":{"@odata.type":"#microsoft.graph.identitySet","application":{"@odata.type":"#microsoft.graph.identity","id":"` + appID +
		`"}}}],"requestedModalities":["audio"]}}]}`)
}
