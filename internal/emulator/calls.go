package emulator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/callguard/callguard/internal/graph"
)

// Errors of PlaceCall; the control API answers them with 400 and 409.
var (
	ErrInvalidCall = errors.New("invalid call")
	ErrCallExists  = errors.New("call already exists")
)

// History event names.
const (
	EventLegacyNotification  = "notification.legacy"
	EventCreatedNotification = "notification.created"
	EventUpdatedNotification = "notification.updated"
	EventDeletedNotification = "notification.deleted"
	EventMissed              = "missed"
	// EventOperationNotification is the notification of an operation's
	// end (a playPromptOperation).
	EventOperationNotification = "notification.operation"
	// EventCallerHangup is the caller hanging up (control API).
	EventCallerHangup = "hangup.caller"
	// Action attempts are recorded under the action's name: "reject",
	// "redirect", "answer", "playPrompt" or "hangup" (DELETE of the call),
	// with the status Graph answered.
)

// Who ended a call (CallRecord.EndedBy).
const (
	EndedByBot    = "bot"
	EndedByCaller = "caller"
	EndedByMissed = "missed"
)

// Statuses of a prompt (PromptRecord.Status): Graph's operation statuses.
const (
	PromptRunning   = graph.OperationRunning
	PromptCompleted = graph.OperationCompleted
	PromptFailed    = graph.OperationFailed
)

// PlaceCallRequest is the body of POST /emulator/calls.
type PlaceCallRequest struct {
	AppID string `json:"appId"`
	// TenantID is the tenant the call arrives in, one the bot is registered
	// in (default: its first). Notifications carry it as the tenant claim,
	// and acting on the call needs a token issued by that tenant.
	TenantID string `json:"tenantId,omitempty"`
	// CallbackURI overrides the bot's registered callback for this call.
	CallbackURI string `json:"callbackUri,omitempty"`
	// Source is the caller; nil places an anonymous call (no identity).
	Source              *graph.IdentitySet `json:"source,omitempty"`
	RequestedModalities []string           `json:"requestedModalities,omitempty"`
	// Call holds raw call resource fields merged over the generated ones
	// ("id" picks the call id; "state" other than incoming makes a call
	// nobody can act on).
	Call map[string]any `json:"call,omitempty"`
	// Deliver false registers the call without sending any notification
	// (created, deleted, or the legacy handshake): for load generators
	// that post their own notifications, signed with SignInboundToken, to
	// measure a bot without the emulator signing a token per call. Nil
	// means true.
	Deliver *bool `json:"deliver,omitempty"`
}

// placeCallBody is PlaceCallRequest as received over HTTP: the source stays
// raw so fields the wire types do not model still reach the bot.
type placeCallBody struct {
	AppID               string          `json:"appId"`
	TenantID            string          `json:"tenantId"`
	CallbackURI         string          `json:"callbackUri"`
	Source              json.RawMessage `json:"source"`
	RequestedModalities []string        `json:"requestedModalities"`
	Call                map[string]any  `json:"call"`
	Deliver             *bool           `json:"deliver"`
}

// Event is one entry of a call's history. Status is an HTTP status: the
// bot's answer to a notification (0 when it could not be delivered) or the
// emulator's answer to an action; 0 for "missed".
type Event struct {
	At     time.Time `json:"at"`
	Event  string    `json:"event"`
	Status int       `json:"status"`
	Detail string    `json:"detail,omitempty"`
}

// PromptRecord is one prompt a playPrompt played, or tried to.
type PromptRecord struct {
	URI         string `json:"uri"`
	OperationID string `json:"operationId"`
	// SHA256 is the hex digest of the bytes fetched ("" when none were).
	SHA256     string    `json:"sha256"`
	DurationMs int64     `json:"durationMs"`
	StartedAt  time.Time `json:"startedAt"`
	// CompletedAt is nil while the prompt plays.
	CompletedAt *time.Time `json:"completedAt"`
	// Status is running, completed or failed.
	Status string `json:"status"`
	// Detail says why a prompt failed.
	Detail string `json:"detail,omitempty"`
}

