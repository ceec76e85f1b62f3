package receiver

import (
	"context"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
)

// recentDecisions is how many decisions /decisions serves.
const recentDecisions = 1000

// logDecision writes the decision's log line and keeps it for /decisions.
func (s *Server) logDecision(c *decided, j *job, out outcome) {
	caller := policy.CallerOf(c.n.ResourceData)
	number := caller.Number
	if !s.cfg.LogCallerNumbers {
		number = maskNumber(number)
	}
	d := c.d
	latency := float64(time.Since(j.arrival).Microseconds()) / 1000
	// Room for every attribute, so that the slice stays on the stack.
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs,
		slog.String("callId", c.n.CallID()),
		slog.String("callChainId", c.n.ResourceData.CallChainID),
		slog.String("callerType", string(caller.Type)),
		slog.String("callerNumber", number),
		slog.String("rule", d.Rule),
		slog.String("action", string(d.Action)),
		slog.String("mode", string(d.Mode)),
		slog.String("result", out.result),
		slog.String("policy", j.rt.hash),
		slog.Float64("latencyMs", latency),
	)
	if d.Action == v1alpha1.ActionReject {
		attrs = append(attrs, slog.String("reason", string(d.Reason)))
	}
	level := slog.LevelInfo
	if out.err != nil {
		level = slog.LevelWarn
		attrs = append(attrs, slog.String("error", out.err.Error()))
	}
	s.log.LogAttrs(context.Background(), level, "decision", attrs...)

	s.recent.add(j.arrival, func(b []byte) []byte {
		b = append(b, `{"time":"`...)
		b = j.arrival.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
		b = appendField(b, "callId", c.n.CallID())
		b = appendField(b, "callChainId", c.n.ResourceData.CallChainID)
		b = appendField(b, "callerType", string(caller.Type))
		b = appendField(b, "callerNumber", number)
		b = appendField(b, "rule", d.Rule)
		b = appendField(b, "action", string(d.Action))
		if d.Action == v1alpha1.ActionReject {
			b = appendField(b, "reason", string(d.Reason))
		}
		b = appendField(b, "mode", string(d.Mode))
		b = appendField(b, "result", out.result)
		if out.err != nil {
			b = appendField(b, "error", out.err.Error())
		}
		b = appendField(b, "policy", j.rt.hash)
		b = append(b, `,"latencyMs":`...)
		b = strconv.AppendFloat(b, latency, 'f', -1, 64)
		return append(b, "}\n"...)
	})
}

func appendField(b []byte, name, value string) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	// Names and ids come from the network: quote them as JSON does.
	b, _ = jsontext.AppendQuote(b, value)
	return b
}

// decisionRing keeps the last recentDecisions decisions as JSON lines,
// each in a buffer reused when the ring comes round, with its time.
type decisionRing struct {
	mu   sync.Mutex
	at   [recentDecisions]int64 // unix nanoseconds
	line [recentDecisions][]byte
	next int
	n    int
}

// add keeps the line encode appends to a buffer, at t.
func (r *decisionRing) add(t time.Time, encode func([]byte) []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.line[r.next] = encode(r.line[r.next][:0])
	r.at[r.next] = t.UnixNano()
	r.next = (r.next + 1) % recentDecisions
	r.n = min(r.n+1, recentDecisions)
}

// writeSince writes the lines of decisions after since, oldest first.
func (r *decisionRing) writeSince(w io.Writer, since time.Time) error {
	cut := int64(math.MinInt64)
	if !since.IsZero() {
		cut = since.UnixNano()
	}
	r.mu.Lock()
	var out []byte
	for i := range r.n {
		k := (r.next - r.n + i + recentDecisions) % recentDecisions
		if r.at[k] > cut {
			out = append(out, r.line[k]...)
		}
	}
	r.mu.Unlock()
	_, err := w.Write(out)
	return err
}

// maskNumber keeps only a number's last four digits.
func maskNumber(n string) string {
	if n == "" {
		return ""
	}
	digits := 0
	cut := len(n)
	for i := len(n) - 1; i >= 0 && digits < 4; i-- {
		if n[i] >= '0' && n[i] <= '9' {
			digits++
			cut = i
		}
	}
	return "****" + strings.TrimLeft(n[cut:], "+")
}

// serveDecisions serves the recent decisions as JSON lines, those after
// ?since=RFC3339 when given. Numbers are masked unless
// --log-caller-numbers: who can reach this port (kubectl through the API
// server's pod proxy, with pods/proxy rights) reads them.
func (s *Server) serveDecisions(w http.ResponseWriter, r *http.Request) {
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			http.Error(w, "since: want an RFC 3339 time: "+err.Error(), http.StatusBadRequest)
			return
		}
		since = t
	}
	w.Header().Set("Content-Type", "application/jsonl")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_ = s.recent.writeSince(w, since)
}
