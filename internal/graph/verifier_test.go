package graph_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
)

const (
	configPath = "/v1/.well-known/OpenIdConfiguration"
	jwksPath   = "/v1/.well-known/keys"
)

// clock is a settable time source for key sets. Its After, for the tests
// that pass it, returns at once for waits under a minute, advancing the
// clock by them, and blocks longer ones (the periodic refresh) until the
// test sends on long; every wait asked for is recorded.
type clock struct {
	mu    sync.Mutex
	now   time.Time
	waits []time.Duration
	long  chan time.Time
}

func newClock() *clock { return &clock{now: time.Now(), long: make(chan time.Time)} }

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

func (c *clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waits = append(c.waits, d)
	if d >= time.Minute {
		return c.long
	}
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

func (c *clock) Waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.waits)
}

// fetches counts the requests a key set sends to the real emulator, by
// path, as they start.
type fetches struct {
	base   http.RoundTripper
	mu     sync.Mutex
	byPath map[string]int
}

func (c *fetches) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.byPath[r.URL.Path]++
	c.mu.Unlock()
	return c.base.RoundTrip(r)
}

func (c *fetches) of(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byPath[path]
}

// keySet returns a key set for the fixture's emulator with opts, not yet
// filled, and the counter of its requests.
func (f *fixture) keySet(opts graph.KeySetOptions) (*graph.KeySet, *fetches) {
	counter := &fetches{base: f.http.Transport, byPath: map[string]int{}}
	return graph.NewKeySetWithOptions(f.emu.URL()+configPath, &http.Client{Transport: counter}, opts), counter
}

// filledKeySet is keySet after one fetch.
func (f *fixture) filledKeySet(t *testing.T, opts graph.KeySetOptions) (*graph.KeySet, *fetches) {
	t.Helper()
	keys, counter := f.keySet(opts)
	if err := keys.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	return keys, counter
}

func verifierFor(keys *graph.KeySet) *graph.Verifier {
	return &graph.Verifier{
		Keys:     keys,
		Issuers:  []string{"https://api.botframework.com", "https://graph.microsoft.com"},
		Audience: botAppID,
		TenantID: botTenantID,
	}
}

func (f *fixture) verifier(t *testing.T) *graph.Verifier {
	t.Helper()
	keys, _ := f.filledKeySet(t, graph.KeySetOptions{})
	return verifierFor(keys)
}

func (f *fixture) bearer(t *testing.T, claims map[string]any) string {
	t.Helper()
	tok, err := f.emu.SignInboundToken(claims)
	if err != nil {
		t.Fatal(err)
	}
	return "Bearer " + tok
}

// forgeryKey is a key Graph never published.
var forgeryKey = sync.OnceValue(func() *rsa.PrivateKey {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return key
})

// forged is a token for the bot signed by a key Graph never published,
// under kid.
func forged(t *testing.T, kid string) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: forgeryKey(), KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(emulator.InboundClaims(botAppID, botTenantID)).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return "Bearer " + tok
}

