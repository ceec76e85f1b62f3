// Package emulator is a local stand-in for the parts of Microsoft Graph and
// Entra ID a calling bot talks to: the token service (client secret and
// certificate assertions, with the discovery documents MSAL reads), the
// OpenID configuration and keys that sign Graph's callback tokens, the call
// actions (reject, redirect, answer, playPrompt, hang up) and a control API
// to place calls, hang them up as the caller, inject faults and read what
// happened.
//
// It imports nothing of callguard but the Graph wire types and the check of
// the WAV files Graph plays, so that it cannot share the receiver's
// mistakes. Tests start it in-process (New, Start, then
// URL and Client); cmd/graph-emulator serves it as a binary.
package emulator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/google/uuid"

	"github.com/callguard/callguard/internal/graph"
)

// Defaults for Config.
const (
	DefaultListen      = "127.0.0.1:0"
	DefaultMissedAfter = 15 * time.Second
)

// deliveryTimeout bounds one notification POST: Graph gives up on a bot that
// does not acknowledge within about 5 s.
const deliveryTimeout = 5 * time.Second

// Bot is a registered calling bot: an Entra app in a tenant. A multi-tenant
// app is registered once per tenant that consented to it: Bots with the
// same AppID and other TenantIDs. The first registration is the app's home
// tenant and holds its credentials, roles and callback; the later ones add
// only their tenant (their other fields are ignored).
type Bot struct {
	AppID    string
	TenantID string
	// Secret is the client secret; empty means secrets are refused.
	Secret string
	// CertPEM holds the certificates registered for client_assertion (PEM;
	// private key blocks in the same data are ignored).
	CertPEM []byte
	// Callback is the notification URL used when a placed call names none.
	Callback string
	// Legacy makes the first notification to each callback use the older
	// Skype format, which must be answered with 204 before Graph's follows.
	Legacy bool
	// Roles are the application permissions the app was granted (with admin
	// consent); its access tokens carry exactly them in roles. nil grants
	// every calling permission (graph.CallingPermissions), an empty non-nil
	// slice none. An action whose documented permission the app lacks gets
	// Graph's 403, and its incoming calls carry the caller encrypted when it
	// has no calling permission at all.
	Roles []string
	// Federated are the app's federated identity credentials: client
	// assertions that another identity provider issued (a Kubernetes
	// ServiceAccount token, as workload identity sends) are accepted for it.
	Federated []FederatedCredential
}

// FederatedCredential trusts the tokens of one issuer for one subject, as an
// Entra app's federated identity credential does.
type FederatedCredential struct {
	// Issuer is the assertion's iss, e.g. a cluster's service account issuer.
	Issuer string
	// Subject is its sub, e.g. system:serviceaccount:NAMESPACE:NAME.
	Subject string
	// Audiences are accepted values of aud (FederatedAudience when empty).
	Audiences []string
	// JWKS is the issuer's JSON Web Key Set, which signs its tokens (Entra
	// reads it from the issuer's OpenID configuration; the emulator is
	// given it, as a test's API server is rarely reachable anonymously).
	JWKS []byte
}

// FederatedAudience is the audience Entra expects of federated assertions.
const FederatedAudience = "api://AzureADTokenExchange"

// Config configures a Server.
type Config struct {
	// Listen is the TCP address (DefaultListen when empty; port 0 picks one).
	Listen string
	// Hosts are extra DNS names or IP addresses for the server certificate,
	// besides localhost, 127.0.0.1, ::1 and the Listen host.
	Hosts []string
	// StateDir receives ca.crt (and ca.key, reused on the next start). Empty:
	// the CA lives in memory only.
	StateDir string
	Bots     []Bot
	// MissedAfter ends a call nobody acted on (DefaultMissedAfter when zero).
	MissedAfter time.Duration
	// CallbackClient sends notifications to bots (default: system roots and
	// a 5 s timeout). Tests with TLS callbacks pass httptest's client.
	CallbackClient *http.Client
	// CallbackResolve pins callback hosts to IP addresses when CallbackClient
	// is nil: "host:port" → IP, as curl's --resolve (a bot's public https
	// URL where no DNS names its host). The TLS server name stays the host.
	CallbackResolve map[string]string
	// CallbackCAs are PEM certificates trusted for https callbacks besides
	// the system roots, when CallbackClient is nil.
	CallbackCAs []byte
	// PromptSpeed plays prompts this many times faster than their length
	// (1 when zero): tests need not wait for real seconds.
	PromptSpeed float64
	// Logger receives structured logs (discarded when nil).
	Logger *slog.Logger
}

