package policycli

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/callguard/callguard/internal/telemetry"
)

const decisionsSynopsis = `Print the receivers' recent decisions, merged by time.

Usage:
  kubectl callpolicy decisions NAME [-n NAMESPACE] [--since 10m] [--follow] [-o table|wide|json|yaml]

Every running receiver pod of the CallPolicy NAME (the pods of the Deployment
NAME-callguard) is asked for the decisions it keeps (its last 1,000) through
the API server's pod proxy, so kubectl's own authentication and RBAC apply
(get on pods/proxy). Caller numbers are masked to their last 4 digits unless
the receivers run with --log-caller-numbers. A pod that cannot be reached is
reported on stderr and the others are still shown.

-o table (the default) prints TIME (UTC), POD, CALLER, RULE ("(blocked)" after
it when the caller was under the rule's temporary block), ACTION, REASON,
RESULT (what Graph or the upstream bot answered) and LATENCY (notification to
outcome); -o wide adds TENANT, the tenant the call arrived in (multi-tenant
bots); -o json prints the receivers' JSON lines, "tenant" included, with a
"pod" field added.

Exit status: 0, or 1 (as kubectl) when no pod could be read, the CallPolicy
does not exist or the cluster cannot be reached.
`

// pollInterval is how often --follow asks the pods again.
var pollInterval = 2 * time.Second

// followOverlap is how far before the newest decision seen on a pod --follow
// asks again: a pod records a decision when it is acted on, at most the 15 s
// Graph deadline after the call arrived, and stamps it with the arrival time,
// so a slow call can be recorded after a newer fast one. Lines seen already
// are skipped.
const followOverlap = 30 * time.Second

// decision is one line of a receiver's /decisions, from the pod it came
// from.
type decision struct {
	telemetry.Decision

	pod string
	raw []byte // the line as the receiver wrote it
}

// key identifies a decision for --follow's deduplication.
type decisionKey struct {
	pod, callID string
	at          int64
}

func runDecisions(s streams, args []string) int {
	c := newCommand(s, "decisions", decisionsSynopsis, true)
	var (
		sinceFlag string
		follow    bool
	)
	c.flags.StringVar(&sinceFlag, "since", "", "only decisions newer than this: a duration such as 10m, or an RFC 3339 time (default: all the receivers keep)")
	c.flags.BoolVar(&follow, "follow", false, "keep printing new decisions until interrupted")
	out := c.outputFlag("table", "table", "wide", "json", "yaml")
	name, k, code, ok := c.policyVerb(args, out)
	if !ok {
		return code
	}
	var since time.Time
	if sinceFlag != "" {
		if d, err := time.ParseDuration(sinceFlag); err == nil && d > 0 {
			since = time.Now().Add(-d)
		} else if t, err := time.Parse(time.RFC3339Nano, sinceFlag); err == nil {
			since = t
		} else {
			c.usageError("--since must be a positive duration such as 10m or an RFC 3339 time, got %q", sinceFlag)
			return exitError
		}
	}
	if _, _, err := k.callPolicy(s.ctx, name); err != nil {
		fmt.Fprintf(s.stderr, "error: %v\n", err)
		return exitError
	}

	f := &fetcher{k: k, s: s, policy: name, since: since, newest: map[string]time.Time{}, seen: map[decisionKey]struct{}{}, warned: map[string]string{}}
	p := &decisionPrinter{w: s.stdout, format: out.value}
	for {
		ds, read, tried, err := f.round(s.ctx)
		if s.ctx.Err() != nil {
			return exitOK
		}
		if err != nil {
			if !follow {
				fmt.Fprintf(s.stderr, "error: %v\n", err)
				return exitError
			}
			f.warn("", err.Error())
		}
		if err := p.print(ds); err != nil {
			fmt.Fprintf(s.stderr, "error: write decisions: %v\n", err)
			return exitError
		}
		if !follow {
			if tried > 0 && read == 0 {
				return exitError
			}
			if len(ds) == 0 && tried > 0 {
				fmt.Fprintln(s.stderr, "No decisions found.")
			}
			return exitOK
		}
		select {
		case <-s.ctx.Done():
			return exitOK
		case <-time.After(pollInterval):
		}
	}
}

// policyVerb parses a verb that takes exactly one CallPolicy NAME and an
// output format, and makes its clients.
func (c *command) policyVerb(args []string, out *output) (string, *kube, int, bool) {
	rest, code, ok := c.parse(args)
	if !ok {
		return "", nil, code, false
	}
	if len(rest) == 0 {
		c.usageError("the NAME of a CallPolicy is required")
		return "", nil, exitError, false
	}
	if len(rest) > 1 {
		fmt.Fprintf(c.stderr, "error: unexpected argument %q\n", rest[1])
		return "", nil, exitError, false
	}
	if !out.check(c) {
		return "", nil, exitError, false
	}
	k, err := c.clients()
	if err != nil {
		fmt.Fprintf(c.stderr, "error: %v\n", err)
		return "", nil, exitError, false
	}
	return rest[0], k, exitOK, true
}

// fetcher reads the decisions of a policy's receiver pods.
type fetcher struct {
	k      *kube
	s      streams
	policy string
	since  time.Time
	// newest is the time of the newest decision seen from each pod.
	newest map[string]time.Time
	seen   map[decisionKey]struct{}
	// warned is the last warning given about each pod ("" for the policy),
	// so that --follow does not repeat it every round.
	warned map[string]string
}

