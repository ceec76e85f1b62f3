//go:build linux

package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/wav"
)

// announceCalls is how many calls are announced at once.
const announceCalls = 200

// stepSeconds is the receiver's histogram of its announce steps.
const stepSeconds = "callguard_receiver_announce_step_seconds"

// announcePrompt plays long enough for every call to be in progress at once
// (placing 200 calls takes about a second here).
const announcePrompt = 6 * time.Second

// BenchmarkAnnounce places announceCalls calls at once to the receiver (the
// cmd/receiver binary, a process of its own) whose policy announces every
// call, against the emulator in this process. It reports, from the
// emulator's record of each call, the time from the established
// notification (recorded when the receiver acknowledged it) to the
// playPrompt request's arrival, and from the prompt's completion
// notification to the hang-up's (p50, p99, max): end to end, the
// emulator's own serving included. It reports the receiver's part apart,
// from its "announce step" log lines: the time from the notification's
// arrival to the request sent (sentAfter). And the receiver's heap
// (go_memstats_heap_inuse_bytes) idle and while every call is in progress.
//
//	go test ./test/bench -run '^$' -bench BenchmarkAnnounce -benchtime 1x
func BenchmarkAnnounce(b *testing.B) {
	dir := b.TempDir()
	bin := filepath.Join(dir, "receiver")
	build := exec.Command("go", "build", "-o", bin, "github.com/callguard/callguard/cmd/receiver")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build cmd/receiver: %v\n%s", err, out)
	}

	// The prompt is given by url, as Graph fetches it from a server of the
	// policy author's; the receiver's own prompt serving is tested apart.
	prompt := wav.Tone(announcePrompt)
	prompts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "audio/wav")
		_, _ = w.Write(prompt)
	}))
	defer prompts.Close()

	// The receiver's address is fixed before it starts: it is the
	// callback URL the answers carry.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	mln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	metricsAddr := mln.Addr().String()
	mln.Close()
	callback := "http://" + addr + "/api/calls"

	emu, err := emulator.New(emulator.Config{
		Bots:        []emulator.Bot{{AppID: appID, TenantID: tenantID, Secret: secret, Callback: callback}},
		MissedAfter: time.Minute,
		CallbackCAs: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: prompts.Certificate().Raw}),
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := emu.Start(); err != nil {
		b.Fatal(err)
	}
	defer emu.Close()
	caFile := filepath.Join(dir, "ca.crt")
	policyFile := filepath.Join(dir, "policy.yaml")
	stateDir := filepath.Join(dir, "state")
	for _, f := range []struct {
		path string
		data []byte
	}{
		{caFile, emu.CACertPEM()},
		{policyFile, []byte(announcePolicy(emu.URL(), prompts.URL+"/closed.wav"))},
		{filepath.Join(stateDir, v1alpha1.StateSecretKey), []byte(strings.Repeat("k", 32))},
	} {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o700); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "--policy-file", policyFile, "--ca-file", caFile, "--listen", addr,
		"--metrics-listen", metricsAddr, "--callback-url", callback, "--state-dir", stateDir,
		"--credentials-dir", filepath.Join(dir, "none"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logPath := filepath.Join(dir, "receiver.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	ops := "http://" + metricsAddr
	waitReady(b, ops)

	// At once, as the benchmark's goal has it; then paced, 10 ms apart (the
	// same 200 calls over 2 s), which shows what the receiver adds when the
	// machine is not saturated by the burst (mostly the emulator signing
	// each notification's token).
	for _, pace := range []time.Duration{0, 10 * time.Millisecond} {
		name := "at-once"
		if pace > 0 {
			name = "paced-" + pace.String()
		}
		b.Run(name, func(b *testing.B) {
			for range b.N {
				runAnnounce(b, emu, ops, &child{cmd: cmd}, logPath, pace)
			}
		})
	}
}

func announcePolicy(emu, promptURL string) string {
	return `apiVersion: calls.callguard.dev/v1alpha1
kind: CallPolicy
metadata: {name: hotline, namespace: telephony}
spec:
  bot:
    appId: ` + appID + `
    tenantId: ` + tenantID + `
    credentials: {secretRef: {name: hotline-bot}}
  graph:
    endpoint: ` + emu + `
    apiVersion: "v1.0"
    authorityHost: ` + emu + `/
    openIDConfigURL: ` + emu + `/v1/.well-known/OpenIdConfiguration
  defaultAction: Allow
  rules:
    - name: closed
      action: Announce
      announce:
        prompt: {url: "` + promptURL + `"}
        maxSeconds: 60
---
apiVersion: v1
kind: Secret
metadata: {name: hotline-bot, namespace: telephony}
stringData:
  client-secret: ` + secret + "\n"
}

func waitReady(b *testing.B, ops string) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(ops + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("receiver not ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runAnnounce announces announceCalls calls at once and reports; logPath is
// the receiver's log.
func runAnnounce(b *testing.B, emu *emulator.Server, ops string, rcv *child, logPath string, pace time.Duration) {
	idle, err := scrapeMetrics(ops + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	rcvCPU0, err := rcv.cpuTime()
	if err != nil {
		b.Fatal(err)
	}
	selfCPU0 := selfCPU()
	stepsBefore := map[string][]bucket{}
	for _, step := range []string{"play", "hangup"} {
		if stepsBefore[step], err = histogramBuckets(ops+"/metrics", stepSeconds, `step="`+step+`"`); err != nil {
			b.Fatal(err)
		}
	}
	ids := make([]string, announceCalls)
	var wg sync.WaitGroup
	errs := make(chan error, announceCalls)
	for i := range ids {
		time.Sleep(pace)
		wg.Go(func() {
			c, err := emu.PlaceCall(context.Background(), emulator.PlaceCallRequest{AppID: appID,
				Source: &graph.IdentitySet{Phone: &graph.Identity{ID: fmt.Sprintf("+1425556%04d", i)}}})
			if err != nil {
				errs <- err
				return
			}
			ids[i] = c.ID
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	// Every call answered and playing: the receiver holds them all.
	waitCalls(b, emu, ids, "playing", 30*time.Second, func(r emulator.CallRecord) bool {
		return len(r.Prompts) > 0 && r.Prompts[0].Status == emulator.PromptRunning
	})
	busy, err := scrapeMetrics(ops + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	// Ended, and the completion's delivery recorded (the hang-up may come
	// in before the emulator records that the receiver acknowledged it).
	waitCalls(b, emu, ids, "ended", 60*time.Second, func(r emulator.CallRecord) bool {
		return r.EndedBy != "" && !nthEvent(r, emulator.EventOperationNotification, 1).IsZero()
	})
	rcvCPU, err := rcv.cpuTime()
	if err != nil {
		b.Fatal(err)
	}
	// CPU per call: the receiver's, and this process's (the emulator
	// signing every notification's token, and the prompts' server).
	b.ReportMetric(float64((rcvCPU-rcvCPU0).Microseconds())/1000/announceCalls, "receiver-cpu-ms/call")
	b.ReportMetric(float64((selfCPU()-selfCPU0).Microseconds())/1000/announceCalls, "emulator-cpu-ms/call")

	var play, hangup []time.Duration
	for _, id := range ids {
		rec, _ := emu.Call(id)
		if rec.EndedBy != emulator.EndedByBot || len(rec.Prompts) != 1 || rec.Prompts[0].Status != emulator.PromptCompleted {
			b.Fatalf("call %s: ended by %q with %d prompts", id, rec.EndedBy, len(rec.Prompts))
		}
		// The second updated notification is established (the first
		// establishing). An event is recorded when the receiver has
		// acknowledged it, which may be after its next step arrived: such
		// a step counts as 0.
		established := nthEvent(rec, emulator.EventUpdatedNotification, 2)
		completion := nthEvent(rec, emulator.EventOperationNotification, 1)
		played, hungUp := nthEvent(rec, "playPrompt", 1), nthEvent(rec, "hangup", 1)
		if established.IsZero() || completion.IsZero() || played.IsZero() || hungUp.IsZero() {
			b.Fatalf("call %s: history lacks its steps: %+v", id, rec.History)
		}
		play = append(play, max(played.Sub(established), 0))
		hangup = append(hangup, max(hungUp.Sub(completion), 0))
	}
	slices.Sort(play)
	slices.Sort(hangup)
	msOf := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(msOf(percentile(play, 0.5)), "p50-established-to-play-ms")
	b.ReportMetric(msOf(percentile(play, 0.99)), "p99-established-to-play-ms")
	b.ReportMetric(msOf(play[len(play)-1]), "max-established-to-play-ms")
	b.ReportMetric(msOf(percentile(hangup, 0.5)), "p50-completion-to-hangup-ms")
	b.ReportMetric(msOf(percentile(hangup, 0.99)), "p99-completion-to-hangup-ms")
	b.ReportMetric(msOf(hangup[len(hangup)-1]), "max-completion-to-hangup-ms")
	// The receiver's own view: from the notification's arrival to Graph's
	// answer (its histogram; the bucket holding the 99th percentile of
	// this run's steps).
	for _, step := range []string{"play", "hangup"} {
		after, err := histogramBuckets(ops+"/metrics", stepSeconds, `step="`+step+`"`)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(quantileBound(stepsBefore[step], after, 0.99)*1000, "receiver-p99-"+step+"-le-ms")
	}
	// The receiver's part: from the notification's arrival to the request
	// sent. A step's line is written once Graph answered, which may be
	// after the emulator recorded the request.
	sent := map[string][]time.Duration{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if sent, err = stepsSent(logPath, ids); err != nil {
			b.Fatal(err)
		}
		if len(sent[stepPlayName]) == len(ids) && len(sent[stepHangupName]) == len(ids) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("receiver log: %d play and %d hangup steps of %d calls", len(sent[stepPlayName]), len(sent[stepHangupName]), len(ids))
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, step := range []string{stepPlayName, stepHangupName} {
		d := sent[step]
		slices.Sort(d)
		b.ReportMetric(msOf(percentile(d, 0.99)), "receiver-p99-"+step+"-sent-ms")
		b.ReportMetric(msOf(d[len(d)-1]), "receiver-max-"+step+"-sent-ms")
	}
	const mib = 1 << 20
	b.ReportMetric(idle["go_memstats_heap_inuse_bytes"]/mib, "idle-heap-MiB")
	b.ReportMetric(busy["go_memstats_heap_inuse_bytes"]/mib, "in-progress-heap-MiB")
	b.ReportMetric(busy["callguard_receiver_announce_calls_in_progress"], "calls-in-progress")
	b.ReportMetric(idle["go_goroutines"], "idle-goroutines")
	b.ReportMetric(busy["go_goroutines"], "in-progress-goroutines")
}

// Steps as the receiver's log names them.
const (
	stepPlayName   = "play"
	stepHangupName = "hangup"
)

// stepsSent reads the receiver's "announce step" log lines of the calls
// ids and returns, by step, each successful step's sentAfter.
func stepsSent(logPath string, ids []string) (map[string][]time.Duration, error) {
	data, err := os.ReadFile(logPath)
	if err != nil {
		return nil, fmt.Errorf("receiver log: %w", err)
	}
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	out := map[string][]time.Duration{}
	for line := range bytes.Lines(data) {
		var l struct {
			Msg       string        `json:"msg"`
			CallID    string        `json:"callId"`
			Step      string        `json:"step"`
			Result    string        `json:"result"`
			SentAfter time.Duration `json:"sentAfter"`
		}
		if !bytes.Contains(line, []byte(`"announce step"`)) {
			continue
		}
		if err := json.Unmarshal(line, &l); err != nil {
			return nil, fmt.Errorf("receiver log line %q: %w", line, err)
		}
		if l.Msg == "announce step" && want[l.CallID] && l.Result == "success" {
			out[l.Step] = append(out[l.Step], l.SentAfter)
		}
	}
	return out, nil
}

// waitCalls waits until cond holds for every call.
func waitCalls(b *testing.B, emu *emulator.Server, ids []string, what string, timeout time.Duration, cond func(emulator.CallRecord) bool) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for _, id := range ids {
		for {
			rec, _ := emu.Call(id)
			if cond(rec) {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("call %s not %s after %v: %+v", id, what, timeout, rec)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// nthEvent is when the nth event (from 1) named event was recorded, zero
// when there are fewer.
func nthEvent(rec emulator.CallRecord, event string, n int) time.Time {
	for _, e := range rec.History {
		if e.Event == event {
			if n--; n == 0 {
				return e.At
			}
		}
	}
	return time.Time{}
}

// bucket is a cumulative bucket of a Prometheus histogram.
type bucket struct{ le, count float64 }

// histogramBuckets reads the buckets of a histogram's series whose labels
// contain match.
func histogramBuckets(u, name, match string) ([]bucket, error) {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var buckets []bucket
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+"_bucket{") || !strings.Contains(line, match) {
			continue
		}
		_, rest, _ := strings.Cut(line, `le="`)
		leText, rest, _ := strings.Cut(rest, `"`)
		le, err := strconv.ParseFloat(leText, 64)
		if err != nil {
			le = math.Inf(1)
		}
		count, err := strconv.ParseFloat(strings.TrimSpace(rest[strings.LastIndexByte(rest, ' ')+1:]), 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", line, err)
		}
		buckets = append(buckets, bucket{le, count})
	}
	return buckets, nil
}

// quantileBound is the upper bound of the bucket holding quantile q of
// the observations made between the snapshots before and after.
func quantileBound(before, after []bucket, q float64) float64 {
	if len(after) == 0 {
		return math.NaN()
	}
	count := func(i int) float64 {
		if i < len(before) {
			return after[i].count - before[i].count
		}
		return after[i].count
	}
	total := count(len(after) - 1)
	for i, b := range after {
		if count(i) >= q*total {
			return b.le
		}
	}
	return math.Inf(1)
}