// CallRecord is what the emulator knows of a call: GET /emulator/calls/{id}.
type CallRecord struct {
	ID       string `json:"id"`
	AppID    string `json:"appId"`
	TenantID string `json:"tenantId"`
	// CallbackURI is where the call's notifications go: the placement's
	// (or the bot's registered callback), then an answer's callbackUri.
	CallbackURI string `json:"callbackUri"`
	// State is incoming until acted on, then terminated (reject, missed,
	// hang-up), redirecting (redirect) or establishing and established
	// (answer).
	State string `json:"state"`
	// Action is reject, redirect, answer or "" (none yet, or missed).
	Action          string                            `json:"action"`
	Reason          string                            `json:"reason"`
	RedirectTargets []graph.InvitationParticipantInfo `json:"redirectTargets"`
	RedirectTimeout int32                             `json:"redirectTimeout,omitzero"`
	Missed          bool                              `json:"missed"`
	PlacedAt        time.Time                         `json:"placedAt"`
	// NotifiedAt is when the Graph-format created notification was sent
	// (JSON: null until then).
	NotifiedAt time.Time `json:"-"`
	// ActedAt is when the successful action request arrived (JSON: null
	// until then).
	ActedAt time.Time `json:"-"`
	// Latency is ActedAt - NotifiedAt (JSON: nanoseconds).
	Latency time.Duration `json:"latencyNs,omitzero"`
	// AnsweredAt is when an answer was accepted (JSON: null until then).
	AnsweredAt time.Time `json:"-"`
	// Prompts are those played (or tried) on the call, in the order they
	// started: a prompt played twice shows twice.
	Prompts []PromptRecord `json:"prompts"`
	// EndedBy is bot (reject, redirect, DELETE), caller (hung up), missed,
	// or "" while the call lasts.
	EndedBy string `json:"endedBy"`
	// EndedAt is when the call ended (JSON: null until then).
	EndedAt time.Time `json:"-"`
	History []Event   `json:"history"`
}

