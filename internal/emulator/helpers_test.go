package emulator

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/graph"
)

const (
	appID        = "11111111-1111-4111-8111-111111111111"
	tenantID     = "22222222-2222-4222-8222-222222222222"
	otherAppID   = "33333333-3333-4333-8333-333333333333"
	otherTenant  = "44444444-4444-4444-8444-444444444444"
	foreignAppID = "55555555-5555-4555-8555-555555555555"
	secret       = "s3cret~value"
)

// received is one notification a test bot got.
type received struct {
	auth string
	body []byte
}

// notifications decodes a Graph-format body.
func (r received) notifications(t *testing.T) *graph.Notifications {
	t.Helper()
	n, err := graph.DecodeNotifications(r.body)
	if err != nil {
		t.Fatalf("decoding notification %s: %v", r.body, err)
	}
	return n
}

// botServer is a bot's callback endpoint that records what Graph sends.
type botServer struct {
	*httptest.Server
	ch chan received
	// status picks the answer to a body (default 202).
	status func(body []byte) int
}

func newBotServer(t *testing.T, tlsServer bool, status func(body []byte) int) *botServer {
	t.Helper()
	b := &botServer{ch: make(chan received, 64), status: status}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.ch <- received{auth: r.Header.Get("Authorization"), body: body}
		st := http.StatusAccepted
		if b.status != nil {
			st = b.status(body)
		}
		w.WriteHeader(st)
	})
	if tlsServer {
		b.Server = httptest.NewTLSServer(h)
	} else {
		b.Server = httptest.NewServer(h)
	}
	t.Cleanup(b.Close)
	return b
}

// next waits for the next notification.
func (b *botServer) next(t *testing.T) received {
	t.Helper()
	select {
	case r := <-b.ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no notification within 10s")
		return received{}
	}
}

// quiet fails if a notification arrives within d.
func (b *botServer) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case r := <-b.ch:
		t.Fatalf("unexpected notification %s", r.body)
	case <-time.After(d):
	}
}

// startEmulator starts an emulator with the standard bots (appID and
// otherAppID in tenantID, foreignAppID in otherTenant) calling back to cb.
func startEmulator(t *testing.T, cb string, mutate func(*Config)) *Server {
	t.Helper()
	cfg := Config{
		Bots: []Bot{
			{AppID: appID, TenantID: tenantID, Secret: secret, Callback: cb},
			{AppID: otherAppID, TenantID: tenantID, Secret: secret, Callback: cb},
			{AppID: foreignAppID, TenantID: otherTenant, Secret: secret, Callback: cb},
		},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// do sends a request to the emulator; token "" sends no Authorization.
func do(t *testing.T, s *Server, method, path, token, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, s.URL()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("client-request-id", "test-client-request")
	resp, err := s.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, out
}

// postForm posts a token request.
func postForm(t *testing.T, s *Server, path string, form url.Values) (*http.Response, map[string]any) {
	t.Helper()
	resp, err := s.Client().PostForm(s.URL()+path, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("decoding token response: %v", err)
	}
	return resp, out
}

// accessToken gets a token with the client secret grant.
func accessToken(t *testing.T, s *Server, app, tenant string) string {
	t.Helper()
	resp, out := postForm(t, s, "/"+tenant+"/oauth2/v2.0/token", url.Values{
		"grant_type":    {"client_credentials"},
		"client_id":     {app},
		"client_secret": {secret},
		"scope":         {s.URL() + "/.default"},
	})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("token: %d %v", resp.StatusCode, out)
	}
	return out["access_token"].(string)
}

// place places a call to appID over the control API and returns its id.
func place(t *testing.T, s *Server, body string) string {
	t.Helper()
	resp, out := do(t, s, http.MethodPost, "/emulator/calls", "", body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("place call: %d %s", resp.StatusCode, out)
	}
	var c graph.Call
	if err := json.Unmarshal(out, &c); err != nil {
		t.Fatal(err)
	}
	return c.ID
}

// waitRecord polls a call record until cond holds.
func waitRecord(t *testing.T, s *Server, id string, cond func(CallRecord) bool) CallRecord {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, ok := s.Call(id)
		if ok && cond(rec) {
			return rec
		}
		if time.Now().After(deadline) {
			t.Fatalf("call %s: condition not met; record %+v", id, rec)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func hasEvent(rec CallRecord, event string, status int) bool {
	for _, e := range rec.History {
		if e.Event == event && e.Status == status {
			return true
		}
	}
	return false
}

// graphErr decodes Graph's error body.
func graphErr(t *testing.T, body []byte) graph.ErrorBody {
	t.Helper()
	var e graph.ErrorBody
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" {
		t.Fatalf("not a Graph error body: %s (%v)", body, err)
	}
	return e
}