// bot is a registered Bot with what the token service derives from it.
type bot struct {
	Bot
	// tenants are the tenants the app is registered in, the home tenant
	// (TenantID) first, as registered.
	tenants  []string
	objectID string
	certs    []*x509.Certificate
	roles    []string
	fedKeys  []jose.JSONWebKeySet
}

// routeKind tells which service a route belongs to, so injected faults answer
// with that service's error body.
type routeKind int

const (
	routeGraph routeKind = iota
	routeEntra
	routeControl
)

// Server is the emulator. Create it with New, then Start it.
type Server struct {
	cfg            Config
	log            *slog.Logger
	ca             *authority
	tlsCert        tls.Certificate
	bots           map[string]*bot
	tenants        map[string]bool
	tokenKeys      keyRing
	inboundKeys    keyRing
	mux            *http.ServeMux
	routes         map[string]routeKind
	callbackClient *http.Client
	// promptClient fetches prompts: callbackClient, redirected to https
	// only.
	promptClient *http.Client

	// ctx is cancelled by Close to abort notification deliveries.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	startMu sync.Mutex
	httpSrv *http.Server
	url     string

	// mu guards the calls and the legacy handshakes.
	mu         sync.Mutex
	closed     bool
	calls      map[string]*call
	order      []string
	legacyDone map[string]bool

	// verifiedMu guards verified, the access tokens whose signature passed.
	verifiedMu sync.Mutex
	verified   map[string]verifiedToken

	// faultMu guards the fault rules and the stats.
	faultMu     sync.Mutex
	faults      []*FaultRule
	nextFaultID int
	stats       Stats
}

var uuidPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// New validates cfg, makes (or loads) the CA, the server certificate and the
// signing keys. It does not listen yet.
func New(cfg Config) (*Server, error) {
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.MissedAfter <= 0 {
		cfg.MissedAfter = DefaultMissedAfter
	}
	switch {
	case cfg.PromptSpeed == 0:
		cfg.PromptSpeed = 1
	case !(cfg.PromptSpeed > 0) || math.IsInf(cfg.PromptSpeed, 0):
		return nil, fmt.Errorf("prompt speed %v: want a positive number", cfg.PromptSpeed)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	listenHost, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen address %q: %w", cfg.Listen, err)
	}
	s := &Server{
		cfg:        cfg,
		log:        log,
		bots:       map[string]*bot{},
		tenants:    map[string]bool{},
		routes:     map[string]routeKind{},
		calls:      map[string]*call{},
		verified:   map[string]verifiedToken{},
		legacyDone: map[string]bool{},
		stats:      newStats(),
	}
	for i, b := range cfg.Bots {
		_, more := s.bots[strings.ToLower(b.AppID)]
		rb, err := newBot(b, more)
		if err != nil {
			return nil, fmt.Errorf("bot %d: %w", i+1, err)
		}
		if home, dup := s.bots[strings.ToLower(b.AppID)]; dup {
			// The same app in another tenant: a multi-tenant app.
			if home.tenant(b.TenantID) != "" {
				return nil, fmt.Errorf("bot %d: appId %s registered twice in tenant %s", i+1, b.AppID, b.TenantID)
			}
			home.tenants = append(home.tenants, b.TenantID)
			s.tenants[strings.ToLower(b.TenantID)] = true
			continue
		}
		s.bots[strings.ToLower(b.AppID)] = rb
		s.tenants[strings.ToLower(b.TenantID)] = true
	}
	s.callbackClient = cfg.CallbackClient
	if s.callbackClient == nil {
		if s.callbackClient, err = newCallbackClient(cfg.CallbackResolve, cfg.CallbackCAs); err != nil {
			return nil, err
		}
	}
	s.promptClient = newPromptClient(s.callbackClient)
	if s.ca, err = loadOrCreateCA(cfg.StateDir); err != nil {
		return nil, err
	}
	if s.tlsCert, err = s.ca.serverCertificate(certHosts(listenHost, cfg.Hosts)); err != nil {
		return nil, err
	}
	// RSA key generation dominates New; tests start many emulators, so the
	// two keys are made in parallel.
	var tokenKey, inboundKey *signingKey
	var tokenErr, inboundErr error
	var keygen sync.WaitGroup
	keygen.Go(func() { tokenKey, tokenErr = newSigningKey("graph-emulator token service") })
	keygen.Go(func() { inboundKey, inboundErr = newSigningKey("graph-emulator callback tokens") })
	keygen.Wait()
	if err := errors.Join(tokenErr, inboundErr); err != nil {
		return nil, err
	}
	s.tokenKeys.rotate(tokenKey)
	s.inboundKeys.rotate(inboundKey)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.routeAll()
	return s, nil
}

