// Package receiver is the calling bot's callback: it authenticates Graph's
// notifications, decides each incoming call by the live policy, and rejects,
// redirects or forwards it.
package receiver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
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

	// Workers and queueSize bound the work done after acknowledging: a
	// worker may wait up to the deadline on Graph, so there are many.
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
}

// Server is the callback handler plus the work behind it.
type Server struct {
	cfg     Config
	log     *slog.Logger
	http    *http.Client
	metrics *metrics
	calls   *callLog

	live     atomic.Pointer[policyVersion]
	stopping atomic.Bool

	queue    chan *job
	stop     chan struct{}
	stopOnce sync.Once
	workers  sync.WaitGroup

	// mu serialises Apply, which reuses expensive parts of the previous
	// version (signing keys, token cache).
	mu sync.Mutex
}

// policyVersion is everything derived from one policy version. A
// notification batch holds on to the version live at its arrival, so each call is decided
// and acted on wholly by one version.
type policyVersion struct {
	policy       *policy.Policy
	spec         *v1alpha1.CallPolicySpec
	hash         string
	callbackPath string
	upstream     string
	verifier     *graph.Verifier
	graph        *graph.Client
	credKey      [32]byte
	cred         azcore.TokenCredential
}

type job struct {
	rt      *policyVersion
	arrival time.Time
	body    []byte
	auth    string
	batch   *graph.Notifications
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
		cfg:   cfg,
		log:   cfg.Logger,
		http:  cfg.HTTPClient,
		calls: newCallLog(DedupeWindow, dedupeMax),
		queue: make(chan *job, queueSize),
		stop:  make(chan struct{}),
	}
	s.metrics = newMetrics(func() float64 { return float64(len(s.queue)) })
	for range Workers {
		s.workers.Add(1)
		go s.work()
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
func (s *Server) Apply(p *policy.Policy, secret map[string][]byte) error {
	err := s.apply(p, secret)
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

func (s *Server) apply(p *policy.Policy, secret map[string][]byte) error {
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
		spec:         spec,
		hash:         p.Hash(),
		callbackPath: spec.Receiver.CallbackPath,
		credKey:      credKey,
	}
	if rt.callbackPath == "" {
		rt.callbackPath = "/api/calls"
	}
	if spec.Upstream != nil {
		rt.upstream = spec.Upstream.URL
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
		cred, err := graph.NewCredential(graph.CredentialConfig{
			TenantID:         spec.Bot.TenantID,
			ClientID:         spec.Bot.AppID,
			AuthorityHost:    spec.Graph.AuthorityHost,
			Secret:           secret,
			WorkloadIdentity: spec.Bot.Credentials.WorkloadIdentity != nil,
			HTTPClient:       s.http,
		})
		if err != nil {
			return fmt.Errorf("bot credentials: %w", err)
		}
		rt.cred = cred
	}
	client, err := graph.NewClient(graph.ClientConfig{
		Endpoint:    spec.Graph.Endpoint,
		APIVersion:  string(spec.Graph.APIVersion),
		Credential:  rt.cred,
		HTTPClient:  s.http,
		Logger:      s.log,
		BackoffBase: s.cfg.GraphBackoff,
		OnAttempt: func(op string, status int, err error) {
			s.metrics.graphRequest(op, status, err)
		},
	})
	if err != nil {
		return fmt.Errorf("graph client: %w", err)
	}
	rt.graph = client
	newKeys := keys == nil
	if newKeys {
		keys = graph.NewKeySet(spec.Graph.OpenIDConfigURL, s.http)
	}
	rt.verifier = &graph.Verifier{
		Keys:     keys,
		Issuers:  spec.Graph.Issuers,
		Audience: spec.Bot.AppID,
		TenantID: spec.Bot.TenantID,
	}

	s.live.Store(rt)
	if newKeys {
		go s.fetchKeys(keys)
	}
	s.metrics.policyInfo.Reset()
	s.metrics.policyInfo.WithLabelValues(rt.hash).Set(1)
	s.log.Info("policy live", "hash", rt.hash, "rules", len(spec.Rules), "mode", spec.Mode,
		"callbackPath", rt.callbackPath)
	return nil
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

// fetchKeys fills a new key set, retrying until it succeeds, the server
// stops, or a newer policy replaced the key set: the receiver is not ready
// without keys.
func (s *Server) fetchKeys(keys *graph.KeySet) {
	for {
		if rt := s.live.Load(); rt != nil && rt.verifier.Keys != keys {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := keys.Refresh(ctx)
		cancel()
		if err == nil && keys.Ready() {
			return
		}
		if err != nil {
			s.log.Warn("fetching inbound-token signing keys", "url", keys.ConfigURL(), "error", err)
		}
		select {
		case <-s.stop:
			return
		case <-time.After(time.Second):
		}
	}
}

// BeginShutdown makes Ready fail, so the load balancer stops sending.
func (s *Server) BeginShutdown() { s.stopping.Store(true) }

// Close finishes the queued work (each job bounded by its deadline) and
// stops the workers. Call it after the HTTP server stopped serving.
func (s *Server) Close() {
	s.stopping.Store(true)
	s.stopOnce.Do(func() { close(s.stop) })
	s.workers.Wait()
}

// ServeHTTP serves the Graph callback.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	arrival := time.Now()
	rt := s.live.Load()
	if rt == nil {
		s.refuse(w, http.StatusServiceUnavailable, "ServiceUnavailable", "no policy loaded yet")
		return
	}
	if r.URL.Path != rt.callbackPath {
		s.refuse(w, http.StatusNotFound, "NotFound", "no such path")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.refuse(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "use POST")
		return
	}
	auth := r.Header.Get("Authorization")
	if err := rt.verifier.Verify(r.Context(), auth); err != nil {
		var ae *graph.AuthError
		if !errors.As(err, &ae) {
			ae = &graph.AuthError{Status: http.StatusUnauthorized, Reason: graph.AuthMalformed, Err: err}
		}
		s.metrics.authFailures.WithLabelValues(ae.Reason).Inc()
		if ae.Status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		}
		code := "Unauthorized"
		if ae.Status == http.StatusForbidden {
			code = "Forbidden"
		}
		s.refuse(w, ae.Status, code, ae.Error())
		return
	}
	if r.ContentLength > MaxBody {
		s.refuse(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", fmt.Sprintf("body over %d bytes", MaxBody))
		return
	}
	buf := getBodyBuffer()
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		putBodyBuffer(buf)
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.refuse(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", fmt.Sprintf("body over %d bytes", MaxBody))
			return
		}
		s.refuse(w, http.StatusBadRequest, "BadRequest", "reading body: "+err.Error())
		return
	}
	body := buf.Bytes()
	batch, err := graph.DecodeNotifications(body)
	if err == nil {
		err = validateBatch(batch)
	}
	// The decoded notifications share no memory with the body, which only
	// forwarding upstream needs after this; otherwise the buffer serves the
	// next request. (A forwarded body is not reused: the HTTP client may
	// still read it after its request returned.)
	if err != nil || rt.upstream == "" {
		putBodyBuffer(buf)
		body = nil
	}
	if errors.Is(err, graph.ErrLegacyFormat) {
		s.metrics.legacy.Inc()
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if err != nil {
		s.refuse(w, http.StatusBadRequest, "BadRequest", err.Error())
		return
	}
	j := &job{rt: rt, arrival: arrival, body: body, auth: auth, batch: batch}
	select {
	case s.queue <- j:
	default:
		// Graph redelivers a refused notification; acknowledging one that
		// would never be worked on in time would lose the call's decision.
		w.Header().Set("Retry-After", "1")
		s.refuse(w, http.StatusServiceUnavailable, "ServiceUnavailable", "work queue full")
		return
	}
	for i := range batch.Value {
		s.metrics.notification(batch.Value[i].ChangeType)
	}
	s.metrics.accepted.Inc()
	w.WriteHeader(http.StatusAccepted)
}

// bodyBuffers hold request bodies while they are decoded.
var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBody is the largest buffer kept for reuse: bodies are usually
// a few KiB, and MaxBody-sized buffers should not stay around.
const maxPooledBody = 64 << 10

func getBodyBuffer() *bytes.Buffer { return bodyBuffers.Get().(*bytes.Buffer) }

func putBodyBuffer(b *bytes.Buffer) {
	if b.Cap() > maxPooledBody {
		return
	}
	b.Reset()
	bodyBuffers.Put(b)
}

// validateBatch refuses bodies that parse but are not notifications.
func validateBatch(b *graph.Notifications) error {
	if len(b.Value) == 0 {
		return errors.New(`not a notification: "value" holds no notification`)
	}
	for i := range b.Value {
		n := &b.Value[i]
		if n.ChangeType == "" {
			return fmt.Errorf("not a notification: value[%d] has no changeType", i)
		}
		if n.CallID() == "" {
			return fmt.Errorf("not a notification: value[%d] names no call", i)
		}
	}
	return nil
}

func (s *Server) refuse(w http.ResponseWriter, status int, code, msg string) {
	s.metrics.requests.WithLabelValues(statusText(status)).Inc()
	writeError(w, status, code, msg)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	body, _ := json.Marshal(graph.ErrorBody{Error: graph.ErrorDetail{Code: code, Message: msg}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func (s *Server) work() {
	defer s.workers.Done()
	for {
		select {
		case j := <-s.queue:
			s.process(j)
		case <-s.stop:
			// Finish what was acknowledged before stopping.
			for {
				select {
				case j := <-s.queue:
					s.process(j)
				default:
					return
				}
			}
		}
	}
}

// process decides the batch's incoming calls, acts on them, and forwards
// what the upstream bot may see.
func (s *Server) process(j *job) {
	// The deadline is Graph's, not ours: it does not move for shutdown.
	ctx, cancel := context.WithDeadline(context.Background(), j.arrival.Add(s.cfg.Deadline))
	defer cancel()
	dryRun := j.rt.spec.Mode == v1alpha1.ModeDryRun

	type pending struct {
		n *graph.Notification
		d policy.Decision
		t time.Time
	}
	var acts []pending
	forward := make([]bool, len(j.batch.Value))
	anyForward := false
	for i := range j.batch.Value {
		n := &j.batch.Value[i]
		id := n.CallID()
		if !n.IsIncomingCall() {
			// Follow-ups of a call decided here go upstream only when it
			// was allowed. A call unknown here (decided over 10 minutes ago,
			// or by another replica, or placed by the upstream bot itself)
			// was never refused by this receiver, so its news passes.
			action, known := s.calls.action(id, time.Now())
			forward[i] = dryRun || !known || action == v1alpha1.ActionAllow
			anyForward = anyForward || forward[i]
			continue
		}
		if !s.calls.claim(id, j.arrival) {
			s.metrics.duplicates.Inc()
			s.log.Info("duplicate notification ignored", "callId", id)
			continue
		}
		d := j.rt.policy.Decide(n.ResourceData, j.arrival)
		s.calls.decided(id, d.Action)
		s.metrics.decisionsBy.with(d.Rule, string(d.Action), string(d.Mode)).Inc()
		if d.Action == v1alpha1.ActionAllow || dryRun {
			forward[i] = true
			anyForward = true
		}
		acts = append(acts, pending{n: n, d: d, t: time.Now()})
	}

	var fwdErr error
	var fwdWG sync.WaitGroup
	if anyForward && j.rt.upstream != "" {
		fwdWG.Add(1)
		go func() {
			defer fwdWG.Done()
			fwdErr = s.forward(ctx, j, forward)
		}()
	}
	results := make([]error, len(acts))
	for i, a := range acts {
		if dryRun || a.d.Action == v1alpha1.ActionAllow {
			continue
		}
		results[i] = s.act(ctx, j.rt, a.n.CallID(), a.d, a.t)
	}
	fwdWG.Wait()
	for i, a := range acts {
		err := results[i]
		if a.d.Action == v1alpha1.ActionAllow || dryRun {
			err = fwdErr
		}
		s.logDecision(a.n, a.d, j, err)
	}
}

// act carries a Reject or Redirect out on Graph.
func (s *Server) act(ctx context.Context, rt *policyVersion, callID string, d policy.Decision, decidedAt time.Time) error {
	var op string
	var err error
	switch d.Action {
	case v1alpha1.ActionReject:
		op = graph.OpReject
		reason := string(d.Reason)
		if reason == "" {
			reason = string(v1alpha1.ReasonNone)
		}
		err = rt.graph.Reject(ctx, callID, reason)
	case v1alpha1.ActionRedirect:
		op = graph.OpRedirect
		err = rt.graph.Redirect(ctx, callID, redirectRequest(d.Redirect))
	default:
		return fmt.Errorf("unknown action %q", d.Action)
	}
	switch {
	case err == nil:
		s.metrics.actionsBy.with(op, "success").Inc()
		s.metrics.decisionToGraphOf(op).Observe(time.Since(decidedAt).Seconds())
	case errors.Is(err, context.DeadlineExceeded):
		s.metrics.actionsBy.with(op, "deadline").Inc()
	default:
		s.metrics.actionsBy.with(op, "failed").Inc()
	}
	return err
}

// Redirect defaults of the API.
const defaultRedirectTimeout = 30

func redirectRequest(r *v1alpha1.RedirectSpec) graph.RedirectRequest {
	req := graph.RedirectRequest{Timeout: defaultRedirectTimeout}
	if r == nil {
		return req
	}
	if r.TimeoutSeconds > 0 {
		req.Timeout = r.TimeoutSeconds
	}
	for _, t := range r.Targets {
		id := &graph.IdentitySet{ODataType: graph.ODataIdentitySet}
		switch {
		case t.Phone != "":
			id.Phone = &graph.Identity{ODataType: graph.ODataIdentity, ID: t.Phone}
		case t.User != "":
			id.User = &graph.Identity{ODataType: graph.ODataIdentity, ID: t.User}
		case t.ApplicationInstance != "":
			id.ApplicationInstance = &graph.Identity{ODataType: graph.ODataIdentity, ID: t.ApplicationInstance}
		default:
			continue
		}
		req.Targets = append(req.Targets, graph.InvitationParticipantInfo{ODataType: graph.ODataInvitationInfo, Identity: id})
	}
	return req
}

// forward posts the notifications marked in keep to the upstream bot with
// the original Authorization header: the original body when all are kept,
// else the body with only the kept members of "value".
func (s *Server) forward(ctx context.Context, j *job, keep []bool) error {
	body := j.body
	all := true
	for _, k := range keep {
		all = all && k
	}
	if !all {
		var err error
		if body, err = filterBatch(j.body, keep); err != nil {
			s.metrics.upstream.WithLabelValues("error").Inc()
			return fmt.Errorf("filter notifications for upstream: %w", err)
		}
	}
	for attempt := 0; ; attempt++ {
		status, err := s.postUpstream(ctx, j.rt.upstream, j.auth, body)
		s.metrics.upstream.WithLabelValues(statusLabel(status, err)).Inc()
		if err == nil && status >= 200 && status < 300 {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("upstream answered HTTP %d", status)
			if status < 500 && status != http.StatusTooManyRequests {
				return err
			}
		}
		delay := min(100*time.Millisecond<<attempt, 2*time.Second)
		select {
		case <-ctx.Done():
			return fmt.Errorf("forward upstream: %w", errors.Join(ctx.Err(), err))
		case <-time.After(delay):
		}
	}
}

func (s *Server) postUpstream(ctx context.Context, url, auth string, body []byte) (int, error) {
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("build upstream request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", auth)
	resp, err := s.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("post upstream: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode, nil
}

// filterBatch rebuilds a notification body with only the kept members of
// "value", each byte for byte as Graph sent it.
func filterBatch(body []byte, keep []bool) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return nil, fmt.Errorf("decode body: %w", err)
	}
	var values []json.RawMessage
	if err := json.Unmarshal(top["value"], &values); err != nil {
		return nil, fmt.Errorf("decode value: %w", err)
	}
	if len(values) != len(keep) {
		return nil, fmt.Errorf("value holds %d members, expected %d", len(values), len(keep))
	}
	kept := make([]json.RawMessage, 0, len(values))
	for i, v := range values {
		if keep[i] {
			kept = append(kept, v)
		}
	}
	raw, err := json.Marshal(kept)
	if err != nil {
		return nil, fmt.Errorf("encode value: %w", err)
	}
	top["value"] = raw
	out, err := json.Marshal(top)
	if err != nil {
		return nil, fmt.Errorf("encode body: %w", err)
	}
	return out, nil
}

func (s *Server) logDecision(n *graph.Notification, d policy.Decision, j *job, err error) {
	caller := policy.CallerOf(n.ResourceData)
	number := caller.Number
	if !s.cfg.LogCallerNumbers {
		number = maskNumber(number)
	}
	// Room for every attribute, so that the slice stays on the stack.
	attrs := make([]slog.Attr, 0, 11)
	attrs = append(attrs,
		slog.String("callId", n.CallID()),
		slog.String("callChainId", n.ResourceData.CallChainID),
		slog.String("callerType", string(caller.Type)),
		slog.String("callerNumber", number),
		slog.String("rule", d.Rule),
		slog.String("action", string(d.Action)),
		slog.String("mode", string(d.Mode)),
		slog.String("policy", j.rt.hash),
		slog.Float64("latencyMs", float64(time.Since(j.arrival).Microseconds())/1000),
	)
	if d.Action == v1alpha1.ActionReject {
		attrs = append(attrs, slog.String("reason", string(d.Reason)))
	}
	level := slog.LevelInfo
	if err != nil {
		level = slog.LevelWarn
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	s.log.LogAttrs(context.Background(), level, "decision", attrs...)
}

// maskNumber keeps only a number's last four digits.
func maskNumber(n string) string {
	if n == "" {
		return ""
	}
	digits := 0
	cut := len(n)
	for i := len(n) - 1; i >= 0 && digits < 4; i-- {
		if n[i] >= '0' && n[i] <= '9' {
			digits++
			cut = i
		}
	}
	return "****" + strings.TrimLeft(n[cut:], "+")
}
