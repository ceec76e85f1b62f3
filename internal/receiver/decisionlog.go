package receiver

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
	"github.com/callguard/callguard/internal/telemetry"
)

// recentDecisions is how many decisions /decisions serves.
const recentDecisions = 1000

// logDecision writes the decision's log line and keeps it for /decisions:
// one record, one encoding (telemetry.Decision).
func (s *Server) logDecision(c *decided, j *job, tenant string, out outcome) {
	caller := policy.CallerOf(c.n.ResourceData)
	rec := telemetry.Decision{
		Time:         j.arrival,
		CallID:       c.n.CallID(),
		CallChainID:  c.n.ResourceData.CallChainID,
		CallerType:   string(caller.Type),
		CallerNumber: caller.Number,
		Rule:         c.d.Rule,
		Blocked:      c.d.Blocked,
		Action:       string(c.d.Action),
		Mode:         string(c.d.Mode),
		Tenant:       tenant,
		Result:       out.result,
		Policy:       j.rt.hash,
		LatencyMs:    float64(time.Since(j.arrival).Microseconds()) / 1000,
	}
	if !s.cfg.LogCallerNumbers {
		rec.CallerNumber = telemetry.MaskNumber(rec.CallerNumber)
	}
	if c.d.Action == v1alpha1.ActionReject {
		rec.Reason = string(c.d.Reason)
	}
	level := slog.LevelInfo
	if out.err != nil {
		level = slog.LevelWarn
		rec.Error = out.err.Error()
	}
	line := s.recent.add(j.arrival, rec.AppendJSON)
	s.log.LogAttrs(context.Background(), level, "decision", slog.Any("decision", json.RawMessage(line)))
}

// decisionRing keeps the last recentDecisions decisions as JSON lines,
// each in a buffer reused when the ring comes round, with its time.
type decisionRing struct {
	mu   sync.Mutex
	at   [recentDecisions]time.Time
	line [recentDecisions][]byte
	next int
	n    int
}

// add keeps the line encode appends to a buffer, at t, and returns a copy
// of it.
func (r *decisionRing) add(t time.Time, encode func([]byte) []byte) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	line := encode(r.line[r.next][:0])
	r.line[r.next] = line
	r.at[r.next] = t
	r.next = (r.next + 1) % recentDecisions
	r.n = min(r.n+1, recentDecisions)
	return append([]byte(nil), line...)
}

// writeSince writes the lines of decisions after since (all with a zero
// since), oldest first, each ending in a newline. Times are compared as
// times: nanoseconds since 1970 overflow an int64 outside 1678..2262.
func (r *decisionRing) writeSince(w io.Writer, since time.Time) error {
	r.mu.Lock()
	var out []byte
	for i := range r.n {
		k := (r.next - r.n + i + recentDecisions) % recentDecisions
		if since.IsZero() || r.at[k].After(since) {
			out = append(out, r.line[k]...)
			out = append(out, '\n')
		}
	}
	r.mu.Unlock()
	_, err := w.Write(out)
	return err
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
