package receiver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
	"github.com/callguard/callguard/internal/receiver"
)

// Multi-tenant bots (bot.additionalTenants): a receiver with its policy
// applied directly, behind an httptest server, against an emulator over
// HTTPS where the bot's app is registered in several tenants. The emulator
// refuses an action made with a token of another tenant than the call's
// (403), so a call acted on proves its tenant's token was used.

const (
	mtApp      = "7a1c2e3f-4b5d-4e6f-8a7b-9c0d1e2f3a4b"
	mtHome     = "10000000-0000-4000-8000-000000000001"
	mtContoso  = "20000000-0000-4000-8000-000000000002"
	mtFabrikam = "30000000-0000-4000-8000-000000000003"
	// mtStranger is registered in the emulator but not listed in the policy.
	mtStranger = "40000000-0000-4000-8000-000000000004"
	// mtNoConsent is a tenant where the app is not registered (another app
	// is): its token requests get Entra's 400 unauthorized_client
	// (AADSTS700016), as for a tenant that never consented.
	mtNoConsent = "50000000-0000-4000-8000-000000000005"
	mtOtherApp  = "8b2d3f4a-5c6e-4f7a-9b8c-0d1e2f3a4b5c"
	mtSecret    = "mt~secret"

	mtBusy    = "+14255550001"
	mtDesk    = "+14255550199"
	mtAllowed = "+14255550100"
)

type mtEnv struct {
	t    *testing.T
	emu  *emulator.Server
	srv  *receiver.Server
	ts   *httptest.Server
	logs *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startMultiTenant starts an emulator where mtApp is registered in its
// home tenant and in registered, and a receiver whose policy lists
// additional tenants and rules: Reject busy for mtBusy, and per tenant
// whatever rules says first.
func startMultiTenant(t *testing.T, additional []string, rules []v1alpha1.Rule, registered ...string) *mtEnv {
	t.Helper()
	e := &mtEnv{t: t, logs: &lockedBuffer{}}
	// The receiver's listener first: the emulator delivers to it.
	e.ts = httptest.NewUnstartedServer(nil)
	callback := "http://" + e.ts.Listener.Addr().String() + "/api/calls"
	bots := []emulator.Bot{
		{AppID: mtApp, TenantID: mtHome, Secret: mtSecret, Callback: callback},
		{AppID: mtOtherApp, TenantID: mtNoConsent, Secret: mtSecret},
	}
	for _, tenant := range registered {
		bots = append(bots, emulator.Bot{AppID: mtApp, TenantID: tenant})
	}
	emu, err := emulator.New(emulator.Config{Bots: bots})
	if err != nil {
		t.Fatal(err)
	}
	if err := emu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = emu.Close() })
	e.emu = emu

	rules = append(rules, v1alpha1.Rule{Name: "busy", Action: v1alpha1.ActionReject, Reason: v1alpha1.ReasonBusy,
		Match: v1alpha1.Match{Callers: &v1alpha1.CallerMatch{Numbers: []string{mtBusy}}}})
	p, err := policy.Compile(&policy.Source{Namespace: "telephony", Name: "hotline", Spec: v1alpha1.CallPolicySpec{
		Bot: v1alpha1.BotSpec{AppID: mtApp, TenantID: mtHome, AdditionalTenants: additional,
			Credentials: v1alpha1.Credentials{SecretRef: &v1alpha1.SecretReference{Name: "hotline-bot"}}},
		Graph: v1alpha1.GraphSpec{Endpoint: emu.URL(), AuthorityHost: emu.URL() + "/",
			OpenIDConfigURL: emu.URL() + "/v1/.well-known/OpenIdConfiguration"},
		Rules: rules,
	}})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = receiver.New(receiver.Config{
		HTTPClient:   emu.Client(),
		Logger:       slog.New(slog.NewJSONHandler(e.logs, nil)),
		GraphBackoff: 20 * time.Millisecond,
	})
	if err := e.srv.Apply(p, map[string][]byte{graph.SecretKeyClientSecret: []byte(mtSecret)}); err != nil {
		t.Fatal(err)
	}
	e.ts.Config.Handler = e.srv
	e.ts.Start()
	t.Cleanup(func() {
		e.ts.Close()
		e.srv.Close()
	})
	eventually(t, 10*time.Second, "receiver ready", func() bool { return e.srv.Ready() == nil })
	return e
}

