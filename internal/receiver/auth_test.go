package receiver_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/callguard/callguard/internal/emulator"
)

// jwtParts splits a compact JWS into its decoded header and payload.
func jwtParts(t *testing.T, tok string) (header, payload map[string]any, sig string) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	for i, dst := range []*map[string]any{&header, &payload} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			t.Fatal(err)
		}
	}
	return header, payload, parts[2]
}

func b64JSON(t *testing.T, v any) string {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(raw)
}

// emulatorPublicKeyPEM fetches the emulator's current callback-token key
// the way an attacker could: it is public.
func emulatorPublicKeyPEM(t *testing.T, e *env, kid string) []byte {
	t.Helper()
	resp, err := e.emu.Client().Get(e.emu.URL() + "/v1/.well-known/keys")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	keys := set.Key(kid)
	if len(keys) == 0 {
		t.Fatalf("kid %s not published", kid)
	}
	der, err := x509.MarshalPKIXPublicKey(keys[0].Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func signRS256(t *testing.T, key *rsa.PrivateKey, kid string, claims map[string]any) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: key, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestBadRequestsAreRefusedWithoutAction(t *testing.T) {
	e := startEnv(t, envOptions{upstream: true})
	c := e.placeQuiet(numBusy)
	body := createdBody(t, c)

	genuine := e.token(emulator.InboundClaims(appID, tenantID))
	header, payload, _ := jwtParts(t, genuine)
	kid, _ := header["kid"].(string)
	forger, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	claimsWith := func(k string, v any) map[string]any {
		c := emulator.InboundClaims(appID, tenantID)
		c[k] = v
		return c
	}
	hs256 := func() string {
		h := b64JSON(t, map[string]any{"alg": "HS256", "typ": "JWT", "kid": kid})
		p := b64JSON(t, payload)
		mac := hmac.New(sha256.New, emulatorPublicKeyPEM(t, e, kid))
		mac.Write([]byte(h + "." + p))
		return h + "." + p + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
	}
	tampered := func() string {
		p := payload
		p["aud"] = "00000000-0000-0000-0000-000000000000"
		parts := strings.Split(genuine, ".")
		return parts[0] + "." + b64JSON(t, p) + "." + parts[2]
	}
	otherTenant := emulator.InboundClaims(appID, "99999999-9999-4999-8999-999999999999")

	tests := []struct {
		name   string
		method string
		auth   string
		body   []byte
		status int
		reason string // auth failure metric label, if any
	}{
		{"missing header", "POST", "", body, 401, "missing"},
		{"not Bearer", "POST", "Basic " + base64.StdEncoding.EncodeToString([]byte("bot:secret")), body, 401, "scheme"},
		{"malformed JWT", "POST", "Bearer not.a.jwt", body, 401, "malformed"},
		{"alg none", "POST", "Bearer " + b64JSON(t, map[string]any{"alg": "none", "kid": kid}) + "." + b64JSON(t, payload) + ".", body, 401, "malformed"},
		{"HS256 keyed with the public key", "POST", "Bearer " + hs256(), body, 401, "malformed"},
		{"unknown kid", "POST", "Bearer " + signRS256(t, forger, "forged-kid", emulator.InboundClaims(appID, tenantID)), body, 401, "unknown_key"},
		{"bad signature", "POST", "Bearer " + signRS256(t, forger, kid, emulator.InboundClaims(appID, tenantID)), body, 401, "signature"},
		{"tampered payload", "POST", "Bearer " + tampered(), body, 401, "signature"},
		{"expired", "POST", "Bearer " + e.token(claimsWith("exp", time.Now().Add(-6*time.Minute).Unix())), body, 401, "expired"},
		{"not yet valid", "POST", "Bearer " + e.token(claimsWith("nbf", time.Now().Add(6*time.Minute).Unix())), body, 401, "not_yet_valid"},
		{"wrong audience", "POST", "Bearer " + e.token(claimsWith("aud", "11111111-1111-4111-8111-111111111111")), body, 403, "audience"},
		{"wrong issuer", "POST", "Bearer " + e.token(claimsWith("iss", "https://sts.windows.net/"+tenantID+"/")), body, 403, "issuer"},
		{"wrong tenant", "POST", "Bearer " + e.token(otherTenant), body, 403, "tenant"},
		{"oversized body", "POST", e.genuineAuth(), append(body, bytes.Repeat([]byte(" "), 1<<20)...), 413, ""},
		{"wrong method", "GET", e.genuineAuth(), nil, 405, ""},
		{"invalid JSON", "POST", e.genuineAuth(), body[:len(body)-5], 400, ""},
		{"not a notification", "POST", e.genuineAuth(), []byte(`{"value":[{"foo":1}]}`), 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, resp := e.post(tc.method, tc.auth, tc.body)
			if status != tc.status {
				t.Fatalf("status %d (%s), want %d", status, resp, tc.status)
			}
			msg := errorCode(t, resp)
			if tc.reason != "" && e.metric("callguard_receiver_auth_failures_total", map[string]string{"reason": tc.reason}) == 0 {
				t.Errorf("auth failure %q not counted (%s)", tc.reason, msg)
			}
			if tc.name == "invalid JSON" && !strings.Contains(msg, "offset") {
				t.Errorf("400 does not carry the parse error: %s", msg)
			}
		})
	}

	// A valid request for the same call still gets through afterwards,
	// which shows the refused ones left no trace (no duplicate).
	if status, resp := e.post("POST", e.genuineAuth(), body); status != http.StatusAccepted {
		t.Fatalf("genuine request: %d %s", status, resp)
	}
	if rec := e.acted(c.ID); rec.Action != "reject" {
		t.Fatalf("genuine request not acted on: %+v", rec)
	}
	if n := e.graphActions(); n != 1 {
		t.Fatalf("Graph got %d actions, want only the genuine one", n)
	}
	if got := e.metric("callguard_receiver_decisions_total", nil); got != 1 {
		t.Fatalf("%v decisions, want 1", got)
	}
	if got := e.metric("callguard_receiver_notifications_total", nil); got != 1 {
		t.Fatalf("%v notifications counted, want 1", got)
	}
	if got := e.upstream.forCall(t, c.ID); len(got) != 0 {
		t.Fatalf("refused requests reached upstream")
	}
	for _, want := range []string{genuine, secret} {
		if strings.Contains(e.logs.String(), want) {
			t.Fatal("logs hold a token or the client secret")
		}
	}
}

func TestWrongMethodNamesAllowedMethod(t *testing.T) {
	e := startEnv(t, envOptions{})
	req, _ := http.NewRequest(http.MethodPut, e.callback, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != http.MethodPost {
		t.Fatalf("status %d Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

// TestForgedKidDoesNotLockOutRotatedKey: a forged token with an unknown kid
// sent just before Graph rotates its signing key must not keep the genuine
// new key out: the call Graph then announces, signed with the new key, is
// decided (with a 30 s refresh allowance spent by the forgery, it was lost).
func TestForgedKidDoesNotLockOutRotatedKey(t *testing.T) {
	e := startEnv(t, envOptions{})
	forger, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	forged := signRS256(t, forger, "forged-kid", emulator.InboundClaims(appID, tenantID))
	body := createdBody(t, e.placeQuiet(numBusy))
	if status, resp := e.post(http.MethodPost, "Bearer "+forged, body); status != http.StatusUnauthorized {
		t.Fatalf("forged token: status %d %s, want 401", status, resp)
	}
	if err := e.emu.RotateKeys(); err != nil {
		t.Fatal(err)
	}
	id := e.placeCall(numBusy)
	if rec := e.acted(id); rec.Action != "reject" {
		t.Fatalf("the call announced with the rotated key was not rejected: %+v", rec)
	}
}

// TestForgedKidsWaitingForKeysAreBounded: tokens with unknown kids wait
// for a key fetch (held slow here), but only 32 at once; the others are
// answered 503 with Retry-After at once and their connections closed, so
// that forgeries cannot fill the connection cap. Graph's calls, signed
// with a known key, are decided meanwhile.
func TestForgedKidsWaitingForKeysAreBounded(t *testing.T) {
	const waiting, forgeries = 32, 48
	e := startEnv(t, envOptions{})
	if _, err := e.emu.AddFault(emulator.FaultRule{Path: "/v1/.well-known/keys", LatencyMs: 5000, Count: 1}); err != nil {
		t.Fatal(err)
	}
	forger, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	body := createdBody(t, e.placeQuiet(numBusy))
	type answer struct {
		status     int
		retryAfter string
		close      bool
	}
	answers := make(chan answer, forgeries)
	for i := range forgeries {
		tok := "Bearer " + signRS256(t, forger, fmt.Sprint("forged-", i), emulator.InboundClaims(appID, tenantID))
		go func() {
			req, _ := http.NewRequest(http.MethodPost, e.callback, bytes.NewReader(body))
			req.Header.Set("Authorization", tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				answers <- answer{}
				return
			}
			resp.Body.Close()
			answers <- answer{resp.StatusCode, resp.Header.Get("Retry-After"), resp.Close}
		}()
	}
	byStatus := map[int]int{}
	for range forgeries {
		a := <-answers
		byStatus[a.status]++
		if a.status == http.StatusServiceUnavailable && (a.retryAfter != "1" || !a.close) {
			t.Errorf("503 with Retry-After %q, connection closed %v; want 1 and closed", a.retryAfter, a.close)
		}
	}
	if byStatus[http.StatusServiceUnavailable] != forgeries-waiting || byStatus[http.StatusUnauthorized] != waiting {
		t.Fatalf("forged tokens answered %v, want %d × 401 (waited) and %d × 503", byStatus, waiting, forgeries-waiting)
	}
	if got := e.metric("callguard_receiver_auth_failures_total", map[string]string{"reason": "unknown_key_busy"}); got != forgeries-waiting {
		t.Fatalf("unknown_key_busy counted %v, want %d", got, forgeries-waiting)
	}
	id := e.placeCall(numBusy)
	if rec := e.acted(id); rec.Action != "reject" {
		t.Fatalf("Graph's call was not rejected: %+v", rec)
	}
}
