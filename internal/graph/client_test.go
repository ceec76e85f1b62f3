package graph_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
)

const (
	botAppID     = "6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10"
	certAppID    = "7e3b8c2f-1d20-4b62-8b54-3a1f5d4cae21"
	botTenantID  = "0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55"
	botSecret    = "emulated~secret"
	sinkCallback = "http://127.0.0.1:9/unused"
)

// fixture is an emulator with two bots (secret and certificate) and an HTTP
// client that trusts it through a CA file, as --ca-file does.
type fixture struct {
	emu     *emulator.Server
	http    *http.Client
	certPEM []byte
	keyPEM  []byte
}

var (
	sharedOnce    sync.Once
	sharedFixture *fixture
)

// newFixture returns the package's emulator, started once because making
// its keys takes a while; each test starts without faults.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	sharedOnce.Do(func() { sharedFixture = startFixture(t) })
	if sharedFixture == nil {
		t.Fatal("emulator fixture failed to start")
	}
	sharedFixture.emu.ClearFaults()
	t.Cleanup(sharedFixture.emu.ClearFaults)
	return sharedFixture
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedFixture != nil {
		_ = sharedFixture.emu.Close()
	}
	os.Exit(code)
}

func startFixture(t *testing.T) *fixture {
	t.Helper()
	certPEM, keyPEM := selfSigned(t)
	emu, err := emulator.New(emulator.Config{
		Bots: []emulator.Bot{
			{AppID: botAppID, TenantID: botTenantID, Secret: botSecret},
			{AppID: certAppID, TenantID: botTenantID, CertPEM: certPEM},
		},
		MissedAfter: time.Minute,
		// Notifications go nowhere here: these tests act on calls directly.
		CallbackClient: &http.Client{Timeout: 100 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := emu.Start(); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "graph-test")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, emu.CACertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	hc, err := graph.NewHTTPClient(caFile)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{emu: emu, http: hc, certPEM: certPEM, keyPEM: keyPEM}
}

func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: "callguard test bot"},
		NotBefore: time.Now().Add(-time.Hour),
		NotAfter:  time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})
}

type attempt struct {
	status int
	err    error
	at     time.Time
}