// MarshalJSON writes notifiedAt, actedAt, answeredAt and endedAt as null
// rather than leaving them out: the Contract lists them, and tools index
// them directly.
func (r CallRecord) MarshalJSON() ([]byte, error) {
	type plain CallRecord // without this method
	optional := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		return &t
	}
	return json.Marshal(struct {
		plain
		NotifiedAt *time.Time `json:"notifiedAt"`
		ActedAt    *time.Time `json:"actedAt"`
		AnsweredAt *time.Time `json:"answeredAt"`
		EndedAt    *time.Time `json:"endedAt"`
	}{plain(r), optional(r.NotifiedAt), optional(r.ActedAt), optional(r.AnsweredAt), optional(r.EndedAt)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *CallRecord) UnmarshalJSON(data []byte) error {
	type plain CallRecord
	var v struct {
		plain
		NotifiedAt *time.Time `json:"notifiedAt"`
		ActedAt    *time.Time `json:"actedAt"`
		AnsweredAt *time.Time `json:"answeredAt"`
		EndedAt    *time.Time `json:"endedAt"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	*r = CallRecord(v.plain)
	for _, f := range []struct {
		src *time.Time
		dst *time.Time
	}{{v.NotifiedAt, &r.NotifiedAt}, {v.ActedAt, &r.ActedAt}, {v.AnsweredAt, &r.AnsweredAt}, {v.EndedAt, &r.EndedAt}} {
		if f.src != nil {
			*f.dst = *f.src
		}
	}
	return nil
}

// call is a call's live state, guarded by Server.mu.
type call struct {
	id, appID, tenantID string
	callbackURI         string
	legacy              bool
	silent              bool           // no notifications: see PlaceCallRequest.Deliver
	resource            map[string]any // immutable once placed
	timer               *time.Timer
	rec                 CallRecord
	// ops are the call's running playPrompt operations.
	ops map[string]*operation
}

// live reports whether the call has not ended: incoming, or answered and
// not yet hung up. The caller holds Server.mu.
func (c *call) live() bool {
	return c.rec.EndedBy == "" && !strings.EqualFold(c.rec.State, graph.StateTerminated) &&
		!strings.EqualFold(c.rec.State, graph.StateRedirecting)
}

// commsNotifications is the Graph notification body; resourceData is the
// call resource as placed (raw fields included), which graph.Notification
// cannot carry.
type commsNotifications struct {
	ODataType string              `json:"@odata.type"`
	Value     []commsNotification `json:"value"`
}

type commsNotification struct {
	ODataType    string         `json:"@odata.type"`
	ChangeType   string         `json:"changeType"`
	ResourceURL  string         `json:"resourceUrl"`
	ResourceData map[string]any `json:"resourceData"`
}

// legacyConversation is the older Skype calling format: a conversation
// object without Graph's "value" array.
type legacyConversation struct {
	ID                     string              `json:"id"`
	AppID                  string              `json:"appId"`
	CallState              string              `json:"callState"`
	Participants           []legacyParticipant `json:"participants"`
	PresentedModalityTypes []string            `json:"presentedModalityTypes"`
	IsMultiparty           bool                `json:"isMultiparty"`
}

type legacyParticipant struct {
	Identity    string `json:"identity"`
	DisplayName string `json:"displayName,omitempty"`
	Originator  bool   `json:"originator"`
}

// PlaceCall places a call to a bot, as POST /emulator/calls does: it sends
// the created notification (after the legacy handshake if the bot wants one)
// and returns once the bot answered it or the delivery failed; the outcome
// is in the call's history. Errors wrap ErrInvalidCall or ErrCallExists.
func (s *Server) PlaceCall(ctx context.Context, req PlaceCallRequest) (*graph.Call, error) {
	var source json.RawMessage
	if req.Source != nil {
		raw, err := json.Marshal(req.Source)
		if err != nil {
			return nil, fmt.Errorf("%w: source: %w", ErrInvalidCall, err)
		}
		source = raw
	}
	res, err := s.placeCall(ctx, placeCallBody{
		AppID:               req.AppID,
		TenantID:            req.TenantID,
		CallbackURI:         req.CallbackURI,
		Source:              source,
		RequestedModalities: req.RequestedModalities,
		Call:                req.Call,
		Deliver:             req.Deliver,
	})
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(res)
	if err != nil {
		return nil, fmt.Errorf("encoding call: %w", err)
	}
	c, err := graph.DecodeCall(raw)
	if err != nil {
		return nil, fmt.Errorf("decoding call: %w", err)
	}
	return c, nil
}

func (s *Server) placeCall(ctx context.Context, req placeCallBody) (map[string]any, error) {
	c, err := s.newCall(req)
	if err != nil {
		return nil, err
	}
	s.log.Info("call placed", "callId", c.id, "appId", c.appID, "callback", c.callbackURI, "state", c.rec.State, "deliver", !c.silent)
	if c.silent {
		return c.resource, nil
	}
	if c.legacy && !s.legacyAcknowledged(c.callbackURI) {
		body, err := json.Marshal(legacyBody(c))
		if err != nil {
			return nil, fmt.Errorf("encoding legacy notification: %w", err)
		}
		if status := s.deliver(ctx, c, EventLegacyNotification, body); status != http.StatusNoContent {
			// Graph only moves to its own format once the bot answered 204.
			return c.resource, nil
		}
		s.mu.Lock()
		s.legacyDone[c.callbackURI] = true
		s.mu.Unlock()
	}
	body, err := json.Marshal(notification(graph.ChangeCreated, c.resource))
	if err != nil {
		return nil, fmt.Errorf("encoding notification: %w", err)
	}
	s.mu.Lock()
	c.rec.NotifiedAt = time.Now()
	s.mu.Unlock()
	s.deliver(ctx, c, EventCreatedNotification, body)
	return c.resource, nil
}

// newCall validates a placement, builds the call resource and registers the
// call with its missed-call timer.
func (s *Server) newCall(req placeCallBody) (*call, error) {
	if req.AppID == "" {
		return nil, fmt.Errorf("%w: appId is required", ErrInvalidCall)
	}
	b := s.bots[strings.ToLower(req.AppID)]
	if b == nil {
		return nil, fmt.Errorf("%w: appId %s is not a registered bot", ErrInvalidCall, req.AppID)
	}
	tenant := b.TenantID
	if req.TenantID != "" {
		if tenant = b.tenant(req.TenantID); tenant == "" {
			return nil, fmt.Errorf("%w: tenantId %s: bot %s is not registered in that tenant", ErrInvalidCall, req.TenantID, b.AppID)
		}
	}
	callback := req.CallbackURI
	if callback == "" {
		callback = b.Callback
	}
	if callback == "" {
		return nil, fmt.Errorf("%w: callbackUri is required: bot %s has no registered callback", ErrInvalidCall, b.AppID)
	}
	if err := checkCallbackURL(callback); err != nil {
		return nil, fmt.Errorf("%w: callbackUri: %w", ErrInvalidCall, err)
	}
	mods := req.RequestedModalities
	if len(mods) == 0 {
		mods = []string{"audio"}
	}
	for _, m := range mods {
		if !slices.Contains(modalities, m) {
			return nil, fmt.Errorf("%w: requestedModalities: %q is not one of %s", ErrInvalidCall, m, strings.Join(modalities, ", "))
		}
	}
	source := map[string]any{"@odata.type": graph.ODataParticipantInfo}
	if len(req.Source) > 0 && string(req.Source) != "null" {
		var identity map[string]any
		if err := json.Unmarshal(req.Source, &identity); err != nil {
			return nil, fmt.Errorf("%w: source must be an identitySet object: %w", ErrInvalidCall, err)
		}
		if _, ok := identity["@odata.type"]; !ok {
			identity["@odata.type"] = graph.ODataIdentitySet
		}
		if !graph.CallerIdentityPermissions().SatisfiedBy(b.roles) {
			identity = encryptedIdentity(req.Source)
		}
		source["identity"] = identity
	}
	id := uuid.NewString()
	if v, ok := req.Call["id"]; ok {
		sid, isString := v.(string)
		if !isString || sid == "" || len(sid) > 128 || strings.ContainsAny(sid, "/?#%") {
			return nil, fmt.Errorf("%w: call.id must be a non-empty string of at most 128 characters without / ? # %%", ErrInvalidCall)
		}
		id = sid
	}
	res := map[string]any{
		"@odata.type":     graph.ODataCall,
		"@odata.id":       "/communications/calls/" + id,
		"id":              id,
		"state":           graph.StateIncoming,
		"direction":       "incoming",
		"callbackUri":     callback,
		"callChainId":     uuid.NewString(),
		"tenantId":        tenant,
		"myParticipantId": uuid.NewString(),
		"source":          source,
		"targets": []any{map[string]any{
			"@odata.type": graph.ODataInvitationInfo,
			"identity": map[string]any{
				"@odata.type": graph.ODataIdentitySet,
				"application": map[string]any{"@odata.type": graph.ODataIdentity, "id": b.AppID},
			},
		}},
		"requestedModalities": mods,
	}
	maps.Copy(res, req.Call)
	state, ok := res["state"].(string)
	if !ok || state == "" {
		return nil, fmt.Errorf("%w: call.state must be a non-empty string", ErrInvalidCall)
	}
	// The merged resource must still be a call the bot can decode.
	raw, err := json.Marshal(res)
	if err != nil {
		return nil, fmt.Errorf("%w: call: %w", ErrInvalidCall, err)
	}
	if _, err := graph.DecodeCall(raw); err != nil {
		return nil, fmt.Errorf("%w: call: %w", ErrInvalidCall, err)
	}

	c := &call{
		id:          id,
		appID:       b.AppID,
		tenantID:    tenant,
		callbackURI: callback,
		legacy:      b.Legacy,
		silent:      req.Deliver != nil && !*req.Deliver,
		resource:    res,
		rec: CallRecord{
			ID:          id,
			AppID:       b.AppID,
			TenantID:    tenant,
			CallbackURI: callback,
			State:       state,
			PlacedAt:    time.Now(),
			Prompts:     []PromptRecord{},
			History:     []Event{},
		},
		ops: map[string]*operation{},
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("emulator is closed")
	}
	if _, dup := s.calls[id]; dup {
		return nil, fmt.Errorf("%w: %s", ErrCallExists, id)
	}
	s.calls[id] = c
	s.order = append(s.order, id)
	if strings.EqualFold(state, graph.StateIncoming) {
		c.timer = time.AfterFunc(s.cfg.MissedAfter, func() { s.miss(c) })
	}
	return c, nil
}

func checkCallbackURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("invalid URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an absolute http(s) URL", raw)
	}
	return nil
}

func (s *Server) legacyAcknowledged(callback string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.legacyDone[callback]
}

func notification(changeType string, resource map[string]any) commsNotifications {
	return commsNotifications{
		ODataType: graph.ODataCommsNotifications,
		Value: []commsNotification{{
			ODataType:    graph.ODataCommsNotification,
			ChangeType:   changeType,
			ResourceURL:  "/communications/calls/" + resource["id"].(string),
			ResourceData: resource,
		}},
	}
}

// encryptedIdentity is the caller as Graph sends it to an app with no
// calling permission: an opaque encrypted identity in place of the user,
// phone or application it is (the same caller gives the same id).
func encryptedIdentity(source []byte) map[string]any {
	sum := sha256.Sum256(source)
	return map[string]any{
		"@odata.type": graph.ODataIdentitySet,
		"encrypted":   map[string]any{"@odata.type": graph.ODataIdentity, "id": base64.RawURLEncoding.EncodeToString(sum[:])},
	}
}

func legacyBody(c *call) legacyConversation {
	caller := legacyParticipant{Identity: "anonymous", Originator: true}
	if src, ok := c.resource["source"].(map[string]any); ok {
		if set, ok := src["identity"].(map[string]any); ok {
			caller = legacyCaller(set)
		}
	}
	var mods []string
	switch v := c.resource["requestedModalities"].(type) {
	case []string:
		mods = v
	case []any: // replaced by raw call fields
		for _, m := range v {
			if sm, ok := m.(string); ok {
				mods = append(mods, sm)
			}
		}
	}
	return legacyConversation{
		ID:                     c.id,
		AppID:                  c.appID,
		CallState:              "incoming",
		Participants:           []legacyParticipant{caller, {Identity: "28:" + c.appID}},
		PresentedModalityTypes: mods,
	}
}

// legacyCaller names a caller the Skype way: 4: for phone numbers, 28: for
// applications, 8: for users.
func legacyCaller(set map[string]any) legacyParticipant {
	for _, m := range []struct{ member, prefix string }{{"phone", "4:"}, {"user", "8:orgid:"}, {"guest", "8:"}, {"application", "28:"}, {"applicationInstance", "28:"}} {
		if id, ok := set[m.member].(map[string]any); ok {
			sid, _ := id["id"].(string)
			name, _ := id["displayName"].(string)
			return legacyParticipant{Identity: m.prefix + sid, DisplayName: name, Originator: true}
		}
	}
	return legacyParticipant{Identity: "anonymous", Originator: true}
}

// deliver POSTs a signed notification to the call's callback and records
// the bot's status (0 when it could not be delivered).
func (s *Server) deliver(ctx context.Context, c *call, event string, body []byte) int {
	return s.deliverTo(ctx, c, c.callbackURI, event, body)
}

func (s *Server) deliverTo(ctx context.Context, c *call, callback, event string, body []byte) int {
	ctx, cancel := context.WithTimeout(ctx, deliveryTimeout)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()

	status, err := s.post(ctx, c, callback, body)
	s.countNotification(event, status)
	if err != nil {
		s.addEvent(c, event, status, err.Error())
		s.log.Warn("notification not delivered", "event", event, "callId", c.id, "callback", callback, "err", err)
		return status
	}
	s.addEvent(c, event, status, "")
	s.log.Info("notification sent", "event", event, "callId", c.id, "callback", callback, "status", status)
	return status
}

func (s *Server) post(ctx context.Context, c *call, callback string, body []byte) (int, error) {
	tok, err := s.inboundKeys.current().notificationToken(c.appID, c.tenantID)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, callback, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("building notification request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("client-request-id", uuid.NewString())
	req.Header.Set("User-Agent", "callguard-graph-emulator")
	resp, err := s.callbackClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("posting notification: %w", err)
	}
	defer resp.Body.Close()
	// Drain a little so the connection can be reused; the content is unused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, nil
}

func (s *Server) addEvent(c *call, event string, status int, detail string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c.rec.History = append(c.rec.History, Event{At: time.Now(), Event: event, Status: status, Detail: detail})
}

func (s *Server) lookupCall(id string) *call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[id]
}

// act applies a validated action if the call is still incoming, then sends
// the resulting notification in the background.
func (s *Server) act(c *call, req actionRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !strings.EqualFold(c.rec.State, graph.StateIncoming) {
		what := "the call is " + c.rec.State
		if c.rec.Action != "" {
			what = fmt.Sprintf("the call was already %s", pastTense(c.rec.Action))
		}
		return fmt.Errorf("Cannot %s call %s: %s; only an incoming call can be answered, rejected or redirected.", req.kind, c.id, what)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	rec := &c.rec
	rec.Action = req.kind
	rec.ActedAt = req.receivedAt
	if !rec.NotifiedAt.IsZero() {
		rec.Latency = req.receivedAt.Sub(rec.NotifiedAt)
	}
	var data map[string]any
	switch req.kind {
	case actionReject:
		rec.State, rec.Reason = graph.StateTerminated, req.reason
		data = endedResource(c, graph.ResultInfo{Code: rejectSIPCode(req.reason), Message: "The call was rejected by the application, reason " + req.reason + "."})
	case actionRedirect:
		rec.State, rec.RedirectTargets, rec.RedirectTimeout = graph.StateRedirecting, req.targets, req.timeout
		data = endedResource(c, graph.ResultInfo{Code: 302, Message: "The call was redirected by the application."})
	case actionAnswer:
		rec.State, rec.AnsweredAt = graph.StateEstablishing, req.receivedAt
	}
	if req.kind != actionAnswer {
		rec.EndedBy, rec.EndedAt = EndedByBot, req.receivedAt
	}
	rec.History = append(rec.History, Event{At: time.Now(), Event: req.kind, Status: req.status})
	s.log.Info("call acted on", "callId", c.id, "action", req.kind, "reason", req.reason, "latency", rec.Latency)
	callback := c.callbackURI
	if req.callbackURI != "" {
		callback = req.callbackURI
	}
	if req.kind == actionAnswer {
		// The call's later notifications go to the answer's callbackUri
		// (exactly as given, query included), else where they went.
		c.callbackURI, rec.CallbackURI = callback, callback
		s.goLocked(func() { s.establish(c) })
		return nil
	}
	if c.silent {
		return nil
	}
	s.goLocked(func() {
		body, err := json.Marshal(notification(graph.ChangeDeleted, data))
		if err != nil {
			s.log.Error("encoding notification", "callId", c.id, "err", err)
			return
		}
		s.deliverTo(s.ctx, c, callback, EventDeletedNotification, body)
	})
	return nil
}

// establish moves an answered call to established, notifying the bot of
// establishing and then established as Graph does (an updated notification
// each, the call's state in a resourceData of its own).
func (s *Server) establish(c *call) {
	if !c.silent {
		s.deliver(s.ctx, c, EventUpdatedNotification, callStateBody(c, graph.ChangeUpdated, graph.StateEstablishing, nil))
	}
	s.mu.Lock()
	if !strings.EqualFold(c.rec.State, graph.StateEstablishing) {
		// Hung up meanwhile.
		s.mu.Unlock()
		return
	}
	c.rec.State = graph.StateEstablished
	s.mu.Unlock()
	if !c.silent {
		s.deliver(s.ctx, c, EventUpdatedNotification, callStateBody(c, graph.ChangeUpdated, graph.StateEstablished, nil))
	}
}

// callStateBody is a notification of the call's state, shaped as Graph's
// answer and delete examples record them; result, if set, is the
// resultInfo of a terminated call.
func callStateBody(c *call, change, state string, result map[string]any) []byte {
	data := map[string]any{
		"@odata.type": graph.ODataCall,
		"@odata.id":   "/communications/calls/" + c.id,
		"@odata.etag": etag(),
		"state":       state,
	}
	if result != nil {
		data["resultInfo"] = result
	}
	body, err := json.Marshal(commsNotifications{
		ODataType: graph.ODataCommsNotifications,
		Value: []commsNotification{{
			ODataType:    graph.ODataCommsNotification,
			ChangeType:   change,
			ResourceURL:  "/communications/calls/" + c.id,
			ResourceData: data,
		}},
	})
	if err != nil {
		// Strings and maps of strings: cannot fail.
		panic(fmt.Sprintf("emulator: encoding a call state notification: %v", err))
	}
	return body
}

// miss ends a call nobody acted on, as Graph does after 15 s.
func (s *Server) miss(c *call) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || !strings.EqualFold(c.rec.State, graph.StateIncoming) {
		return
	}
	c.rec.State = graph.StateTerminated
	c.rec.Missed = true
	c.rec.EndedBy, c.rec.EndedAt = EndedByMissed, time.Now()
	c.rec.History = append(c.rec.History, Event{At: time.Now(), Event: EventMissed})
	s.log.Info("call missed", "callId", c.id, "after", s.cfg.MissedAfter)
	if c.silent {
		return
	}
	data := endedResource(c, graph.ResultInfo{Code: 408, Message: "The call was not answered, rejected or redirected in time."})
	s.goLocked(func() {
		body, err := json.Marshal(notification(graph.ChangeDeleted, data))
		if err != nil {
			s.log.Error("encoding notification", "callId", c.id, "err", err)
			return
		}
		s.deliver(s.ctx, c, EventDeletedNotification, body)
	})
}

// endedResource is the resource data of a deleted notification.
func endedResource(c *call, result graph.ResultInfo) map[string]any {
	return map[string]any{
		"@odata.type": graph.ODataCall,
		"@odata.id":   "/communications/calls/" + c.id,
		"id":          c.id,
		"state":       graph.StateTerminated,
		"resultInfo":  result,
	}
}

// rejectSIPCode is the resultInfo code a rejected call ends with.
func rejectSIPCode(reason string) int {
	switch reason {
	case "busy":
		return 486
	case "forbidden":
		return 403
	default:
		return 603
	}
}

func pastTense(action string) string {
	switch action {
	case actionReject:
		return "rejected"
	case actionRedirect:
		return "redirected"
	default:
		return "answered"
	}
}

// Call returns the record of a call.
func (s *Server) Call(id string) (CallRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.calls[id]
	if !ok {
		return CallRecord{}, false
	}
	return snapshot(c.rec), true
}

// Calls returns every call's record in the order they were placed.
func (s *Server) Calls() []CallRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]CallRecord, 0, len(s.order))
	for _, id := range s.order {
		out = append(out, snapshot(s.calls[id].rec))
	}
	return out
}

// snapshot copies a record for the caller, in UTC. The caller holds s.mu.
func snapshot(r CallRecord) CallRecord {
	r.RedirectTargets = slices.Clone(r.RedirectTargets)
	r.History = slices.Clone(r.History)
	for i := range r.History {
		r.History[i].At = r.History[i].At.UTC()
	}
	r.Prompts = slices.Clone(r.Prompts)
	for i := range r.Prompts {
		p := &r.Prompts[i]
		p.StartedAt = p.StartedAt.UTC()
		if p.CompletedAt != nil {
			done := p.CompletedAt.UTC()
			p.CompletedAt = &done
		}
	}
	for _, t := range []*time.Time{&r.PlacedAt, &r.NotifiedAt, &r.ActedAt, &r.AnsweredAt, &r.EndedAt} {
		if !t.IsZero() {
			*t = t.UTC()
		}
	}
	return r
}

// ForgetEnded drops the records of calls that ended (rejected, redirected,
// hung up or missed) and returns how many it dropped: a long load test
// need not keep them all, nor have the garbage collector scan them.
func (s *Server) ForgetEnded() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := s.order[:0]
	for _, id := range s.order {
		if c := s.calls[id]; c.live() || len(c.ops) > 0 {
			kept = append(kept, id)
			continue
		}
		delete(s.calls, id)
	}
	n := len(s.order) - len(kept)
	clear(s.order[len(kept):])
	s.order = kept
	return n
}
