package emulator

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // x5t
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

type testCert struct {
	key  *rsa.PrivateKey
	cert *x509.Certificate
	pem  []byte
}

func newTestCert(t *testing.T) testCert {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "bot"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCert{key: key, cert: cert, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// assertion signs a client assertion; mutate adjusts claims and headers.
func (c testCert) assertion(t *testing.T, alg jose.SignatureAlgorithm, claims map[string]any, headers map[jose.HeaderKey]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	for k, v := range headers {
		opts = opts.WithHeader(k, v)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: c.key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestTokenServiceErrors(t *testing.T) {
	registered, stranger := newTestCert(t), newTestCert(t)
	s := startEmulator(t, "", func(c *Config) {
		c.Bots[0].CertPEM = registered.pem
		c.Bots[1].Secret = "" // otherAppID: certificate only
		c.Bots[1].CertPEM = registered.pem
	})
	endpoint := "/" + tenantID + "/oauth2/v2.0/token"
	tokenURL := s.URL() + endpoint
	s256 := sha256.Sum256(registered.cert.Raw)
	s1 := sha1.Sum(registered.cert.Raw) //nolint:gosec // x5t
	now := time.Now()
	claims := func(change map[string]any) map[string]any {
		c := map[string]any{"aud": tokenURL, "iss": appID, "sub": appID, "jti": "j1", "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix()}
		for k, v := range change {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
		return c
	}
	msalHeader := map[jose.HeaderKey]any{"x5t#S256": base64.StdEncoding.EncodeToString(s256[:])}
	form := func(change map[string]string) url.Values {
		v := url.Values{
			"grant_type": {"client_credentials"}, "client_id": {appID},
			"scope": {s.URL() + "/.default openid offline_access profile"},
		}
		for k, val := range change {
			if val == "" {
				v.Del(k)
			} else {
				v.Set(k, val)
			}
		}
		return v
	}
	withAssertion := func(a string) map[string]string {
		return map[string]string{"client_assertion_type": assertionType, "client_assertion": a}
	}

	tests := []struct {
		name       string
		path       string
		form       url.Values
		wantStatus int
		wantError  string
		wantCode   float64
	}{
		{"secret", endpoint, form(map[string]string{"client_secret": secret}), 200, "", 0},
		{"PS256 assertion as MSAL signs it", endpoint, form(withAssertion(registered.assertion(t, jose.PS256, claims(nil), msalHeader))), 200, "", 0},
		{"RS256 assertion with base64url x5t", endpoint, form(withAssertion(registered.assertion(t, jose.RS256, claims(nil),
			map[jose.HeaderKey]any{"x5t": base64.RawURLEncoding.EncodeToString(s1[:])}))), 200, "", 0},
		{"certificate-only app", endpoint, form(map[string]string{"client_id": otherAppID, "client_assertion_type": assertionType,
			"client_assertion": registered.assertion(t, jose.PS256, claims(map[string]any{"iss": otherAppID, "sub": otherAppID}), msalHeader)}), 200, "", 0},
		{"unknown tenant", "/" + otherAppID + "/oauth2/v2.0/token", form(map[string]string{"client_secret": secret}), 400, "invalid_tenant", 90002},
		{"no grant_type", endpoint, form(map[string]string{"grant_type": "", "client_secret": secret}), 400, "invalid_request", 900144},
		{"password grant", endpoint, form(map[string]string{"grant_type": "password", "client_secret": secret}), 400, "unsupported_grant_type", 70003},
		{"no client_id", endpoint, form(map[string]string{"client_id": "", "client_secret": secret}), 400, "invalid_request", 900144},
		{"app of another tenant", endpoint, form(map[string]string{"client_id": foreignAppID, "client_secret": secret}), 400, "unauthorized_client", 700016},
		{"no scope", endpoint, form(map[string]string{"scope": "", "client_secret": secret}), 400, "invalid_request", 900144},
		{"scope without .default", endpoint, form(map[string]string{"scope": s.URL() + "/Calls.AudioVideo", "client_secret": secret}), 400, "invalid_scope", 1002012},
		{"unknown resource", endpoint, form(map[string]string{"scope": "https://vault.azure.net/.default", "client_secret": secret}), 400, "invalid_resource", 500011},
		{"wrong secret", endpoint, form(map[string]string{"client_secret": "nope"}), 401, "invalid_client", 7000215},
		{"secret for a certificate-only app", endpoint, form(map[string]string{"client_id": otherAppID, "client_secret": secret}), 401, "invalid_client", 7000215},
		{"no credential", endpoint, form(nil), 401, "invalid_client", 7000218},
		{"wrong assertion type", endpoint, form(map[string]string{"client_assertion_type": "jwt", "client_assertion": "x"}), 400, "invalid_request", 700025},
		{"malformed assertion", endpoint, form(withAssertion("a.b.c")), 401, "invalid_client", 50027},
		{"unregistered certificate", endpoint, form(withAssertion(stranger.assertion(t, jose.PS256, claims(nil),
			map[jose.HeaderKey]any{"x5t#S256": base64.StdEncoding.EncodeToString(s256[:])}))), 401, "invalid_client", 700027},
		{"no thumbprint", endpoint, form(withAssertion(registered.assertion(t, jose.PS256, claims(nil), nil))), 401, "invalid_client", 700027},
		{"wrong issuer", endpoint, form(withAssertion(registered.assertion(t, jose.PS256, claims(map[string]any{"iss": otherAppID}), msalHeader))), 401, "invalid_client", 700021},
		{"wrong audience", endpoint, form(withAssertion(registered.assertion(t, jose.PS256, claims(map[string]any{"aud": "https://login.microsoftonline.com/x/oauth2/v2.0/token"}), msalHeader))), 401, "invalid_client", 50027},
		{"expired assertion", endpoint, form(withAssertion(registered.assertion(t, jose.PS256, claims(map[string]any{"exp": now.Add(-time.Hour).Unix()}), msalHeader))), 401, "invalid_client", 700024},
		{"assertion without exp", endpoint, form(withAssertion(registered.assertion(t, jose.PS256, claims(map[string]any{"exp": nil}), msalHeader))), 401, "invalid_client", 50027},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, out := postForm(t, s, tt.path, tt.form)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d, want %d: %v", resp.StatusCode, tt.wantStatus, out)
			}
			if tt.wantStatus == http.StatusOK {
				if out["token_type"] != "Bearer" || out["access_token"] == "" || out["expires_in"] != float64(3599) {
					t.Errorf("token response = %v", out)
				}
				return
			}
			codes, _ := out["error_codes"].([]any)
			desc, _ := out["error_description"].(string)
			if out["error"] != tt.wantError || len(codes) != 1 || codes[0] != tt.wantCode ||
				!strings.HasPrefix(desc, "AADSTS") || !strings.Contains(desc, "Trace ID: ") || out["trace_id"] == "" || out["correlation_id"] == "" {
				t.Errorf("error body = %v, want %s AADSTS%v", out, tt.wantError, tt.wantCode)
			}
		})
	}

	t.Run("basic auth secret", func(t *testing.T) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, tokenURL, strings.NewReader(form(map[string]string{"client_id": ""}).Encode()))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(appID, secret)
		resp, err := s.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("status = %d", resp.StatusCode)
		}
	})

	t.Run("discovery documents", func(t *testing.T) {
		resp, body := do(t, s, http.MethodGet, "/"+tenantID+"/v2.0/.well-known/openid-configuration", "", "")
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"token_endpoint":"`+tokenURL+`"`) ||
			!strings.Contains(string(body), `"issuer":"`+s.URL()+"/"+tenantID+`/v2.0"`) {
			t.Errorf("openid-configuration = %d %s", resp.StatusCode, body)
		}
		resp, body = do(t, s, http.MethodGet, "/common/discovery/instance?api-version=1.1&authorization_endpoint="+
			url.QueryEscape(s.URL()+"/"+tenantID+"/oauth2/v2.0/authorize"), "", "")
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"tenant_discovery_endpoint":"`+s.URL()+"/"+tenantID+`/v2.0/.well-known/openid-configuration"`) {
			t.Errorf("instance discovery = %d %s", resp.StatusCode, body)
		}
		resp, body = do(t, s, http.MethodGet, "/common/discovery/instance?api-version=1.1", "", "")
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "invalid_instance") {
			t.Errorf("instance discovery without endpoint = %d %s", resp.StatusCode, body)
		}
		resp, body = do(t, s, http.MethodGet, "/"+otherAppID+"/discovery/v2.0/keys", "", "")
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "AADSTS90002") {
			t.Errorf("keys of an unknown tenant = %d %s", resp.StatusCode, body)
		}
	})
}
