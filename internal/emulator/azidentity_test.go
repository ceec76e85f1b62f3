package emulator_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/callguard/callguard/internal/emulator"
)

const (
	azAppID     = "6a1f7c52-0d3e-4b8a-9f6e-2c4d5e6f7a8b"
	azCertAppID = "7b2e8d63-1e4f-4c9b-8a7f-3d5e6f7a8b9c"
	azTenantID  = "8c3f9e74-2f5a-4dac-9b8e-4e6f7a8b9cad"
	azSecret    = "emulated~secret"
)

// newCertificate makes a self-signed certificate and key as an app
// registration would hold, PEM-encoded.
func newCertificate(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: "callguard bot"},
		NotBefore: time.Now().Add(-time.Hour),
		NotAfter:  time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
}

// routeToEmulator sends every request to the emulator, whatever host it
// names: how a client whose MSAL insists on login.microsoftonline.com for
// instance discovery still reaches it.
type routeToEmulator struct {
	emulator string
	next     http.RoundTripper
	hosts    []string
}

func (rt *routeToEmulator) RoundTrip(r *http.Request) (*http.Response, error) {
	rt.hosts = append(rt.hosts, r.URL.Host)
	r = r.Clone(r.Context())
	r.URL.Host = rt.emulator
	r.Host = ""
	return rt.next.RoundTrip(r)
}