// place places a call from number in tenant, delivered by the emulator
// with that tenant's claim, and returns its id.
func (e *mtEnv) place(tenant, number string) string {
	e.t.Helper()
	c, err := e.emu.PlaceCall(context.Background(), emulator.PlaceCallRequest{
		AppID: mtApp, TenantID: tenant, Source: &graph.IdentitySet{Phone: &graph.Identity{ID: number}},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return c.ID
}

// post delivers a created notification of c with a token of tenant, as
// Graph would from that tenant, and returns the receiver's status.
func (e *mtEnv) post(c *graph.Call, tenant string) int {
	e.t.Helper()
	tok, err := e.emu.SignInboundToken(emulator.InboundClaims(mtApp, tenant))
	if err != nil {
		e.t.Fatal(err)
	}
	body, err := json.Marshal(graph.Notifications{
		ODataType: graph.ODataCommsNotifications,
		Value: []graph.Notification{{ODataType: graph.ODataCommsNotification, ChangeType: graph.ChangeCreated,
			ResourceURL: "/communications/calls/" + c.ID, ResourceData: c}},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, e.ts.URL+"/api/calls", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// quiet registers a call in the home tenant without delivering it.
func (e *mtEnv) quiet(number string) *graph.Call {
	e.t.Helper()
	no := false
	c, err := e.emu.PlaceCall(context.Background(), emulator.PlaceCallRequest{
		AppID: mtApp, Source: &graph.IdentitySet{Phone: &graph.Identity{ID: number}}, Deliver: &no,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *mtEnv) acted(id string) emulator.CallRecord {
	e.t.Helper()
	var rec emulator.CallRecord
	eventually(e.t, 20*time.Second, "call "+id+" acted on", func() bool {
		rec, _ = e.emu.Call(id)
		return rec.Action != "" || rec.Missed
	})
	return rec
}

// decision waits for the decision log line of a call.
func (e *mtEnv) decision(id string) map[string]any {
	e.t.Helper()
	var found map[string]any
	eventually(e.t, 20*time.Second, "decision of "+id+" logged", func() bool {
		for line := range strings.SplitSeq(e.logs.String(), "\n") {
			var rec struct {
				Msg      string         `json:"msg"`
				Decision map[string]any `json:"decision"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "decision" && rec.Decision["callId"] == id {
				found = rec.Decision
				return true
			}
		}
		return false
	})
	return found
}

func (e *mtEnv) counter(name string) float64 {
	e.t.Helper()
	families, err := e.srv.Registry().Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	total := 0.0
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

// Calls from two further tenants of one app are each acted on with their
// tenant's token, match.tenants decides per tenant, and the decision
// carries the tenant.
func TestMultiTenantCallsActedOnWithTheirTenantsToken(t *testing.T) {
	deskForFabrikam := v1alpha1.Rule{Name: "fabrikam-desk", Action: v1alpha1.ActionRedirect,
		Redirect: &v1alpha1.RedirectSpec{Targets: []v1alpha1.RedirectTarget{{Phone: mtDesk}}},
		Match:    v1alpha1.Match{Tenants: []string{strings.ToUpper(mtFabrikam)}}}
	e := startMultiTenant(t, []string{mtContoso, mtFabrikam}, []v1alpha1.Rule{deskForFabrikam}, mtContoso, mtFabrikam, mtStranger)

	home, contoso, fabrikam := e.place(mtHome, mtBusy), e.place(mtContoso, mtBusy), e.place(mtFabrikam, mtBusy)
	for _, tt := range []struct{ id, tenant, action, rule string }{
		{home, mtHome, "reject", "busy"},
		{contoso, mtContoso, "reject", "busy"},
		{fabrikam, mtFabrikam, "redirect", "fabrikam-desk"},
	} {
		rec := e.acted(tt.id)
		if rec.Action != tt.action || rec.TenantID != tt.tenant {
			t.Errorf("call in %s: action %q in tenant %s, want %s; history %+v", tt.tenant, rec.Action, rec.TenantID, tt.action, rec.History)
		}
		d := e.decision(tt.id)
		if d["tenant"] != tt.tenant || d["rule"] != tt.rule || d["result"] != "success" {
			t.Errorf("decision of the call in %s: %v, want tenant %s, rule %s, result success", tt.tenant, d, tt.tenant, tt.rule)
		}
	}
	// One token request per tenant acted in.
	if n := e.counter("callguard_receiver_graph_token_requests_total"); n != 3 {
		t.Errorf("token requests: %v, want 3 (one per tenant)", n)
	}
}

// A token from a tenant not listed is refused with 403; "*" accepts any
// tenant, whose calls are acted on with its token.
func TestMultiTenantUnlistedTenantRefusedAndAnyTenantAccepted(t *testing.T) {
	e := startMultiTenant(t, []string{mtContoso}, nil, mtContoso, mtStranger)
	c := e.quiet(mtBusy)
	if status := e.post(c, mtStranger); status != http.StatusForbidden {
		t.Fatalf("a call from an unlisted tenant: %d, want 403", status)
	}
	if n := e.counter("callguard_receiver_auth_failures_total"); n != 1 {
		t.Errorf("auth failures: %v, want 1", n)
	}

	any := startMultiTenant(t, []string{"*"}, nil, mtContoso, mtStranger)
	id := any.place(mtStranger, mtBusy)
	if rec := any.acted(id); rec.Action != "reject" {
		t.Fatalf(`with "*", a call from another tenant: action %q; history %+v`, rec.Action, rec.History)
	}
	if d := any.decision(id); d["tenant"] != mtStranger {
		t.Errorf("decision: %v, want tenant %s", d, mtStranger)
	}
}

// A tenant whose token request fails (the app has no consent there) fails
// only its own call, at once and counted, while another tenant's call is
// acted on.
func TestMultiTenantTokenFailureFailsOnlyThatCall(t *testing.T) {
	e := startMultiTenant(t, []string{"*"}, nil, mtContoso)
	orphan := e.quiet(mtBusy)
	start := time.Now()
	if status := e.post(orphan, mtNoConsent); status != http.StatusAccepted {
		t.Fatalf("notification from %s: %d, want 202", mtNoConsent, status)
	}
	ok := e.place(mtContoso, mtBusy)
	if rec := e.acted(ok); rec.Action != "reject" {
		t.Fatalf("the other tenant's call: action %q; history %+v", rec.Action, rec.History)
	}
	d := e.decision(orphan.ID)
	if d["tenant"] != mtNoConsent || d["result"] != "failed" || !strings.Contains(d["error"].(string), "AADSTS700016") {
		t.Errorf("decision of the call without consent: %v", d)
	}
	// At once, not after the 15 s deadline of retries.
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the failed call took %s", took)
	}
	if n := e.counter("callguard_receiver_tenant_token_failures_total"); n != 1 {
		t.Errorf("tenant token failures: %v, want 1", n)
	}
	// Another call of that tenant fails from memory: no second token request.
	before := e.counter("callguard_receiver_graph_token_requests_total")
	again := e.quiet(mtBusy)
	e.post(again, mtNoConsent)
	if d := e.decision(again.ID); d["result"] != "failed" {
		t.Errorf("second call without consent: %v", d)
	}
	if after := e.counter("callguard_receiver_graph_token_requests_total"); after != before {
		t.Errorf("token requests went from %v to %v for a tenant that refused", before, after)
	}
	if rec, _ := e.emu.Call(orphan.ID); rec.Action != "" {
		t.Errorf("the call without consent was acted on: %+v", rec)
	}
	if !strings.Contains(e.logs.String(), `"tenant":"`+mtNoConsent+`"`) {
		t.Error("no log line names the tenant without consent")
	}
}
