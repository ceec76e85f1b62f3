package receiver

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
)

// An Announce decision is carried out in three steps (answer, play, hang
// up), each taken on a notification Graph sends. Any replica may receive
// any of them, so what a step needs travels with the notification, signed
// with the policy's key: the answer's callbackUri carries an "answered"
// token in its query (Graph posts the call's notifications to that URI),
// and the playPrompt's clientContext a "played" token (Graph echoes it in
// the operation's completion).

// announceParam is the query parameter of the callbackUri that carries the
// answered token.
const announceParam = "cg"

// tokenVersion prefixes every token; a token of another version is refused.
const tokenVersion = "v1."

// Steps a token names.
const (
	stepAnswered = "answered"
	stepPlayed   = "played"
)

// Token limits: a played token must fit in Graph's clientContext
// (graph.MaxClientContext), and a token read from a request is refused
// unread past maxTokenLen.
const (
	maxTokenLen = 4096
	// macLen is the HMAC-SHA256 truncated to 128 bits.
	macLen = 16
	// tokenSlack is how long a token stays valid past the call's
	// maxSeconds: Graph's last notifications of a call (the completion of
	// a prompt that ran to the limit, the termination) come just after.
	tokenSlack = 30 * time.Second
	// tokenSkew tolerates clocks of replicas that disagree.
	tokenSkew = time.Minute
)

// announceToken is what a step needs to know of an announced call.
type announceToken struct {
	// Step is stepAnswered or stepPlayed.
	Step string `json:"s"`
	// Policy is the policy's namespace/name in an answered token, its
	// policyDigest in a played token (which must fit in 256 characters).
	Policy string `json:"p"`
	CallID string `json:"c"`
	// PromptSHA256 or PromptURL is the prompt to play (answered only).
	PromptSHA256 string `json:"h,omitempty"`
	PromptURL    string `json:"u,omitempty"`
	MaxSeconds   int32  `json:"m"`
	// AnsweredAt is when the answer was sent, in Unix milliseconds.
	AnsweredAt int64 `json:"t"`
}

// expires is when the token stops being valid.
func (t *announceToken) expires() time.Time {
	return time.UnixMilli(t.AnsweredAt).Add(time.Duration(t.MaxSeconds)*time.Second + tokenSlack)
}

// policyDigest names a policy in a played token: 64 bits of the sha256 of
// its namespace/name, base64url.
func policyDigest(policy string) string {
	sum := sha256.Sum256([]byte(policy))
	return base64.RawURLEncoding.EncodeToString(sum[:8])
}

// signToken encodes t as tokenVersion + base64url(JSON) + "." +
// base64url(HMAC-SHA256(key, everything before the dot), truncated).
func signToken(key []byte, t *announceToken) (string, error) {
	payload, err := json.Marshal(t)
	if err != nil {
		return "", fmt.Errorf("encode %s token: %w", t.Step, err)
	}
	var b strings.Builder
	b.Grow(len(tokenVersion) + base64.RawURLEncoding.EncodedLen(len(payload)) + 1 + base64.RawURLEncoding.EncodedLen(macLen))
	b.WriteString(tokenVersion)
	b.WriteString(base64.RawURLEncoding.EncodeToString(payload))
	mac := tokenMAC(key, b.String())
	b.WriteByte('.')
	b.WriteString(base64.RawURLEncoding.EncodeToString(mac))
	return b.String(), nil
}

func tokenMAC(key []byte, signed string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(signed))
	return m.Sum(nil)[:macLen]
}

// Reasons a token is refused, as counted.
var (
	errTokenMalformed = errors.New("malformed")
	errTokenSignature = errors.New("signature")
	errTokenExpired   = errors.New("expired")
	errTokenMismatch  = errors.New("mismatch")
)

// tokenRefusal is the metric label of a verifyToken error.
func tokenRefusal(err error) string {
	for _, e := range []error{errTokenSignature, errTokenExpired, errTokenMismatch} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return errTokenMalformed.Error()
}

