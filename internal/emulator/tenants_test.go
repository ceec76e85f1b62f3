package emulator

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// customerTenant is a tenant that consented to appID besides its home.
const customerTenant = "66666666-6666-4666-8666-666666666666"

// tokenTenant reads the tid claim of a token.
func tokenTenant(t *testing.T, tok string) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	tid, _ := claims["tid"].(string)
	return tid
}

// A multi-tenant app is registered in several tenants: each issues it
// tokens carrying that tenant, a call placed in a tenant arrives with that
// tenant's claim, and acting on it needs a token of that tenant.
func TestMultiTenantBot(t *testing.T) {
	bot := newBotServer(t, false, nil)
	s := startEmulator(t, bot.URL+"/api/calls", func(c *Config) {
		c.Bots = append(c.Bots, Bot{AppID: appID, TenantID: customerTenant})
	})
	home, customer := accessToken(t, s, appID, tenantID), accessToken(t, s, appID, customerTenant)
	if got := tokenTenant(t, customer); got != customerTenant {
		t.Fatalf("token from the customer tenant carries tid %q", got)
	}
	if got := tokenTenant(t, home); got != tenantID {
		t.Fatalf("token from the home tenant carries tid %q", got)
	}
	// Not registered there: Entra's 400.
	resp, out := postForm(t, s, "/"+customerTenant+"/oauth2/v2.0/token", map[string][]string{
		"grant_type": {"client_credentials"}, "client_id": {otherAppID}, "client_secret": {secret}, "scope": {s.URL() + "/.default"},
	})
	if resp.StatusCode != http.StatusBadRequest || out["error"] != "unauthorized_client" {
		t.Fatalf("an app not registered in the tenant: %d %v", resp.StatusCode, out)
	}

	id := place(t, s, `{"appId":"`+appID+`","tenantId":"`+strings.ToUpper(customerTenant)+`"}`)
	n := bot.next(t)
	if tid := tokenTenant(t, strings.TrimPrefix(n.auth, "Bearer ")); tid != customerTenant {
		t.Fatalf("notification token's tid = %q, want %s", tid, customerTenant)
	}
	if rec, _ := s.Call(id); rec.TenantID != customerTenant {
		t.Fatalf("call record tenantId = %q", rec.TenantID)
	}
	rejectPath := "/v1.0/communications/calls/" + id + "/reject"
	resp, body := do(t, s, http.MethodPost, rejectPath, home, `{"reason":"busy"}`)
	if resp.StatusCode != http.StatusForbidden || graphErr(t, body).Error.Code != "accessDenied" {
		t.Fatalf("reject with the home tenant's token: %d %s, want 403 accessDenied", resp.StatusCode, body)
	}
	if resp, body := do(t, s, http.MethodPost, rejectPath, customer, `{"reason":"busy"}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("reject with the call's tenant's token: %d %s", resp.StatusCode, body)
	}

	// The default tenant is the first registered; a tenant the bot is not
	// registered in is refused.
	if rec, _ := s.Call(place(t, s, `{"appId":"`+appID+`"}`)); rec.TenantID != tenantID {
		t.Fatalf("call without tenantId arrived in %q", rec.TenantID)
	}
	resp, body = do(t, s, http.MethodPost, "/emulator/calls", "", `{"appId":"`+appID+`","tenantId":"`+otherTenant+`"}`)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "not registered in that tenant") {
		t.Fatalf("call in a tenant the bot is not in: %d %s", resp.StatusCode, body)
	}
	// Registering the same tenant twice is an error.
	if _, err := New(Config{Bots: []Bot{{AppID: appID, TenantID: tenantID, Secret: secret}, {AppID: appID, TenantID: strings.ToUpper(tenantID)}}}); err == nil {
		t.Fatal("the same app registered twice in one tenant was accepted")
	}
}
