package emulator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/wav"
)

// What a bot does with an answered call: play prompts and hang up; and what
// the caller does: hang up.

// Call actions besides reject, redirect and answer.
const (
	actionPlayPrompt = "playPrompt"
	actionHangup     = "hangup"
)

// The resultInfo of a playPromptOperation, as Graph's media platform
// reports them.
var (
	promptPlayed     = resultInfo(200, 0, "Action completed successfully.")
	promptNotFetched = resultInfo(400, 8536, "Action failed, file could not be downloaded.")
	promptBadFormat  = resultInfo(400, 8535, "Action failed, file format is invalid.")
	promptCanceled   = resultInfo(400, 8508, "Action failed, the operation was canceled.")
)

// The resultInfo of a call ended by a hang-up. Graph's call-delete
// notifications carry code and subcode as strings.
var (
	endedByBotResult    = map[string]any{"@odata.type": graph.ODataResultInfo, "code": "200", "subcode": "7000", "message": "The conversation has ended by bot."}
	endedByCallerResult = map[string]any{"@odata.type": graph.ODataResultInfo, "code": "200", "subcode": "4097", "message": "Call ended by the other participant in the call."}
)

func resultInfo(code, subcode int, msg string) map[string]any {
	return map[string]any{"@odata.type": graph.ODataResultInfo, "code": code, "subcode": subcode, "message": msg}
}

// etags numbers the @odata.etag of resources in notifications.
var etags atomic.Int64

func etag() string { return `W/"` + strconv.FormatInt(5445+etags.Add(1), 10) + `"` }

// operation is a running playPromptOperation.
type operation struct {
	id            string
	clientContext string
	uris          []string
	// cancel stops the playing when the call ends; done is closed once
	// the operation's notification was sent (or could not be).
	cancel context.CancelFunc
	done   chan struct{}
}

// playPromptBody is Graph's playPrompt request.
type playPromptBody struct {
	ClientContext string              `json:"clientContext"`
	Prompts       []graph.MediaPrompt `json:"prompts"`
}

