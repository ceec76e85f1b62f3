package emulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/callguard/callguard/internal/graph"
)

// inboundKeySet fetches the callback-token keys the way a bot discovers
// them: the OpenID configuration, then its jwks_uri.
func inboundKeySet(t *testing.T, s *Server) *jose.JSONWebKeySet {
	t.Helper()
	resp, body := do(t, s, http.MethodGet, "/v1/.well-known/OpenIdConfiguration", "", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("OpenID configuration: %d %s", resp.StatusCode, body)
	}
	var cfg struct {
		Issuer  string   `json:"issuer"`
		JWKSURI string   `json:"jwks_uri"`
		Algs    []string `json:"id_token_signing_alg_values_supported"`
		Auth    []string `json:"token_endpoint_auth_methods_supported"`
	}
	if err := json.Unmarshal(body, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Issuer != "https://api.botframework.com" || cfg.JWKSURI != s.URL()+"/v1/.well-known/keys" ||
		len(cfg.Algs) != 1 || cfg.Algs[0] != "RS256" || len(cfg.Auth) != 1 || cfg.Auth[0] != "private_key_jwt" {
		t.Fatalf("OpenID configuration = %s", body)
	}
	resp, err := s.Client().Get(cfg.JWKSURI)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatalf("JWKS: %v", err)
	}
	for _, k := range set.Keys {
		if len(k.Certificates) != 1 || k.KeyID == "" || !k.Valid() {
			t.Errorf("JWK %s lacks x5c or is invalid", k.KeyID)
		}
	}
	return &set
}

// verifyInbound checks a callback Authorization header against the keys
// and returns its claims and kid.
func verifyInbound(t *testing.T, auth string, keys *jose.JSONWebKeySet) (map[string]any, string) {
	t.Helper()
	raw, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		t.Fatalf("Authorization = %q", auth)
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := tok.Claims(keys, &claims); err != nil {
		t.Fatalf("verifying callback token against the JWKS: %v", err)
	}
	return claims, tok.Headers[0].KeyID
}

func TestNotificationIsSignedAndShaped(t *testing.T) {
	// A TLS callback, as bots in production have.
	bot := newBotServer(t, true, nil)
	s := startEmulator(t, bot.URL+"/api/calls", func(c *Config) { c.CallbackClient = bot.Client() })
	src := &graph.IdentitySet{User: &graph.Identity{ID: "8A34A46B-3D17-4ADC-8DCE-DC4E7D572698", DisplayName: "Test User", TenantID: tenantID}}
	call, err := s.PlaceCall(t.Context(), PlaceCallRequest{AppID: appID, Source: src, RequestedModalities: []string{"audio", "video"}})
	if err != nil {
		t.Fatal(err)
	}
	got := bot.next(t)
	claims, _ := verifyInbound(t, got.auth, inboundKeySet(t, s))
	for k, want := range map[string]any{"iss": "https://api.botframework.com", "aud": appID, "tid": tenantID, TenantIDClaim: tenantID} {
		if claims[k] != want {
			t.Errorf("claim %s = %v, want %v", k, claims[k], want)
		}
	}
	if exp := time.Unix(int64(claims["exp"].(float64)), 0); time.Until(exp) < 9*time.Minute || time.Until(exp) > 11*time.Minute {
		t.Errorf("exp = %v, want about 10 minutes from now", exp)
	}

	var raw map[string]any
	if err := json.Unmarshal(got.body, &raw); err != nil {
		t.Fatal(err)
	}
	if raw["@odata.type"] != "#microsoft.graph.commsNotifications" {
		t.Errorf("@odata.type = %v", raw["@odata.type"])
	}
	n := got.notifications(t).Value[0]
	c := n.ResourceData
	switch {
	case !n.IsIncomingCall() || n.CallID() != call.ID || n.ResourceURL != "/communications/calls/"+call.ID:
		t.Errorf("notification = %+v", n)
	case c.Source == nil || c.Source.Identity == nil || c.Source.Identity.User == nil || c.Source.Identity.User.DisplayName != "Test User":
		t.Errorf("source = %+v", c.Source)
	case len(c.Targets) != 1 || c.Targets[0].Identity.Application == nil || c.Targets[0].Identity.Application.ID != appID:
		t.Errorf("targets = %+v", c.Targets)
	case c.TenantID != tenantID || c.CallChainID == "" || c.Direction != "incoming" || strings.Join(c.RequestedModalities, ",") != "audio,video":
		t.Errorf("call = %+v", c)
	case call.State != graph.StateIncoming || call.CallbackURI != bot.URL+"/api/calls":
		t.Errorf("PlaceCall returned %+v", call)
	}
	rec, ok := s.Call(call.ID)
	if !ok || !hasEvent(rec, EventCreatedNotification, http.StatusAccepted) || rec.NotifiedAt.IsZero() {
		t.Errorf("record = %+v", rec)
	}
}