func authReason(err error) string {
	var ae *graph.AuthError
	if errors.As(err, &ae) {
		return ae.Reason
	}
	return ""
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
	v := f.verifier(t)
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

// A forged token with an unknown kid spends a fetch just before Graph
// rotates its key; Graph's first token signed with the new key, arriving
// within the rate limit's interval, waits for the next fetch and is accepted.
func TestForgedKidBeforeRotationDoesNotLockOutTheNewKey(t *testing.T) {
	f := newFixture(t)
	keys, counter := f.filledKeySet(t, graph.KeySetOptions{UnknownKIDInterval: 200 * time.Millisecond, UnknownKIDWait: 10 * time.Second})
	v := verifierFor(keys)
	before := counter.of(jwksPath)

	err := v.Verify(context.Background(), forged(t, "forged-kid"))
	if authStatus(err) != http.StatusUnauthorized || authReason(err) != graph.AuthUnknownKey {
		t.Fatalf("forged token: %v, want 401 %s", err, graph.AuthUnknownKey)
	}
	if got := counter.of(jwksPath) - before; got != 1 {
		t.Fatalf("the forged kid caused %d fetches, want 1", got)
	}
	if err := f.emu.RotateKeys(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		claims := emulator.InboundClaims(botAppID, botTenantID)
		claims["jti"] = fmt.Sprint("after-rotation-", i)
		if err := v.Verify(context.Background(), f.bearer(t, claims)); err != nil {
			t.Fatalf("genuine token %d of the new key refused: %v", i, err)
		}
	}
	if got := counter.of(jwksPath) - before; got != 2 {
		t.Fatalf("keys fetched %d times in all, want 2 (one per unknown kid round)", got)
	}
}

// A flood of tokens with ever new forged kids, within one interval, costs
// one fetch; every one of them is refused as an unknown key.
func TestForgedKidFloodCostsOneFetchPerInterval(t *testing.T) {
	f := newFixture(t)
	clk := newClock()
	const waves, perWave = 2, 50
	keys, counter := f.filledKeySet(t, graph.KeySetOptions{UnknownKIDInterval: time.Hour, UnknownKIDWait: 300 * time.Millisecond,
		UnknownKIDWaiters: perWave, Now: clk.Now})
	v := verifierFor(keys)
	clk.Add(2 * time.Hour) // the fetch that filled the set is an interval ago
	before := counter.of(jwksPath)

	var mu sync.Mutex
	reasons := map[string]int{}
	for w := range waves {
		var wg sync.WaitGroup
		for i := range perWave {
			wg.Go(func() {
				err := v.Verify(context.Background(), forged(t, fmt.Sprintf("forged-%d-%d", w, i)))
				mu.Lock()
				defer mu.Unlock()
				reasons[fmt.Sprint(authStatus(err), " ", authReason(err))]++
			})
		}
		wg.Wait()
	}
	if want := map[string]int{"401 " + graph.AuthUnknownKey: waves * perWave}; !maps.Equal(reasons, want) {
		t.Errorf("forged tokens refused as %v, want %v", reasons, want)
	}
	if got := counter.of(jwksPath) - before; got != 1 {
		t.Errorf("%d forged kids in one interval caused %d fetches, want 1", waves*perWave, got)
	}
}

// Run's first fetch retries within seconds while the OpenID endpoint fails,
// and then refreshes every 2 h.
func TestKeySetRunRecoversWithinSecondsThenRefreshesPeriodically(t *testing.T) {
	f := newFixture(t)
	const failures = 3
	if _, err := f.emu.AddFault(emulator.FaultRule{Path: configPath, Status: http.StatusServiceUnavailable, Count: failures}); err != nil {
		t.Fatal(err)
	}
	clk := newClock()
	keys, counter := f.keySet(graph.KeySetOptions{Now: clk.Now, After: clk.After})
	ctx, cancel := context.WithCancel(context.Background())
	var reported []error
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		keys.Run(ctx, func(err error) { reported = append(reported, err) })
	}()
	t.Cleanup(func() { cancel(); <-stopped })

	waitFor(t, "the refresh after the first success scheduled", func() bool { return len(clk.Waits()) > failures })
	if !keys.Ready() {
		t.Fatal("keys not ready after a fetch succeeded")
	}
	if got := counter.of(configPath); got != failures+1 {
		t.Errorf("%d configuration requests before the keys came, want %d", got, failures+1)
	}
	waits := clk.Waits()
	if len(waits) != failures+1 || waits[failures] != graph.DefaultKeyRefresh {
		t.Fatalf("waits = %v, want %d backoffs then %s", waits, failures, graph.DefaultKeyRefresh)
	}
	backoff := graph.DefaultFetchBackoffMin
	for i, w := range waits[:failures] {
		if w < backoff/2 || w > backoff {
			t.Errorf("wait after failure %d = %s, want between %s and %s", i+1, w, backoff/2, backoff)
		}
		backoff = min(2*backoff, graph.DefaultFetchBackoffMax)
	}

	// The periodic refresh.
	clk.long <- clk.Now()
	waitFor(t, "periodic refresh", func() bool { return counter.of(jwksPath) == 2 })
	waitFor(t, "next refresh scheduled", func() bool { return len(clk.Waits()) == failures+2 })
	cancel()
	<-stopped
	if len(reported) != failures {
		t.Errorf("Run reported %d errors, want %d: %v", len(reported), failures, reported)
	}
}

