package graph_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
)

const jwksRoute = "GET /v1/.well-known/keys"

// clock is a settable time source for the key set.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (f *fixture) verifier(t *testing.T) (*graph.Verifier, *clock) {
	t.Helper()
	keys := graph.NewKeySet(f.emu.URL()+"/v1/.well-known/OpenIdConfiguration", f.http)
	clk := &clock{now: time.Now()}
	graph.SetKeySetClock(keys, clk.Now)
	if err := keys.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &graph.Verifier{
		Keys:     keys,
		Issuers:  []string{"https://api.botframework.com", "https://graph.microsoft.com"},
		Audience: botAppID,
		TenantID: botTenantID,
	}, clk
}

func (f *fixture) bearer(t *testing.T, claims map[string]any) string {
	t.Helper()
	tok, err := f.emu.SignInboundToken(claims)
	if err != nil {
		t.Fatal(err)
	}
	return "Bearer " + tok
}

func (f *fixture) jwksFetches() int {
	n := 0
	for _, c := range f.emu.Stats().Requests[jwksRoute] {
		n += c
	}
	return n
}

func authStatus(err error) int {
	var ae *graph.AuthError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

func TestVerifierAcceptsGenuineTokens(t *testing.T) {
	f := newFixture(t)
	v, _ := f.verifier(t)
	claims := emulator.InboundClaims(botAppID, botTenantID)
	if err := v.Verify(context.Background(), f.bearer(t, claims)); err != nil {
		t.Fatalf("genuine token refused: %v", err)
	}
	// Only the long tenant claim, and the Graph issuer.
	delete(claims, "tid")
	claims["iss"] = "https://graph.microsoft.com"
	if err := v.Verify(context.Background(), f.bearer(t, claims)); err != nil {
		t.Fatalf("token with the tenant URI claim refused: %v", err)
	}
	// Expired, but within the 5 minute skew.
	claims = emulator.InboundClaims(botAppID, botTenantID)
	claims["exp"] = time.Now().Add(-4 * time.Minute).Unix()
	if err := v.Verify(context.Background(), f.bearer(t, claims)); err != nil {
		t.Fatalf("token expired within the skew refused: %v", err)
	}
}

func TestVerifierPicksUpRotatedKeysWithinRefreshLimits(t *testing.T) {
	f := newFixture(t)
	v, clk := f.verifier(t)
	if err := f.emu.RotateKeys(); err != nil {
		t.Fatal(err)
	}
	tok := f.bearer(t, emulator.InboundClaims(botAppID, botTenantID))
	before := f.jwksFetches()

	// The keys were fetched just now: an unknown kid may not refetch yet.
	clk.Add(10 * time.Second)
	if err := v.Verify(context.Background(), tok); authStatus(err) != http.StatusUnauthorized {
		t.Fatalf("token of a rotated key within 30s of a fetch: %v, want 401", err)
	}
	if got := f.jwksFetches(); got != before {
		t.Fatalf("keys fetched %d times within the 30s limit", got-before)
	}
	// Past the limit, the unknown kid refreshes at once, once.
	clk.Add(21 * time.Second)
	for range 3 {
		if err := v.Verify(context.Background(), tok); err != nil {
			t.Fatalf("token of the rotated key after the limit: %v", err)
		}
	}
	if got := f.jwksFetches(); got != before+1 {
		t.Fatalf("keys fetched %d times on an unknown kid, want 1", got-before)
	}
}

func TestVerifierRefreshesOldKeysInBackground(t *testing.T) {
	f := newFixture(t)
	v, clk := f.verifier(t)
	tok := f.bearer(t, emulator.InboundClaims(botAppID, botTenantID))
	before := f.jwksFetches()
	clk.Add(time.Hour)
	if err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	if got := f.jwksFetches(); got != before {
		t.Fatalf("keys younger than 2h refetched")
	}
	clk.Add(time.Hour)
	// A new token: a verified one is remembered and needs no key.
	claims := emulator.InboundClaims(botAppID, botTenantID)
	claims["jti"] = "another"
	if err := v.Verify(context.Background(), f.bearer(t, claims)); err != nil {
		t.Fatalf("token refused while keys refresh: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.jwksFetches() == before {
		if time.Now().After(deadline) {
			t.Fatal("keys older than 2h were not refreshed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestVerifiedTokenIsRememberedOnlyWhileValid(t *testing.T) {
	f := newFixture(t)
	v, _ := f.verifier(t)
	now := time.Now()
	v.Now = func() time.Time { return now }
	claims := emulator.InboundClaims(botAppID, botTenantID)
	claims["exp"] = now.Add(time.Minute).Unix()
	tok := f.bearer(t, claims)
	if err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	now = now.Add(5*time.Minute + 30*time.Second)
	if err := v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("remembered token refused within its skew: %v", err)
	}
	now = now.Add(time.Minute)
	if err := v.Verify(context.Background(), tok); authStatus(err) != http.StatusUnauthorized {
		t.Fatalf("remembered token past its expiry: %v, want 401", err)
	}
}

func TestKeySetFailsOnUnreachableConfiguration(t *testing.T) {
	f := newFixture(t)
	keys := graph.NewKeySet(f.emu.URL()+"/no/such/document", f.http)
	if err := keys.Refresh(context.Background()); err == nil || keys.Ready() {
		t.Fatalf("Refresh = %v, Ready = %v; want an error and not ready", err, keys.Ready())
	}
}