func TestPlaceCallOverHTTP(t *testing.T) {
	bot := newBotServer(t, false, nil)
	s := startEmulator(t, "", nil)
	failing := newBotServer(t, false, func([]byte) int { return http.StatusInternalServerError })

	t.Run("raw fields merged, anonymous caller", func(t *testing.T) {
		resp, body := do(t, s, http.MethodPost, "/emulator/calls", "",
			`{"appId":"`+appID+`","callbackUri":"`+bot.URL+`","call":{"id":"fixed-id","subject":"hello","incomingContext":{"sourceParticipantId":"p1"}}}`)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		var res map[string]any
		if err := json.Unmarshal(body, &res); err != nil {
			t.Fatal(err)
		}
		if res["id"] != "fixed-id" || res["subject"] != "hello" || res["incomingContext"] == nil || res["state"] != "incoming" {
			t.Errorf("call = %s", body)
		}
		n := bot.next(t).notifications(t).Value[0]
		if n.ResourceData.Subject != "hello" || n.ResourceData.Source == nil || n.ResourceData.Source.Identity != nil {
			t.Errorf("notification call = %+v", n.ResourceData)
		}
		resp, body = do(t, s, http.MethodPost, "/emulator/calls", "", `{"appId":"`+appID+`","callbackUri":"`+bot.URL+`","call":{"id":"fixed-id"}}`)
		if resp.StatusCode != http.StatusConflict {
			t.Errorf("same id again = %d %s", resp.StatusCode, body)
		}
	})

	t.Run("delivery failure recorded", func(t *testing.T) {
		id := place(t, s, `{"appId":"`+appID+`","callbackUri":"`+failing.URL+`"}`)
		failing.next(t)
		resp, body := do(t, s, http.MethodGet, "/emulator/calls/"+id, "", "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		var rec map[string]any
		if err := json.Unmarshal(body, &rec); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"id", "state", "action", "reason", "redirectTargets", "notifiedAt", "actedAt", "history"} {
			if _, ok := rec[k]; !ok {
				t.Errorf("record lacks %q: %s", k, body)
			}
		}
		if _, err := time.Parse(time.RFC3339Nano, rec["notifiedAt"].(string)); err != nil || rec["actedAt"] != nil {
			t.Errorf("notifiedAt %v (%v), actedAt %v, want a time and null", rec["notifiedAt"], err, rec["actedAt"])
		}
		h := rec["history"].([]any)[0].(map[string]any)
		if h["event"] != EventCreatedNotification || h["status"] != float64(500) {
			t.Errorf("history[0] = %v", h)
		}
		if _, err := time.Parse(time.RFC3339Nano, h["at"].(string)); err != nil {
			t.Errorf("at: %v", err)
		}
	})

	t.Run("unreachable callback", func(t *testing.T) {
		id := place(t, s, `{"appId":"`+appID+`","callbackUri":"http://127.0.0.1:1/cb"}`)
		rec, _ := s.Call(id)
		if len(rec.History) != 1 || rec.History[0].Status != 0 || rec.History[0].Detail == "" {
			t.Errorf("history = %+v", rec.History)
		}
	})

	t.Run("list", func(t *testing.T) {
		resp, body := do(t, s, http.MethodGet, "/emulator/calls", "", "")
		var list struct{ Value []CallRecord }
		if err := json.Unmarshal(body, &list); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%d %s %v", resp.StatusCode, body, err)
		}
		if len(list.Value) != 3 || list.Value[0].ID != "fixed-id" {
			t.Errorf("calls = %+v", list.Value)
		}
	})

	t.Run("in-process errors", func(t *testing.T) {
		_, err := s.PlaceCall(t.Context(), PlaceCallRequest{AppID: appID, CallbackURI: bot.URL, Call: map[string]any{"id": "fixed-id"}})
		if !errors.Is(err, ErrCallExists) {
			t.Errorf("duplicate id: %v", err)
		}
		_, err = s.PlaceCall(t.Context(), PlaceCallRequest{AppID: otherTenant})
		if !errors.Is(err, ErrInvalidCall) {
			t.Errorf("unknown bot: %v", err)
		}
	})
}

