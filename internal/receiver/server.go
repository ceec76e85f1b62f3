// Package receiver is the calling bot's callback: it authenticates Graph's
// notifications, decides each incoming call by the live policy, and rejects,
// redirects or forwards it.
package receiver

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
	"github.com/callguard/callguard/internal/state"
)

// Limits and defaults of the receiver contract.
const (
	// MaxBody is the largest callback body accepted.
	MaxBody = 1 << 20
	// DefaultDeadline is how long Graph waits for an answer to a call,
	// counted from the notification's arrival.
	DefaultDeadline = 15 * time.Second
	// DedupeWindow is how long a decided call id is remembered.
	DedupeWindow = 10 * time.Minute

	// Workers bounds the batches worked on at once and the Graph actions
	// in flight, queueSize the batches acknowledged and waiting: an action
	// may wait up to the deadline on Graph, so there are many.
	Workers   = 256
	queueSize = 8192
	// dedupeMax bounds the remembered call ids (about 10 MiB at most).
	dedupeMax = 200_000
)

// Config tunes a Server. Zero values take the defaults.
type Config struct {
	Logger *slog.Logger
	// HTTPClient reaches Graph, the authority, the OpenID configuration and
	// the upstream bot.
	HTTPClient *http.Client
	// LogCallerNumbers logs callers' numbers in full instead of their last
	// four digits.
	LogCallerNumbers bool
	// Deadline replaces DefaultDeadline (tests shorten it).
	Deadline time.Duration
	// GraphBackoff replaces the Graph client's backoff base (tests shorten it).
	GraphBackoff time.Duration
	// StateDir holds the state key and the state store's credentials,
	// read on every policy apply ("": none; see DefaultStateDir).
	StateDir string
	// CallbackURL is the public URL Graph reaches the callback at
	// (--callback-url): an Announce answer's callbackUri, and the base of
	// the ConfigMap prompts' URLs. Without it Announce rejects (announce.go).
	CallbackURL string
	// AnnounceBackstop, if set, maps an Announce rule's maxSeconds to the
	// delay of its backstop hang-up (tests shorten it).
	AnnounceBackstop func(maxSeconds time.Duration) time.Duration
}

// Server is the callback handler plus the work behind it.
type Server struct {
	cfg     Config
	log     *slog.Logger
	http    *http.Client
	metrics *metrics
	calls   *callLog
	recent  decisionRing
	// ann carries out Announce decisions (announce.go).
	ann *announcer

	live     atomic.Pointer[policyVersion]
	stopping atomic.Bool

	queue    chan *job
	stop     chan struct{}
	stopOnce sync.Once
	workers  sync.WaitGroup

	// actions carries a batch's Graph actions to action workers;
	// graphSlots bounds the Graph actions in flight.
	actions    chan actTask
	actWorkers sync.WaitGroup
	graphSlots chan struct{}

	// mu serialises Apply, which reuses expensive parts of the previous
	// version (signing keys, token cache).
	mu sync.Mutex
	// stopKeys ends the background work of the live key set (under mu).
	stopKeys context.CancelFunc

	// randomKey hashes callers when the state dir has no key.
	randomKeyOnce sync.Once
	randomKey     []byte
}

// policyVersion is everything derived from one policy version. A
// notification batch holds on to the version live at its arrival, so each call is decided
// and acted on wholly by one version.
type policyVersion struct {
	policy *policy.Policy
	// id is where the policy came from (announce tokens name it).
	id           policyID
	spec         *v1alpha1.CallPolicySpec
	hash         string
	callbackPath string
	upstream     string
	verifier     *graph.Verifier
	credKey      [32]byte
	cred         azcore.TokenCredential
	// clients act on Graph with the app token of the call's tenant: the
	// home tenant's, and the additional tenants' made on first use.
	clients *tenantClients
	// stateKey hashes callers in the state store and signs announcement
	// steps (stateKeyOf).
	stateKey []byte
	// store remembers callers (callers.repeat, blockFor), nil when the
	// policy keeps no state; versions with the same storeCfg share it.
	store    state.Store
	storeCfg storeConfig
	// stateful: the policy's decisions may ask the store.
	stateful bool
	// onErrorMatch: state.onError is Match (the store's miss holds).
	onErrorMatch bool
}

