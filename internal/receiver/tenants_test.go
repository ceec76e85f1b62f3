package receiver_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
)

// Multi-tenant bots (bot.additionalTenants): the test bot's app registered
// in several tenants of the emulator. The emulator refuses an action made
// with a token of another tenant than the call's (403), so a call acted on
// proves its tenant's token was used.

const (
	mtContoso  = "20000000-0000-4000-8000-000000000002"
	mtFabrikam = "30000000-0000-4000-8000-000000000003"
	// mtStranger is registered in the emulator but not listed in the policy.
	mtStranger = "40000000-0000-4000-8000-000000000004"
	// mtNoConsent is a tenant where the app is not registered (another app
	// is): its token requests get Entra's 400 unauthorized_client
	// (AADSTS700016), as for a tenant that never consented.
	mtNoConsent = "50000000-0000-4000-8000-000000000005"
	mtOtherApp  = "8b2d3f4a-5c6e-4f7a-9b8c-0d1e2f3a4b5c"
	// mtCaller is decided by the tenant rules alone (extra rules after the
	// standard ones, which do not match it).
	mtCaller = "+14255550005"
)

// mtTenantRules redirect the calls of Fabrikam (its id upper-cased: tenant
// ids match case-insensitively) to the desk and reject mtCaller's others.
var mtTenantRules = `    - name: fabrikam-desk
      action: Redirect
      redirect: {targets: [{phone: "` + redirectTo + `"}]}
      match: {tenants: ["` + strings.ToUpper(mtFabrikam) + `"]}
    - name: caller-busy
      action: Reject
      reason: busy
      match: {callers: {numbers: ["` + mtCaller + `"]}}
`

// startMultiTenant starts an env whose policy lists additional tenants
// (and extra rules), with the test bot's app also registered in registered.
func startMultiTenant(t *testing.T, additional []string, extra string, registered ...string) *env {
	t.Helper()
	bots := []emulator.Bot{{AppID: mtOtherApp, TenantID: mtNoConsent, Secret: secret}}
	for _, tenant := range registered {
		bots = append(bots, emulator.Bot{AppID: appID, TenantID: tenant})
	}
	return startEnv(t, envOptions{bots: bots, additionalTenants: additional, extra: extra})
}

// postFrom delivers the created notification of c with a token of tenant,
// as Graph would from that tenant, and returns the receiver's status.
func (e *env) postFrom(c *graph.Call, tenant string) int {
	e.t.Helper()
	status, _ := e.post(http.MethodPost, e.tenantAuth(tenant), createdBody(e.t, c))
	return status
}

// Calls from two further tenants of one app are each acted on with their
// tenant's token, match.tenants decides per tenant, and the decision
// carries the tenant.
func TestMultiTenantCallsActedOnWithTheirTenantsToken(t *testing.T) {
	e := startMultiTenant(t, []string{mtContoso, mtFabrikam}, mtTenantRules, mtContoso, mtFabrikam, mtStranger)

	home, contoso, fabrikam := e.placeIn(tenantID, mtCaller), e.placeIn(mtContoso, mtCaller), e.placeIn(mtFabrikam, mtCaller)
	for _, tt := range []struct{ id, tenant, action, rule string }{
		{home, tenantID, "reject", "caller-busy"},
		{contoso, mtContoso, "reject", "caller-busy"},
		{fabrikam, mtFabrikam, "redirect", "fabrikam-desk"},
	} {
		rec := e.acted(tt.id)
		if rec.Action != tt.action || rec.TenantID != tt.tenant {
			t.Errorf("call in %s: action %q in tenant %s, want %s; history %+v", tt.tenant, rec.Action, rec.TenantID, tt.action, rec.History)
		}
		d := e.logs.decisionFor(t, tt.id)
		if d["tenant"] != tt.tenant || d["rule"] != tt.rule || d["result"] != "success" {
			t.Errorf("decision of the call in %s: %v, want tenant %s, rule %s, result success", tt.tenant, d, tt.tenant, tt.rule)
		}
	}
	// One token request per tenant acted in.
	if n := e.metric("callguard_receiver_graph_token_requests_total", nil); n != 3 {
		t.Errorf("token requests: %v, want 3 (one per tenant)", n)
	}
}

// A token from a tenant not listed is refused with 403; "*" accepts any
// tenant, whose calls are acted on with its token.
func TestMultiTenantUnlistedTenantRefusedAndAnyTenantAccepted(t *testing.T) {
	e := startMultiTenant(t, []string{mtContoso}, "", mtContoso, mtStranger)
	c := e.placeQuiet(numBusy)
	if status := e.postFrom(c, mtStranger); status != http.StatusForbidden {
		t.Fatalf("a call from an unlisted tenant: %d, want 403", status)
	}
	if n := e.metric("callguard_receiver_auth_failures_total", nil); n != 1 {
		t.Errorf("auth failures: %v, want 1", n)
	}

	any := startMultiTenant(t, []string{"*"}, "", mtContoso, mtStranger)
	id := any.placeIn(mtStranger, numBusy)
	if rec := any.acted(id); rec.Action != "reject" {
		t.Fatalf(`with "*", a call from another tenant: action %q; history %+v`, rec.Action, rec.History)
	}
	if d := any.logs.decisionFor(t, id); d["tenant"] != mtStranger {
		t.Errorf("decision: %v, want tenant %s", d, mtStranger)
	}
}

// A tenant whose token request fails (the app has no consent there) fails
// only its own call, at once and counted, while another tenant's call is
// acted on.
func TestMultiTenantTokenFailureFailsOnlyThatCall(t *testing.T) {
	e := startMultiTenant(t, []string{"*"}, "", mtContoso)
	orphan := e.placeQuiet(numBusy)
	start := time.Now()
	if status := e.postFrom(orphan, mtNoConsent); status != http.StatusAccepted {
		t.Fatalf("notification from %s: %d, want 202", mtNoConsent, status)
	}
	ok := e.placeIn(mtContoso, numBusy)
	if rec := e.acted(ok); rec.Action != "reject" {
		t.Fatalf("the other tenant's call: action %q; history %+v", rec.Action, rec.History)
	}
	d := e.logs.decisionFor(t, orphan.ID)
	if d["tenant"] != mtNoConsent || d["result"] != "failed" || !strings.Contains(d["error"].(string), "AADSTS700016") {
		t.Errorf("decision of the call without consent: %v", d)
	}
	// At once, not after the 15 s deadline of retries.
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the failed call took %s", took)
	}
	if n := e.metric("callguard_receiver_tenant_token_failures_total", nil); n != 1 {
		t.Errorf("tenant token failures: %v, want 1", n)
	}
	// Another call of that tenant fails from memory: no second token request.
	before := e.metric("callguard_receiver_graph_token_requests_total", nil)
	again := e.placeQuiet(numBusy)
	e.postFrom(again, mtNoConsent)
	if d := e.logs.decisionFor(t, again.ID); d["result"] != "failed" {
		t.Errorf("second call without consent: %v", d)
	}
	if after := e.metric("callguard_receiver_graph_token_requests_total", nil); after != before {
		t.Errorf("token requests went from %v to %v for a tenant that refused", before, after)
	}
	if rec, _ := e.emu.Call(orphan.ID); rec.Action != "" {
		t.Errorf("the call without consent was acted on: %+v", rec)
	}
	if !strings.Contains(e.logs.String(), `"tenant":"`+mtNoConsent+`"`) {
		t.Error("no log line names the tenant without consent")
	}
}