func TestControlAPIRejectsBadInput(t *testing.T) {
	s := startEmulator(t, "", nil)
	cb := `"callbackUri":"http://127.0.0.1:9/cb"`
	tests := []struct {
		name, method, path, body string
		wantStatus               int
		wantMessage              string
	}{
		{"empty", "POST", "/emulator/calls", ``, 400, "empty"},
		{"truncated", "POST", "/emulator/calls", `{"appId":`, 400, "unexpected end"},
		{"syntax", "POST", "/emulator/calls", `{"appId" "x"}`, 400, "invalid JSON at byte offset"},
		{"array", "POST", "/emulator/calls", `[]`, 400, "must be a JSON object"},
		{"string", "POST", "/emulator/calls", `"call"`, 400, "must be a JSON object"},
		{"wrong type", "POST", "/emulator/calls", `{"appId":5}`, 400, `field "appId"`},
		{"unknown field", "POST", "/emulator/calls", `{"appId":"x","callback":"y"}`, 400, `unknown field "callback"`},
		{"trailing data", "POST", "/emulator/calls", `{} {}`, 400, "unexpected data after"},
		{"too big", "POST", "/emulator/calls", `{"appId":"` + strings.Repeat("x", maxBody) + `"}`, 400, "exceeds"},
		{"missing appId", "POST", "/emulator/calls", `{}`, 400, "appId is required"},
		{"unknown bot", "POST", "/emulator/calls", `{"appId":"` + otherTenant + `",` + cb + `}`, 400, "not a registered bot"},
		{"no callback", "POST", "/emulator/calls", `{"appId":"` + appID + `"}`, 400, "callbackUri is required"},
		{"bad callback", "POST", "/emulator/calls", `{"appId":"` + appID + `","callbackUri":"/relative"}`, 400, "absolute"},
		{"bad modality", "POST", "/emulator/calls", `{"appId":"` + appID + `",` + cb + `,"requestedModalities":["smell"]}`, 400, "smell"},
		{"source not an object", "POST", "/emulator/calls", `{"appId":"` + appID + `",` + cb + `,"source":[1]}`, 400, "source must be an identitySet"},
		{"source wrong shape", "POST", "/emulator/calls", `{"appId":"` + appID + `",` + cb + `,"source":{"phone":"+1"}}`, 400, "call:"},
		{"call id not a string", "POST", "/emulator/calls", `{"appId":"` + appID + `",` + cb + `,"call":{"id":7}}`, 400, "call.id"},
		{"call id with slash", "POST", "/emulator/calls", `{"appId":"` + appID + `",` + cb + `,"call":{"id":"a/b"}}`, 400, "call.id"},
		{"call state not a string", "POST", "/emulator/calls", `{"appId":"` + appID + `",` + cb + `,"call":{"state":1}}`, 400, "call.state"},
		{"call field wrong type", "POST", "/emulator/calls", `{"appId":"` + appID + `",` + cb + `,"call":{"targets":"x"}}`, 400, "targets"},
		{"call not an object", "POST", "/emulator/calls", `{"appId":"` + appID + `",` + cb + `,"call":[]}`, 400, `field "call"`},
		{"unknown call", "GET", "/emulator/calls/nope", ``, 404, "nope"},
		{"fault bad JSON", "POST", "/emulator/faults", `{"path":`, 400, "unexpected end"},
		{"fault unknown field", "POST", "/emulator/faults", `{"path":"/x","statuss":429}`, 400, `unknown field "statuss"`},
		{"fault no effect", "POST", "/emulator/faults", `{"path":"/x"}`, 400, "needs a status, latencyMs or drop"},
		{"fault relative path", "POST", "/emulator/faults", `{"path":"x","status":503}`, 400, "path must start with /"},
		{"fault bad glob", "POST", "/emulator/faults", `{"path":"/x/[","status":503}`, 400, "not a valid glob"},
		{"fault bad status", "POST", "/emulator/faults", `{"path":"/x","status":200}`, 400, "400-599"},
		{"fault negative count", "POST", "/emulator/faults", `{"path":"/x","status":503,"count":-1}`, 400, "count"},
		{"fault retryAfter alone", "POST", "/emulator/faults", `{"path":"/x","retryAfter":3,"latencyMs":1}`, 400, "retryAfter needs a status"},
		{"fault drop and status", "POST", "/emulator/faults", `{"path":"/x","drop":true,"status":503}`, 400, "exclude"},
		{"fault bad method", "POST", "/emulator/faults", `{"path":"/x","status":503,"method":"P0ST"}`, 400, "method"},
		{"fault huge latency", "POST", "/emulator/faults", `{"path":"/x","latencyMs":99999999}`, 400, "latencyMs"},
		{"fault with id", "POST", "/emulator/faults", `{"id":3,"path":"/x","status":503}`, 400, "assigned"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, s, tt.method, tt.path, "", tt.body)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			if e := graphErr(t, body); !strings.Contains(e.Error.Message, tt.wantMessage) {
				t.Errorf("message = %q, want it to contain %q", e.Error.Message, tt.wantMessage)
			}
		})
	}
	if n := len(s.Calls()); n != 0 {
		t.Errorf("bad requests placed %d calls", n)
	}
	if n := len(s.Faults()); n != 0 {
		t.Errorf("bad requests added %d faults", n)
	}
}