// verifyToken checks a token read from a notification: its signature by
// key, that it is a token of step for callID of policy (namespace/name),
// and that it has not expired at now. Untrusted bytes: any error is a
// refusal, never a panic.
func verifyToken(key []byte, s, step, policy, callID string, now time.Time) (*announceToken, error) {
	if len(s) > maxTokenLen {
		return nil, fmt.Errorf("%w: %d characters, over %d", errTokenMalformed, len(s), maxTokenLen)
	}
	rest, ok := strings.CutPrefix(s, tokenVersion)
	if !ok {
		return nil, fmt.Errorf("%w: not a %q token", errTokenMalformed, strings.TrimSuffix(tokenVersion, "."))
	}
	payload64, mac64, ok := strings.Cut(rest, ".")
	if !ok {
		return nil, fmt.Errorf("%w: no signature", errTokenMalformed)
	}
	mac, err := base64.RawURLEncoding.DecodeString(mac64)
	if err != nil || len(mac) != macLen {
		return nil, fmt.Errorf("%w: signature is not %d base64url bytes", errTokenMalformed, macLen)
	}
	if !hmac.Equal(mac, tokenMAC(key, s[:len(tokenVersion)+len(payload64)])) {
		return nil, errTokenSignature
	}
	payload, err := base64.RawURLEncoding.DecodeString(payload64)
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %w", errTokenMalformed, err)
	}
	var t announceToken
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("%w: payload: %w", errTokenMalformed, err)
	}
	want := policy
	if step == stepPlayed {
		want = policyDigest(policy)
	}
	switch {
	case t.Step != step:
		return nil, fmt.Errorf("%w: a %q token, want %q", errTokenMismatch, t.Step, step)
	case t.Policy != want:
		return nil, fmt.Errorf("%w: a token of another policy", errTokenMismatch)
	case t.CallID != callID:
		return nil, fmt.Errorf("%w: a token of call %q", errTokenMismatch, t.CallID)
	case t.MaxSeconds <= 0:
		return nil, fmt.Errorf("%w: maxSeconds %d", errTokenMalformed, t.MaxSeconds)
	case time.UnixMilli(t.AnsweredAt).After(now.Add(tokenSkew)):
		return nil, fmt.Errorf("%w: answered in the future", errTokenExpired)
	case now.After(t.expires()):
		return nil, fmt.Errorf("%w: at %s", errTokenExpired, t.expires().UTC().Format(time.RFC3339))
	}
	return &t, nil
}

// CheckCallbackURL checks --callback-url: the public https URL Graph
// reaches the receivers' callback at (plain http for local tests), without
// query or fragment, since the receiver adds its own query.
func CheckCallbackURL(s string) error {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("--callback-url %q: %w", s, err)
	case u.Scheme != "https" && u.Scheme != "http", u.Host == "":
		return fmt.Errorf("--callback-url %q: want an absolute https URL", s)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return fmt.Errorf("--callback-url %q: a query or fragment is not allowed (the receiver adds its own query)", s)
	case u.User != nil:
		return fmt.Errorf("--callback-url %q: user information is not allowed", s)
	}
	return nil
}

// promptURI is where Graph fetches a ConfigMap prompt: under the public
// callback URL.
func promptURI(callbackURL, sha string) string {
	return strings.TrimRight(callbackURL, "/") + "/prompts/" + sha + ".wav"
}

// announcer carries out Announce decisions: it signs and checks the step
// tokens, keeps the backstop timers of the calls this replica answered, and
// counts the steps.
type announcer struct {
	metrics announceMetrics
	// backstop replaces maxSeconds as the backstop's delay when set
	// (Config.AnnounceBackstop: tests shorten it).
	backstop func(maxSeconds time.Duration) time.Duration

	mu sync.Mutex
	// timers are the backstops of the calls this replica answered, by
	// call id, from the answer until the call ends: the map holds no call
	// longer than its maxSeconds.
	timers map[string]*time.Timer
}

// announceMetrics are the series of the Announce steps.
type announceMetrics struct {
	steps      *prometheus.CounterVec
	stepsBy    counterCache
	refused    *prometheus.CounterVec
	stepTime   *prometheus.HistogramVec
	prompts    *prometheus.CounterVec
	inProgress prometheus.GaugeFunc
}

// Steps of an announced call, as counted.
const (
	stepAnswer   = "answer"
	stepPlay     = "play"
	stepHangup   = "hangup"
	stepBackstop = "backstop"
)