func (f *fixture) client(t *testing.T, appID, apiVersion string, secret map[string][]byte, attempts *[]attempt) *graph.Client {
	t.Helper()
	cred, err := graph.NewCredential(graph.CredentialConfig{
		TenantID: botTenantID, ClientID: appID, AuthorityHost: f.emu.URL() + "/", Secret: secret, HTTPClient: f.http,
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := graph.NewClient(graph.ClientConfig{
		Endpoint: f.emu.URL(), APIVersion: apiVersion, Credential: cred, HTTPClient: f.http,
		AttemptTimeout: 500 * time.Millisecond, BackoffBase: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		OnAttempt: func(_ string, status int, err error) {
			if attempts != nil {
				*attempts = append(*attempts, attempt{status: status, err: err, at: time.Now()})
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fixture) secretClient(t *testing.T, attempts *[]attempt) *graph.Client {
	return f.client(t, botAppID, "v1.0", map[string][]byte{graph.SecretKeyClientSecret: []byte(botSecret)}, attempts)
}

// placeCall places an incoming call whose notification goes nowhere.
func (f *fixture) placeCall(t *testing.T, appID string) string {
	t.Helper()
	c, err := f.emu.PlaceCall(context.Background(), emulator.PlaceCallRequest{
		AppID:       appID,
		CallbackURI: sinkCallback,
		Source:      &graph.IdentitySet{Phone: &graph.Identity{ID: "+14255550123"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c.ID
}

func (f *fixture) record(t *testing.T, id string) emulator.CallRecord {
	t.Helper()
	rec, ok := f.emu.Call(id)
	if !ok {
		t.Fatalf("emulator has no call %s", id)
	}
	return rec
}

func (f *fixture) fault(t *testing.T, rule emulator.FaultRule) {
	t.Helper()
	if _, err := f.emu.AddFault(rule); err != nil {
		t.Fatal(err)
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestRejectWithEachCredentialAndVersion(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name, appID, version, reason string
		secret                       map[string][]byte
	}{
		{"secret v1.0 busy", botAppID, "v1.0", "busy", map[string][]byte{graph.SecretKeyClientSecret: []byte(botSecret)}},
		{"secret beta forbidden", botAppID, "beta", "forbidden", map[string][]byte{graph.SecretKeyClientSecret: []byte(botSecret)}},
		{"certificate v1.0 none", certAppID, "v1.0", "none", map[string][]byte{graph.SecretKeyTLSCert: f.certPEM, graph.SecretKeyTLSKey: f.keyPEM}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := f.placeCall(t, tc.appID)
			if err := f.client(t, tc.appID, tc.version, tc.secret, nil).Reject(ctxTimeout(t, 10*time.Second), id, tc.reason); err != nil {
				t.Fatal(err)
			}
			rec := f.record(t, id)
			if rec.Action != "reject" || rec.Reason != tc.reason || rec.State != graph.StateTerminated {
				t.Fatalf("call record: action %q reason %q state %q", rec.Action, rec.Reason, rec.State)
			}
		})
	}
}

func TestRedirect(t *testing.T) {
	f := newFixture(t)
	id := f.placeCall(t, botAppID)
	req := graph.RedirectRequest{Timeout: 45, Targets: []graph.InvitationParticipantInfo{{
		ODataType: graph.ODataInvitationInfo,
		Identity:  &graph.IdentitySet{Phone: &graph.Identity{ID: "+14255550199"}},
	}}}
	if err := f.secretClient(t, nil).Redirect(ctxTimeout(t, 10*time.Second), id, req); err != nil {
		t.Fatal(err)
	}
	rec := f.record(t, id)
	if rec.Action != "redirect" || rec.RedirectTimeout != 45 || len(rec.RedirectTargets) != 1 ||
		rec.RedirectTargets[0].Identity.Phone.ID != "+14255550199" {
		t.Fatalf("call record: %+v", rec)
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	f := newFixture(t)
	id := f.placeCall(t, botAppID)
	f.fault(t, emulator.FaultRule{Path: "/v1.0/communications/calls/*/reject", Status: 429, RetryAfter: 1})
	var attempts []attempt
	if err := f.secretClient(t, &attempts).Reject(ctxTimeout(t, 10*time.Second), id, "busy"); err != nil {
		t.Fatal(err)
	}
	if len(attempts) != 2 || attempts[0].status != 429 || attempts[1].status != 202 {
		t.Fatalf("attempts = %+v, want 429 then 202", attempts)
	}
	if gap := attempts[1].at.Sub(attempts[0].at); gap < 900*time.Millisecond {
		t.Fatalf("retried %v after the 429, before its Retry-After of 1s", gap)
	}
	if rec := f.record(t, id); rec.Action != "reject" {
		t.Fatalf("call not rejected: %+v", rec)
	}
}

func TestServiceUnavailableTwiceThenSuccess(t *testing.T) {
	f := newFixture(t)
	id := f.placeCall(t, botAppID)
	f.fault(t, emulator.FaultRule{Path: "/v1.0/communications/calls/*/reject", Status: 503, Count: 2})
	var attempts []attempt
	if err := f.secretClient(t, &attempts).Reject(ctxTimeout(t, 10*time.Second), id, "none"); err != nil {
		t.Fatal(err)
	}
	if len(attempts) != 3 || attempts[0].status != 503 || attempts[1].status != 503 || attempts[2].status != 202 {
		t.Fatalf("attempts = %+v, want 503, 503, 202", attempts)
	}
}

func TestServerErrorsAndDropsAreRetried(t *testing.T) {
	f := newFixture(t)
	id := f.placeCall(t, botAppID)
	f.fault(t, emulator.FaultRule{Path: "/v1.0/communications/calls/*/reject", Status: 500})
	f.fault(t, emulator.FaultRule{Path: "/v1.0/communications/calls/*/reject", Drop: true})
	var attempts []attempt
	if err := f.secretClient(t, &attempts).Reject(ctxTimeout(t, 10*time.Second), id, "none"); err != nil {
		t.Fatal(err)
	}
	if len(attempts) != 3 || attempts[0].status != 500 || attempts[1].err == nil || attempts[2].status != 202 {
		t.Fatalf("attempts = %+v, want 500, connection error, 202", attempts)
	}
}

func TestForbiddenIsFinal(t *testing.T) {
	f := newFixture(t)
	id := f.placeCall(t, botAppID)
	f.fault(t, emulator.FaultRule{Path: "/v1.0/communications/calls/*/reject", Status: 403, Count: 5})
	var attempts []attempt
	err := f.secretClient(t, &attempts).Reject(ctxTimeout(t, 10*time.Second), id, "none")
	var apiErr *graph.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 403 {
		t.Fatalf("err = %v, want a 403 APIError", err)
	}
	if apiErr.RequestID == "" || apiErr.Code == "" {
		t.Fatalf("Graph's request-id and code not read: %+v", apiErr)
	}
	if _, err := uuid.Parse(apiErr.ClientRequestID); err != nil {
		t.Fatalf("client-request-id %q is not a uuid", apiErr.ClientRequestID)
	}
	if len(attempts) != 1 {
		t.Fatalf("403 tried %d times, want once", len(attempts))
	}
	if rec := f.record(t, id); rec.Action != "" {
		t.Fatalf("call acted on: %+v", rec)
	}
}

func TestSecondRejectIsRefusedNotRetried(t *testing.T) {
	f := newFixture(t)
	id := f.placeCall(t, botAppID)
	c := f.secretClient(t, nil)
	if err := c.Reject(ctxTimeout(t, 10*time.Second), id, "none"); err != nil {
		t.Fatal(err)
	}
	var apiErr *graph.APIError
	if err := c.Reject(ctxTimeout(t, 10*time.Second), id, "none"); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict {
		t.Fatalf("second reject: %v, want Graph's 409", err)
	}
}

func TestUnansweredGraphStopsAtDeadline(t *testing.T) {
	f := newFixture(t)
	id := f.placeCall(t, botAppID)
	c := f.secretClient(t, nil)
	// Fetch the token first so the deadline is spent on Graph alone.
	if err := c.Reject(ctxTimeout(t, 10*time.Second), "no-such-call", "none"); err == nil {
		t.Fatal("reject of an unknown call succeeded")
	}
	f.fault(t, emulator.FaultRule{Path: "/v1.0/communications/calls/*/reject", LatencyMs: 30_000, Count: 100})
	start := time.Now()
	err := c.Reject(ctxTimeout(t, time.Second), id, "none")
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the deadline", err)
	}
	if took < 900*time.Millisecond || took > 3*time.Second {
		t.Fatalf("gave up after %v, want about the 1s deadline", took)
	}
	if rec := f.record(t, id); rec.Action != "" {
		t.Fatalf("call acted on: %+v", rec)
	}
}