// New returns a Server with its workers started; Close stops them.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	if cfg.Deadline <= 0 {
		cfg.Deadline = DefaultDeadline
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger,
		http:       cfg.HTTPClient,
		calls:      newCallLog(DedupeWindow, dedupeMax),
		queue:      make(chan *job, queueSize),
		stop:       make(chan struct{}),
		actions:    make(chan actTask),
		graphSlots: make(chan struct{}, Workers),
	}
	s.metrics = newMetrics(func() float64 { return float64(len(s.queue)) })
	s.ann = newAnnouncer(s.metrics, cfg.AnnounceBackstop)
	for range Workers {
		s.workers.Add(1)
		go s.work()
		s.actWorkers.Add(1)
		go s.actWork()
	}
	return s
}

// Registry is the Prometheus registry of the server's metrics.
func (s *Server) Registry() *prometheus.Registry { return s.metrics.registry }

// Ready reports whether the server can take calls: a policy is live, its
// signing keys were fetched, and it is not shutting down.
func (s *Server) Ready() error {
	if s.stopping.Load() {
		return errors.New("shutting down")
	}
	rt := s.live.Load()
	if rt == nil {
		return errors.New("no policy loaded")
	}
	if !rt.verifier.Keys.Ready() {
		return errors.New("inbound-token signing keys not fetched yet")
	}
	return nil
}

// PolicyHash is the hash of the live policy, or "" before the first.
func (s *Server) PolicyHash() string {
	if rt := s.live.Load(); rt != nil {
		return rt.hash
	}
	return ""
}

// Apply makes p the live policy. secret holds the bot's credential Secret
// (client-secret, or tls.crt and tls.key); it is unused with workload
// identity. On error the previous policy stays live. The result is counted.
// Its source's namespace/name are unknown here, so a policy with
// state.redis (whose keys carry them) is refused: the policy sources
// (LoadPolicyFile, LoadConfigMap) apply those.
func (s *Server) Apply(p *policy.Policy, secret map[string][]byte) error {
	return s.applied(s.apply(p, secret, policyID{}))
}

// applied counts and logs the result of apply.
func (s *Server) applied(err error) error {
	switch {
	case errors.Is(err, errUnchanged):
		s.metrics.reloads.WithLabelValues("unchanged").Inc()
		return nil
	case err != nil:
		s.metrics.reloads.WithLabelValues("error").Inc()
		s.log.Error("policy refused; the previous policy stays live", "error", err)
		return err
	}
	s.metrics.reloads.WithLabelValues("success").Inc()
	return nil
}

// refuseSource counts and logs a policy that could not even be compiled.
func (s *Server) refuseSource(err error) {
	s.metrics.reloads.WithLabelValues("error").Inc()
	s.log.Error("policy refused; the previous policy stays live", "error", err)
}

var errUnchanged = errors.New("policy unchanged")