// Results of a step besides the outcome results (resultSuccess…).
const (
	// resultDuplicate: another replica, or an earlier delivery, took the step.
	resultDuplicate = "duplicate"
	// resultGone: the call had ended already.
	resultGone = "gone"
	// resultNoCallbackURL: a ConfigMap prompt without --callback-url; the
	// call was rejected instead.
	resultNoCallbackURL = "no_callback_url"
	// resultUnknown: a playPrompt got no answer; Graph may be playing it.
	resultUnknown = "unknown"
)

func newAnnouncer(m *metrics, backstop func(time.Duration) time.Duration) *announcer {
	a := &announcer{backstop: backstop, timers: map[string]*time.Timer{}}
	a.metrics = announceMetrics{
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "announce_steps_total",
			Help: "Steps of announced calls (answer, play, hangup, backstop) by result.",
		}, []string{"step", "result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "announce_tokens_refused_total",
			Help: "Announce step tokens of notifications that did not verify (malformed, signature, expired, mismatch); the step was not taken.",
		}, []string{"reason"}),
		stepTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "announce_step_seconds",
			Help:    "Time from the notification that starts a step (established: play; the prompt's completion: hangup) to Graph's success answer.",
			Buckets: graphLatencyBuckets,
		}, []string{"step"}),
		prompts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "prompt_requests_total",
			Help: "Requests for announcement prompts, by HTTP status answered.",
		}, []string{"code"}),
		inProgress: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "announce_calls_in_progress",
			Help: "Calls this replica answered that have not ended yet (each holds a backstop timer).",
		}, func() float64 { return float64(a.inProgress()) }),
	}
	a.metrics.stepsBy.vec = a.metrics.steps
	m.registry.MustRegister(a.metrics.steps, a.metrics.refused, a.metrics.stepTime, a.metrics.prompts, a.metrics.inProgress)
	return a
}

func (a *announcer) inProgress() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.timers)
}

// arm starts the backstop of a call: hangup runs after d unless the call
// ends first (disarm).
func (a *announcer) arm(callID string, d time.Duration, hangup func()) {
	if a.backstop != nil {
		d = a.backstop(d)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if old := a.timers[callID]; old != nil {
		old.Stop()
	}
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		a.mu.Lock()
		mine := a.timers[callID] == t
		if mine {
			delete(a.timers, callID)
		}
		a.mu.Unlock()
		if mine {
			hangup()
		}
	})
	a.timers[callID] = t
}

// disarm stops a call's backstop and reports whether it had one here.
func (a *announcer) disarm(callID string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.timers[callID]
	if t == nil {
		return false
	}
	t.Stop()
	delete(a.timers, callID)
	return true
}

// stopAll stops every backstop (shutdown: the calls are left to Graph).
func (a *announcer) stopAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, t := range a.timers {
		t.Stop()
		delete(a.timers, id)
	}
}

// policyName is the policy's namespace/name, as announce tokens name it.
func (rt *policyVersion) policyName() string { return rt.id.namespace + "/" + rt.id.name }

// answer carries an Announce decision out: it answers the call with the
// prompt pre-fetched and a callbackUri carrying the answered token, and
// arms the backstop. Without --callback-url a ConfigMap prompt cannot be
// fetched by Graph, nor the call's later notifications routed with their
// token: the call is rejected instead (reason none), logged and counted.
// It returns the Graph operation it sent.
func (s *Server) answer(ctx context.Context, rt *policyVersion, tc *tenantClient, callID string, ann *policy.Announcement) (string, error) {
	if ann == nil {
		return graph.OpAnswer, errors.New("announce decision without its announcement")
	}
	if s.cfg.CallbackURL == "" {
		s.ann.metrics.stepsBy.with(stepAnswer, resultNoCallbackURL).Inc()
		s.log.Error("announce needs --callback-url (the public callback URL); the call is rejected instead",
			"callId", callID)
		return graph.OpReject, tc.graph.Reject(ctx, callID, string(v1alpha1.ReasonNone))
	}
	at := time.Now()
	tok := announceToken{Step: stepAnswered, Policy: rt.policyName(), CallID: callID,
		PromptSHA256: ann.PromptSHA256, PromptURL: ann.PromptURL, MaxSeconds: ann.MaxSeconds, AnsweredAt: at.UnixMilli()}
	signed, err := signToken(rt.stateKey, &tok)
	if err != nil {
		return graph.OpAnswer, err
	}
	req := graph.NewAnswerRequest(s.cfg.CallbackURL+"?"+announceParam+"="+signed,
		graph.MediaInfo{URI: s.promptURI(&tok), ResourceID: promptResourceID(&tok)})
	// Armed first: a caller who hangs up at once may end the call before
	// the answer returns, and disarms it then.
	s.ann.arm(callID, time.Duration(ann.MaxSeconds)*time.Second, func() { s.backstopHangup(tc, callID) })
	err = tc.graph.Answer(ctx, callID, req)
	if err != nil && !errors.Is(err, graph.ErrAlreadyDone) {
		s.ann.disarm(callID)
	}
	s.ann.metrics.stepsBy.with(stepAnswer, stepResult(err)).Inc()
	return graph.OpAnswer, err
}

