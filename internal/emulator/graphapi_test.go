package emulator

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/graph"
)

const phoneCaller = `{"appId":"` + appID + `","source":{"phone":{"id":"+15551234567"}},"requestedModalities":["audio"]}`

func TestActions(t *testing.T) {
	bot := newBotServer(t, false, nil)
	s := startEmulator(t, bot.URL, nil)
	tok := accessToken(t, s, appID, tenantID)

	tests := []struct {
		name       string
		path       string // %s is the call id
		body       string
		wantStatus int
		wantState  string
		wantAction string
		wantReason string
		wantChange string
		check      func(t *testing.T, body []byte, rec CallRecord)
	}{
		{
			name: "v1.0 reject", path: "/v1.0/communications/calls/%s/reject", body: `{"reason":"busy"}`,
			wantStatus: http.StatusAccepted, wantState: "terminated", wantAction: "reject", wantReason: "busy", wantChange: "deleted",
			check: func(t *testing.T, body []byte, _ CallRecord) {
				if len(body) != 0 {
					t.Errorf("v1.0 reject body = %q, want empty", body)
				}
			},
		},
		{
			name: "beta reject without body", path: "/beta/communications/calls/%s/reject",
			wantStatus: http.StatusAccepted, wantState: "terminated", wantAction: "reject", wantReason: "none", wantChange: "deleted",
		},
		{
			name: "seed beta app reject", path: "/beta/app/calls/%s/reject", body: `{"reason":"forbidden","clientContext":"ctx-1"}`,
			wantStatus: http.StatusOK, wantState: "terminated", wantAction: "reject", wantReason: "forbidden", wantChange: "deleted",
			check: func(t *testing.T, body []byte, _ CallRecord) {
				var op map[string]string
				if err := json.Unmarshal(body, &op); err != nil {
					t.Fatalf("commsOperation: %v: %s", err, body)
				}
				if op["status"] != "Completed" || op["id"] == "" || op["clientContext"] != "ctx-1" {
					t.Errorf("commsOperation = %v", op)
				}
				for _, f := range []string{"createdDateTime", "lastActionDateTime"} {
					if _, err := time.Parse(time.RFC3339, op[f]); err != nil {
						t.Errorf("%s = %q: %v", f, op[f], err)
					}
				}
			},
		},
		{
			name: "v1.0 redirect", path: "/v1.0/communications/calls/%s/redirect",
			body:       `{"targets":[{"@odata.type":"#microsoft.graph.invitationParticipantInfo","identity":{"phone":{"id":"+15550001111"}}}],"timeout":30}`,
			wantStatus: http.StatusAccepted, wantState: "redirecting", wantAction: "redirect", wantChange: "deleted",
			check: func(t *testing.T, _ []byte, rec CallRecord) {
				if len(rec.RedirectTargets) != 1 || rec.RedirectTargets[0].Identity.Phone.ID != "+15550001111" || rec.RedirectTimeout != 30 {
					t.Errorf("redirect recorded as %+v timeout %d", rec.RedirectTargets, rec.RedirectTimeout)
				}
			},
		},
		{
			name: "beta answer", path: "/beta/communications/calls/%s/answer",
			body:       `{"callbackUri":"` + bot.URL + `/answered","acceptedModalities":["audio"],"mediaConfig":{"@odata.type":"#microsoft.graph.serviceHostedMediaConfig"}}`,
			wantStatus: http.StatusAccepted, wantState: "established", wantAction: "answer", wantChange: "updated",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := place(t, s, phoneCaller)
			created := bot.next(t).notifications(t)
			if !created.Value[0].IsIncomingCall() || created.Value[0].CallID() != id {
				t.Fatalf("created notification = %+v", created.Value[0])
			}
			resp, body := do(t, s, http.MethodPost, fmt.Sprintf(tt.path, id), tok, tt.body)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			if resp.Header.Get("request-id") == "" || resp.Header.Get("client-request-id") != "test-client-request" {
				t.Errorf("correlation headers = %v", resp.Header)
			}
			after := bot.next(t).notifications(t)
			if got := after.Value[0]; got.ChangeType != tt.wantChange || got.CallID() != id {
				t.Errorf("notification after action = %s %s, want %s %s", got.ChangeType, got.CallID(), tt.wantChange, id)
			}
			// An answer goes establishing, then established, each with its own
			// notification: wait for the state the action ends in, not only for
			// the first notification after it.
			rec := waitRecord(t, s, id, func(r CallRecord) bool { return len(r.History) >= 3 && r.State == tt.wantState })
			if rec.State != tt.wantState || rec.Action != tt.wantAction || rec.Reason != tt.wantReason {
				t.Errorf("record state/action/reason = %s/%s/%s, want %s/%s/%s", rec.State, rec.Action, rec.Reason, tt.wantState, tt.wantAction, tt.wantReason)
			}
			if rec.NotifiedAt.IsZero() || rec.ActedAt.Before(rec.NotifiedAt) || rec.Latency <= 0 {
				t.Errorf("timings notified %v acted %v latency %v", rec.NotifiedAt, rec.ActedAt, rec.Latency)
			}
			if !hasEvent(rec, EventCreatedNotification, http.StatusAccepted) || !hasEvent(rec, tt.wantAction, tt.wantStatus) {
				t.Errorf("history = %+v", rec.History)
			}
			resp, raw := do(t, s, http.MethodGet, "/emulator/calls/"+id, "", "")
			var viaHTTP CallRecord
			if err := json.Unmarshal(raw, &viaHTTP); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("GET record: %d %s %v", resp.StatusCode, raw, err)
			}
			if !viaHTTP.NotifiedAt.Equal(rec.NotifiedAt) || !viaHTTP.ActedAt.Equal(rec.ActedAt) || viaHTTP.Latency != rec.Latency ||
				viaHTTP.Action != rec.Action || viaHTTP.State != rec.State {
				t.Errorf("record over HTTP = %+v, in-process %+v", viaHTTP, rec)
			}
			if tt.check != nil {
				tt.check(t, body, rec)
			}
		})
	}
}

