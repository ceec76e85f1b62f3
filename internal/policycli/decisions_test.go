package policycli

import (
	"context"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callguard/callguard/test/harness/local"
)

// Lines as the receivers write them at /decisions.
var (
	lineA1 = `{"time":"2026-03-04T20:41:07.123456789Z","callId":"c1","callChainId":"x1","callerType":"phone","callerNumber":"****0123","rule":"robocallers","action":"Reject","reason":"busy","mode":"Enforce","tenant":"3c1f8a2e-5b7d-4e9a-8f60-1d2c3b4a5e6f","result":"success","policy":"sha256:aa","latencyMs":1.42}`
	lineB1 = `{"time":"2026-03-04T20:41:08.5Z","callId":"c2","callChainId":"x2","callerType":"user","callerNumber":"","rule":"","action":"Allow","mode":"Enforce","result":"none","policy":"sha256:aa","latencyMs":0.31}`
	lineA2 = `{"time":"2026-03-04T20:41:09Z","callId":"c3","callChainId":"x3","callerType":"phone","callerNumber":"****0199","rule":"after-hours-video","action":"Redirect","mode":"Enforce","result":"failed","error":"graph: 403 Forbidden","policy":"sha256:aa","latencyMs":15.5}`
	lineB2 = `{"time":"2026-03-04T20:41:10.25Z","callId":"c4","callChainId":"x4","callerType":"anonymous","callerNumber":"","rule":"anonymous-guests","action":"Reject","reason":"forbidden","mode":"DryRun","result":"dry_run","policy":"sha256:aa","latencyMs":0.9}`
	// lineB3 was decided by its rule's temporary block.
	lineB3 = `{"time":"2026-03-04T20:41:11Z","callId":"c5","callChainId":"x5","callerType":"phone","callerNumber":"****0123","rule":"robocallers","action":"Reject","reason":"busy","blocked":true,"mode":"Enforce","result":"success","policy":"sha256:aa","latencyMs":0.5}`
)

// linesAfter serves the lines whose time is after since, as a receiver does.
func linesAfter(lines ...string) func(string) string {
	return func(since string) string {
		var b strings.Builder
		for _, l := range lines {
			ds, _ := parseDecisions("", []byte(l))
			if since != "" {
				t, err := time.Parse(time.RFC3339Nano, since)
				if err != nil || !ds[0].Time.After(t) {
					continue
				}
			}
			b.WriteString(l + "\n")
		}
		return b.String()
	}
}

func withPod(pod, line string) string { return `{"pod":"` + pod + `",` + line[1:] + "\n" }