func TestLegacyHandshake(t *testing.T) {
	isLegacy := func(body []byte) bool { return !bytes.Contains(body, []byte(`"value"`)) }
	acknowledging := newBotServer(t, false, func(body []byte) int {
		if isLegacy(body) {
			return http.StatusNoContent
		}
		return http.StatusAccepted
	})
	refusing := newBotServer(t, false, nil)
	s := startEmulator(t, acknowledging.URL, func(c *Config) {
		c.Bots[0].Legacy = true
	})

	id := place(t, s, phoneCaller)
	first := acknowledging.next(t)
	if !isLegacy(first.body) {
		t.Fatalf("first notification is not legacy: %s", first.body)
	}
	var legacy map[string]any
	if err := json.Unmarshal(first.body, &legacy); err != nil || legacy["id"] != id || legacy["callState"] != "incoming" {
		t.Errorf("legacy body = %s (%v)", first.body, err)
	}
	if _, err := graph.DecodeNotifications(first.body); !errors.Is(err, graph.ErrLegacyFormat) {
		t.Errorf("the wire types do not see the legacy body as legacy: %v", err)
	}
	verifyInbound(t, first.auth, inboundKeySet(t, s))
	if n := acknowledging.next(t).notifications(t); !n.Value[0].IsIncomingCall() || n.Value[0].CallID() != id {
		t.Errorf("second notification = %+v", n.Value[0])
	}
	rec, _ := s.Call(id)
	if len(rec.History) != 2 || rec.History[0].Event != EventLegacyNotification || rec.History[0].Status != http.StatusNoContent ||
		rec.History[1].Event != EventCreatedNotification || rec.History[1].Status != http.StatusAccepted {
		t.Errorf("history = %+v", rec.History)
	}

	// The callback completed the handshake: Graph format from now on.
	place(t, s, phoneCaller)
	if next := acknowledging.next(t); isLegacy(next.body) {
		t.Errorf("legacy body sent again: %s", next.body)
	}

	// A bot that does not answer 204 never gets the Graph format.
	id = place(t, s, `{"appId":"`+appID+`","callbackUri":"`+refusing.URL+`"}`)
	if got := refusing.next(t); !isLegacy(got.body) {
		t.Fatalf("first notification is not legacy: %s", got.body)
	}
	refusing.quiet(t, 100*time.Millisecond)
	rec, _ = s.Call(id)
	if len(rec.History) != 1 || rec.History[0].Status != http.StatusAccepted || !rec.NotifiedAt.IsZero() {
		t.Errorf("record = %+v", rec)
	}
}