// tenant returns the registered spelling of a tenant the app is registered
// in, "" when it is not.
func (b *bot) tenant(id string) string {
	for _, t := range b.tenants {
		if strings.EqualFold(t, id) {
			return t
		}
	}
	return ""
}

// newBot checks a registration; a later registration of an app in another
// tenant (more) needs no credentials, the first holds them, and makes no bot.
func newBot(b Bot, more bool) (*bot, error) {
	if !uuidPattern.MatchString(b.AppID) {
		return nil, fmt.Errorf("appId %q is not a UUID", b.AppID)
	}
	if !uuidPattern.MatchString(b.TenantID) {
		return nil, fmt.Errorf("tenantId %q is not a UUID", b.TenantID)
	}
	if more {
		return nil, nil
	}
	if b.Secret == "" && len(b.CertPEM) == 0 && len(b.Federated) == 0 {
		return nil, fmt.Errorf("appId %s: a secret, a certificate or a federated credential is required", b.AppID)
	}
	if b.Callback != "" {
		if err := checkCallbackURL(b.Callback); err != nil {
			return nil, fmt.Errorf("appId %s: %w", b.AppID, err)
		}
	}
	rb := &bot{Bot: b, tenants: []string{b.TenantID}, objectID: uuid.NewString(), roles: slices.Clone(b.Roles)}
	if b.Roles == nil {
		rb.roles = slices.Clone(graph.CallingPermissions)
	}
	for i, f := range b.Federated {
		var set jose.JSONWebKeySet
		if f.Issuer == "" || f.Subject == "" {
			return nil, fmt.Errorf("appId %s: federated credential %d needs an issuer and a subject", b.AppID, i+1)
		}
		if err := json.Unmarshal(f.JWKS, &set); err != nil || len(set.Keys) == 0 {
			return nil, fmt.Errorf("appId %s: federated credential %d: JWKS holds no key (%v)", b.AppID, i+1, err)
		}
		rb.fedKeys = append(rb.fedKeys, set)
	}
	rest := b.CertPEM
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("appId %s: parsing certificate: %w", b.AppID, err)
		}
		rb.certs = append(rb.certs, cert)
	}
	if len(b.CertPEM) > 0 && len(rb.certs) == 0 {
		return nil, fmt.Errorf("appId %s: no PEM CERTIFICATE block in the certificate data", b.AppID)
	}
	return rb, nil
}

