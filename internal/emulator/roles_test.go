package emulator

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/callguard/callguard/internal/graph"
)

// tokenRoles reads the roles claim of an access token the emulator issued.
func tokenRoles(t *testing.T, tok string) ([]string, bool) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWS: %q", tok)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	raw, ok := claims["roles"]
	if !ok {
		return nil, false
	}
	var roles []string
	for _, r := range raw.([]any) {
		roles = append(roles, r.(string))
	}
	return roles, true
}

func TestTokenRolesArePerBot(t *testing.T) {
	s := startEmulator(t, "https://bot.example/api/calls", func(c *Config) {
		c.Bots[1].Roles = []string{graph.PermissionCallsInitiate}
		c.Bots[2].Roles = []string{}
	})
	roles, ok := tokenRoles(t, accessToken(t, s, appID, tenantID))
	if !ok || !slices.Equal(roles, graph.CallingPermissions) {
		t.Errorf("default bot: roles = %v (present %v), want every calling permission %v", roles, ok, graph.CallingPermissions)
	}
	roles, ok = tokenRoles(t, accessToken(t, s, otherAppID, tenantID))
	if !ok || !slices.Equal(roles, []string{graph.PermissionCallsInitiate}) {
		t.Errorf("bot granted Calls.Initiate.All: roles = %v (present %v)", roles, ok)
	}
	if roles, ok = tokenRoles(t, accessToken(t, s, foreignAppID, otherTenant)); ok {
		t.Errorf("bot granted nothing: roles = %v, want no roles claim, as Entra issues it", roles)
	}
}

// without returns every calling permission but the given ones.
func without(perms ...string) []string {
	return slices.DeleteFunc(slices.Clone(graph.CallingPermissions), func(p string) bool { return slices.Contains(perms, p) })
}

func TestActionWithoutItsPermissionIsForbidden(t *testing.T) {
	bot := newBotServer(t, false, nil)
	const redirect = `{"targets":[{"identity":{"phone":{"id":"+15550001111"}}}]}`
	answer := `{"acceptedModalities":["audio"],"mediaConfig":{"@odata.type":"#microsoft.graph.serviceHostedMediaConfig"}}`
	tests := []struct {
		name, action, body string
		roles              []string
		wantStatus         int
		wantNamed          []string
	}{
		{"redirect without Calls.Initiate.All", "redirect", redirect, without(graph.PermissionCallsInitiate), http.StatusForbidden, []string{graph.PermissionCallsInitiate}},
		{"redirect with only Calls.Initiate.All", "redirect", redirect, []string{graph.PermissionCallsInitiate}, http.StatusAccepted, nil},
		{"answer without the JoinGroupCall permissions", "answer", answer, without(graph.PermissionCallsJoinGroupCall, graph.PermissionCallsJoinGroupCallAsGuest),
			http.StatusForbidden, []string{graph.PermissionCallsJoinGroupCall, graph.PermissionCallsJoinGroupCallAsGuest}},
		{"answer with Calls.JoinGroupCallAsGuest.All", "answer", answer, []string{graph.PermissionCallsJoinGroupCallAsGuest}, http.StatusAccepted, nil},
		// Microsoft documents no application permission for reject.
		{"reject with no permission at all", "reject", `{"reason":"busy"}`, []string{}, http.StatusAccepted, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startEmulator(t, bot.URL, func(c *Config) { c.Bots[0].Roles = tt.roles })
			tok := accessToken(t, s, appID, tenantID)
			id := place(t, s, fmt.Sprintf(`{"appId":%q,"deliver":false}`, appID))
			resp, body := do(t, s, http.MethodPost, "/v1.0/communications/calls/"+id+"/"+tt.action, tok, tt.body)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("%s: %d %s, want %d", tt.action, resp.StatusCode, body, tt.wantStatus)
			}
			if tt.wantStatus != http.StatusForbidden {
				return
			}
			e := graphErr(t, body)
			if e.Error.Code != codeAccessDenied {
				t.Errorf("code = %q, want %q", e.Error.Code, codeAccessDenied)
			}
			for _, p := range tt.wantNamed {
				if !strings.Contains(e.Error.Message, p) {
					t.Errorf("message %q does not name %s", e.Error.Message, p)
				}
			}
			if rec, _ := s.Call(id); rec.State != "incoming" {
				t.Errorf("call state = %q after a refused %s, want incoming", rec.State, tt.action)
			}
		})
	}
}

func TestCallerEncryptedWithoutCallingPermission(t *testing.T) {
	tests := []struct {
		name      string
		roles     []string
		encrypted bool
	}{
		{"no permission", []string{}, true},
		{"a permission of another API only", []string{"User.Read.All"}, true},
		{"Calls.JoinGroupCallAsGuest.All", []string{graph.PermissionCallsJoinGroupCallAsGuest}, false},
		{"every calling permission (default)", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bot := newBotServer(t, false, nil)
			s := startEmulator(t, bot.URL, func(c *Config) { c.Bots[0].Roles = tt.roles })
			place(t, s, fmt.Sprintf(`{"appId":%q,"source":{"phone":{"id":"+15550002222"}}}`, appID))
			r := bot.next(t)
			n := r.notifications(t)
			if len(n.Value) != 1 || n.Value[0].ResourceData == nil || n.Value[0].ResourceData.Source == nil {
				t.Fatalf("notifications = %s", r.body)
			}
			set := n.Value[0].ResourceData.Source.Identity
			if tt.encrypted {
				if set == nil || set.Encrypted == nil || set.Encrypted.ID == "" || set.Phone != nil {
					t.Errorf("source identity = %+v, want only an encrypted identity", set)
				}
				if strings.Contains(string(r.body), "+15550002222") {
					t.Errorf("the caller's number is in the notification: %s", r.body)
				}
				return
			}
			if set == nil || set.Phone == nil || set.Phone.ID != "+15550002222" || set.Encrypted != nil {
				t.Errorf("source identity = %+v, want the phone number", set)
			}
		})
	}
}