func TestKeyRotation(t *testing.T) {
	bot := newBotServer(t, false, nil)
	s := startEmulator(t, bot.URL, nil)

	place(t, s, phoneCaller)
	keys := inboundKeySet(t, s)
	_, kid0 := verifyInbound(t, bot.next(t).auth, keys)

	resp, body := do(t, s, http.MethodPost, "/emulator/keys/rotate", "", "")
	var rotated struct {
		Kid       string   `json:"kid"`
		Published []string `json:"published"`
	}
	if err := json.Unmarshal(body, &rotated); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("rotate: %d %s %v", resp.StatusCode, body, err)
	}
	if rotated.Kid == kid0 || len(rotated.Published) != 2 || rotated.Published[1] != kid0 {
		t.Fatalf("rotate = %+v, old kid %s", rotated, kid0)
	}

	place(t, s, phoneCaller)
	token := bot.next(t).auth
	// A bot with the old key set cannot verify the new token: it must
	// refresh on the unknown kid.
	raw := strings.TrimPrefix(token, "Bearer ")
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	if tok.Headers[0].KeyID != rotated.Kid {
		t.Errorf("new token kid = %s, want %s", tok.Headers[0].KeyID, rotated.Kid)
	}
	var claims map[string]any
	if err := tok.Claims(keys, &claims); err == nil {
		t.Error("the old key set verified a token of the new key")
	}
	refreshed := inboundKeySet(t, s)
	verifyInbound(t, token, refreshed)
	if len(refreshed.Key(kid0)) != 1 {
		t.Error("the previous key is no longer published after one rotation")
	}

	// Forged variants are signed with the current key too.
	claimsExpired := InboundClaims(appID, tenantID)
	claimsExpired["exp"] = time.Now().Add(-time.Hour).Unix()
	forged, err := s.SignInboundToken(claimsExpired)
	if err != nil {
		t.Fatal(err)
	}
	if _, kid := verifyInbound(t, "Bearer "+forged, refreshed); kid != rotated.Kid {
		t.Errorf("forged token kid = %s", kid)
	}

	if err := s.RotateKeys(); err != nil {
		t.Fatal(err)
	}
	if keys := inboundKeySet(t, s); len(keys.Keys) != 2 || len(keys.Key(kid0)) != 0 || len(keys.Key(rotated.Kid)) != 1 {
		t.Errorf("after a second rotation the JWKS holds %d keys (old published: %v)", len(keys.Keys), len(keys.Key(kid0)) != 0)
	}
}

// FuzzControlAndGraphBodies feeds arbitrary bodies to every endpoint that
// reads JSON: none may panic or answer anything but its documented statuses.
func FuzzControlAndGraphBodies(f *testing.F) {
	s, err := New(Config{
		Bots:           []Bot{{AppID: appID, TenantID: tenantID, Secret: secret, Callback: "http://127.0.0.1:1/cb"}},
		CallbackClient: &http.Client{Timeout: 100 * time.Millisecond},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = s.Close() })
	tok, err := s.tokenKeys.current().sign(map[string]any{
		"aud": GraphResource, "iss": tokenIssuer(tenantID), "tid": tenantID, "appid": appID,
		"iat": time.Now().Unix(), "nbf": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
		"roles": graph.CallingPermissions,
	})
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		phoneCaller,
		`{"appId":"` + appID + `","call":{"id":"seed","state":"established"}}`,
		`{"appId":"` + appID + `","source":{"user":{"id":"u"}},"call":{"targets":[{"identity":{"phone":{"id":"+1"}}}]}}`,
		`{"path":"/x/*","status":429,"retryAfter":1}`,
		`{"reason":"busy"}`,
		`{"targets":[{"identity":{"user":{"id":"u"}}}],"timeout":20}`,
		`{"mediaConfig":{},"acceptedModalities":["audio"]}`,
		`[{"a":[]}]`, `{"appId":null}`, `{"call":{"id":""}}`, "\x00", `{"source":"x"}`,
		`{"clientContext":"c","prompts":[{"mediaInfo":{"uri":"https://127.0.0.1:1/p.wav","resourceId":"r"}}]}`,
		`{"prompts":[{"mediaInfo":{"uri":"http://[::1"}}]}`,
	} {
		f.Add(seed)
	}
	if _, err := s.PlaceCall(f.Context(), PlaceCallRequest{AppID: appID, Call: map[string]any{"id": "target"}}); err != nil {
		f.Fatal(err)
	}
	// An established call takes prompts (which fail to fetch at once).
	if _, err := s.PlaceCall(f.Context(), PlaceCallRequest{AppID: appID, Call: map[string]any{"id": "playing", "state": "established"}}); err != nil {
		f.Fatal(err)
	}
	endpoints := []struct {
		path    string
		allowed []int
	}{
		{"/emulator/calls", []int{201, 400, 409}},
		{"/emulator/faults", []int{201, 400}},
		{"/v1.0/communications/calls/target/reject", []int{202, 400, 409}},
		{"/v1.0/communications/calls/target/redirect", []int{202, 400, 409}},
		{"/beta/communications/calls/target/answer", []int{202, 400, 409}},
		{"/beta/app/calls/target/reject", []int{200, 400, 409}},
		{"/v1.0/communications/calls/playing/playPrompt", []int{200, 400}},
	}
	f.Fuzz(func(t *testing.T, body string) {
		for _, e := range endpoints {
			req := httptest.NewRequestWithContext(t.Context(), http.MethodPost, "https://127.0.0.1"+e.path, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
			w := httptest.NewRecorder()
			s.serveHTTP(w, req)
			if !slices.Contains(e.allowed, w.Code) {
				t.Errorf("POST %s %q = %d %s", e.path, body, w.Code, w.Body)
			}
			s.ClearFaults() // a fault this input added must not answer the next request
		}
	})
}