// certHosts lists the names the server certificate must cover: loopback,
// the listen host, the configured hosts and, when listening on all
// interfaces, the machine's name (how containers usually reach it).
func certHosts(listenHost string, extra []string) []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	switch {
	case listenHost == "" || net.ParseIP(listenHost) != nil && net.ParseIP(listenHost).IsUnspecified():
		if name, err := os.Hostname(); err == nil && name != "" {
			hosts = append(hosts, name)
		}
	default:
		hosts = append(hosts, listenHost)
	}
	hosts = append(hosts, extra...)
	slices.Sort(hosts)
	return slices.Compact(hosts)
}

func (s *Server) handle(pattern string, kind routeKind, h http.HandlerFunc) {
	_, path, _ := strings.Cut(pattern, " ")
	if (kind == routeControl) != strings.HasPrefix(path, controlPrefix) {
		panic("emulator: route " + pattern + ": control routes, and only they, live under " + controlPrefix)
	}
	s.routes[pattern] = kind
	s.mux.HandleFunc(pattern, h)
}

func (s *Server) routeAll() {
	s.mux = http.NewServeMux()
	// Entra token service and the discovery documents MSAL reads.
	s.handle("GET /common/discovery/instance", routeEntra, s.handleInstanceDiscovery)
	s.handle("GET /{tenant}/v2.0/.well-known/openid-configuration", routeEntra, s.handleTenantDiscovery)
	s.handle("GET /{tenant}/discovery/v2.0/keys", routeEntra, s.handleTokenKeys)
	s.handle("POST /{tenant}/oauth2/v2.0/token", routeEntra, s.handleToken)
	// Keys of the tokens Graph puts on callbacks (api.aps.skype.com).
	s.handle("GET /v1/.well-known/OpenIdConfiguration", routeGraph, s.handleInboundDiscovery)
	s.handle("GET /v1/.well-known/keys", routeGraph, s.handleInboundKeys)
	// Graph call actions.
	for _, v := range []string{"v1.0", "beta"} {
		s.handle("POST /"+v+"/communications/calls/{id}/reject", routeGraph, s.handleAction(actionReject, false))
		s.handle("POST /"+v+"/communications/calls/{id}/redirect", routeGraph, s.handleAction(actionRedirect, false))
		s.handle("POST /"+v+"/communications/calls/{id}/answer", routeGraph, s.handleAction(actionAnswer, false))
		s.handle("POST /"+v+"/communications/calls/{id}/playPrompt", routeGraph, s.handlePlayPrompt)
		s.handle("DELETE /"+v+"/communications/calls/{id}", routeGraph, s.handleHangup)
	}
	s.handle("POST /beta/app/calls/{id}/reject", routeGraph, s.handleAction(actionReject, true))
	// Control API.
	s.handle("POST /emulator/calls", routeControl, s.handlePlaceCall)
	s.handle("GET /emulator/calls", routeControl, s.handleListCalls)
	s.handle("GET /emulator/calls/{id}", routeControl, s.handleGetCall)
	s.handle("POST /emulator/calls/{id}/hangup", routeControl, s.handleCallerHangup)
	s.handle("POST /emulator/faults", routeControl, s.handleAddFault)
	s.handle("GET /emulator/faults", routeControl, s.handleListFaults)
	s.handle("DELETE /emulator/faults", routeControl, s.handleClearFaults)
	s.handle("GET /emulator/stats", routeControl, s.handleStats)
	s.handle("DELETE /emulator/stats", routeControl, s.handleResetStats)
	s.handle("POST /emulator/keys/rotate", routeControl, s.handleRotateKeys)
}