func TestActionErrors(t *testing.T) {
	bot := newBotServer(t, false, nil)
	s := startEmulator(t, bot.URL, nil)
	tok := accessToken(t, s, appID, tenantID)
	sameTenantOtherApp := accessToken(t, s, otherAppID, tenantID)
	otherTenantApp := accessToken(t, s, foreignAppID, otherTenant)
	now := time.Now()
	expired, err := s.tokenKeys.current().sign(map[string]any{
		"aud": s.URL(), "iss": tokenIssuer(tenantID), "tid": tenantID, "appid": appID,
		"iat": now.Add(-2 * time.Hour).Unix(), "nbf": now.Add(-2 * time.Hour).Unix(), "exp": now.Add(-time.Hour).Unix(),
	})
	if err != nil {
		t.Fatal(err)
	}
	wrongAudience, err := s.tokenKeys.current().sign(map[string]any{
		"aud": "https://example.com", "iss": tokenIssuer(tenantID), "tid": tenantID, "appid": appID,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	})
	if err != nil {
		t.Fatal(err)
	}
	// A callback token is validly signed by the emulator, but not by the
	// token service.
	inbound, err := s.SignInboundToken(InboundClaims(appID, tenantID))
	if err != nil {
		t.Fatal(err)
	}

	id := place(t, s, phoneCaller)
	bot.next(t)
	rejectPath := "/v1.0/communications/calls/" + id + "/reject"
	redirectPath := "/v1.0/communications/calls/" + id + "/redirect"
	answerPath := "/v1.0/communications/calls/" + id + "/answer"
	target := `{"identity":{"user":{"id":"u1"}}}`

	tests := []struct {
		name, path, token, body string
		wantStatus              int
		wantCode, wantMessage   string
	}{
		{"no token", rejectPath, "", `{}`, 401, "InvalidAuthenticationToken", "Access token is empty."},
		{"garbage token", rejectPath, "not-a-jwt", `{}`, 401, "InvalidAuthenticationToken", "JWS compact"},
		{"callback token", rejectPath, inbound, `{}`, 401, "InvalidAuthenticationToken", "signing key"},
		{"expired token", rejectPath, expired, `{}`, 401, "InvalidAuthenticationToken", "expired"},
		{"wrong audience", rejectPath, wrongAudience, `{}`, 401, "InvalidAuthenticationToken", "Invalid audience"},
		{"unknown call", "/v1.0/communications/calls/nope/reject", tok, `{}`, 404, "itemNotFound", "nope"},
		{"unknown call beta app", "/beta/app/calls/nope/reject", tok, `{}`, 404, "itemNotFound", "nope"},
		{"other app same tenant", rejectPath, sameTenantOtherApp, `{}`, 403, "accessDenied", otherAppID},
		{"other tenant", rejectPath, otherTenantApp, `{}`, 403, "accessDenied", otherTenant},
		{"bad reason", rejectPath, tok, `{"reason":"Busy"}`, 400, "badRequest", "none, busy, forbidden"},
		{"bad JSON", rejectPath, tok, `{"reason":`, 400, "badRequest", "Unable to read JSON"},
		{"reason not a string", rejectPath, tok, `{"reason":1}`, 400, "badRequest", "reason"},
		{"no targets", redirectPath, tok, `{"targets":[]}`, 400, "badRequest", "1 to 25"},
		{"too many targets", redirectPath, tok, `{"targets":[` + strings.Repeat(target+",", 25) + target + `]}`, 400, "badRequest", "got 26"},
		{"target without identity", redirectPath, tok, `{"targets":[{"identity":{}}]}`, 400, "badRequest", "targets[0].identity"},
		{"timeout too short", redirectPath, tok, `{"targets":[` + target + `],"timeout":5}`, 400, "badRequest", "between 15 and 90"},
		{"timeout overflow", redirectPath, tok, `{"targets":[` + target + `],"timeout":99999999999}`, 400, "badRequest", "timeout"},
		{"redirect empty body", redirectPath, tok, ``, 400, "badRequest", "empty"},
		{"bad callbackUri", redirectPath, tok, `{"targets":[` + target + `],"callbackUri":"ftp://x"}`, 400, "badRequest", "callbackUri"},
		{"answer without mediaConfig", answerPath, tok, `{"acceptedModalities":["audio"]}`, 400, "badRequest", "mediaConfig"},
		{"answer bad modality", answerPath, tok, `{"mediaConfig":{},"acceptedModalities":["smell"]}`, 400, "badRequest", "smell"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, s, http.MethodPost, tt.path, tt.token, tt.body)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			e := graphErr(t, body)
			if e.Error.Code != tt.wantCode || !strings.Contains(e.Error.Message, tt.wantMessage) {
				t.Errorf("error = %s %q, want %s containing %q", e.Error.Code, e.Error.Message, tt.wantCode, tt.wantMessage)
			}
			if e.Error.InnerError == nil || e.Error.InnerError.RequestID != resp.Header.Get("request-id") ||
				e.Error.InnerError.ClientRequestID != "test-client-request" || e.Error.InnerError.Date == "" {
				t.Errorf("innerError = %+v, request-id header %q", e.Error.InnerError, resp.Header.Get("request-id"))
			}
		})
	}
	if rec, _ := s.Call(id); rec.State != graph.StateIncoming || rec.Action != "" {
		t.Fatalf("refused actions changed the call: %+v", rec)
	}

	t.Run("acting twice", func(t *testing.T) {
		resp, body := do(t, s, http.MethodPost, rejectPath, tok, `{"reason":"none"}`)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("first reject = %d %s", resp.StatusCode, body)
		}
		for _, p := range []string{rejectPath, redirectPath, "/beta/app/calls/" + id + "/reject"} {
			resp, body := do(t, s, http.MethodPost, p, tok, `{"targets":[`+target+`]}`)
			if resp.StatusCode != http.StatusConflict {
				t.Fatalf("%s again = %d %s", p, resp.StatusCode, body)
			}
			if e := graphErr(t, body); e.Error.Code != "conflict" || !strings.Contains(e.Error.Message, "already rejected") {
				t.Errorf("error = %+v", e.Error)
			}
		}
		rec := waitRecord(t, s, id, func(r CallRecord) bool { return hasEvent(r, EventDeletedNotification, http.StatusAccepted) })
		if rec.Action != "reject" || !hasEvent(rec, "reject", http.StatusConflict) || !hasEvent(rec, "reject", http.StatusUnauthorized) {
			t.Errorf("history = %+v", rec.History)
		}
	})
}