// While refreshes fail, keys stay trusted for a day after the last fetch
// that succeeded, and then every token is refused, remembered ones too,
// until a fetch succeeds again.
func TestKeysExpireWhileRefreshesFail(t *testing.T) {
	f := newFixture(t)
	clk := newClock()
	keys, _ := f.filledKeySet(t, graph.KeySetOptions{Now: clk.Now})
	v := verifierFor(keys)
	tok := f.bearer(t, emulator.InboundClaims(botAppID, botTenantID))
	if err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	if _, err := f.emu.AddFault(emulator.FaultRule{Path: configPath, Status: http.StatusServiceUnavailable, Count: 1000}); err != nil {
		t.Fatal(err)
	}

	clk.Add(graph.DefaultKeyMaxAge - time.Minute)
	if err := keys.Refresh(context.Background()); err == nil {
		t.Fatal("refresh succeeded against a failing endpoint")
	}
	if err := v.Verify(context.Background(), tok); err != nil || !keys.Ready() {
		t.Fatalf("a minute before expiry: Verify = %v, Ready = %v; want accepted and ready", err, keys.Ready())
	}

	clk.Add(time.Minute)
	err := v.Verify(context.Background(), tok)
	if keys.Ready() || authStatus(err) != http.StatusUnauthorized || authReason(err) != graph.AuthKeys ||
		!strings.Contains(err.Error(), "signing keys expired") {
		t.Fatalf("at expiry: Verify = %v, Ready = %v; want 401 %s (signing keys expired) and not ready", err, keys.Ready(), graph.AuthKeys)
	}

	f.emu.ClearFaults()
	if err := keys.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(context.Background(), tok); err != nil || !keys.Ready() {
		t.Fatalf("after a fetch succeeded again: Verify = %v, Ready = %v", err, keys.Ready())
	}
}

