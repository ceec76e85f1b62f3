package receiver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
)

// batchBody is a notification body holding the given notifications.
func batchBody(t *testing.T, values ...string) []byte {
	t.Helper()
	b := []byte(`{"@odata.type":"#microsoft.graph.commsNotifications","value":[` + strings.Join(values, ",") + `]}`)
	if !json.Valid(b) {
		t.Fatalf("test body is not JSON: %s", b)
	}
	return b
}

// createdValue is the created notification of a call, as one member of
// "value".
func createdValue(t *testing.T, c *graph.Call) string {
	t.Helper()
	var n graph.Notifications
	if err := json.Unmarshal(createdBody(t, c), &n); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(n.Value[0])
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestOneReadingOfEachBody: a body that JSON readers read two ways (a
// second "value", or "Value" beside "value", which encoding/json and .NET
// take case-insensitively) is refused, so no call is decided one way and
// forwarded another.
func TestOneReadingOfEachBody(t *testing.T) {
	e := startEnv(t, envOptions{upstream: true})
	for _, shape := range []string{`{"value":[%a],"Value":[%b]}`, `{"value":[%a],"value":[%b]}`, `{"Value":[%b],"value":[%a]}`} {
		allowed, robocall := e.placeQuiet(numAllowed), e.placeQuiet(numBusy)
		body := strings.NewReplacer("%a", createdValue(t, allowed), "%b", createdValue(t, robocall)).Replace(shape)
		status, resp := e.post(http.MethodPost, e.genuineAuth(), []byte(body))
		if status != http.StatusBadRequest || !strings.HasPrefix(errorCode(t, resp), "BadRequest: ") {
			t.Fatalf("%s: status %d %s, want 400", shape, status, resp)
		}
		// A refused body is never worked on: nothing can come later.
		if got := e.metric("callguard_receiver_requests_total", map[string]string{"code": "202"}); got != 0 {
			t.Fatalf("%s: %v bodies accepted", shape, got)
		}
		for _, c := range []*graph.Call{allowed, robocall} {
			if rec := e.record(c.ID); rec.Action != "" {
				t.Errorf("%s: call %s acted on: %+v", shape, c.ID, rec)
			}
			if got := e.upstream.forCall(t, c.ID); len(got) != 0 {
				t.Errorf("%s: call %s forwarded upstream", shape, c.ID)
			}
		}
	}
}

// TestEveryResourceShapeIsTaken: Graph's participant lists (resourceData an
// array) and other resources (operations) are accepted and passed upstream,
// and an incoming call in the same batch is still decided.
func TestEveryResourceShapeIsTaken(t *testing.T) {
	e := startEnv(t, envOptions{upstream: true})
	robocall := e.placeQuiet(numBusy)
	participants := `{"@odata.type":"#microsoft.graph.commsNotification","changeType":"updated","resourceUrl":"/communications/calls/a7ebfb2d-871e-419c-87af-27290b22e8db/participants",` +
		`"resourceData":[{"@odata.type":"#microsoft.graph.participant","id":"0d7664b6-6432-43ed-8d31-d1b1fab3d9a9","info":{"@odata.type":"#microsoft.graph.participantInfo","identity":{"@odata.type":"#microsoft.graph.identitySet","user":{"@odata.type":"#microsoft.graph.identity","id":"278405a3-f568-4b3e-b684-009193463064"}}},"mediaStreams":[],"isMuted":false,"isInLobby":false}]}`
	operation := `{"@odata.type":"#microsoft.graph.commsNotification","changeType":"deleted","resourceUrl":"/communications/calls/ab6233a5-20b7-4c5e-bea2-ce56c9776429/operations/eec3812a-fdc3-4fb4-825c-a06c9f35414e",` +
		`"resourceData":{"@odata.type":"#microsoft.graph.inviteParticipantsOperation","@odata.id":"/communications/calls/ab6233a5-20b7-4c5e-bea2-ce56c9776429/operations/eec3812a-fdc3-4fb4-825c-a06c9f35414e","id":"eec3812a-fdc3-4fb4-825c-a06c9f35414e","status":"completed","participants":[{"@odata.type":"#microsoft.graph.invitationParticipantInfo","endpointType":"default","identity":{"user":{"id":"278405a3"}}}]}}`
	body := batchBody(t, participants, createdValue(t, robocall), operation)
	if status, resp := e.post(http.MethodPost, e.genuineAuth(), body); status != http.StatusAccepted {
		t.Fatalf("status %d %s, want 202", status, resp)
	}
	if rec := e.acted(robocall.ID); rec.Action != "reject" {
		t.Fatalf("the incoming call of the batch was not rejected: %+v", rec)
	}
	var got []upstreamRequest
	eventually(t, 10*time.Second, "participants and operation upstream", func() bool {
		got = e.upstream.forCall(t, "a7ebfb2d-871e-419c-87af-27290b22e8db")
		return len(got) == 1
	})
	want := batchBody(t, participants, operation)
	if !bytes.Equal(got[0].body, want) {
		t.Fatalf("upstream got\n%s\nwant\n%s", got[0].body, want)
	}
	if len(e.upstream.forCall(t, robocall.ID)) != 0 {
		t.Fatal("the rejected call reached upstream")
	}
}

// TestBigBatchIsActedOnConcurrently: 1,000 calls in one batch with Graph
// answering each reject in 20 ms are all rejected inside Graph's 15 s; one
// at a time they would take 20 s.
func TestBigBatchIsActedOnConcurrently(t *testing.T) {
	e := startEnv(t, envOptions{})
	const calls = 1000
	e.fault(emulator.FaultRule{Path: rejectPath, LatencyMs: 20, Count: calls})
	values := make([]string, calls)
	ids := make([]string, calls)
	deliver := false // the test posts the batch itself
	for i := range values {
		c, err := e.emu.PlaceCall(context.Background(), emulator.PlaceCallRequest{AppID: appID, Source: phone(numBusy), Deliver: &deliver})
		if err != nil {
			t.Fatal(err)
		}
		ids[i], values[i] = c.ID, createdValue(t, c)
	}
	if status, resp := e.post(http.MethodPost, e.genuineAuth(), batchBody(t, values...)); status != http.StatusAccepted {
		t.Fatalf("status %d %s", status, resp)
	}
	e.waitMetric("callguard_receiver_graph_actions_total", map[string]string{"operation": "reject", "result": "success"}, calls)
	for _, id := range ids {
		if rec := e.record(id); rec.Action != "reject" || rec.Missed {
			t.Fatalf("call %s: %+v", id, rec)
		}
	}
}