// authorizeCallAction runs the checks every action on a call starts with,
// in Graph's order: token (401), the application permission the action
// needs (403, graph.ActionPermissions), call (404), ownership (403). On a
// failure it has answered; fail answers later failures the same way.
func (s *Server) authorizeCallAction(w http.ResponseWriter, r *http.Request, kind string, perm graph.CallAction) (c *call, fail func(status int, code, msg string), ok bool) {
	id := r.PathValue("id")
	claims, authErr := s.authenticate(r)
	c = s.lookupCall(id)
	fail = func(status int, code, msg string) {
		if c != nil {
			s.addEvent(c, kind, status, msg)
		}
		s.log.Info("graph action refused", "action", kind, "callId", id, "status", status, "code", code, "message", msg)
		writeGraphError(w, r, status, code, msg)
	}
	if authErr != nil {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="", authorization_uri="%s/common/oauth2/authorize", client_id="%s"`, s.baseURL(r), graphAppID))
		fail(http.StatusUnauthorized, codeInvalidToken, authErr.Error())
		return nil, nil, false
	}
	if req, known := graph.ActionPermissions(perm); known && !req.SatisfiedBy(claims.Roles) {
		fail(http.StatusForbidden, codeAccessDenied, fmt.Sprintf("Application %s is not authorized to %s calls: the access token's roles hold none of %s.",
			claims.AppID, kind, strings.Join(req.AnyOf, ", ")))
		return nil, nil, false
	}
	if c == nil {
		fail(http.StatusNotFound, codeNotFound, fmt.Sprintf("Call %s was not found.", id))
		return nil, nil, false
	}
	if !strings.EqualFold(claims.AppID, c.appID) || !strings.EqualFold(claims.TenantID, c.tenantID) {
		fail(http.StatusForbidden, codeAccessDenied, fmt.Sprintf("Application %s of tenant %s is not allowed to act on call %s.", claims.AppID, claims.TenantID, id))
		return nil, nil, false
	}
	return c, fail, true
}

// handlePlayPrompt serves POST …/calls/{id}/playPrompt: 200 with the
// playPromptOperation (running) and its Location; the prompts are fetched
// and played in the background, and the operation's end is notified.
func (s *Server) handlePlayPrompt(w http.ResponseWriter, r *http.Request) {
	c, fail, ok := s.authorizeCallAction(w, r, actionPlayPrompt, graph.CallPlayPrompt)
	if !ok {
		return
	}
	var b playPromptBody
	if err := decodeJSON(w, r, &b, false, false); err != nil {
		fail(http.StatusBadRequest, codeBadRequest, graphBodyError(err).Error())
		return
	}
	if err := checkPlayPrompt(b); err != nil {
		fail(http.StatusBadRequest, codeBadRequest, err.Error())
		return
	}
	op := &operation{id: uuid.NewString(), clientContext: b.ClientContext, done: make(chan struct{})}
	for _, p := range b.Prompts {
		op.uris = append(op.uris, p.MediaInfo.URI)
	}
	// The operation starts once its answer is written, so that the bot
	// has the operation's id before its notification.
	answered := make(chan struct{})
	s.mu.Lock()
	switch {
	case !c.live():
		s.mu.Unlock()
		fail(http.StatusNotFound, codeNotFound, fmt.Sprintf("Call %s was not found.", c.id))
		return
	case !strings.EqualFold(c.rec.State, graph.StateEstablished):
		state := c.rec.State
		s.mu.Unlock()
		fail(http.StatusConflict, codeConflict, fmt.Sprintf("Cannot play a prompt on call %s: the call is %s; prompts play on an established call.", c.id, state))
		return
	case s.closed:
		s.mu.Unlock()
		fail(http.StatusServiceUnavailable, "serviceNotAvailable", "The emulator is shutting down.")
		return
	}
	var ctx context.Context
	ctx, op.cancel = context.WithCancel(s.ctx)
	c.ops[op.id] = op
	c.rec.History = append(c.rec.History, Event{At: time.Now(), Event: actionPlayPrompt, Status: http.StatusOK, Detail: op.id})
	s.goLocked(func() {
		select {
		case <-answered:
		case <-ctx.Done():
		}
		s.play(ctx, c, op)
	})
	s.mu.Unlock()
	defer close(answered)

	version, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	w.Header().Set("Location", s.baseURL(r)+"/"+version+"/communications/calls/"+url.PathEscape(c.id)+"/operations/"+op.id)
	writeJSON(w, http.StatusOK, graph.PlayPromptOperation{
		ODataType:     graph.ODataPlayPromptOperation,
		ID:            op.id,
		Status:        graph.OperationRunning,
		ClientContext: op.clientContext,
	})
}

// checkPlayPrompt validates a playPrompt body as Graph documents it.
func checkPlayPrompt(b playPromptBody) error {
	if n := len(b.Prompts); n < 1 || n > graph.MaxPrompts {
		return fmt.Errorf("prompts must hold 1 to %d mediaPrompt, got %d.", graph.MaxPrompts, n)
	}
	if n := utf8.RuneCountInString(b.ClientContext); n > graph.MaxClientContext {
		return fmt.Errorf("clientContext is %d characters; at most %d are allowed.", n, graph.MaxClientContext)
	}
	for i, p := range b.Prompts {
		if p.MediaInfo.URI == "" {
			return fmt.Errorf("prompts[%d].mediaInfo.uri is required.", i)
		}
		if u, err := url.Parse(p.MediaInfo.URI); err != nil || u.Host == "" {
			return fmt.Errorf("prompts[%d].mediaInfo.uri %q is not an absolute URL.", i, p.MediaInfo.URI)
		}
	}
	return nil
}

// play fetches and plays an operation's prompts in turn, recording each,
// then notifies the operation's end: completed, or failed at the first
// prompt that cannot be fetched or played, or when the call ends.
func (s *Server) play(ctx context.Context, c *call, op *operation) {
	defer close(op.done)
	defer op.cancel()
	status, reason, result := graph.OperationCompleted, graph.CompletionCompletedSuccessfully, promptPlayed
	for _, uri := range op.uris {
		i := s.startPrompt(c, PromptRecord{URI: uri, OperationID: op.id, Status: PromptRunning})
		buf, err := s.fetchPrompt(ctx, uri)
		if err != nil {
			if ctx.Err() != nil {
				status, reason, result = graph.OperationFailed, graph.CompletionMediaOperationCanceled, promptCanceled
				s.endPrompt(c, i, "", 0, PromptFailed, "the call ended while the prompt was fetched")
				break
			}
			status, reason, result = graph.OperationFailed, graph.CompletionUnknown, promptNotFetched
			s.endPrompt(c, i, "", 0, PromptFailed, err.Error())
			break
		}
		sum := sha256.Sum256(buf.Bytes())
		digest := hex.EncodeToString(sum[:])
		info, err := wav.Check(buf.Bytes())
		promptBuffers.Put(buf)
		if err != nil {
			status, reason, result = graph.OperationFailed, graph.CompletionUnknown, promptBadFormat
			s.endPrompt(c, i, digest, 0, PromptFailed, "not a prompt Graph plays: "+err.Error())
			break
		}
		s.setPromptFile(c, i, digest, info.Duration)
		t := time.NewTimer(time.Duration(float64(info.Duration) / s.cfg.PromptSpeed))
		select {
		case <-t.C:
			s.endPrompt(c, i, digest, info.Duration, PromptCompleted, "")
			continue
		case <-ctx.Done():
			t.Stop()
		}
		status, reason, result = graph.OperationFailed, graph.CompletionMediaOperationCanceled, promptCanceled
		s.endPrompt(c, i, digest, info.Duration, PromptFailed, "the call ended while the prompt played")
		break
	}
	s.log.Info("prompt operation ended", "callId", c.id, "operationId", op.id, "status", status)
	// Running until its notification was sent, so that a hang-up's
	// notifications follow it.
	defer func() {
		s.mu.Lock()
		delete(c.ops, op.id)
		s.mu.Unlock()
	}()
	if c.silent {
		return
	}
	resource := "/communications/calls/" + c.id + "/operations/" + op.id
	data := map[string]any{
		"@odata.type":      graph.ODataPlayPromptOperation,
		"@odata.id":        resource,
		"@odata.etag":      etag(),
		"resultInfo":       result,
		"clientContext":    op.clientContext,
		"status":           status,
		"completionReason": reason,
	}
	body, err := json.Marshal(commsNotifications{
		ODataType: graph.ODataCommsNotifications,
		Value: []commsNotification{{
			ODataType:    graph.ODataCommsNotification,
			ChangeType:   graph.ChangeDeleted,
			ResourceURL:  resource,
			ResourceData: data,
		}},
	})
	if err != nil {
		s.log.Error("encoding notification", "callId", c.id, "err", err)
		return
	}
	s.deliver(s.ctx, c, EventOperationNotification, body)
}

// promptBuffers hold fetched prompts while they are checked. A burst of
// calls allocated a prompt's size for each, and the collections that
// garbage set off held up the emulator's serving.
var promptBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// fetchPrompt GETs a prompt over https, as Graph does: plain http (also
// when redirected to), an unreachable host or a non-2xx answer fail. The
// body is in a buffer of promptBuffers, for the caller to put back.
func (s *Server) fetchPrompt(ctx context.Context, uri string) (*bytes.Buffer, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("prompt uri: %w", err)
	}
	if !strings.EqualFold(u.Scheme, "https") {
		return nil, fmt.Errorf("prompt uri %q is not https: Graph fetches prompts over https only", uri)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, fmt.Errorf("prompt request: %w", err)
	}
	req.Header.Set("User-Agent", "callguard-graph-emulator")
	resp, err := s.promptClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching the prompt: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("fetching the prompt: HTTP %d", resp.StatusCode)
	}
	// Sized from Content-Length when it is within bounds, rather than
	// grown as it comes (the limit holds whatever the header says).
	body := promptBuffers.Get().(*bytes.Buffer)
	body.Reset()
	if n := resp.ContentLength; n > 0 && n <= wav.MaxSize {
		body.Grow(int(n) + bytes.MinRead)
	}
	if _, err := body.ReadFrom(io.LimitReader(resp.Body, wav.MaxSize+1)); err != nil {
		promptBuffers.Put(body)
		return nil, fmt.Errorf("reading the prompt: %w", err)
	}
	return body, nil
}

// startPrompt records a prompt starting and returns its index.
func (s *Server) startPrompt(c *call, p PromptRecord) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	p.StartedAt = time.Now()
	c.rec.Prompts = append(c.rec.Prompts, p)
	return len(c.rec.Prompts) - 1
}

// setPromptFile records what was fetched for a prompt.
func (s *Server) setPromptFile(c *call, i int, digest string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c.rec.Prompts[i].SHA256, c.rec.Prompts[i].DurationMs = digest, d.Milliseconds()
}

// endPrompt records a prompt's end.
func (s *Server) endPrompt(c *call, i int, digest string, d time.Duration, status, detail string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	p := &c.rec.Prompts[i]
	p.SHA256, p.DurationMs, p.Status, p.Detail, p.CompletedAt = digest, d.Milliseconds(), status, detail, &now
}

// handleHangup serves DELETE …/calls/{id}: 204, then the call's
// terminating and terminated notifications; 404 for a call that already
// ended.
func (s *Server) handleHangup(w http.ResponseWriter, r *http.Request) {
	received := time.Now()
	c, fail, ok := s.authorizeCallAction(w, r, actionHangup, graph.CallHangUp)
	if !ok {
		return
	}
	if err := s.end(c, EndedByBot, received, http.StatusNoContent); err != nil {
		fail(http.StatusNotFound, codeNotFound, fmt.Sprintf("Call %s was not found.", c.id))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleCallerHangup serves POST /emulator/calls/{id}/hangup: the caller
// hangs up. 204; 404 for an unknown call, 409 for one that already ended.
func (s *Server) handleCallerHangup(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.CallerHangup(id); err != nil {
		status, code := http.StatusConflict, codeConflict
		if errors.Is(err, ErrNoCall) {
			status, code = http.StatusNotFound, codeNotFound
		}
		writeGraphError(w, r, status, code, err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// ErrNoCall is CallerHangup's error for an unknown call.
var ErrNoCall = errors.New("no such call")

// CallerHangup has the caller hang up a call, as POST
// /emulator/calls/{id}/hangup does: it ends at once, a prompt playing on it
// fails, and the bot is notified that the call terminated.
func (s *Server) CallerHangup(id string) error {
	c := s.lookupCall(id)
	if c == nil {
		return fmt.Errorf("call %s: %w", id, ErrNoCall)
	}
	return s.end(c, EndedByCaller, time.Now(), 0)
}

// end ends a live call: recorded as ended by who, its running operations
// stopped (each notifies its failure), then the terminated notification
// sent; a bot's hang-up is preceded by terminating, as on Graph. status is
// the answer recorded for the bot's DELETE.
func (s *Server) end(c *call, who string, at time.Time, status int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !c.live() {
		return fmt.Errorf("call %s already ended (%s)", c.id, c.rec.State)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	c.rec.State, c.rec.EndedBy, c.rec.EndedAt = graph.StateTerminated, who, at
	event, result := actionHangup, endedByBotResult
	if who == EndedByCaller {
		event, result = EventCallerHangup, endedByCallerResult
	}
	c.rec.History = append(c.rec.History, Event{At: time.Now(), Event: event, Status: status})
	s.log.Info("call ended", "callId", c.id, "endedBy", who)
	var running []*operation
	for _, op := range c.ops {
		op.cancel()
		running = append(running, op)
	}
	if c.silent {
		return nil
	}
	s.goLocked(func() {
		for _, op := range running {
			<-op.done
		}
		if who == EndedByBot {
			s.deliver(s.ctx, c, EventUpdatedNotification, callStateBody(c, graph.ChangeUpdated, "terminating", nil))
		}
		s.deliver(s.ctx, c, EventDeletedNotification, callStateBody(c, graph.ChangeDeleted, graph.StateTerminated, result))
	})
	return nil
}

// promptConnsPerHost bounds the connections prompts are fetched on from one
// server. A burst of answered calls would otherwise open (and
// TLS-handshake) one per call at once, starving the emulator's own serving
// of CPU; fetches wait for a connection instead, and reuse it.
const promptConnsPerHost = 8

// newPromptClient is the callback client, trusting the same roots, that
// follows redirects to https URLs only, on connections of its own
// (promptConnsPerHost).
func newPromptClient(callbacks *http.Client) *http.Client {
	c := *callbacks
	base := c.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	if tr, ok := base.(*http.Transport); ok {
		tr = tr.Clone()
		tr.MaxConnsPerHost = promptConnsPerHost
		tr.MaxIdleConnsPerHost = max(tr.MaxIdleConnsPerHost, promptConnsPerHost)
		c.Transport = tr
	}
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if !strings.EqualFold(req.URL.Scheme, "https") {
			return fmt.Errorf("redirected to %s: Graph fetches prompts over https only", req.URL.Redacted())
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	return &c
}