// A remembered token is trusted only while its key is still published: once
// Graph withdraws the key, the next fetch ends the token's trust too.
func TestRememberedTokenRefusedOnceItsKeyIsWithdrawn(t *testing.T) {
	f := newFixture(t)
	keys, _ := f.filledKeySet(t, graph.KeySetOptions{UnknownKIDInterval: time.Millisecond, UnknownKIDWait: 10 * time.Second})
	v := verifierFor(keys)
	tok := f.bearer(t, emulator.InboundClaims(botAppID, botTenantID))
	if err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	// Two rotations drop the key that signed tok from the published set.
	for range 2 {
		if err := f.emu.RotateKeys(); err != nil {
			t.Fatal(err)
		}
	}
	if err := keys.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(context.Background(), tok); authReason(err) != graph.AuthUnknownKey {
		t.Fatalf("remembered token of a withdrawn key: %v, want 401 %s", err, graph.AuthUnknownKey)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	// A liveness bound, not a measurement: the tests' clocks are fake.
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestVerifiedTokenIsRememberedOnlyWhileValid(t *testing.T) {
	f := newFixture(t)
	v := f.verifier(t)
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

// Signing keys are fetched over https only: a configuration URL, a jwks_uri
// or a redirect to plain http is refused before anything is asked of the
// plain server, which would have served the genuine keys.
func TestKeySetRefusesKeysNotOverHTTPS(t *testing.T) {
	f := newFixture(t)
	serveGenuineKeys := func(w http.ResponseWriter, r *http.Request) {
		resp, err := f.http.Get(f.emu.URL() + "/v1/.well-known/keys")
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		_, _ = io.Copy(w, resp.Body)
	}
	var plainRequests atomic.Int32
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		plainRequests.Add(1)
		serveGenuineKeys(w, r)
	}))
	defer plain.Close()
	mux := http.NewServeMux()
	secure := httptest.NewTLSServer(mux)
	defer secure.Close()
	config := func(jwksURI string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"issuer": "https://api.botframework.com", "jwks_uri": %q}`, jwksURI)
		}
	}
	mux.HandleFunc("/config/plain-jwks", config(plain.URL+"/keys"))
	mux.HandleFunc("/config/redirected-jwks", config(secure.URL+"/moved"))
	mux.HandleFunc("/config/secure-jwks", config(secure.URL+"/keys"))
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+"/keys", http.StatusFound)
	})
	mux.HandleFunc("/keys", serveGenuineKeys)

	tests := []struct {
		name, configURL, wantErr string
	}{
		{"plain configuration", plain.URL + "/config", "openid configuration URL \"" + plain.URL + "/config\" is not an https URL"},
		{"plain jwks_uri", secure.URL + "/config/plain-jwks", "jwks_uri of " + secure.URL + "/config/plain-jwks \"" + plain.URL + "/keys\" is not an https URL"},
		{"redirect to plain http", secure.URL + "/config/redirected-jwks", "redirect to " + plain.URL + "/keys refused"},
		{"https throughout", secure.URL + "/config/secure-jwks", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys := graph.NewKeySet(tt.configURL, secure.Client())
			err := keys.Refresh(context.Background())
			if tt.wantErr == "" {
				if err != nil || !keys.Ready() {
					t.Fatalf("Refresh = %v, Ready = %v; want the keys", err, keys.Ready())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || keys.Ready() {
				t.Fatalf("Refresh = %v, Ready = %v; want an error containing %q and not ready", err, keys.Ready(), tt.wantErr)
			}
			if n := plainRequests.Load(); n != 0 {
				t.Fatalf("the plain http server was asked %d times", n)
			}
		})
	}
}

// gate is a RoundTripper that holds requests for the JWKS while closed.
type gate struct {
	base http.RoundTripper
	mu   sync.Mutex
	shut chan struct{}
}

func (g *gate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.shut = make(chan struct{})
}

func (g *gate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.shut != nil {
		close(g.shut)
		g.shut = nil
	}
}

func (g *gate) RoundTrip(r *http.Request) (*http.Response, error) {
	g.mu.Lock()
	shut := g.shut
	g.mu.Unlock()
	if shut != nil && r.URL.Path == jwksPath {
		select {
		case <-shut:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	return g.base.RoundTrip(r)
}

// Tokens with unknown kids that wait for a key fetch are bounded: past
// UnknownKIDWaiters, one is answered 503 (keys busy: Graph sends it again)
// at once instead of holding its connection too. Its arrival still has the
// keys fetched, so Graph's first token of a new key, refused so while
// forgeries fill the waiters, is accepted when it comes again.
func TestUnknownKIDWaitersAreBounded(t *testing.T) {
	f := newFixture(t)
	g := &gate{base: f.http.Transport}
	const waiters = 4
	keys := graph.NewKeySetWithOptions(f.emu.URL()+configPath, &http.Client{Transport: g}, graph.KeySetOptions{
		UnknownKIDInterval: time.Millisecond, UnknownKIDWait: time.Minute, UnknownKIDWaiters: waiters,
	})
	if err := keys.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	v := verifierFor(keys)
	g.close()
	defer g.open()

	// Twice as many forgeries as may wait: as many are refused at once.
	forgeries := make(chan error, 2*waiters)
	for i := range 2 * waiters {
		go func() { forgeries <- v.Verify(context.Background(), forged(t, fmt.Sprint("forged-", i))) }()
	}
	for range waiters {
		select {
		case err := <-forgeries:
			if authStatus(err) != http.StatusServiceUnavailable || authReason(err) != graph.AuthKeysBusy {
				t.Fatalf("forged token past the bound: %v, want 503 %s", err, graph.AuthKeysBusy)
			}
		case <-time.After(20 * time.Second): // liveness, not a measurement
			t.Fatalf("no forged token was refused at once while %d waited for keys", waiters)
		}
	}

	if err := f.emu.RotateKeys(); err != nil {
		t.Fatal(err)
	}
	genuine := f.bearer(t, emulator.InboundClaims(botAppID, botTenantID))
	if err := v.Verify(context.Background(), genuine); authStatus(err) != http.StatusServiceUnavailable {
		t.Fatalf("Graph's first token of a new key while forgeries fill the waiters: %v, want 503", err)
	}
	g.open()
	for range waiters {
		if err := <-forgeries; authStatus(err) != http.StatusUnauthorized || authReason(err) != graph.AuthUnknownKey {
			t.Fatalf("forged token: %v, want 401 %s", err, graph.AuthUnknownKey)
		}
	}
	waitFor(t, "the new key fetched", func() bool {
		return v.Verify(context.Background(), genuine) == nil
	})
}

// jwksServer serves an OpenID configuration whose JWKS is keys, over TLS.
func jwksServer(t *testing.T, keys ...any) *httptest.Server {
	t.Helper()
	var srv *httptest.Server
	mux := http.NewServeMux()
	mux.HandleFunc("/config", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"jwks_uri": %q}`, srv.URL+"/keys")
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": keys})
	})
	srv = httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// publicJWK is key's public half as a JWKS entry under kid, labelled alg
