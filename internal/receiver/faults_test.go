package receiver_test

import (
	"testing"
	"time"

	"github.com/callguard/callguard/internal/emulator"
)

const rejectPath = "/v1.0/communications/calls/*/reject"

func (e *env) fault(rule emulator.FaultRule) {
	e.t.Helper()
	if _, err := e.emu.AddFault(rule); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) rejectsByStatus() map[int]int {
	return e.emu.Stats().Requests["POST /v1.0/communications/calls/{id}/reject"]
}

func TestTooManyRequestsWaitsForRetryAfter(t *testing.T) {
	e := startEnv(t, envOptions{})
	e.fault(emulator.FaultRule{Path: rejectPath, Status: 429, RetryAfter: 2})
	id := e.placeCall(numBusy)
	rec := e.acted(id)
	if rec.Action != "reject" {
		t.Fatalf("call not rejected: %+v", rec)
	}
	if rec.Latency < 2*time.Second {
		t.Fatalf("rejected %v after the notification, before the advised 2s", rec.Latency)
	}
	if got := e.rejectsByStatus(); got[429] != 1 || got[202] != 1 || len(got) != 2 {
		t.Fatalf("reject requests by status %v, want one 429 and one 202", got)
	}
	e.waitMetric("callguard_receiver_graph_requests_total", map[string]string{"operation": "reject", "status": "429"}, 1)
	e.waitMetric("callguard_receiver_graph_actions_total", map[string]string{"operation": "reject", "result": "success"}, 1)
}

func TestServiceUnavailableTwiceThenSuccess(t *testing.T) {
	e := startEnv(t, envOptions{})
	e.fault(emulator.FaultRule{Path: rejectPath, Status: 503, Count: 2})
	id := e.placeCall(numForbidden)
	if rec := e.acted(id); rec.Action != "reject" || rec.Reason != "forbidden" {
		t.Fatalf("call: %+v", rec)
	}
	if got := e.rejectsByStatus(); got[503] != 2 || got[202] != 1 || len(got) != 2 {
		t.Fatalf("reject requests by status %v, want two 503 and one 202", got)
	}
}

func TestPermanentForbiddenIsNotRetried(t *testing.T) {
	e := startEnv(t, envOptions{})
	e.fault(emulator.FaultRule{Path: rejectPath, Status: 403, Count: 10})
	id := e.placeCall(numBusy)
	e.waitMetric("callguard_receiver_graph_actions_total", map[string]string{"operation": "reject", "result": "failed"}, 1)
	if got := e.rejectsByStatus(); got[403] != 1 || len(got) != 1 {
		t.Fatalf("reject requests by status %v, want a single 403", got)
	}
	if rec := e.record(id); rec.Action != "" {
		t.Fatalf("call acted on: %+v", rec)
	}
	if d := e.logs.decisionFor(t, id); d["error"] == nil || d["level"] != "WARN" {
		t.Fatalf("failed action not in the decision log: %v", d)
	}
}

func TestUnansweredGraphStopsAtDeadline(t *testing.T) {
	e := startEnv(t, envOptions{deadline: time.Second})
	e.fault(emulator.FaultRule{Path: rejectPath, LatencyMs: 60_000, Count: 100})
	start := time.Now()
	id := e.placeCall(numBusy)
	e.waitMetric("callguard_receiver_graph_actions_total", map[string]string{"operation": "reject", "result": "deadline"}, 1)
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("gave up after %v with a 1s deadline", took)
	}
	if got := e.metric("callguard_receiver_graph_requests_total", map[string]string{"operation": "reject", "status": "timeout"}); got < 1 {
		t.Fatalf("timed-out Graph requests counted %v", got)
	}
	if rec := e.record(id); rec.Action != "" {
		t.Fatalf("call acted on: %+v", rec)
	}
}
