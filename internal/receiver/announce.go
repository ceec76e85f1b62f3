package receiver

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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

// Token limits: Graph takes a clientContext of at most 256 characters, and
// a token read from a request is refused unread past maxTokenLen.
const (
	maxClientContext = 256
	maxTokenLen      = 4096
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
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15},
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
