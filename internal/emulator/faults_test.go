package emulator

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestFaults(t *testing.T) {
	bot := newBotServer(t, false, nil)
	s := startEmulator(t, bot.URL, nil)
	tok := accessToken(t, s, appID, tenantID)
	const rejectRoute = "POST /v1.0/communications/calls/{id}/reject"

	reject := func(t *testing.T) (*http.Response, []byte, string) {
		t.Helper()
		id := place(t, s, phoneCaller)
		bot.next(t)
		resp, body := do(t, s, http.MethodPost, "/v1.0/communications/calls/"+id+"/reject", tok, `{"reason":"busy"}`)
		return resp, body, id
	}
	addFault := func(t *testing.T, body string) FaultRule {
		t.Helper()
		resp, out := do(t, s, http.MethodPost, "/emulator/faults", "", body)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("add fault: %d %s", resp.StatusCode, out)
		}
		var f FaultRule
		if err := json.Unmarshal(out, &f); err != nil {
			t.Fatal(err)
		}
		return f
	}

	t.Run("429 with Retry-After, then through", func(t *testing.T) {
		s.ResetStats()
		f := addFault(t, `{"path":"/v1.0/communications/calls/*/reject","method":"post","status":429,"retryAfter":2,"count":1}`)
		if f.ID == 0 || f.Method != "POST" || f.Count != 1 {
			t.Errorf("added %+v", f)
		}
		resp, body, id := reject(t)
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "2" {
			t.Fatalf("faulted reject = %d Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
		if e := graphErr(t, body); e.Error.Code != "TooManyRequests" || e.Error.InnerError.RequestID != resp.Header.Get("request-id") {
			t.Errorf("error = %+v", e.Error)
		}
		if rec, _ := s.Call(id); rec.State != "incoming" {
			t.Errorf("a faulted request reached the call: %+v", rec)
		}
		resp, body = do(t, s, http.MethodPost, "/v1.0/communications/calls/"+id+"/reject", tok, `{"reason":"busy"}`)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("retry = %d %s", resp.StatusCode, body)
		}
		bot.next(t) // deleted
		st := s.Stats().Requests[rejectRoute]
		if st[429] != 1 || st[202] != 1 {
			t.Errorf("stats for %s = %v", rejectRoute, st)
		}
		if len(s.Faults()) != 0 {
			t.Errorf("used-up rule still listed: %+v", s.Faults())
		}
	})

	t.Run("503 on the token service answers in Entra's shape", func(t *testing.T) {
		addFault(t, `{"path":"/`+tenantID+`/oauth2/","status":503,"retryAfter":1}`)
		resp, out := postForm(t, s, "/"+tenantID+"/oauth2/v2.0/token", url.Values{"grant_type": {"client_credentials"}})
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" || out["error"] != "temporarily_unavailable" {
			t.Errorf("faulted token request = %d %v", resp.StatusCode, out)
		}
	})

	t.Run("503 on Graph, count 2", func(t *testing.T) {
		addFault(t, `{"path":"/v1.0/communications/calls/","status":503,"count":2}`)
		for i := range 2 {
			resp, body := do(t, s, http.MethodPost, "/v1.0/communications/calls/x/reject", tok, `{}`)
			if resp.StatusCode != http.StatusServiceUnavailable || graphErr(t, body).Error.Code != "serviceNotAvailable" {
				t.Errorf("request %d = %d %s", i, resp.StatusCode, body)
			}
		}
		if resp, _ := do(t, s, http.MethodPost, "/v1.0/communications/calls/x/reject", tok, `{}`); resp.StatusCode != http.StatusNotFound {
			t.Errorf("third request = %d, want the real 404", resp.StatusCode)
		}
	})

	t.Run("latency only delays", func(t *testing.T) {
		addFault(t, `{"path":"/v1.0/","latencyMs":200}`)
		start := time.Now()
		resp, body, _ := reject(t)
		// The injected delay is a lower bound, not a performance claim.
		if elapsed := time.Since(start); elapsed < 200*time.Millisecond {
			t.Errorf("delayed request took %v", elapsed)
		}
		if resp.StatusCode != http.StatusAccepted {
			t.Errorf("delayed reject = %d %s", resp.StatusCode, body)
		}
		bot.next(t)
	})

	t.Run("processFirst: carried out, the answer late or lost", func(t *testing.T) {
		for _, tc := range []struct {
			name, rule string
			timeout    time.Duration // the client's patience
		}{
			{"drop", `{"path":"/v1.0/communications/calls/*/reject","processFirst":true,"drop":true}`, 10 * time.Second},
			// The client gives up long before the answer would come.
			{"latency past the client's timeout", `{"path":"/v1.0/communications/calls/*/reject","processFirst":true,"latencyMs":60000}`, time.Second},
		} {
			t.Run(tc.name, func(t *testing.T) {
				s.ResetStats()
				addFault(t, tc.rule)
				id := place(t, s, phoneCaller)
				bot.next(t)
				ctx, cancel := context.WithTimeout(t.Context(), tc.timeout)
				defer cancel()
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL()+"/v1.0/communications/calls/"+id+"/reject", strings.NewReader(`{"reason":"busy"}`))
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Authorization", "Bearer "+tok)
				req.Header.Set("Content-Type", "application/json")
				if resp, err := s.Client().Do(req); err == nil {
					resp.Body.Close()
					t.Fatalf("the held answer reached the client: %d", resp.StatusCode)
				}
				bot.next(t) // deleted: the reject was carried out
				if rec, _ := s.Call(id); rec.State != "terminated" || rec.Action != "reject" || rec.Reason != "busy" {
					t.Fatalf("call = %+v, want rejected busy", rec)
				}
				// The route is counted once, as unanswered, when the handler
				// gives up; wait for that rather than racing it.
				deadline := time.Now().Add(10 * time.Second)
				for s.Stats().Requests[rejectRoute][0] != 1 && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				if st := s.Stats().Requests[rejectRoute]; st[0] != 1 || len(st) != 1 {
					t.Errorf("stats = %v, want one status 0", st)
				}
				resp, body := do(t, s, http.MethodPost, "/v1.0/communications/calls/"+id+"/reject", tok, `{"reason":"busy"}`)
				if resp.StatusCode != http.StatusConflict {
					t.Errorf("second reject = %d %s, want 409", resp.StatusCode, body)
				}
			})
		}
	})

	t.Run("processFirst: a late answer is the real one", func(t *testing.T) {
		s.ResetStats()
		addFault(t, `{"path":"/v1.0/communications/calls/*/reject","processFirst":true,"latencyMs":100}`)
		resp, body, id := reject(t)
		if resp.StatusCode != http.StatusAccepted || resp.Header.Get("request-id") == "" {
			t.Fatalf("delayed reject = %d %s", resp.StatusCode, body)
		}
		bot.next(t)
		if rec, _ := s.Call(id); rec.Action != "reject" {
			t.Errorf("call = %+v", rec)
		}
		if st := s.Stats().Requests[rejectRoute]; st[202] != 1 || len(st) != 1 {
			t.Errorf("stats = %v, want one 202", st)
		}
	})

	t.Run("processFirst excludes status", func(t *testing.T) {
		resp, body := do(t, s, http.MethodPost, "/emulator/faults", "", `{"path":"/x","processFirst":true,"status":500}`)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "excludes status") {
			t.Errorf("add fault = %d %s, want 400", resp.StatusCode, body)
		}
	})

	t.Run("drop", func(t *testing.T) {
		s.ResetStats()
		addFault(t, `{"path":"/v1.0/communications/calls/*/reject","drop":true}`)
		id := place(t, s, phoneCaller)
		bot.next(t)
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.URL()+"/v1.0/communications/calls/"+id+"/reject", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := s.Client().Do(req)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("dropped request answered %d", resp.StatusCode)
		}
		if st := s.Stats().Requests[rejectRoute]; st[0] != 1 {
			t.Errorf("stats = %v, want one status 0", st)
		}
		if rec, _ := s.Call(id); rec.State != "incoming" {
			t.Errorf("a dropped request reached the call: %+v", rec)
		}
	})

	t.Run("list and clear", func(t *testing.T) {
		addFault(t, `{"path":"/nowhere","status":500,"count":5}`)
		resp, body := do(t, s, http.MethodGet, "/emulator/faults", "", "")
		var list struct{ Value []FaultRule }
		if err := json.Unmarshal(body, &list); err != nil || resp.StatusCode != http.StatusOK || len(list.Value) != 1 || list.Value[0].Count != 5 {
			t.Fatalf("faults = %d %s", resp.StatusCode, body)
		}
		if resp, _ := do(t, s, http.MethodDelete, "/emulator/faults", "", ""); resp.StatusCode != http.StatusNoContent {
			t.Errorf("clear = %d", resp.StatusCode)
		}
		if len(s.Faults()) != 0 {
			t.Error("faults not cleared")
		}
	})

	t.Run("control API is never faulted and stats over HTTP", func(t *testing.T) {
		addFault(t, `{"path":"/","status":500,"count":100}`)
		defer s.ClearFaults()
		resp, body := do(t, s, http.MethodGet, "/emulator/stats", "", "")
		var st Stats
		if err := json.Unmarshal(body, &st); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("stats = %d %s", resp.StatusCode, body)
		}
		if st.Requests[rejectRoute][0] != 1 || st.Notifications[EventCreatedNotification][202] == 0 {
			t.Errorf("stats = %s", body)
		}
		if resp, _ := do(t, s, http.MethodDelete, "/emulator/stats", "", ""); resp.StatusCode != http.StatusNoContent || len(s.Stats().Requests) != 0 {
			t.Errorf("reset = %d, stats %v", resp.StatusCode, s.Stats())
		}
	})
}
