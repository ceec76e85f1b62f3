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
	"slices"
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

// attemptTimeout is the clients' per-attempt timeout: short, so that
// unanswered attempts cost the tests little. It is also how long before the
// deadline a last attempt starts (finalAttemptLead is longer).
const attemptTimeout = 500 * time.Millisecond

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

// client returns a client for appID whose attempts are passed to onAttempt
// (when set) as they happen.
func (f *fixture) client(t *testing.T, appID, apiVersion string, secret map[string][]byte, onAttempt func(attempt)) *graph.Client {
	t.Helper()
	cred, err := graph.NewCredential(graph.CredentialConfig{
		TenantID: botTenantID, ClientID: appID, AuthorityHost: f.emu.URL() + "/", Secret: secret, HTTPClient: f.http,
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := graph.NewClient(graph.ClientConfig{
		Endpoint: f.emu.URL(), APIVersion: apiVersion, Credential: cred, HTTPClient: f.http,
		AttemptTimeout: attemptTimeout, BackoffBase: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		OnAttempt: func(_ string, status int, err error) {
			if onAttempt != nil {
				onAttempt(attempt{status: status, err: err, at: time.Now()})
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var botSecretData = map[string][]byte{graph.SecretKeyClientSecret: []byte(botSecret)}

// secretClient returns a client of the secret bot that appends its attempts
// to *attempts, when attempts is set.
func (f *fixture) secretClient(t *testing.T, attempts *[]attempt) *graph.Client {
	var onAttempt func(attempt)
	if attempts != nil {
		onAttempt = func(a attempt) { *attempts = append(*attempts, a) }
	}
	return f.client(t, botAppID, "v1.0", botSecretData, onAttempt)
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

// fetchToken has c get its token, so that a test's deadline is spent on
// Graph alone.
func fetchToken(t *testing.T, c *graph.Client) {
	t.Helper()
	var apiErr *graph.APIError
	if err := c.Reject(ctxTimeout(t, 10*time.Second), "no-such-call", "none"); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound {
		t.Fatalf("reject of an unknown call: %v, want 404", err)
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
		{"secret v1.0 busy", botAppID, "v1.0", "busy", botSecretData},
		{"secret beta forbidden", botAppID, "beta", "forbidden", botSecretData},
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

func TestUnansweredGraphStopsAtDeadline(t *testing.T) {
	f := newFixture(t)
	id := f.placeCall(t, botAppID)
	c := f.secretClient(t, nil)
	fetchToken(t, c)
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

// statuses lists the attempts' HTTP statuses, 0 for no answer.
func statuses(attempts []attempt) []int {
	out := make([]int, len(attempts))
	for i, a := range attempts {
		out[i] = a.status
	}
	return out
}

// A Retry-After that reaches past the call's deadline no longer ends the
// attempts with that time unused: one last attempt goes shortly before it.
func TestRetryAfterPastTheDeadlineGetsOneLastAttempt(t *testing.T) {
	f := newFixture(t)
	const rejectPath = "/v1.0/communications/calls/*/reject"
	tests := []struct {
		name     string
		deadline time.Duration
		fault    emulator.FaultRule
		want     []int
		wantErr  bool
	}{
		{"429, then through", 2 * time.Second, emulator.FaultRule{Path: rejectPath, Status: 429, RetryAfter: 30}, []int{429, 202}, false},
		{"503, then through", 2 * time.Second, emulator.FaultRule{Path: rejectPath, Status: 503, RetryAfter: 30}, []int{503, 202}, false},
		// Less than the lead left: the last attempt goes at once.
		{"429 close to the deadline", 450 * time.Millisecond, emulator.FaultRule{Path: rejectPath, Status: 429, RetryAfter: 30}, []int{429, 202}, false},
		// One last attempt, not a loop of them.
		{"429 again on the last attempt", 2 * time.Second, emulator.FaultRule{Path: rejectPath, Status: 429, RetryAfter: 30, Count: 2}, []int{429, 429}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := f.placeCall(t, botAppID)
			var attempts []attempt
			c := f.secretClient(t, &attempts)
			fetchToken(t, c)
			attempts = nil
			f.fault(t, tc.fault)
			ctx := ctxTimeout(t, tc.deadline)
			dl, _ := ctx.Deadline()
			err := c.Reject(ctx, id, "busy")
			if got := statuses(attempts); !slices.Equal(got, tc.want) {
				t.Fatalf("attempts = %v, want %v (err %v)", got, tc.want, err)
			}
			rec := f.record(t, id)
			if tc.wantErr {
				var apiErr *graph.APIError
				if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &apiErr) || apiErr.StatusCode != tc.fault.Status {
					t.Fatalf("err = %v, want the deadline and the last %d", err, tc.fault.Status)
				}
				if rec.Action != "" {
					t.Fatalf("call acted on: %+v", rec)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rec.Action != "reject" {
				t.Fatalf("call not rejected: %+v", rec)
			}
			// As much of the Retry-After as the deadline allows was kept: the
			// last attempt did not start before the lead (a lower bound, as
			// timers never fire early).
			if earliest := dl.Add(-attemptTimeout); tc.deadline > attemptTimeout && attempts[1].at.Before(earliest) {
				t.Fatalf("last attempt answered %v before the deadline, want at most %v", dl.Sub(attempts[1].at), attemptTimeout)
			}
		})
	}
}

// A 409 answering a retry whose earlier attempt went unanswered is Graph
// having carried out that attempt: ErrAlreadyDone. A 409 with no unanswered
// attempt before it means someone else acted: a plain failure.
func TestConflictAfterUnansweredAttemptIsAlreadyDone(t *testing.T) {
	f := newFixture(t)
	const rejectPath = "/v1.0/communications/calls/*/reject"
	tests := []struct {
		name   string
		faults []emulator.FaultRule
		// otherFirst: another client rejects the call before ours tries;
		// otherAfter: after our first attempt was answered.
		otherFirst, otherAfter bool
		want                   []int
		alreadyDone            bool
	}{
		{"answer dropped after Graph rejected", []emulator.FaultRule{{Path: rejectPath, ProcessFirst: true, Drop: true}}, false, false, []int{0, 409}, true},
		{"answer later than the attempt timeout", []emulator.FaultRule{{Path: rejectPath, ProcessFirst: true, LatencyMs: 60_000}}, false, false, []int{0, 409}, true},
		{"an answered attempt between", []emulator.FaultRule{{Path: rejectPath, ProcessFirst: true, Drop: true}, {Path: rejectPath, Status: 503}}, false, false, []int{0, 503, 409}, true},
		{"409 on the first attempt", nil, true, false, []int{409}, false},
		{"409 after an answered attempt", []emulator.FaultRule{{Path: rejectPath, Status: 503}}, false, true, []int{503, 409}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := f.placeCall(t, botAppID)
			other := f.secretClient(t, nil)
			otherReject := func() {
				if err := other.Reject(ctxTimeout(t, 10*time.Second), id, "forbidden"); err != nil {
					t.Errorf("the other client's reject: %v", err)
				}
			}
			if tc.otherFirst {
				otherReject()
			}
			var attempts []attempt
			c := f.client(t, botAppID, "v1.0", botSecretData, func(a attempt) {
				attempts = append(attempts, a)
				if tc.otherAfter && len(attempts) == 1 {
					otherReject()
				}
			})
			for _, r := range tc.faults {
				f.fault(t, r)
			}
			err := c.Reject(ctxTimeout(t, 10*time.Second), id, "busy")
			if got := statuses(attempts); !slices.Equal(got, tc.want) {
				t.Fatalf("attempts = %v, want %v (err %v)", got, tc.want, err)
			}
			var apiErr *graph.APIError
			if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict {
				t.Fatalf("err = %v, want Graph's 409", err)
			}
			if got := errors.Is(err, graph.ErrAlreadyDone); got != tc.alreadyDone {
				t.Fatalf("errors.Is(%v, ErrAlreadyDone) = %v, want %v", err, got, tc.alreadyDone)
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("err = %v: a 409 is not the deadline", err)
			}
			wantReason := "forbidden" // the other client's
			if tc.alreadyDone {
				wantReason = "busy"
			}
			if rec := f.record(t, id); rec.Action != "reject" || rec.Reason != wantReason {
				t.Fatalf("call record: action %q reason %q, want reject %q", rec.Action, rec.Reason, wantReason)
			}
		})
	}
}