func TestAzureIdentityGetsVerifiableTokens(t *testing.T) {
	certPEM, keyPEM := newCertificate(t)
	srv, err := emulator.New(emulator.Config{Bots: []emulator.Bot{
		{AppID: azAppID, TenantID: azTenantID, Secret: azSecret},
		{AppID: azCertAppID, TenantID: azTenantID, CertPEM: certPEM},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })

	certs, key, err := azidentity.ParseCertificates(append(certPEM, keyPEM...), nil)
	if err != nil {
		t.Fatal(err)
	}
	clientOptions := func(transport policy.Transporter) azcore.ClientOptions {
		return azcore.ClientOptions{
			Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: srv.URL() + "/"},
			Transport: transport,
		}
	}
	host := strings.TrimPrefix(srv.URL(), "https://")

	tests := []struct {
		name       string
		credential func(t *testing.T) (azcore.TokenCredential, error)
		scope      string
		wantAud    string
		wantACR    string
		appID      string
	}{
		{
			name: "client secret",
			credential: func(*testing.T) (azcore.TokenCredential, error) {
				return azidentity.NewClientSecretCredential(azTenantID, azAppID, azSecret, &azidentity.ClientSecretCredentialOptions{
					ClientOptions: clientOptions(srv.Client()), DisableInstanceDiscovery: true,
				})
			},
			scope: srv.URL() + "/.default", wantAud: srv.URL(), wantACR: "1", appID: azAppID,
		},
		{
			name: "client certificate",
			credential: func(*testing.T) (azcore.TokenCredential, error) {
				return azidentity.NewClientCertificateCredential(azTenantID, azCertAppID, certs, key, &azidentity.ClientCertificateCredentialOptions{
					ClientOptions: clientOptions(srv.Client()), DisableInstanceDiscovery: true,
				})
			},
			scope: srv.URL() + "/.default", wantAud: srv.URL(), wantACR: "2", appID: azCertAppID,
		},
		{
			name: "client certificate with x5c, Graph scope",
			credential: func(*testing.T) (azcore.TokenCredential, error) {
				return azidentity.NewClientCertificateCredential(azTenantID, azCertAppID, certs, key, &azidentity.ClientCertificateCredentialOptions{
					ClientOptions: clientOptions(srv.Client()), DisableInstanceDiscovery: true, SendCertificateChain: true,
				})
			},
			scope: "https://graph.microsoft.com/.default", wantAud: "https://graph.microsoft.com", wantACR: "2", appID: azCertAppID,
		},
		{
			name: "instance discovery routed to the emulator",
			credential: func(t *testing.T) (azcore.TokenCredential, error) {
				rt := &routeToEmulator{emulator: host, next: srv.Client().Transport}
				t.Cleanup(func() {
					if len(rt.hosts) == 0 || rt.hosts[0] != "login.microsoftonline.com" {
						t.Errorf("MSAL's first request went to %v, want login.microsoftonline.com", rt.hosts)
					}
				})
				return azidentity.NewClientSecretCredential(azTenantID, azAppID, azSecret, &azidentity.ClientSecretCredentialOptions{
					ClientOptions: clientOptions(&http.Client{Transport: rt}),
				})
			},
			scope: srv.URL() + "/.default", wantAud: srv.URL(), wantACR: "1", appID: azAppID,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cred, err := tt.credential(t)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			at, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{tt.scope}})
			if err != nil {
				t.Fatalf("GetToken: %v", err)
			}
			if d := time.Until(at.ExpiresOn); d < 50*time.Minute || d > 61*time.Minute {
				t.Errorf("token expires in %v, want about 1h", d)
			}
			claims := verifyAccessToken(t, srv, at.Token)
			want := map[string]any{
				"aud": tt.wantAud, "iss": "https://sts.windows.net/" + azTenantID + "/", "tid": azTenantID,
				"appid": tt.appID, "appidacr": tt.wantACR, "idtyp": "app", "ver": "1.0",
			}
			for k, v := range want {
				if claims[k] != v {
					t.Errorf("claim %s = %v, want %v", k, claims[k], v)
				}
			}
			roles, _ := claims["roles"].([]any)
			if len(roles) == 0 || !containsAll(roles, "Calls.JoinGroupCallAsGuest.All", "Calls.Initiate.All") {
				t.Errorf("roles = %v", claims["roles"])
			}
		})
	}

	t.Run("wrong secret surfaces Entra's error", func(t *testing.T) {
		cred, err := azidentity.NewClientSecretCredential(azTenantID, azAppID, "wrong", &azidentity.ClientSecretCredentialOptions{
			ClientOptions: clientOptions(srv.Client()), DisableInstanceDiscovery: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		_, err = cred.GetToken(t.Context(), policy.TokenRequestOptions{Scopes: []string{srv.URL() + "/.default"}})
		if err == nil || !strings.Contains(err.Error(), "AADSTS7000215") || !strings.Contains(err.Error(), "401") {
			t.Errorf("GetToken with a wrong secret: %v", err)
		}
	})

	t.Run("discovery routes were used", func(t *testing.T) {
		st := srv.Stats().Requests
		for _, route := range []string{
			"GET /common/discovery/instance",
			"GET /{tenant}/v2.0/.well-known/openid-configuration",
			"POST /{tenant}/oauth2/v2.0/token",
			"GET /{tenant}/discovery/v2.0/keys",
		} {
			if st[route][http.StatusOK] == 0 {
				t.Errorf("no successful %s; stats %v", route, st)
			}
		}
	})
}

// verifyAccessToken checks a token against the keys of the tenant's OpenID
// configuration, as Graph would.
func verifyAccessToken(t *testing.T, srv *emulator.Server, token string) map[string]any {
	t.Helper()
	var cfg struct {
		JWKSURI string `json:"jwks_uri"`
	}
	getJSON(t, srv, srv.URL()+"/"+azTenantID+"/v2.0/.well-known/openid-configuration", &cfg)
	var keys jose.JSONWebKeySet
	getJSON(t, srv, cfg.JWKSURI, &keys)
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := tok.Claims(&keys, &claims); err != nil {
		t.Fatalf("verifying the access token against %s: %v", cfg.JWKSURI, err)
	}
	return claims
}

func getJSON(t *testing.T, srv *emulator.Server, url string, v any) {
	t.Helper()
	resp, err := srv.Client().Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

func containsAll(have []any, want ...string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			if h == w {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}
