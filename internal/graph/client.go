package graph

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	azpolicy "github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/google/uuid"
)

// Operations the client performs, as named in logs and metrics.
const (
	OpReject   = "reject"
	OpRedirect = "redirect"
	// The three steps of an announcement.
	OpAnswer     = "answer"
	OpPlayPrompt = "playPrompt"
	OpHangup     = "hangup"
)

// Retry tuning defaults. The per-attempt timeout is well under the 15 s call
// deadline so that a hung connection still leaves time for another try.
const (
	DefaultAttemptTimeout = 5 * time.Second
	DefaultBackoffBase    = 100 * time.Millisecond
	DefaultBackoffMax     = 2 * time.Second
)

// finalAttemptLead is how long before the call's deadline the last attempt
// starts when a wait (a Retry-After above all) reaches past the deadline.
// Graph answers an action in well under a second, so a second leaves room
// for the answer while keeping as much as possible of the wait a throttled
// Graph asked for; leading by the whole 5 s attempt timeout would hit it 4 s
// sooner for nothing. A shorter attempt timeout is the lead instead: the
// attempt could not use more.
const finalAttemptLead = time.Second

// ErrAlreadyDone is wrapped in the error of an action that was done before
// this request could do it, so the call is as asked:
//   - reject, redirect or answer refused with 409 after an earlier attempt of
//     the same action went unanswered (timed out or lost its connection):
//     Graph carried that attempt out;
//   - a hang-up answered 404: the call had already ended (an unanswered
//     attempt of it, another replica's hang-up, or the caller hanging up).
//
// Tell it with errors.Is; Graph's *APIError is wrapped too.
var ErrAlreadyDone = errors.New("graph had already carried out the action")

// ErrOutcomeUnknown is wrapped in the error of a playPrompt whose request
// was sent and got no answer (a timeout or a lost connection). It is not
// retried: Graph may have started the prompt, and another request would
// play it to the caller a second time. The operation's notification tells
// the outcome if there is one.
var ErrOutcomeUnknown = errors.New("graph may have carried out the unanswered request")

// maxErrorBody bounds how much of an error response is read for its code.
const maxErrorBody = 64 << 10

// ClientConfig configures a Client.
type ClientConfig struct {
	// Endpoint is the Graph base URL, e.g. https://graph.microsoft.com.
	Endpoint string
	// APIVersion is "v1.0" or "beta".
	APIVersion string
	// Credential issues app-only tokens for Endpoint.
	Credential azcore.TokenCredential
	// HTTPClient sends the requests; nil means http.DefaultClient.
	HTTPClient *http.Client
	// Logger receives error reports; nil discards them.
	Logger *slog.Logger
	// OnAttempt, if set, is told about every request sent: the HTTP status,
	// or 0 and the transport error.
	OnAttempt func(op string, status int, err error)

	AttemptTimeout time.Duration
	BackoffBase    time.Duration
	BackoffMax     time.Duration
}

// Client acts on incoming calls through Graph's communications API.
type Client struct {
	base       string
	scope      string
	cred       azcore.TokenCredential
	http       *http.Client
	log        *slog.Logger
	onAttempt  func(string, int, error)
	attemptTTL time.Duration
	backoff    time.Duration
	backoffMax time.Duration

	// token is the last access token, reused until near its expiry as
	// azcore's bearer policy does: asking the credential every time costs a
	// cache lookup and locking inside the identity library.
	token atomic.Pointer[cachedToken]
}

type cachedToken struct {
	header    string // "Bearer " and the token
	refreshAt time.Time
}

// tokenRefreshMargin is how long before expiry a token is replaced.
const tokenRefreshMargin = 5 * time.Minute