// freePort is a port on ip where nothing listens.
func freePort(t *testing.T, ip string) int {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// TestDecisions reads two receiver pods' decisions through the API server's
// pod proxy and merges them by time; a pending pod and one whose port does
// not answer are reported on stderr.
func TestDecisions(t *testing.T) {
	cluster(t)
	ip := podIP(t)
	ns := newNamespace(t)
	spec, _ := sampleSpec(t)

	a := servePod(t, ip, linesAfter(lineA1, lineA2), "")
	b := servePod(t, ip, linesAfter(lineB1, lineB2, lineB3), "")
	callPolicy(t, ns, "hotline", spec, "", "")
	receivers(t, ns, "hotline", ip, a.port, b.port, 0, freePort(t, ip))

	// A policy whose only pod does not answer, and one without receivers.
	callPolicy(t, ns, "dark", spec, "", "")
	receivers(t, ns, "dark", ip, freePort(t, ip))
	callPolicy(t, ns, "lonely", spec, "", "")

	warnings := []string{
		"warning: pod hotline-callguard-c is Pending: skipped",
		"warning: pod hotline-callguard-d: cannot read its decisions:",
	}
	tests := []struct {
		name      string
		args      []string
		code      int
		stdout    string
		stderrHas []string
		// queries are the /decisions queries pod a must have seen.
		queries []string
	}{
		{
			name: "table, merged by time",
			args: []string{"decisions", "hotline", "-n", ns},
			stdout: "" +
				"TIME                       POD                   CALLER      RULE                    ACTION     REASON      RESULT    LATENCY\n" +
				"2026-03-04T20:41:07.123Z   hotline-callguard-a   ****0123    robocallers             Reject     busy        success   1.42ms\n" +
				"2026-03-04T20:41:08.500Z   hotline-callguard-b   user        (default)               Allow      -           none      0.31ms\n" +
				"2026-03-04T20:41:09.000Z   hotline-callguard-a   ****0199    after-hours-video       Redirect   -           failed    15.50ms\n" +
				"2026-03-04T20:41:10.250Z   hotline-callguard-b   anonymous   anonymous-guests        Reject     forbidden   dry_run   0.90ms\n" +
				"2026-03-04T20:41:11.000Z   hotline-callguard-b   ****0123    robocallers (blocked)   Reject     busy        success   0.50ms\n",
			stderrHas: warnings,
			queries:   []string{""},
		},
		{
			name: "wide: the tenant the call arrived in",
			args: []string{"decisions", "hotline", "-n", ns, "-o", "wide"},
			stdout: "" +
				"TIME                       POD                   CALLER      RULE                    ACTION     REASON      RESULT    LATENCY   TENANT\n" +
				"2026-03-04T20:41:07.123Z   hotline-callguard-a   ****0123    robocallers             Reject     busy        success   1.42ms    3c1f8a2e-5b7d-4e9a-8f60-1d2c3b4a5e6f\n" +
				"2026-03-04T20:41:08.500Z   hotline-callguard-b   user        (default)               Allow      -           none      0.31ms    -\n" +
				"2026-03-04T20:41:09.000Z   hotline-callguard-a   ****0199    after-hours-video       Redirect   -           failed    15.50ms   -\n" +
				"2026-03-04T20:41:10.250Z   hotline-callguard-b   anonymous   anonymous-guests        Reject     forbidden   dry_run   0.90ms    -\n" +
				"2026-03-04T20:41:11.000Z   hotline-callguard-b   ****0123    robocallers (blocked)   Reject     busy        success   0.50ms    -\n",
			stderrHas: warnings,
			queries:   []string{""},
		},
		{
			name:      "json lines with the pod",
			args:      []string{"decisions", "hotline", "-n", ns, "-o", "json"},
			stdout:    withPod("hotline-callguard-a", lineA1) + withPod("hotline-callguard-b", lineB1) + withPod("hotline-callguard-a", lineA2) + withPod("hotline-callguard-b", lineB2) + withPod("hotline-callguard-b", lineB3),
			stderrHas: warnings,
			queries:   []string{""},
		},
		{
			name:      "since a time is passed to the pods",
			args:      []string{"decisions", "hotline", "-n", ns, "-o", "json", "--since", "2026-03-04T20:41:08.5Z"},
			stdout:    withPod("hotline-callguard-a", lineA2) + withPod("hotline-callguard-b", lineB2) + withPod("hotline-callguard-b", lineB3),
			stderrHas: warnings,
			queries:   []string{"since=" + url.QueryEscape("2026-03-04T20:41:08.5Z")},
		},
		{
			name:      "since a duration",
			args:      []string{"decisions", "hotline", "-n", ns, "--since", "10m"},
			stderrHas: append(warnings, "No decisions found."),
		},
		{name: "no pod answers", args: []string{"decisions", "dark", "-n", ns}, code: 1, stderrHas: []string{"warning: pod dark-callguard-a: cannot read its decisions:"}},
		{name: "no receivers", args: []string{"decisions", "lonely", "-n", ns}, stderrHas: []string{`warning: CallPolicy "lonely" has no receiver pods (Deployment "lonely-callguard"`}},
		{name: "no such policy", args: []string{"decisions", "nope", "-n", ns}, code: 1, stderrHas: []string{`error: CallPolicy "nope" not found in namespace "` + ns + `"`}},
		{name: "namespace from the kubeconfig context", args: []string{"decisions", "hotline"}, code: 1, stderrHas: []string{`error: CallPolicy "hotline" not found in namespace "default"`}},
		{name: "no name", args: []string{"decisions", "-n", ns}, code: 1, stderrHas: []string{"the NAME of a CallPolicy is required"}},
		{name: "bad since", args: []string{"decisions", "hotline", "--since", "yesterday"}, code: 1, stderrHas: []string{"--since must be a positive duration"}},
		{name: "bad output", args: []string{"decisions", "hotline", "-o", "xml"}, code: 1, stderrHas: []string{`-o must be table, wide, json or yaml, got "xml"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(a.decisionQueries())
			start := time.Now()
			code, stdout, stderr := kubectl(t, context.Background(), tt.args...)
			checkRun(t, code, stdout, stderr, tt.code, tt.stdout, tt.stderrHas)
			if tt.queries != nil {
				if got := a.decisionQueries()[before:]; !slices.Equal(got, tt.queries) {
					t.Errorf("pod a was asked %q, want %q", got, tt.queries)
				}
			}
			if strings.Contains(strings.Join(tt.args, " "), "--since 10m") {
				q := a.decisionQueries()[before:]
				if len(q) != 1 {
					t.Fatalf("pod a was asked %q", q)
				}
				v, _ := url.ParseQuery(q[0])
				since, err := time.Parse(time.RFC3339Nano, v.Get("since"))
				if err != nil || since.Before(start.Add(-10*time.Minute-time.Second)) || since.After(time.Now().Add(-10*time.Minute)) {
					t.Errorf("--since 10m asked since=%s (%v) at %s", v.Get("since"), err, start)
				}
			}
		})
	}
}

// TestDecisionsFollow polls until interrupted, printing each decision once:
// a new one, and one recorded late with a time before the newest seen (a
// slow Graph action), which the overlap of the next since catches.
func TestDecisionsFollow(t *testing.T) {
	cluster(t)
	ip := podIP(t)
	ns := newNamespace(t)
	spec, _ := sampleSpec(t)
	defer func(d time.Duration) { pollInterval = d }(pollInterval)
	pollInterval = 50 * time.Millisecond

	var mu sync.Mutex
	lines := []string{lineA2}
	a := servePod(t, ip, func(since string) string {
		mu.Lock()
		defer mu.Unlock()
		return linesAfter(lines...)(since)
	}, "")
	callPolicy(t, ns, "hotline", spec, "", "")
	receivers(t, ns, "hotline", ip, a.port)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr local.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- RunContext(ctx, []string{"decisions", "hotline", "-n", ns, "--follow", "-o", "json", "--kubeconfig", kubeconfig}, nil, &stdout, &stderr)
	}()
	waitFor(t, "the first decision", func() bool { return strings.Count(stdout.String(), "\n") == 1 })
	mu.Lock()
	lines = append(lines, lineB2, lineA1) // B2 is newer than A2; A1 older, recorded late
	mu.Unlock()
	waitFor(t, "the later decisions", func() bool { return strings.Count(stdout.String(), "\n") == 3 })
	time.Sleep(5 * pollInterval) // no line twice
	cancel()
	if code := <-done; code != 0 {
		t.Errorf("exit %d; stderr: %s", code, stderr.String())
	}
	want := withPod("hotline-callguard-a", lineA2) + withPod("hotline-callguard-a", lineA1) + withPod("hotline-callguard-a", lineB2)
	if stdout.String() != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout.String(), want)
	}
	q := a.decisionQueries()
	if len(q) < 3 || q[0] != "" || q[1] != "since="+url.QueryEscape("2026-03-04T20:40:39Z") {
		t.Errorf("queries %q: want none, then 30 s before the newest decision seen", q)
	}
	if stderr.String() != "" {
		t.Errorf("stderr: %s", stderr.String())
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	local.Eventually(t, 20*time.Second, what, cond)
}