// Start listens on Config.Listen and serves HTTPS in the background.
func (s *Server) Start() error {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	if s.httpSrv != nil {
		return errors.New("emulator already started")
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return errors.New("emulator is closed")
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", s.cfg.Listen, err)
	}
	host, port, err := net.SplitHostPort(ln.Addr().String())
	if err != nil {
		return fmt.Errorf("listener address: %w", err)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	if h, _, _ := net.SplitHostPort(s.cfg.Listen); h != "" && net.ParseIP(h) == nil {
		host = h // keep the name the certificate was issued for
	}
	s.url = "https://" + net.JoinHostPort(host, port)
	s.httpSrv = &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{s.tlsCert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// TLS handshake failures from clients that do not trust the CA are
		// expected noise, hence debug level.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	srv := s.httpSrv
	go func() {
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("serving HTTPS stopped", "err", err)
		}
	}()
	s.log.Info("graph emulator listening", "url", s.url, "bots", len(s.bots), "stateDir", s.cfg.StateDir)
	return nil
}

// URL is the base URL (https://HOST:PORT) once started, else "".
func (s *Server) URL() string {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	return s.url
}

// CACertPEM is the PEM of the CA that issued the server certificate.
func (s *Server) CACertPEM() []byte { return slices.Clone(s.ca.certPEM) }

// Client returns an HTTP client that trusts the emulator's CA.
func (s *Server) Client() *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(s.ca.cert)
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true,
	}}
}

// Close stops the missed-call timers, aborts notifications in flight, shuts
// the HTTPS server down and waits for background work. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for _, c := range s.calls {
		if c.timer != nil {
			c.timer.Stop()
		}
	}
	s.mu.Unlock()
	s.cancel()

	s.startMu.Lock()
	srv := s.httpSrv
	s.startMu.Unlock()
	var err error
	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err = srv.Shutdown(ctx); err != nil {
			err = errors.Join(fmt.Errorf("shutting down: %w", err), srv.Close())
		}
	}
	s.wg.Wait()
	return err
}

// goLocked runs fn in the background unless the server is closing; Close
// waits for it. The caller holds s.mu, which orders wg.Add before wg.Wait.
func (s *Server) goLocked(fn func()) {
	if s.closed {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
}

// RotateKeys makes a new key sign callback tokens. The previous key stays
// published in the JWKS (so tokens already sent still verify) until the next
// rotation drops it.
func (s *Server) RotateKeys() error {
	k, err := newSigningKey("graph-emulator callback tokens")
	if err != nil {
		return fmt.Errorf("rotating callback token keys: %w", err)
	}
	s.inboundKeys.rotate(k)
	s.log.Info("callback token key rotated", "kid", k.kid)
	return nil
}

// statusRecorder remembers the status a handler wrote, for the stats.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// controlPrefix starts every control API path: serveHTTP tells control
// requests by it without matching a route.
const controlPrefix = "/emulator/"

// routeName names a matched pattern in stats and logs.
func routeName(pattern string) string {
	if pattern == "" {
		return "unmatched"
	}
	return pattern
}

// serveHTTP stamps every response with Graph's correlation headers, applies
// injected faults and counts requests by route for everything but the
// control API.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	requestID := uuid.NewString()
	w.Header().Set("request-id", requestID)
	if cid := r.Header.Get("client-request-id"); cid != "" {
		w.Header().Set("client-request-id", cid)
	}
	// The control API is the test's, not Graph's: no faults, no counts.
	if strings.HasPrefix(r.URL.Path, controlPrefix) {
		s.mux.ServeHTTP(w, r)
		return
	}
	rec := &statusRecorder{ResponseWriter: w}
	if f, ok := s.takeFault(r); ok {
		// Matched here only when a fault applies: matching every request
		// twice was a sizeable part of the emulator's CPU under load.
		_, pattern := s.mux.Handler(r)
		if s.applyFault(rec, r, f, s.routes[pattern], routeName(pattern)) {
			return
		}
	}
	s.mux.ServeHTTP(rec, r)
	// ServeMux recorded the pattern it matched on r ("" when none did).
	route := routeName(r.Pattern)
	if rec.status == 0 {
		rec.status = http.StatusOK // net/http's implicit status
	}
	s.countRequest(route, rec.status)
	if s.log.Enabled(r.Context(), slog.LevelDebug) {
		s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "route", route,
			"status", rec.status, "requestId", requestID, "duration", time.Since(start))
	}
}
