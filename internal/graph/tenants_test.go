package graph_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/callguard/callguard/internal/emulator"
)

const (
	otherTenant    = "3c1f8a2e-5b7d-4e9a-8f60-1d2c3b4a5e6f"
	unlistedTenant = "9e8d7c6b-5a49-4382-9170-f6e5d4c3b2a1"
)

// A multi-tenant bot accepts tokens of its home tenant and of its
// additional tenants, returns the token's tenant, and refuses any other
// tenant with 403; "*" accepts every tenant.
func TestVerifierAcceptsAdditionalTenants(t *testing.T) {
	f := newFixture(t)
	v := f.verifier(t)
	v.AdditionalTenants = []string{strings.ToUpper(otherTenant)}
	ctx := context.Background()
	for _, tenant := range []string{botTenantID, otherTenant, strings.ToUpper(otherTenant)} {
		auth := f.bearer(t, emulator.InboundClaims(botAppID, tenant))
		got, err := v.VerifyTenant(ctx, auth)
		if err != nil || got != strings.ToLower(tenant) {
			t.Fatalf("token of tenant %s: got %q, %v", tenant, got, err)
		}
		// Remembered: the second use returns the tenant too.
		if got, err := v.VerifyTenant(ctx, auth); err != nil || got != strings.ToLower(tenant) {
			t.Fatalf("remembered token of tenant %s: got %q, %v", tenant, got, err)
		}
	}
	// The long claim name carries the tenant too.
	claims := emulator.InboundClaims(botAppID, otherTenant)
	delete(claims, "tid")
	if got, err := v.VerifyTenant(ctx, f.bearer(t, claims)); err != nil || got != otherTenant {
		t.Fatalf("tenant URI claim: got %q, %v", got, err)
	}

	unlisted := f.bearer(t, emulator.InboundClaims(botAppID, unlistedTenant))
	if _, err := v.VerifyTenant(ctx, unlisted); authStatus(err) != http.StatusForbidden || authReason(err) != "tenant" {
		t.Fatalf("unlisted tenant: got %v, want 403 tenant", err)
	}

	any := f.verifier(t)
	any.AdditionalTenants = []string{"*"}
	if got, err := any.VerifyTenant(ctx, unlisted); err != nil || got != unlistedTenant {
		t.Fatalf(`"*" refused a tenant: %q, %v`, got, err)
	}
	// No tenant claim at all is refused even with "*".
	claims = emulator.InboundClaims(botAppID, botTenantID)
	delete(claims, "tid")
	delete(claims, emulator.TenantIDClaim)
	if _, err := any.VerifyTenant(ctx, f.bearer(t, claims)); authStatus(err) != http.StatusForbidden {
		t.Fatalf("token without a tenant claim: got %v, want 403", err)
	}
}