// NewClient returns a client for cfg.
func NewClient(cfg ClientConfig) (*Client, error) {
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("graph endpoint %q is not an http(s) URL", cfg.Endpoint)
	}
	if cfg.APIVersion != "v1.0" && cfg.APIVersion != "beta" {
		return nil, fmt.Errorf("graph apiVersion %q: want v1.0 or beta", cfg.APIVersion)
	}
	if cfg.Credential == nil {
		return nil, errors.New("graph client needs a credential")
	}
	endpoint := strings.TrimRight(cfg.Endpoint, "/")
	c := &Client{
		base:       endpoint + "/" + cfg.APIVersion + "/communications/calls/",
		scope:      endpoint + "/.default",
		cred:       cfg.Credential,
		http:       cfg.HTTPClient,
		log:        cfg.Logger,
		onAttempt:  cfg.OnAttempt,
		attemptTTL: orDefault(cfg.AttemptTimeout, DefaultAttemptTimeout),
		backoff:    orDefault(cfg.BackoffBase, DefaultBackoffBase),
		backoffMax: orDefault(cfg.BackoffMax, DefaultBackoffMax),
	}
	if c.http == nil {
		c.http = http.DefaultClient
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Reject rejects an incoming call. ctx's deadline bounds all retries.
func (c *Client) Reject(ctx context.Context, callID, reason string) error {
	_, err := c.do(ctx, OpReject, callID, RejectRequest{Reason: reason})
	return err
}

// Redirect redirects an incoming call. ctx's deadline bounds all retries.
func (c *Client) Redirect(ctx context.Context, callID string, req RedirectRequest) error {
	if len(req.Targets) == 0 {
		return errors.New("redirect needs at least one target")
	}
	_, err := c.do(ctx, OpRedirect, callID, req)
	return err
}

// Answer answers an incoming call with service-hosted media (POST
// …/calls/{id}/answer): Graph answers 202 and then notifies the call's
// callback (req.CallbackURI, else the bot's registered one) that it is
// establishing and established. Empty AcceptedModalities mean audio; the
// OData types are filled in. Retries as Reject does: a 409 after an
// unanswered attempt wraps ErrAlreadyDone.
func (c *Client) Answer(ctx context.Context, callID string, req AnswerRequest) error {
	if len(req.AcceptedModalities) == 0 {
		req.AcceptedModalities = []string{"audio"}
	}
	req.MediaConfig.ODataType = ODataServiceHostedMediaConfig
	req.MediaConfig.PreFetchMedia = slices.Clone(req.MediaConfig.PreFetchMedia)
	for i := range req.MediaConfig.PreFetchMedia {
		m := &req.MediaConfig.PreFetchMedia[i]
		if m.URI == "" {
			return fmt.Errorf("graph answer of call %s: mediaConfig.preFetchMedia[%d].uri is empty", callID, i)
		}
		if m.ODataType == "" {
			m.ODataType = ODataMediaInfo
		}
	}
	_, err := c.do(ctx, OpAnswer, callID, req)
	return err
}

// PlayPrompt plays prompts on an established call (POST
// …/calls/{id}/playPrompt) and returns the id of the playPromptOperation
// Graph started ("" if its answer names none): its completion arrives as a
// notification (Notification.PromptOperation) carrying req.ClientContext.
// 429 and 5xx answers are retried as Reject's are; an attempt that got no
// answer is not (ErrOutcomeUnknown).
func (c *Client) PlayPrompt(ctx context.Context, callID string, req PlayPromptRequest) (opID string, err error) {
	if n := len(req.Prompts); n < 1 || n > MaxPrompts {
		return "", fmt.Errorf("graph playPrompt of call %s: prompts holds %d, want 1 to %d", callID, n, MaxPrompts)
	}
	if n := utf8.RuneCountInString(req.ClientContext); n > MaxClientContext {
		return "", fmt.Errorf("graph playPrompt of call %s: clientContext is %d characters, at most %d allowed", callID, n, MaxClientContext)
	}
	req.Prompts = slices.Clone(req.Prompts)
	for i := range req.Prompts {
		p := &req.Prompts[i]
		if p.MediaInfo.URI == "" {
			return "", fmt.Errorf("graph playPrompt of call %s: prompts[%d].mediaInfo.uri is empty", callID, i)
		}
		if p.ODataType == "" {
			p.ODataType = ODataMediaPrompt
		}
		if p.MediaInfo.ODataType == "" {
			p.MediaInfo.ODataType = ODataMediaInfo
		}
	}
	res, err := c.do(ctx, OpPlayPrompt, callID, req)
	if err != nil {
		return "", err
	}
	var op PlayPromptOperation
	if len(bytes.TrimSpace(res.body)) > 0 {
		if err := json.Unmarshal(res.body, &op); err != nil {
			// Graph started the prompt all the same: its notification
			// follows. The id is only lost if the Location names none.
			c.log.Warn("graph playPrompt answer unreadable", "callId", callID, "error", err)
		}
	}
	if op.ID == "" {
		op.ID = lastSegment(res.location)
	}
	return op.ID, nil
}

// Hangup ends a call (DELETE …/calls/{id}): Graph answers 204 and then
// notifies the callback that the call is terminated. A 404 means the call
// had already ended, by an unanswered attempt of this hang-up, another
// replica or the caller: the error wraps ErrAlreadyDone (and the 404's
// *APIError), and the call is ended as asked. Retries as Reject does.
func (c *Client) Hangup(ctx context.Context, callID string) error {
	_, err := c.do(ctx, OpHangup, callID, nil)
	return err
}

// lastSegment is the last path segment of a URL ("" for none).
func lastSegment(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	p := strings.TrimRight(u.Path, "/")
	return p[strings.LastIndexByte(p, '/')+1:]
}

// APIError is a final error answer from Graph.
type APIError struct {
	Operation       string
	CallID          string
	StatusCode      int
	Code            string
	Message         string
	RequestID       string
	ClientRequestID string
}

func (e *APIError) Error() string {
	msg := fmt.Sprintf("graph %s of call %s: HTTP %d", e.Operation, e.CallID, e.StatusCode)
	if e.Code != "" {
		msg += " " + e.Code
	}
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.RequestID != "" {
		msg += " (request-id " + e.RequestID + ")"
	}
	return msg
}

// retryable says whether the status may succeed on another try.
func retryable(status int) bool {
	return status == http.StatusTooManyRequests || status >= 500
}

// do sends one operation, retrying as the Graph contract says: 429 and 503
// wait for Retry-After, other 5xx and transport errors back off
// exponentially with jitter, other 4xx are final, and nothing is retried past
// ctx's deadline; a wait that reaches past it is cut short once, for a last
// attempt finalAttemptLead before it. It stops at the first 2xx, so a call
// is acted on at most once successfully, and tells a 409 that follows an
// unanswered attempt, or a hang-up's 404, by ErrAlreadyDone. A playPrompt
// attempt that got no answer is final (ErrOutcomeUnknown). The body of the
// last answer is returned for playPrompt.
func (c *Client) do(ctx context.Context, op, callID string, body any) (result, error) {
	if callID == "" {
		return result{}, fmt.Errorf("graph %s: empty call id", op)
	}
	method, target := http.MethodPost, c.base+url.PathEscape(callID)+"/"+op
	var payload []byte
	if op == OpHangup {
		method, target = http.MethodDelete, c.base+url.PathEscape(callID)
	} else {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return result{}, fmt.Errorf("graph %s of call %s: encode body: %w", op, callID, err)
		}
	}
	lead := min(c.attemptTTL, finalAttemptLead)
	// unanswered: an attempt was sent and got no answer, so Graph may have
	// carried it out. lastChance: a wait was already cut short for a last
	// attempt before the deadline.
	var unanswered, lastChance bool
	for attempt := 0; ; attempt++ {
		res, wait, noAnswer, err := c.attempt(ctx, op, callID, method, target, payload, attempt)
		if err == nil {
			return res, nil
		}
		unanswered = unanswered || noAnswer
		var apiErr *APIError
		isAPIErr := errors.As(err, &apiErr)
		switch {
		case op == OpHangup && isAPIErr && apiErr.StatusCode == http.StatusNotFound:
			// The call is gone: ended as asked, whoever ended it.
			return result{}, fmt.Errorf("%w: %w", ErrAlreadyDone, err)
		case unanswered && isAPIErr && apiErr.StatusCode == http.StatusConflict:
			// A 409 with no unanswered attempt before it stays a failure:
			// someone else acted on the call.
			return result{}, fmt.Errorf("%w: %w", ErrAlreadyDone, err)
		case op == OpPlayPrompt && noAnswer:
			return result{}, fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
		}
		if wait < 0 {
			return result{}, err
		}
		if wait == 0 {
			wait = c.backoffDelay(attempt)
		}
		if dl, ok := ctx.Deadline(); ok {
			if left := time.Until(dl); wait >= left {
				if lastChance || left <= 0 {
					return result{}, fmt.Errorf("graph %s of call %s: deadline reached after %d attempts: %w", op, callID, attempt+1, errors.Join(context.DeadlineExceeded, err))
				}
				wait, lastChance = max(left-lead, 0), true
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return result{}, fmt.Errorf("graph %s of call %s: gave up after %d attempts: %w", op, callID, attempt+1, errors.Join(ctx.Err(), err))
		case <-t.C:
		}
	}
}

// backoffDelay is the jittered exponential delay before retry n+1: uniform
// in [d/2, d] with d = base·2ⁿ capped at max, so that receivers that failed
// together do not retry together.
func (c *Client) backoffDelay(n int) time.Duration {
	d := c.backoffMax
	if n < 20 {
		d = min(c.backoff<<n, c.backoffMax)
	}
	return d/2 + rand.N(d/2+1)
}

// result is what a successful request answered: the body (of playPrompt
// only, the one whose body is read) and the Location header.
type result struct {
	body     []byte
	location string
}

// attempt sends one request. It returns the result on 2xx; otherwise the
// error and how long to wait before retrying: -1 for a final error, 0 for
// the default backoff, or the server's Retry-After. noAnswer says the
// request was sent and no answer came (a timeout or a connection error).
func (c *Client) attempt(ctx context.Context, op, callID, method, target string, payload []byte, n int) (res result, wait time.Duration, noAnswer bool, err error) {
	if err := ctx.Err(); err != nil {
		return res, -1, false, fmt.Errorf("graph %s of call %s: %w", op, callID, err)
	}
	actx, cancel := context.WithTimeout(ctx, c.attemptTTL)
	defer cancel()
	authorization, err := c.authorization(actx)
	if err != nil {
		// Token failures are usually transient (authority unreachable) or
		// wrong configuration; both are bounded by the call's deadline.
		c.log.Warn("graph token request failed", "operation", op, "callId", callID, "attempt", n+1, "error", err)
		return res, 0, false, fmt.Errorf("graph %s of call %s: get token: %w", op, callID, err)
	}
	clientRequestID := uuid.NewString()
	var reqBody io.Reader
	if payload != nil {
		reqBody = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(actx, method, target, reqBody)
	if err != nil {
		return res, -1, false, fmt.Errorf("graph %s of call %s: build request: %w", op, callID, err)
	}
	// Keys in canonical form, as Header.Set would make them.
	req.Header = http.Header{
		"Authorization":            {authorization},
		"Accept":                   {"application/json"},
		"Client-Request-Id":        {clientRequestID},
		"Return-Client-Request-Id": {"true"},
	}
	if payload != nil {
		req.Header["Content-Type"] = []string{"application/json"}
	}

	resp, err := c.http.Do(req)
	if err != nil {
		if c.onAttempt != nil {
			c.onAttempt(op, 0, err)
		}
		c.log.Warn("graph request failed", "operation", op, "callId", callID, "attempt", n+1,
			"clientRequestId", clientRequestID, "error", err)
		return res, 0, true, fmt.Errorf("graph %s of call %s: %w", op, callID, err)
	}
	defer resp.Body.Close()
	if c.onAttempt != nil {
		c.onAttempt(op, resp.StatusCode, nil)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		res.location = resp.Header.Get("Location")
		if op == OpPlayPrompt {
			// The operation's id; a body cut short by a lost connection
			// only loses the id, not the operation.
			res.body, _ = io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		}
		// Drain so the connection is reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		return res, 0, false, nil
	}

	if resp.StatusCode == http.StatusUnauthorized {
		// The token was revoked or rotated: the next request gets a new one.
		c.token.Store(nil)
	}
	apiErr := parseAPIError(resp, op, callID, clientRequestID)
	if !retryable(resp.StatusCode) {
		// Final: the caller logs the error, which names the request-id.
		return res, -1, false, apiErr
	}
	c.log.Warn("graph request refused; retrying", "operation", op, "callId", callID, "attempt", n+1,
		"status", resp.StatusCode, "code", apiErr.Code, "requestId", apiErr.RequestID,
		"clientRequestId", clientRequestID)
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			return res, d, false, apiErr
		}
	}
	return res, 0, false, apiErr
}

