package emulator

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Limits of a FaultRule.
const (
	maxFaultCount   = 1_000_000
	maxFaultLatency = 2 * time.Minute
	maxRetryAfter   = time.Hour
)

// FaultRule makes the next Count requests matching Path (and Method, when
// set) misbehave: wait LatencyMs first, then either drop the connection,
// answer Status (with Retry-After when RetryAfter > 0) in the body shape of
// the service (Graph or Entra), or, with latency only, proceed normally.
// With ProcessFirst the request is carried out first and LatencyMs delays
// its answer or Drop loses it: the client cannot tell whether it was done.
// It is the body of POST /emulator/faults. The control API is never faulted.
type FaultRule struct {
	// ID is assigned when the rule is added.
	ID int `json:"id,omitempty"`
	// Path is a prefix of the request path, or a path.Match glob when it
	// holds * ? or [ (e.g. /v1.0/communications/calls/*/reject).
	Path   string `json:"path"`
	Method string `json:"method,omitempty"`
	// Count is how many requests the rule applies to (default 1); listings
	// show what is left.
	Count      int  `json:"count,omitempty"`
	Status     int  `json:"status,omitempty"`
	RetryAfter int  `json:"retryAfter,omitempty"`
	LatencyMs  int  `json:"latencyMs,omitempty"`
	Drop       bool `json:"drop,omitempty"`
	// ProcessFirst carries the request out before the latency or drop.
	ProcessFirst bool `json:"processFirst,omitempty"`
}

func (f *FaultRule) normalize() error {
	var problems []string
	if !strings.HasPrefix(f.Path, "/") {
		problems = append(problems, "path must start with /")
	} else if _, err := path.Match(f.Path, ""); err != nil {
		problems = append(problems, fmt.Sprintf("path is not a valid glob: %v", err))
	}
	f.Method = strings.ToUpper(f.Method)
	if strings.ContainsFunc(f.Method, func(r rune) bool { return r < 'A' || r > 'Z' }) {
		problems = append(problems, fmt.Sprintf("method %q is not an HTTP method", f.Method))
	}
	if f.Count == 0 {
		f.Count = 1
	}
	if f.Count < 0 || f.Count > maxFaultCount {
		problems = append(problems, fmt.Sprintf("count must be between 1 and %d", maxFaultCount))
	}
	if f.Status != 0 && (f.Status < 400 || f.Status > 599) {
		problems = append(problems, "status must be an HTTP error status (400-599)")
	}
	if f.RetryAfter < 0 || f.RetryAfter > int(maxRetryAfter/time.Second) {
		problems = append(problems, fmt.Sprintf("retryAfter must be between 0 and %d seconds", int(maxRetryAfter/time.Second)))
	}
	if f.RetryAfter > 0 && f.Status == 0 {
		problems = append(problems, "retryAfter needs a status")
	}
	if f.LatencyMs < 0 || f.LatencyMs > int(maxFaultLatency/time.Millisecond) {
		problems = append(problems, fmt.Sprintf("latencyMs must be between 0 and %d", int(maxFaultLatency/time.Millisecond)))
	}
	if f.Drop && f.Status != 0 {
		problems = append(problems, "drop and status exclude each other")
	}
	if !f.Drop && f.Status == 0 && f.LatencyMs == 0 {
		problems = append(problems, "a fault needs a status, latencyMs or drop")
	}
	if f.ProcessFirst && f.Status != 0 {
		problems = append(problems, "processFirst answers the request's own status: it excludes status")
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

func (f *FaultRule) matches(r *http.Request) bool {
	if f.Method != "" && f.Method != r.Method {
		return false
	}
	if strings.ContainsAny(f.Path, "*?[") {
		ok, _ := path.Match(f.Path, r.URL.Path) // the pattern was validated
		return ok
	}
	return strings.HasPrefix(r.URL.Path, f.Path)
}

// AddFault adds a rule (see FaultRule) after the existing ones; the first
// matching rule with requests left applies. It returns the rule with its ID.
func (s *Server) AddFault(f FaultRule) (FaultRule, error) {
	if err := f.normalize(); err != nil {
		return FaultRule{}, fmt.Errorf("invalid fault: %w", err)
	}
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	s.nextFaultID++
	f.ID = s.nextFaultID
	s.faults = append(s.faults, &f)
	s.log.Info("fault added", "id", f.ID, "path", f.Path, "method", f.Method, "count", f.Count,
		"status", f.Status, "retryAfter", f.RetryAfter, "latencyMs", f.LatencyMs, "drop", f.Drop, "processFirst", f.ProcessFirst)
	return f, nil
}

// ClearFaults removes every fault rule.
func (s *Server) ClearFaults() {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	s.faults = nil
}

// Faults lists the rules with requests left.
func (s *Server) Faults() []FaultRule {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	out := make([]FaultRule, 0, len(s.faults))
	for _, f := range s.faults {
		out = append(out, *f)
	}
	return out
}

// takeFault consumes one use of the first rule matching r.
func (s *Server) takeFault(r *http.Request) (FaultRule, bool) {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	for i, f := range s.faults {
		if !f.matches(r) {
			continue
		}
		f.Count--
		if f.Count == 0 {
			s.faults = slices.Delete(s.faults, i, i+1)
		}
		return *f, true
	}
	return FaultRule{}, false
}

// applyFault carries out a fault; it reports whether the request was
// answered (or dropped) by it rather than left to the handler.
func (s *Server) applyFault(w *statusRecorder, r *http.Request, f FaultRule, kind routeKind, route string) bool {
	s.log.Info("fault applied", "id", f.ID, "method", r.Method, "path", r.URL.Path)
	var held *heldResponse
	if f.ProcessFirst {
		// Carried out now, answered after the latency or never: the way a
		// request times out or loses its connection after the service acted.
		// The held answer shares w's header map, of which nothing is sent
		// before w.WriteHeader.
		held = &heldResponse{header: w.Header()}
		s.mux.ServeHTTP(held, r)
	}
	if !waitLatency(r, f) {
		s.countRequest(route, 0)
		return true
	}
	if f.Drop {
		s.countRequest(route, 0)
		// ErrAbortHandler makes net/http close the connection (or reset the
		// HTTP/2 stream) without a response and without logging a panic.
		panic(http.ErrAbortHandler)
	}
	if held != nil {
		status := cmp.Or(held.status, http.StatusOK)
		w.WriteHeader(status)
		_, _ = w.Write(held.body.Bytes())
		s.countRequest(route, status)
		return true
	}
	if f.Status == 0 {
		return false
	}
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfter))
	}
	if kind == routeEntra {
		code, aadsts, msg := "invalid_request", 90100, fmt.Sprintf("Injected fault: HTTP %d.", f.Status)
		if f.Status == http.StatusTooManyRequests || f.Status >= 500 {
			code, aadsts, msg = "temporarily_unavailable", 90033, "A transient error has occurred. Please try again."
		}
		s.writeEntraError(w, r, f.Status, code, aadsts, msg)
	} else {
		code, msg := graphFaultCode(f.Status)
		writeGraphError(w, r, f.Status, code, msg)
	}
	s.countRequest(route, f.Status)
	return true
}