// promptURI is the URI Graph fetches a token's prompt from.
func (s *Server) promptURI(t *announceToken) string {
	if t.PromptURL != "" {
		return t.PromptURL
	}
	return promptURI(s.cfg.CallbackURL, t.PromptSHA256)
}

// promptResourceID names a prompt in Graph's media cache: the same prompt
// is fetched once however many calls play it.
func promptResourceID(t *announceToken) string {
	if t.PromptSHA256 != "" {
		return t.PromptSHA256
	}
	sum := sha256.Sum256([]byte(t.PromptURL))
	return hex.EncodeToString(sum[:])
}

// backstopHangup hangs up a call this replica answered maxSeconds ago that
// has not ended by then.
func (s *Server) backstopHangup(tc *tenantClient, callID string) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Deadline)
	defer cancel()
	result, _, _ := s.hangup(ctx, tc, callID)
	s.ann.metrics.stepsBy.with(stepBackstop, result).Inc()
	s.log.Info("announced call hung up at its maxSeconds", "callId", callID, "result", result)
}

// hangup ends a call; one that has ended already counts as done. sent is
// when the request went to Graph (zero if it did not).
func (s *Server) hangup(ctx context.Context, tc *tenantClient, callID string) (result string, sent time.Time, err error) {
	select {
	case s.graphSlots <- struct{}{}:
	case <-ctx.Done():
		s.metrics.actionsBy.with(graph.OpHangup, resultDeadline).Inc()
		return resultDeadline, time.Time{}, ctx.Err()
	}
	defer func() { <-s.graphSlots }()
	sent = time.Now()
	err = tc.graph.Hangup(ctx, callID)
	result = stepResult(err)
	s.metrics.actionsBy.with(graph.OpHangup, result).Inc()
	if result == resultFailed || result == resultDeadline {
		s.log.Warn("hanging up an announced call", "callId", callID, "error", err)
	}
	return result, sent, err
}

// logStep logs a play or hangup step taken on a notification: how long
// after the notification's arrival its request was sent (the receiver's
// part) and answered (Graph's added).
func (s *Server) logStep(step, callID, result string, arrival, sent time.Time) {
	attrs := []any{"callId", callID, "step", step, "result", result}
	if !sent.IsZero() {
		attrs = append(attrs, "sentAfter", sent.Sub(arrival))
	}
	s.log.Info("announce step", append(attrs, "answeredAfter", time.Since(arrival))...)
}

// stepResult is the result label of a Graph step's error.
func stepResult(err error) string {
	var apiErr *graph.APIError
	switch {
	case err == nil:
		return resultSuccess
	case errors.Is(err, graph.ErrAlreadyDone):
		return resultAlreadyDone
	case errors.Is(err, graph.ErrOutcomeUnknown):
		return resultUnknown
	case errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusNotFound:
		return resultGone
	case errors.Is(err, context.DeadlineExceeded):
		return resultDeadline
	}
	return resultFailed
}

// followUp is a step an announced call's notification asks for.
type followUp struct {
	kind   string // stepPlay, stepHangup, or "" (the call ended: disarm)
	callID string
	tok    *announceToken
}