func TestMissedCall(t *testing.T) {
	bot := newBotServer(t, false, nil)
	s := startEmulator(t, bot.URL, func(c *Config) { c.MissedAfter = 300 * time.Millisecond })
	tok := accessToken(t, s, appID, tenantID)
	id := place(t, s, phoneCaller)
	bot.next(t)
	deleted := bot.next(t).notifications(t)
	if deleted.Value[0].ChangeType != graph.ChangeDeleted || deleted.Value[0].CallID() != id {
		t.Fatalf("after the missed timeout got %+v", deleted.Value[0])
	}
	rec := waitRecord(t, s, id, func(r CallRecord) bool { return hasEvent(r, EventDeletedNotification, http.StatusAccepted) })
	if !rec.Missed || rec.State != graph.StateTerminated || rec.Action != "" || !hasEvent(rec, EventMissed, 0) || !rec.ActedAt.IsZero() {
		t.Errorf("record = %+v", rec)
	}
	resp, body := do(t, s, http.MethodPost, "/v1.0/communications/calls/"+id+"/reject", tok, `{}`)
	if resp.StatusCode != http.StatusConflict || !strings.Contains(graphErr(t, body).Error.Message, "terminated") {
		t.Errorf("reject after missed = %d %s", resp.StatusCode, body)
	}
}