func TestCallWithoutDelivery(t *testing.T) {
	bot := newBotServer(t, false, nil)
	s := startEmulator(t, bot.URL, func(c *Config) { c.MissedAfter = 200 * time.Millisecond })
	tok := accessToken(t, s, appID, tenantID)

	// Over HTTP, then rejected: no created and no deleted notification.
	id := place(t, s, `{"appId":"`+appID+`","deliver":false,"source":{"phone":{"id":"+15551234567"}}}`)
	resp, body := do(t, s, http.MethodPost, "/v1.0/communications/calls/"+id+"/reject", tok, `{"reason":"busy"}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("reject: %d %s", resp.StatusCode, body)
	}
	rec, _ := s.Call(id)
	if rec.State != graph.StateTerminated || rec.Action != "reject" || rec.Reason != "busy" || !rec.NotifiedAt.IsZero() {
		t.Errorf("record = %+v", rec)
	}
	resp, body = do(t, s, http.MethodPost, "/v1.0/communications/calls/"+id+"/reject", tok, `{"reason":"busy"}`)
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("second reject: %d %s, want 409", resp.StatusCode, body)
	}

	// In process, then missed: still silent.
	missed, err := s.PlaceCall(t.Context(), PlaceCallRequest{AppID: appID, Deliver: new(false)})
	if err != nil {
		t.Fatal(err)
	}
	waitRecord(t, s, missed.ID, func(r CallRecord) bool { return r.Missed })
	bot.quiet(t, 300*time.Millisecond)

	// Ended calls can be forgotten; incoming ones are kept.
	waiting := place(t, s, `{"appId":"`+appID+`","deliver":false}`)
	if n := s.ForgetEnded(); n != 2 {
		t.Errorf("ForgetEnded dropped %d calls, want the rejected and the missed one", n)
	}
	if _, ok := s.Call(id); ok {
		t.Error("rejected call still known")
	}
	if calls := s.Calls(); len(calls) != 1 || calls[0].ID != waiting {
		t.Errorf("calls after ForgetEnded = %+v", calls)
	}

	// "deliver": true is the default behaviour.
	place(t, s, `{"appId":"`+appID+`","deliver":true}`)
	if n := bot.next(t).notifications(t); n.Value[0].ChangeType != graph.ChangeCreated {
		t.Errorf("notification = %+v", n.Value[0])
	}
}

// Graph does not sign a token per notification: a bot's notifications in a
// tenant carry the same one until it is inboundTokenReuse old or the key
// rotates.
func TestNotificationTokenReusedUntilRotation(t *testing.T) {
	bot := newBotServer(t, false, nil)
	s := startEmulator(t, bot.URL+"/api/calls", nil)
	place := func() string {
		t.Helper()
		if _, err := s.PlaceCall(t.Context(), PlaceCallRequest{AppID: appID}); err != nil {
			t.Fatal(err)
		}
		return bot.next(t).auth
	}
	first := place()
	// Signed a second later, a token would differ (its iat does).
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second + 10*time.Millisecond)))
	if second := place(); second != first {
		t.Errorf("two notifications within %v carry different tokens", inboundTokenReuse)
	}
	if err := s.RotateKeys(); err != nil {
		t.Fatal(err)
	}
	third := place()
	keys := inboundKeySet(t, s)
	_, kidBefore := verifyInbound(t, first, keys)
	claims, kidAfter := verifyInbound(t, third, keys)
	if third == first || kidAfter == kidBefore {
		t.Errorf("after a rotation the token is still the old key's (kid %s)", kidAfter)
	}
	if exp := time.Unix(int64(claims["exp"].(float64)), 0); time.Until(exp) < InboundTokenLifetime-inboundTokenReuse-time.Minute {
		t.Errorf("exp = %v, want at least %v from now", exp, InboundTokenLifetime-inboundTokenReuse)
	}
}