// readAnnounce reads what a callback request carries for announced calls,
// before the body it was decoded from is let go: the answered token of
// its URL ("" when none), and the prompt operations its notifications
// report (nil when none; else ops[i] is batch.Value[i]'s, or nil).
func (s *Server) readAnnounce(r *http.Request, batch *graph.Notifications) (token string, ops []*graph.PromptOperation) {
	if r.URL.RawQuery != "" {
		token = r.URL.Query().Get(announceParam)
	}
	for i := range batch.Value {
		n := &batch.Value[i]
		if n.ResourceData != nil || !strings.Contains(strings.ToLower(n.URL()), "/operations/") {
			continue
		}
		op, err := n.PromptOperation()
		if err != nil {
			s.log.Warn("unreadable prompt operation notification; ignored", "callId", n.CallID(), "error", err)
			continue
		}
		if op == nil {
			continue
		}
		if ops == nil {
			ops = make([]*graph.PromptOperation, len(batch.Value))
		}
		ops[i] = op
	}
	return token, ops
}

// announceFollowUps finds the notifications of the batch that belong to
// announced calls (those posted to an answer's callbackUri, whose token
// the request carries, and the completions of prompts played by a
// receiver, whose clientContext carries one), keeps them from upstream,
// and returns the steps they ask for. A token that does not verify is
// counted and its notification ignored. In DryRun nothing was answered:
// there is nothing to find.
func (s *Server) announceFollowUps(j *job, pl *plan) []followUp {
	if j.announce == "" && j.ops == nil {
		return nil
	}
	var steps []followUp
	now := time.Now()
	var (
		checked string // the call id urlTok was checked for
		urlTok  *announceToken
	)
	for i := range j.batch.Value {
		n := &j.batch.Value[i]
		if n.IsIncomingCall() {
			continue
		}
		id := n.CallID()
		if j.ops != nil && j.ops[i] != nil && strings.HasPrefix(j.ops[i].ClientContext, tokenVersion) {
			op := j.ops[i]
			s.withhold(pl, i)
			if !op.Done() {
				continue
			}
			tok, err := verifyToken(j.rt.stateKey, op.ClientContext, stepPlayed, j.rt.policyName(), op.CallID, now)
			if err != nil {
				s.refuseToken(op.CallID, err)
				continue
			}
			steps = append(steps, followUp{kind: stepHangup, callID: op.CallID, tok: tok})
			continue
		}
		if j.announce == "" {
			continue
		}
		s.withhold(pl, i)
		if checked != id {
			checked, urlTok = id, nil
			tok, err := verifyToken(j.rt.stateKey, j.announce, stepAnswered, j.rt.policyName(), id, now)
			if err != nil {
				s.refuseToken(id, err)
				continue
			}
			urlTok = tok
		}
		switch {
		case urlTok == nil:
		case n.IsCallEstablished():
			steps = append(steps, followUp{kind: stepPlay, callID: id, tok: urlTok})
		case n.IsCallTerminated():
			steps = append(steps, followUp{callID: id})
		}
	}
	return steps
}

// withhold keeps batch.Value[i] from upstream.
func (s *Server) withhold(pl *plan, i int) {
	if !pl.forward[i] {
		return
	}
	pl.forward[i] = false
	pl.withheld++
	pl.anyForward = slices.Contains(pl.forward, true)
}

func (s *Server) refuseToken(callID string, err error) {
	reason := tokenRefusal(err)
	s.ann.metrics.refused.WithLabelValues(reason).Inc()
	s.log.Warn("announce step token refused; the notification is ignored", "callId", callID, "reason", reason, "error", err)
}

// followUps takes the steps of a batch's announced calls, with an app token
// of the tenant the batch arrived in.
func (s *Server) followUps(ctx context.Context, j *job, steps []followUp) {
	var tc *tenantClient
	for _, f := range steps {
		if f.kind == "" {
			if s.ann.disarm(f.callID) {
				s.log.Debug("announced call ended; its backstop is stopped", "callId", f.callID)
			}
			continue
		}
		if tc == nil {
			var err error
			if tc, err = j.rt.clients.get(j.tenant); err != nil {
				s.ann.metrics.stepsBy.with(f.kind, resultFailed).Inc()
				s.log.Warn("no Graph client for the call's tenant; the announce step is not taken",
					"tenant", j.tenant, "callId", f.callID, "step", f.kind, "error", err)
				return
			}
		}
		switch f.kind {
		case stepPlay:
			s.play(ctx, j, tc, f)
		case stepHangup:
			s.ann.disarm(f.callID)
			result, sent, err := s.hangup(ctx, tc, f.callID)
			s.ann.metrics.stepsBy.with(stepHangup, result).Inc()
			if err == nil {
				s.ann.metrics.stepTime.WithLabelValues(stepHangup).Observe(time.Since(j.arrival).Seconds())
			}
			s.logStep(stepHangup, f.callID, result, j.arrival, sent)
		}
	}
}