// id is where the policy came from (its state store's keys carry it).
func (s *Server) apply(p *policy.Policy, secret map[string][]byte, id policyID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	spec := p.Spec()
	old := s.live.Load()
	credKey := credentialKey(spec, secret)
	if old != nil && old.hash == p.Hash() && old.credKey == credKey {
		return errUnchanged
	}

	// CEL errors count as no match; operators need to see them.
	p = p.WithCELErrorHandler(func(rule string, err error) {
		s.metrics.celErrors.WithLabelValues(rule).Inc()
		s.log.Warn("policy expression failed; the rule did not match", "rule", rule, "error", err)
	})
	rt := &policyVersion{
		policy:       p,
		id:           id,
		spec:         spec,
		hash:         p.Hash(),
		callbackPath: spec.Receiver.CallbackPath,
		credKey:      credKey,
	}
	if spec.Upstream != nil {
		rt.upstream = spec.Upstream.URL
	}
	files, err := readStateDir(s.cfg.StateDir)
	if err != nil {
		return err
	}
	if rt.stateKey, err = s.stateKeyOf(spec, files); err != nil {
		return err
	}

	// Keep the fetched signing keys and the token cache across reloads that
	// do not change where they come from.
	keys := (*graph.KeySet)(nil)
	if old != nil && old.verifier.Keys.ConfigURL() == spec.Graph.OpenIDConfigURL {
		keys = old.verifier.Keys
	}
	if old != nil && old.credKey == credKey {
		rt.cred = old.cred
	} else {
		cred, err := s.credential(spec, secret, spec.Bot.TenantID)
		if err != nil {
			return fmt.Errorf("bot credentials: %w", err)
		}
		rt.cred = cred
	}
	if old != nil && old.credKey == credKey && old.spec.Graph.Endpoint == spec.Graph.Endpoint &&
		old.spec.Graph.APIVersion == spec.Graph.APIVersion {
		// The same clients: their tokens, the other tenants' too, stay.
		rt.clients = old.clients
	} else {
		clients, err := s.newTenantClients(spec, secret, rt.cred)
		if err != nil {
			return err
		}
		rt.clients = clients
	}
	newKeys := keys == nil
	if newKeys {
		keys = graph.NewKeySetWithOptions(spec.Graph.OpenIDConfigURL, s.http, graph.KeySetOptions{Logger: s.log})
	}
	// The store last: nothing after it can fail, so a refused version
	// never leaves a store open.
	if cfg, ok := storeConfigOf(p, spec, id, files, rt.stateKey); ok {
		if old != nil && old.store != nil && old.storeCfg == cfg {
			rt.store = old.store
		} else if rt.store, err = openStore(cfg, s.log, s.metrics.stateRoundTrips.Inc); err != nil {
			return err
		}
		rt.storeCfg = cfg
		rt.stateful = p.Stateful()
		rt.onErrorMatch = p.OnError() == v1alpha1.StateOnErrorMatch
	}
	rt.verifier = &graph.Verifier{
		Keys:     keys,
		Issuers:  spec.Graph.Issuers,
		Audience: spec.Bot.AppID,
		TenantID: spec.Bot.TenantID,
		// The verifier keeps its own set; the spec is shared.
		AdditionalTenants: slices.Clone(spec.Bot.AdditionalTenants),
	}

	s.live.Store(rt)
	if old != nil && old.store != nil && old.store != rt.store {
		s.retireStore(old.store)
	}
	if newKeys {
		// The key set fetches in the background until replaced: at once
		// with a backoff of seconds, then every 2 h (graph.KeySet.Run).
		if s.stopKeys != nil {
			s.stopKeys()
		}
		ctx, cancel := context.WithCancel(context.Background())
		s.stopKeys = cancel
		go keys.Run(ctx, func(err error) {
			s.log.Warn("fetching inbound-token signing keys", "url", keys.ConfigURL(), "error", err)
		})
	}
	s.metrics.policyInfo.Reset()
	s.metrics.policyInfo.WithLabelValues(rt.hash).Set(1)
	s.log.Info("policy live", "hash", rt.hash, "rules", len(spec.Rules), "mode", spec.Mode,
		"callbackPath", rt.callbackPath, "state", stateKind(rt))
	return nil
}