// ("" for none).
func publicJWK(t *testing.T, key *rsa.PrivateKey, kid, alg string) map[string]any {
	t.Helper()
	raw, err := json.Marshal(jose.JSONWebKey{Key: &key.PublicKey, KeyID: kid, Algorithm: alg, Use: "sig"})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// signedBy is a bearer token for the bot signed RS256 by key under kid.
func signedBy(t *testing.T, key *rsa.PrivateKey, kid string) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(emulator.InboundClaims(botAppID, botTenantID)).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return "Bearer " + tok
}

// A key that does not parse (e=1), one labelled for another algorithm and
// one under 2048 bits are skipped and logged; the others are trusted, and
// tokens of the skipped ones are refused. Before, the first failed the
// whole fetch (the receiver stayed unready) and the second verified RS256
// tokens.
func TestKeySetSkipsUnusableKeys(t *testing.T) {
	good := forgeryKey() // any 2048-bit key stands for Graph's here
	hs, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	short, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	badE := publicJWK(t, good, "bad-e", "RS256")
	badE["e"] = "AQ" // e = 1
	srv := jwksServer(t,
		badE,
		publicJWK(t, good, "good", "RS256"),
		publicJWK(t, hs, "hs256-labelled", "HS256"),
		publicJWK(t, short, "short", ""),
	)
	var logs strings.Builder
	var logMu sync.Mutex
	keys := graph.NewKeySetWithOptions(srv.URL+"/config", srv.Client(), graph.KeySetOptions{
		UnknownKIDInterval: time.Millisecond, UnknownKIDWait: time.Second,
		Logger: slog.New(slog.NewJSONHandler(lockedWriter{&logMu, &logs}, nil)),
	})
	if err := keys.Refresh(context.Background()); err != nil || !keys.Ready() {
		t.Fatalf("Refresh = %v, Ready = %v; want the usable key trusted", err, keys.Ready())
	}
	v := verifierFor(keys)
	if err := v.Verify(context.Background(), signedBy(t, good, "good")); err != nil {
		t.Fatalf("token of the usable key: %v", err)
	}
	for kid, key := range map[string]*rsa.PrivateKey{"hs256-labelled": hs, "short": short, "bad-e": good} {
		if err := v.Verify(context.Background(), signedBy(t, key, kid)); authReason(err) != graph.AuthUnknownKey {
			t.Errorf("token of skipped key %s: %v, want 401 %s", kid, err, graph.AuthUnknownKey)
		}
	}
	logMu.Lock()
	logged := logs.String()
	logMu.Unlock()
	for _, want := range []string{`kid \"bad-e\"`, `kid \"hs256-labelled\": alg HS256`, `kid \"short\": RSA key of 1024 bits`} {
		if !strings.Contains(logged, want) {
			t.Errorf("the log does not name %s: %s", want, logged)
		}
	}
	if n := strings.Count(logged, "signing keys skipped"); n != 1 {
		t.Errorf("skipped keys logged %d times after several fetches, want once: %s", n, logged)
	}
}

// Two keys under one kid make the set ambiguous: the fetch fails and the
// keys trusted before stay (before, the last one silently won).
func TestKeySetRefusesDuplicateKIDs(t *testing.T) {
	first := forgeryKey()
	second, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	srv := jwksServer(t, publicJWK(t, first, "twice", "RS256"), publicJWK(t, second, "twice", "RS256"))
	keys := graph.NewKeySet(srv.URL+"/config", srv.Client())
	err = keys.Refresh(context.Background())
	if err == nil || !strings.Contains(err.Error(), `kid "twice" is listed twice`) || keys.Ready() {
		t.Fatalf("Refresh = %v, Ready = %v; want the set refused", err, keys.Ready())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