// play plays an answered call's prompt, once per call: the first replica
// to claim the step plays it (through the policy's store when it has one;
// without a store the claim is this process's, so two replicas that both
// receive the established notification may each play it once).
func (s *Server) play(ctx context.Context, j *job, tc *tenantClient, f followUp) {
	// Claimed for as long as the token is valid (a redelivery after that
	// is refused anyway), and never for less than a second.
	ttl := max(time.Until(f.tok.expires()), time.Second)
	first := true
	if st := j.rt.store; st != nil {
		ok, err := st.Claim(ctx, f.callID+":play", ttl)
		if err != nil {
			s.log.Warn("state store could not claim the announce play step; claimed in this process", "callId", f.callID, "error", err)
			ok = s.calls.claim(f.callID+":play", time.Now())
		}
		first = ok
	} else {
		first = s.calls.claim(f.callID+":play", time.Now())
	}
	if !first {
		s.ann.metrics.stepsBy.with(stepPlay, resultDuplicate).Inc()
		return
	}
	played := announceToken{Step: stepPlayed, Policy: policyDigest(j.rt.policyName()), CallID: f.callID,
		MaxSeconds: f.tok.MaxSeconds, AnsweredAt: f.tok.AnsweredAt}
	clientContext, err := signToken(j.rt.stateKey, &played)
	if err == nil && len(clientContext) > graph.MaxClientContext {
		err = fmt.Errorf("call id of %d characters: the played token is over Graph's %d-character clientContext", len(f.callID), graph.MaxClientContext)
	}
	if err == nil && f.tok.PromptURL == "" && s.cfg.CallbackURL == "" {
		err = errors.New("a ConfigMap prompt needs --callback-url")
	}
	var sent time.Time
	if err == nil {
		sent, err = s.playPrompt(ctx, tc, f.callID, graph.NewPlayPromptRequest(clientContext,
			graph.MediaInfo{URI: s.promptURI(f.tok), ResourceID: promptResourceID(f.tok)}))
	}
	result := stepResult(err)
	s.ann.metrics.stepsBy.with(stepPlay, result).Inc()
	s.logStep(stepPlay, f.callID, result, j.arrival, sent)
	switch result {
	case resultSuccess, resultAlreadyDone:
		s.ann.metrics.stepTime.WithLabelValues(stepPlay).Observe(time.Since(j.arrival).Seconds())
	case resultGone, resultUnknown:
		// Ended, or Graph may be playing it: the completion or the
		// backstop ends the call.
	default:
		// The caller would hear silence until the backstop: end it now.
		s.log.Warn("playing the announcement failed; hanging up", "callId", f.callID, "error", err)
		r, _, _ := s.hangup(ctx, tc, f.callID)
		s.ann.metrics.stepsBy.with(stepHangup, r).Inc()
	}
}

// playPrompt sends a playPrompt; sent is when the request went to Graph
// (zero if it did not).
func (s *Server) playPrompt(ctx context.Context, tc *tenantClient, callID string, req graph.PlayPromptRequest) (sent time.Time, err error) {
	select {
	case s.graphSlots <- struct{}{}:
	case <-ctx.Done():
		s.metrics.actionsBy.with(graph.OpPlayPrompt, resultDeadline).Inc()
		return time.Time{}, ctx.Err()
	}
	defer func() { <-s.graphSlots }()
	sent = time.Now()
	_, err = tc.graph.PlayPrompt(ctx, callID, req)
	s.metrics.actionsBy.with(graph.OpPlayPrompt, stepResult(err)).Inc()
	return sent, err
}
