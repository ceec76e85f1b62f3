package receiver_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/emulator"
)

// callValue is the created notification of call id from caller, its call
// members (after state) given as JSON.
func callValue(id, members string) string {
	return fmt.Sprintf(`{"changeType":"created","resourceUrl":"/communications/calls/%s","resourceData":{"@odata.type":"#microsoft.graph.call","id":"%s",%s}}`, id, id, members)
}

func source(number string) string {
	return fmt.Sprintf(`{"identity":{"phone":{"id":"%s"}}}`, number)
}

// TestFoldedNamesRefused: a batch that encoding/json and .NET's
// case-insensitive readers read with another member ("ſtate" as state,
// "ſource" as source) is refused with 400: nothing is decided, acted on or
// forwarded, so the upstream bot never answers a call nobody decided.
func TestFoldedNamesRefused(t *testing.T) {
	e := startEnv(t, envOptions{upstream: true})
	for name, value := range map[string]func(id string) string{
		"ſtate beside state": func(id string) string {
			return callValue(id, `"state":"established","ſtate":"incoming","source":`+source(numBusy))
		},
		"ſource beside source": func(id string) string {
			return callValue(id, `"state":"incoming","source":`+source(numAllowed)+`,"\u017fource":`+source(numBusy))
		},
	} {
		t.Run(name, func(t *testing.T) {
			c := e.placeQuiet(numBusy)
			status, resp := e.post(http.MethodPost, e.genuineAuth(), batchBody(t, value(c.ID)))
			if status != http.StatusBadRequest || !strings.Contains(errorCode(t, resp), "case folding") {
				t.Fatalf("status %d %s, want 400 naming the folded member", status, resp)
			}
			time.Sleep(100 * time.Millisecond) // anything acted on or forwarded would have been by now
			if rec, _ := e.emu.Call(c.ID); rec.Action != "" {
				t.Errorf("call acted on: %+v", rec)
			}
			if got := e.upstream.forCall(t, c.ID); len(got) != 0 {
				t.Errorf("forwarded upstream: %s", got[0].body)
			}
		})
	}
	if got := e.metric("callguard_receiver_requests_total", map[string]string{"code": "202"}); got != 0 {
		t.Fatalf("%v bodies accepted", got)
	}
}

// TestGraphSpellingDecided: notifications spelt as Graph also sends them
// are decided, not passed upstream undecided: PascalCase enum values, the
// older resource without resourceUrl (naming the call even where
// resourceData.id does not), and a resourceData whose @odata.type (escaped)
// names a participant but which carries an incoming call.
func TestGraphSpellingDecided(t *testing.T) {
	e := startEnv(t, envOptions{upstream: true})
	for name, value := range map[string]func(id string) string{
		"PascalCase values": func(id string) string {
			return fmt.Sprintf(`{"changeType":"Created","resourceUrl":"/communications/calls/%s","resourceData":{"@odata.type":"#microsoft.graph.call","state":"Incoming","direction":"Incoming","requestedModalities":["Audio"],"source":%s}}`, id, source(numBusy))
		},
		"resource only": func(id string) string {
			return fmt.Sprintf(`{"changeType":"created","resource":"/app/calls/%s","resourceData":{"@odata.type":"#microsoft.graph.call","id":"not-%s","callState":"incoming","source":%s}}`, id, id, source(numBusy))
		},
		"participant type carrying a call": func(id string) string {
			return fmt.Sprintf(`{"changeType":"created","resourceUrl":"/communications/calls/%s","resourceData":{"@odata.typ\u0065":"#microsoft.graph.participant","state":"incoming","source":%s}}`, id, source(numBusy))
		},
	} {
		t.Run(name, func(t *testing.T) {
			c := e.placeQuiet(numBusy)
			if status, resp := e.post(http.MethodPost, e.genuineAuth(), batchBody(t, value(c.ID))); status != http.StatusAccepted {
				t.Fatalf("status %d %s, want 202", status, resp)
			}
			// Waited for with the subtest's t (env's helpers fail the parent).
			var rec emulator.CallRecord
			eventually(t, 10*time.Second, "call "+c.ID+" acted on", func() bool {
				rec, _ = e.emu.Call(c.ID)
				return rec.Action != ""
			})
			if rec.Action != "reject" || rec.Reason != "busy" {
				t.Fatalf("call not rejected: %+v", rec)
			}
			if got := e.upstream.forCall(t, c.ID); len(got) != 0 {
				t.Errorf("the rejected call was forwarded upstream: %s", got[0].body)
			}
		})
	}
	// "Created" is counted as created, not as another change type.
	if other := e.metric("callguard_receiver_notifications_total", map[string]string{"change_type": "other"}); other != 0 {
		t.Errorf("%v notifications counted as change_type=\"other\", want 0", other)
	}
}