func (f *fetcher) warn(pod, msg string) {
	if f.warned[pod] == msg {
		return
	}
	f.warned[pod] = msg
	fmt.Fprintf(f.s.stderr, "warning: %s\n", msg)
}

// round asks every running receiver pod for the decisions after what was
// seen and returns the new ones merged by time, with how many pods were read
// and asked.
func (f *fetcher) round(ctx context.Context) ([]decision, int, int, error) {
	results, err := f.k.eachRunningPod(ctx, f.policy, f.warn, func(ctx context.Context, pod *corev1.Pod) ([]byte, error) {
		params := map[string]string{}
		since := f.since
		if t, ok := f.newest[pod.Name]; ok && t.Add(-followOverlap).After(since) {
			since = t.Add(-followOverlap)
		}
		if !since.IsZero() {
			params["since"] = since.UTC().Format(time.RFC3339Nano)
		}
		return f.k.proxyGet(ctx, pod, "decisions", params, "application/jsonl, */*")
	})
	if err != nil || results == nil {
		return nil, 0, 0, err
	}
	// The policy has pods again: warn again when it has none.
	delete(f.warned, "")
	var merged []decision
	read := 0
	for _, r := range results {
		var ds []decision
		if r.err == nil {
			ds, r.err = parseDecisions(r.pod, r.body)
		}
		switch {
		case r.err != nil && ctx.Err() == nil:
			f.warn(r.pod, fmt.Sprintf("pod %s: cannot read its decisions: %v", r.pod, r.err))
		case r.err == nil:
			delete(f.warned, r.pod)
		}
		if r.err == nil || ds != nil {
			read++
		}
		for _, d := range ds {
			k := decisionKey{pod: r.pod, callID: d.CallID, at: d.Time.UnixNano()}
			if _, dup := f.seen[k]; dup {
				continue
			}
			f.seen[k] = struct{}{}
			if d.Time.After(f.newest[r.pod]) {
				f.newest[r.pod] = d.Time
			}
			merged = append(merged, d)
		}
	}
	// Forget what no later round can return again.
	for k := range f.seen {
		if time.Unix(0, k.at).Before(f.newest[k.pod].Add(-2 * followOverlap)) {
			delete(f.seen, k)
		}
	}
	slices.SortStableFunc(merged, func(a, b decision) int {
		return cmp.Or(a.Time.Compare(b.Time), strings.Compare(a.pod, b.pod))
	})
	return merged, read, len(results), nil
}

func phaseOf(pod *corev1.Pod) string {
	if pod.Status.Phase == "" {
		return "Pending"
	}
	if pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP == "" {
		return "Running without an IP"
	}
	return string(pod.Status.Phase)
}

// parseDecisions reads a pod's JSON lines. A line that cannot be read is
// an error after the lines that could.
func parseDecisions(pod string, body []byte) ([]decision, error) {
	return parseJSONLines(body, "decision", func(d *decision, line []byte) bool {
		d.pod, d.raw = pod, line
		return !d.Time.IsZero()
	})
}

// withPod is the receiver's line with "pod" first.
func (d *decision) withPod() []byte {
	pod, _ := json.Marshal(d.pod)
	b := make([]byte, 0, len(d.raw)+len(pod)+8)
	b = append(b, `{"pod":`...)
	b = append(b, pod...)
	if len(d.raw) > 2 {
		b = append(b, ',')
	}
	return append(b, d.raw[1:]...)
}

// decisionPrinter prints decisions as they come: a table whose columns grow
// as wider values arrive, JSON lines, or YAML documents.
type decisionPrinter struct {
	w      io.Writer
	format string
	table  *table
}

var decisionHeader = []string{"TIME", "POD", "CALLER", "RULE", "ACTION", "REASON", "RESULT", "LATENCY"}

func (p *decisionPrinter) print(ds []decision) error {
	var buf bytes.Buffer
	switch p.format {
	case "json":
		for i := range ds {
			buf.Write(ds[i].withPod())
			buf.WriteByte('\n')
		}
	case "yaml":
		for i := range ds {
			y, err := yaml.JSONToYAML(ds[i].withPod())
			if err != nil {
				return err
			}
			buf.WriteString("---\n")
			buf.Write(y)
		}
	default:
		wide := p.format == "wide"
		if p.table == nil {
			header := decisionHeader
			if wide {
				header = append(slices.Clip(header), "TENANT")
			}
			p.table = newTable(p.w, header...)
		}
		rows := make([][]string, 0, len(ds))
		for _, d := range ds {
			row := []string{
				d.Time.UTC().Format("2006-01-02T15:04:05.000Z"),
				d.pod,
				caller(&d),
				decidingRule(&d),
				orDash(d.Action),
				orDash(d.Reason),
				orDash(d.Result),
				strconv.FormatFloat(d.LatencyMs, 'f', 2, 64) + "ms",
			}
			if wide {
				row = append(row, orDash(d.Tenant))
			}
			rows = append(rows, row)
		}
		return p.table.print(rows)
	}
	_, err := p.w.Write(buf.Bytes())
	return err
}

// decidingRule is the rule's name, marked when the rule decided because
// the caller was under its temporary block rather than by its match.
func decidingRule(d *decision) string {
	if d.Blocked {
		return ruleName(d.Rule) + " (blocked)"
	}
	return ruleName(d.Rule)
}

// caller is the masked number of a phone caller, else the caller's type.
func caller(d *decision) string {
	if d.CallerNumber != "" {
		return d.CallerNumber
	}
	return orDash(d.CallerType)
}