// waitLatency waits out f's latency; false means the client went away first.
func waitLatency(r *http.Request, f FaultRule) bool {
	if f.LatencyMs == 0 {
		return true
	}
	t := time.NewTimer(time.Duration(f.LatencyMs) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

// heldResponse records a handler's status and body without sending them.
type heldResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (h *heldResponse) Header() http.Header { return h.header }

func (h *heldResponse) WriteHeader(code int) {
	if h.status == 0 {
		h.status = code
	}
}

func (h *heldResponse) Write(b []byte) (int, error) {
	h.WriteHeader(http.StatusOK)
	return h.body.Write(b)
}

func graphFaultCode(status int) (string, string) {
	switch status {
	case http.StatusTooManyRequests:
		return "TooManyRequests", "Too many requests. Please retry again later."
	case http.StatusServiceUnavailable:
		return "serviceNotAvailable", "The service is temporarily unavailable. Please retry again later."
	case http.StatusInternalServerError:
		return "generalException", "An unspecified error has occurred."
	case http.StatusGatewayTimeout:
		return "gatewayTimeout", "The gateway timed out."
	default:
		return strings.ReplaceAll(http.StatusText(status), " ", ""), "Injected fault."
	}
}

// Stats counts requests by route template (the registered pattern, e.g.
// "POST /v1.0/communications/calls/{id}/reject", or "unmatched") and
// notifications by history event, each by HTTP status; status 0 means no
// response (dropped by a fault, or an undeliverable notification). Control
// API requests are not counted.
type Stats struct {
	Requests      map[string]map[int]int `json:"requests"`
	Notifications map[string]map[int]int `json:"notifications"`
}

func newStats() Stats {
	return Stats{Requests: map[string]map[int]int{}, Notifications: map[string]map[int]int{}}
}

func (s *Server) countRequest(route string, status int) {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	bump(s.stats.Requests, route, status)
}

func (s *Server) countNotification(event string, status int) {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	bump(s.stats.Notifications, event, status)
}

func bump(m map[string]map[int]int, key string, status int) {
	if m[key] == nil {
		m[key] = map[int]int{}
	}
	m[key][status]++
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	out := newStats()
	for k, v := range s.stats.Requests {
		out.Requests[k] = maps.Clone(v)
	}
	for k, v := range s.stats.Notifications {
		out.Notifications[k] = maps.Clone(v)
	}
	return out
}

// ResetStats zeroes the counters.
func (s *Server) ResetStats() {
	s.faultMu.Lock()
	defer s.faultMu.Unlock()
	s.stats = newStats()
}