// authorization is the Authorization header value for the current token.
func (c *Client) authorization(ctx context.Context) (string, error) {
	if t := c.token.Load(); t != nil && time.Now().Before(t.refreshAt) {
		return t.header, nil
	}
	at, err := c.cred.GetToken(ctx, azpolicy.TokenRequestOptions{Scopes: []string{c.scope}})
	if err != nil {
		return "", err
	}
	refresh := at.ExpiresOn.Add(-tokenRefreshMargin)
	if !at.RefreshOn.IsZero() && at.RefreshOn.Before(refresh) {
		refresh = at.RefreshOn
	}
	t := &cachedToken{header: "Bearer " + at.Token, refreshAt: refresh}
	c.token.Store(t)
	return t.header, nil
}

// errorBodies hold error responses while they are decoded; the decoded
// strings are copies. They are at most maxErrorBody (plus bytes.MinRead).
var errorBodies = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func parseAPIError(resp *http.Response, op, callID, clientRequestID string) *APIError {
	e := &APIError{
		Operation:       op,
		CallID:          callID,
		StatusCode:      resp.StatusCode,
		RequestID:       resp.Header.Get("request-id"),
		ClientRequestID: clientRequestID,
	}
	buf := errorBodies.Get().(*bytes.Buffer)
	defer errorBodies.Put(buf)
	buf.Reset()
	_, _ = buf.ReadFrom(io.LimitReader(resp.Body, maxErrorBody))
	var body ErrorBody
	if json.Unmarshal(buf.Bytes(), &body) == nil {
		e.Code = body.Error.Code
		e.Message = body.Error.Message
		if ie := body.Error.InnerError; ie != nil && e.RequestID == "" {
			e.RequestID = ie.RequestID
		}
	}
	return e
}

// parseRetryAfter reads Retry-After as delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.Atoi(v); err == nil {
		if secs < 0 {
			return 0, false
		}
		return time.Duration(secs) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}