// newTenantClients makes the Graph clients of a spec: the home tenant's
// with cred, and a maker of the additional tenants' credentials and clients
// (the same app and secret, authority {authorityHost}{tenant}).
func (s *Server) newTenantClients(spec *v1alpha1.CallPolicySpec, secret map[string][]byte, cred azcore.TokenCredential) (*tenantClients, error) {
	slots := make(chan struct{}, maxTokenRequests)
	newClient := func(tenant string, cred azcore.TokenCredential) (*tenantClient, error) {
		tcred := &tenantCredential{cred: cred, onRequest: s.metrics.tokenRequest, slots: slots}
		client, err := graph.NewClient(graph.ClientConfig{
			Endpoint:    spec.Graph.Endpoint,
			APIVersion:  string(spec.Graph.APIVersion),
			Credential:  tcred,
			HTTPClient:  s.http,
			Logger:      s.log.With("tenant", tenant),
			BackoffBase: s.cfg.GraphBackoff,
			OnAttempt: func(op string, status int, err error) {
				s.metrics.graphRequest(op, status, err)
			},
		})
		if err != nil {
			return nil, fmt.Errorf("graph client: %w", err)
		}
		scopes := []string{strings.TrimRight(spec.Graph.Endpoint, "/") + "/.default"}
		return &tenantClient{tenant: tenant, cred: tcred, graph: client, scopes: scopes}, nil
	}
	home, err := newClient(strings.ToLower(spec.Bot.TenantID), cred)
	if err != nil {
		return nil, err
	}
	// The secret is copied: the map handed to Apply may change afterwards.
	secret = maps.Clone(secret)
	return &tenantClients{
		home: home,
		max:  maxTenantClients,
		make: func(tenant string) (*tenantClient, error) {
			cred, err := s.credential(spec, secret, tenant)
			if err != nil {
				return nil, fmt.Errorf("credentials for tenant %s: %w", tenant, err)
			}
			return newClient(tenant, cred)
		},
	}, nil
}

// credentialKey identifies the credential a spec and secret make, so an
// unchanged one keeps its token cache; the secret enters only as a digest.
func credentialKey(spec *v1alpha1.CallPolicySpec, secret map[string][]byte) [32]byte {
	h := sha256.New()
	for _, v := range []string{spec.Bot.TenantID, spec.Bot.AppID, spec.Graph.AuthorityHost,
		fmt.Sprint(spec.Bot.Credentials.WorkloadIdentity != nil)} {
		h.Write([]byte(v))
		h.Write([]byte{0})
	}
	for _, k := range []string{graph.SecretKeyClientSecret, graph.SecretKeyTLSCert, graph.SecretKeyTLSKey} {
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write(secret[k])
		h.Write([]byte{0})
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// BeginShutdown makes Ready fail, so the load balancer stops sending.
func (s *Server) BeginShutdown() { s.stopping.Store(true) }

// Close finishes the queued work (each job bounded by its deadline) and
// stops the workers. Call it after the HTTP server stopped serving.
func (s *Server) Close() {
	s.stopping.Store(true)
	s.stopOnce.Do(func() {
		s.mu.Lock()
		if s.stopKeys != nil {
			s.stopKeys()
		}
		s.mu.Unlock()
		close(s.stop)
		s.workers.Wait()
		close(s.actions)
		s.actWorkers.Wait()
		// Announced calls left are hung up by Graph or by the caller.
		s.ann.stopAll()
		if rt := s.live.Load(); rt != nil && rt.store != nil {
			if err := rt.store.Close(); err != nil {
				s.log.Warn("closing the state store", "error", err)
			}
		}
	})
}

// credential is the bot's credential in one tenant (its authority
// {authorityHost}{tenant}).
func (s *Server) credential(spec *v1alpha1.CallPolicySpec, secret map[string][]byte, tenant string) (azcore.TokenCredential, error) {
	return graph.NewCredential(graph.CredentialConfig{
		TenantID:         tenant,
		ClientID:         spec.Bot.AppID,
		AuthorityHost:    spec.Graph.AuthorityHost,
		Secret:           secret,
		WorkloadIdentity: spec.Bot.Credentials.WorkloadIdentity != nil,
		HTTPClient:       s.http,
	})
}
