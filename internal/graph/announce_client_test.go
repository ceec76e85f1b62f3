package graph_test

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
)

// promptURI is a prompt the emulator cannot fetch: these tests look at the
// requests, not at the playing.
const promptURI = "https://127.0.0.1:9/prompt.wav"

// waitState polls the emulator's record of a call until its state is want.
func (f *fixture) waitState(t *testing.T, id, want string) emulator.CallRecord {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec := f.record(t, id)
		if rec.State == want {
			return rec
		}
		if time.Now().After(deadline) {
			t.Fatalf("call %s is %s, not %s: %+v", id, rec.State, want, rec)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// answeredCall places a call and has a client answer it; attempts records
// the client's requests after the answer.
func (f *fixture) answeredCall(t *testing.T, attempts *[]attempt) (string, *graph.Client) {
	t.Helper()
	id := f.placeCall(t, botAppID)
	c := f.secretClient(t, attempts)
	if err := c.Answer(ctxTimeout(t, 10*time.Second), id, graph.NewAnswerRequest("")); err != nil {
		t.Fatal(err)
	}
	f.waitState(t, id, graph.StateEstablished)
	*attempts = nil
	return id, c
}

func countEvents(rec emulator.CallRecord, event string, status int) int {
	n := 0
	for _, e := range rec.History {
		if e.Event == event && e.Status == status {
			n++
		}
	}
	return n
}

// TestAnnounceSteps: answer, playPrompt and hang up, as the emulator
// records them; a second hang-up finds the call gone (ErrAlreadyDone).
func TestAnnounceSteps(t *testing.T) {
	f := newFixture(t)
	c := f.secretClient(t, nil)
	id := f.placeCall(t, botAppID)
	callback := sinkCallback + "?policy=ns%2Fname&sig=x"
	if err := c.Answer(ctxTimeout(t, 10*time.Second), id, graph.NewAnswerRequest(callback, graph.MediaInfo{URI: promptURI, ResourceID: "r1"})); err != nil {
		t.Fatal(err)
	}
	rec := f.waitState(t, id, graph.StateEstablished)
	if rec.Action != "answer" || rec.AnsweredAt.IsZero() || rec.CallbackURI != callback {
		t.Fatalf("answered record: %+v", rec)
	}

	opID, err := c.PlayPrompt(ctxTimeout(t, 10*time.Second), id, graph.NewPlayPromptRequest("step-token", graph.MediaInfo{URI: promptURI}))
	if err != nil || opID == "" {
		t.Fatalf("PlayPrompt = %q, %v", opID, err)
	}
	rec = f.record(t, id)
	if i := slices.IndexFunc(rec.History, func(e emulator.Event) bool { return e.Event == "playPrompt" }); i < 0 || rec.History[i].Detail != opID {
		t.Errorf("playPrompt of operation %s not in history: %+v", opID, rec.History)
	}

	if err := c.Hangup(ctxTimeout(t, 10*time.Second), id); err != nil {
		t.Fatal(err)
	}
	if rec := f.record(t, id); rec.EndedBy != emulator.EndedByBot || rec.State != graph.StateTerminated {
		t.Fatalf("hung-up record: %+v", rec)
	}
	err = c.Hangup(ctxTimeout(t, 10*time.Second), id)
	var apiErr *graph.APIError
	if !errors.Is(err, graph.ErrAlreadyDone) || !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound || apiErr.Operation != graph.OpHangup {
		t.Fatalf("second Hangup: %v, want ErrAlreadyDone with Graph's 404", err)
	}
}

// TestAnnounceRetries: each step retries 503 and 429 as Reject does.
func TestAnnounceRetries(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		op   string
		path func(id string) emulator.FaultRule
		want int
	}{
		{graph.OpAnswer, func(string) emulator.FaultRule {
			return emulator.FaultRule{Path: "/v1.0/communications/calls/*/answer"}
		}, 202},
		{graph.OpPlayPrompt, func(string) emulator.FaultRule {
			return emulator.FaultRule{Path: "/v1.0/communications/calls/*/playPrompt"}
		}, 200},
		{graph.OpHangup, func(id string) emulator.FaultRule {
			return emulator.FaultRule{Path: "/v1.0/communications/calls/" + id, Method: http.MethodDelete}
		}, 204},
	}
	for _, tc := range tests {
		t.Run(tc.op, func(t *testing.T) {
			var attempts []attempt
			var id string
			var c *graph.Client
			if tc.op == graph.OpAnswer {
				id, c = f.placeCall(t, botAppID), f.secretClient(t, &attempts)
			} else {
				id, c = f.answeredCall(t, &attempts)
			}
			ctx := ctxTimeout(t, 10*time.Second)
			unavailable, throttled := tc.path(id), tc.path(id)
			unavailable.Status = http.StatusServiceUnavailable
			throttled.Status, throttled.RetryAfter = http.StatusTooManyRequests, 1
			f.fault(t, unavailable)
			f.fault(t, throttled)
			var err error
			switch tc.op {
			case graph.OpAnswer:
				err = c.Answer(ctx, id, graph.NewAnswerRequest(""))
			case graph.OpPlayPrompt:
				_, err = c.PlayPrompt(ctx, id, graph.NewPlayPromptRequest("", graph.MediaInfo{URI: promptURI}))
			case graph.OpHangup:
				err = c.Hangup(ctx, id)
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := statuses(attempts); !slices.Equal(got, []int{503, 429, tc.want}) {
				t.Fatalf("attempts = %v, want 503, 429, %d", got, tc.want)
			}
			if gap := attempts[2].at.Sub(attempts[1].at); gap < 900*time.Millisecond {
				t.Errorf("retried %v after the 429, before its Retry-After of 1s", gap)
			}
		})
	}
}

// TestUnansweredPlayPromptIsNotRetried: a prompt Graph may have started is
// not started again (the caller would hear it twice).
func TestUnansweredPlayPromptIsNotRetried(t *testing.T) {
	f := newFixture(t)
	var attempts []attempt
	id, c := f.answeredCall(t, &attempts)
	f.fault(t, emulator.FaultRule{Path: "/v1.0/communications/calls/*/playPrompt", ProcessFirst: true, Drop: true})
	_, err := c.PlayPrompt(ctxTimeout(t, 10*time.Second), id, graph.NewPlayPromptRequest("once", graph.MediaInfo{URI: promptURI}))
	if !errors.Is(err, graph.ErrOutcomeUnknown) || len(attempts) != 1 {
		t.Fatalf("err = %v after %d attempts, want ErrOutcomeUnknown after 1", err, len(attempts))
	}
	if n := countEvents(f.record(t, id), "playPrompt", http.StatusOK); n != 1 {
		t.Errorf("the emulator started %d prompt operations, want 1", n)
	}
}

// TestHangupWhoseAnswerWasLost: a DELETE carried out whose answer was lost
// is retried, finds the call gone, and counts as done.
func TestHangupWhoseAnswerWasLost(t *testing.T) {
	f := newFixture(t)
	var attempts []attempt
	id, c := f.answeredCall(t, &attempts)
	f.fault(t, emulator.FaultRule{Path: "/v1.0/communications/calls/" + id, Method: http.MethodDelete, ProcessFirst: true, Drop: true})
	err := c.Hangup(ctxTimeout(t, 10*time.Second), id)
	if !errors.Is(err, graph.ErrAlreadyDone) || !slices.Equal(statuses(attempts), []int{0, 404}) {
		t.Fatalf("err = %v after attempts %v, want ErrAlreadyDone after a lost answer and a 404", err, statuses(attempts))
	}
	if rec := f.record(t, id); rec.EndedBy != emulator.EndedByBot {
		t.Errorf("record: %+v", rec)
	}
}

// TestAnswerTwiceAfterLostAnswer: an answer carried out whose answer was
// lost is retried and refused 409: ErrAlreadyDone, as for reject.
func TestAnswerTwiceAfterLostAnswer(t *testing.T) {
	f := newFixture(t)
	id := f.placeCall(t, botAppID)
	var attempts []attempt
	c := f.secretClient(t, &attempts)
	fetchToken(t, c)
	f.fault(t, emulator.FaultRule{Path: "/v1.0/communications/calls/*/answer", ProcessFirst: true, Drop: true})
	attempts = nil
	err := c.Answer(ctxTimeout(t, 10*time.Second), id, graph.NewAnswerRequest(""))
	if !errors.Is(err, graph.ErrAlreadyDone) || !slices.Equal(statuses(attempts), []int{0, 409}) {
		t.Fatalf("err = %v after attempts %v, want ErrAlreadyDone", err, statuses(attempts))
	}
}

// TestAnnounceRequestsAreChecked: what Graph would refuse is refused before
// anything is sent.
func TestAnnounceRequestsAreChecked(t *testing.T) {
	f := newFixture(t)
	var attempts []attempt
	c := f.secretClient(t, &attempts)
	ctx := ctxTimeout(t, 10*time.Second)
	many := graph.NewPlayPromptRequest("")
	for range graph.MaxPrompts + 1 {
		many.Prompts = append(many.Prompts, graph.MediaPrompt{MediaInfo: graph.MediaInfo{URI: promptURI}})
	}
	tests := []struct {
		name string
		call func() error
		want string
	}{
		{"no prompts", func() error { _, err := c.PlayPrompt(ctx, "c1", graph.NewPlayPromptRequest("x")); return err }, "1 to 20"},
		{"21 prompts", func() error { _, err := c.PlayPrompt(ctx, "c1", many); return err }, "holds 21"},
		{"long clientContext", func() error {
			_, err := c.PlayPrompt(ctx, "c1", graph.NewPlayPromptRequest(strings.Repeat("ü", 257), graph.MediaInfo{URI: promptURI}))
			return err
		}, "257 characters"},
		{"prompt without uri", func() error {
			_, err := c.PlayPrompt(ctx, "c1", graph.NewPlayPromptRequest("x", graph.MediaInfo{ResourceID: "r"}))
			return err
		}, "prompts[0].mediaInfo.uri"},
		{"prefetch without uri", func() error { return c.Answer(ctx, "c1", graph.NewAnswerRequest("", graph.MediaInfo{})) }, "preFetchMedia[0].uri"},
		{"hang up no call", func() error { return c.Hangup(ctx, "") }, "empty call id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one naming %q", err, tc.want)
			}
		})
	}
	if len(attempts) != 0 {
		t.Errorf("refused requests were sent: %v", statuses(attempts))
	}
}
