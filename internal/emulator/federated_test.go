package emulator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TestFederatedAssertion: a token of another issuer (a Kubernetes
// ServiceAccount token, ES256 as an API server signs by default) is
// exchanged for an app token when a federated credential of the app names
// its issuer, subject and audience, and refused with Entra's codes if not.
func TestFederatedAssertion(t *testing.T) {
	const issuer = "https://kubernetes.example"
	const subject = "system:serviceaccount:calls:hotline-callguard"
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "sa-1", Algorithm: string(jose.ES256), Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s := startEmulator(t, "https://bot.example/api/calls", func(c *Config) {
		c.Bots[0].Federated = []FederatedCredential{{Issuer: issuer, Subject: subject, JWKS: jwks}}
	})
	sign := func(k *ecdsa.PrivateKey, claims jwt.Claims) string {
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "sa-1"))
		if err != nil {
			t.Fatal(err)
		}
		tok, err := jwt.Signed(signer).Claims(claims).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	claims := func(mutate func(*jwt.Claims)) jwt.Claims {
		now := time.Now()
		c := jwt.Claims{Issuer: issuer, Subject: subject, Audience: jwt.Audience{FederatedAudience},
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute))}
		if mutate != nil {
			mutate(&c)
		}
		return c
	}
	tests := []struct {
		name      string
		assertion string
		wantCode  float64 // 0: a token
	}{
		{"genuine", sign(key, claims(nil)), 0},
		{"another issuer", sign(key, claims(func(c *jwt.Claims) { c.Issuer = "https://other.example" })), 700211},
		{"another ServiceAccount", sign(key, claims(func(c *jwt.Claims) { c.Subject = "system:serviceaccount:calls:other" })), 700213},
		{"another audience", sign(key, claims(func(c *jwt.Claims) { c.Audience = jwt.Audience{"https://kubernetes.default.svc"} })), 700212},
		{"signed by another key", sign(stranger, claims(nil)), 700027},
		{"expired", sign(key, claims(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(time.Now().Add(-time.Hour)) })), 700024},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, out := postForm(t, s, "/"+tenantID+"/oauth2/v2.0/token", url.Values{
				"grant_type":            {"client_credentials"},
				"client_id":             {appID},
				"client_assertion_type": {assertionType},
				"client_assertion":      {tt.assertion},
				"scope":                 {s.URL() + "/.default"},
			})
			if tt.wantCode == 0 {
				if resp.StatusCode != http.StatusOK || out["access_token"] == nil {
					t.Fatalf("token: %d %v", resp.StatusCode, out)
				}
				return
			}
			codes, _ := out["error_codes"].([]any)
			if resp.StatusCode != http.StatusUnauthorized || len(codes) != 1 || codes[0] != tt.wantCode {
				t.Errorf("got %d %v, want 401 with AADSTS%v", resp.StatusCode, out, tt.wantCode)
			}
		})
	}
}
