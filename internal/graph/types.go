// Package graph holds the Microsoft Graph wire types callguard reads and
// writes (notifications, calls, identities, reject and redirect bodies, error
// bodies) and the Graph client the receiver uses. Decoding is tolerant of what
// Graph sends (unknown fields are ignored, the older field names accepted, enum
// values compared without regard to case: EnumEqual) and strict about names
// (DecodeNotifications).
package graph

import "strings"

// OData types used in notifications and bodies.
const (
	ODataCommsNotifications = "#microsoft.graph.commsNotifications"
	ODataCommsNotification  = "#microsoft.graph.commsNotification"
	ODataCall               = "#microsoft.graph.call"
	ODataParticipantInfo    = "#microsoft.graph.participantInfo"
	ODataInvitationInfo     = "#microsoft.graph.invitationParticipantInfo"
	ODataIdentitySet        = "#microsoft.graph.identitySet"
	ODataCommsIdentitySet   = "#microsoft.graph.communicationsIdentitySet"
	ODataIdentity           = "#microsoft.graph.identity"
	ODataCommsOperation     = "#microsoft.graph.commsOperation"

	ODataServiceHostedMediaConfig = "#microsoft.graph.serviceHostedMediaConfig"
	ODataMediaInfo                = "#microsoft.graph.mediaInfo"
	ODataMediaPrompt              = "#microsoft.graph.mediaPrompt"
	ODataPlayPromptOperation      = "#microsoft.graph.playPromptOperation"
	ODataResultInfo               = "#microsoft.graph.resultInfo"
)

// Change types of a commsNotification.
const (
	ChangeCreated = "created"
	ChangeUpdated = "updated"
	ChangeDeleted = "deleted"
)

// Call states used by callguard.
const (
	StateIncoming     = "incoming"
	StateEstablishing = "establishing"
	StateEstablished  = "established"
	StateRedirecting  = "redirecting"
	StateTerminated   = "terminated"
)

// Statuses of an operation (commsOperation, playPromptOperation).
const (
	OperationNotStarted = "notStarted"
	OperationRunning    = "running"
	OperationCompleted  = "completed"
	OperationFailed     = "failed"
)

// Completion reasons of a playPromptOperation.
const (
	CompletionUnknown                = "unknown"
	CompletionCompletedSuccessfully  = "completedSuccessfully"
	CompletionMediaOperationCanceled = "mediaOperationCanceled"
)

// Limits of playPrompt that Graph documents.
const (
	// MaxPrompts is the most prompts one playPrompt takes.
	MaxPrompts = 20
	// MaxClientContext is the longest clientContext, in characters.
	MaxClientContext = 256
)

// Notifications is the body Graph POSTs to a bot's callback.
type Notifications struct {
	ODataType string         `json:"@odata.type,omitempty"`
	Value     []Notification `json:"value"`

	// ValueStart and ValueEnd delimit the "value" array in the body it was
	// read from (DecodeNotifications), so a batch can be passed on with
	// fewer members and everything else as Graph sent it.
	ValueStart, ValueEnd int `json:"-"`
}

// Notification is one commsNotification.
type Notification struct {
	ODataType   string `json:"@odata.type,omitempty"`
	ChangeType  string `json:"changeType"`
	ResourceURL string `json:"resourceUrl,omitempty"`
	// Resource is the older name of ResourceURL (the beta /app/calls payloads).
	Resource string `json:"resource,omitempty"`
	// ResourceData is the call the notification is about, or nil when its
	// resourceData is absent or not a call (participant lists, operations;
	// an object of another type that carries an incoming call's state is
	// read as that call: DecodeNotifications).
	ResourceData *Call `json:"resourceData,omitempty"`

	// Raw is the notification exactly as it was read (DecodeNotifications).
	Raw []byte `json:"-"`
}

// URL returns the notification's resource URL under either field name.
func (n *Notification) URL() string {
	if n.ResourceURL != "" {
		return n.ResourceURL
	}
	return n.Resource
}

// CallID returns the id of the call the notification is about: the segment
// after "calls/" of its resourceUrl, or of resource when resourceUrl is
// absent (the older payloads carry only resource: /app/calls/{id}), else
// the call's id or its @odata.id's segment. The URL comes first because
// Graph's SDK routes a notification to a call by it: where a payload's
// resourceData.id names another call, the upstream bot acts on the URL's.
// ".../calls/{id}/participants" is about call {id}.
func (n *Notification) CallID() string {
	if u := n.URL(); u != "" {
		return callSegment(u)
	}
	if n.ResourceData != nil && n.ResourceData.ID != "" {
		return n.ResourceData.ID
	}
	if n.ResourceData != nil && n.ResourceData.ODataID != "" {
		return callSegment(n.ResourceData.ODataID)
	}
	return ""
}

// IsIncomingCall reports whether the notification announces a new incoming
// call: the only kind callguard decides.
func (n *Notification) IsIncomingCall() bool {
	return EnumEqual(n.ChangeType, ChangeCreated) && n.ResourceData != nil && n.ResourceData.IsIncoming()
}

// EnumEqual reports whether value, an enum value as Graph sent it
// (changeType, state, direction, modalities, endpointType), is want. Graph
// spells its enum values in either case (its SDKs log "Created" and
// "Incoming"), so they are compared under Unicode simple case folding, the
// folding member names are checked under (a superset of ASCII
// case-insensitivity).
func EnumEqual(value, want string) bool { return strings.EqualFold(value, want) }

// callSegment returns the segment after the last "calls/" segment of a
// resource path, else its last segment.
func callSegment(s string) string {
	s = strings.TrimRight(s, "/")
	if i := strings.LastIndex(strings.ToLower(s), "/calls/"); i >= 0 {
		id, _, _ := strings.Cut(s[i+len("/calls/"):], "/")
		return id
	}
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// Call is Graph's call resource (the fields callguard reads).
type Call struct {
	ODataType string `json:"@odata.type,omitempty"`
	ODataID   string `json:"@odata.id,omitempty"`
	ID        string `json:"id,omitempty"`
	State     string `json:"state,omitempty"`
	// CallState is the older name of State (beta payloads).
	CallState           string                      `json:"callState,omitempty"`
	Direction           string                      `json:"direction,omitempty"`
	Subject             string                      `json:"subject,omitempty"`
	CallbackURI         string                      `json:"callbackUri,omitempty"`
	CallChainID         string                      `json:"callChainId,omitempty"`
	CorrelationID       string                      `json:"correlationId,omitempty"`
	TenantID            string                      `json:"tenantId,omitempty"`
	MyParticipantID     string                      `json:"myParticipantId,omitempty"`
	Source              *ParticipantInfo            `json:"source,omitempty"`
	Targets             []InvitationParticipantInfo `json:"targets,omitempty"`
	RequestedModalities []string                    `json:"requestedModalities,omitempty"`
}

// EffectiveState returns state, or the older callState when state is absent.
func (c *Call) EffectiveState() string {
	if c.State != "" {
		return c.State
	}
	return c.CallState
}

// IsIncoming reports whether the call's state is incoming.
func (c *Call) IsIncoming() bool { return EnumEqual(c.EffectiveState(), StateIncoming) }

// ParticipantInfo describes a participant (the call's source).
type ParticipantInfo struct {
	ODataType    string       `json:"@odata.type,omitempty"`
	Identity     *IdentitySet `json:"identity,omitempty"`
	EndpointType string       `json:"endpointType,omitempty"`
	Region       string       `json:"region,omitempty"`
	LanguageID   string       `json:"languageId,omitempty"`
	CountryCode  string       `json:"countryCode,omitempty"`
}

// InvitationParticipantInfo is a call target or a redirect target.
type InvitationParticipantInfo struct {
	ODataType      string       `json:"@odata.type,omitempty"`
	Identity       *IdentitySet `json:"identity,omitempty"`
	ReplacesCallID string       `json:"replacesCallId,omitempty"`
	Hidden         bool         `json:"hidden,omitempty"`
}

// IdentitySet is Graph's identitySet / communicationsIdentitySet: at most a
// few of its members are present.
type IdentitySet struct {
	ODataType           string    `json:"@odata.type,omitempty"`
	Application         *Identity `json:"application,omitempty"`
	ApplicationInstance *Identity `json:"applicationInstance,omitempty"`
	Device              *Identity `json:"device,omitempty"`
	User                *Identity `json:"user,omitempty"`
	Guest               *Identity `json:"guest,omitempty"`
	Phone               *Identity `json:"phone,omitempty"`
	Encrypted           *Identity `json:"encrypted,omitempty"`
	OnPremises          *Identity `json:"onPremises,omitempty"`
	AssertedIdentity    *Identity `json:"assertedIdentity,omitempty"`
	// AzureCommunicationServicesUser is an ACS user (identity type acsUser).
	AzureCommunicationServicesUser *Identity `json:"azureCommunicationServicesUser,omitempty"`
	EndpointType                   string    `json:"endpointType,omitempty"`

	// OtherMembers counts the identity members of kinds not modelled here
	// (DecodeNotifications), so a caller identified only by one is known to
	// be someone, not anonymous.
	OtherMembers int `json:"-"`
}

// Identity is Graph's identity / communicationsIdentity.
type Identity struct {
	ODataType        string `json:"@odata.type,omitempty"`
	ID               string `json:"id,omitempty"`
	DisplayName      string `json:"displayName,omitempty"`
	TenantID         string `json:"tenantId,omitempty"`
	IdentityProvider string `json:"identityProvider,omitempty"`
}

// RejectRequest is the body of POST …/calls/{id}/reject.
type RejectRequest struct {
	Reason      string `json:"reason,omitempty"`
	CallbackURI string `json:"callbackUri,omitempty"`
}

// RedirectRequest is the body of POST …/calls/{id}/redirect.
type RedirectRequest struct {
	Targets     []InvitationParticipantInfo `json:"targets"`
	Timeout     int32                       `json:"timeout,omitempty"`
	CallbackURI string                      `json:"callbackUri,omitempty"`
}

// MediaInfo is Graph's mediaInfo: an audio file Graph fetches (https) and
// plays, and the id it caches it under.
type MediaInfo struct {
	ODataType  string `json:"@odata.type,omitempty"`
	URI        string `json:"uri"`
	ResourceID string `json:"resourceId,omitempty"`
}

// ServiceHostedMediaConfig is the mediaConfig of a call whose media Graph
// hosts; PreFetchMedia are fetched when the call is answered.
type ServiceHostedMediaConfig struct {
	ODataType     string      `json:"@odata.type"`
	PreFetchMedia []MediaInfo `json:"preFetchMedia,omitempty"`
}

// AnswerRequest is the body of POST …/calls/{id}/answer (service-hosted
// media only: callguard plays prompts, it does not handle media).
type AnswerRequest struct {
	// CallbackURI receives the call's later notifications; empty means the
	// bot's registered callback.
	CallbackURI        string                   `json:"callbackUri,omitempty"`
	AcceptedModalities []string                 `json:"acceptedModalities"`
	MediaConfig        ServiceHostedMediaConfig `json:"mediaConfig"`
}

// NewAnswerRequest is the answer of an audio call whose later notifications
// go to callbackURI, with media fetched ahead of playing.
func NewAnswerRequest(callbackURI string, preFetch ...MediaInfo) AnswerRequest {
	return AnswerRequest{
		CallbackURI:        callbackURI,
		AcceptedModalities: []string{"audio"},
		MediaConfig:        ServiceHostedMediaConfig{ODataType: ODataServiceHostedMediaConfig, PreFetchMedia: preFetch},
	}
}

// MediaPrompt is one prompt of a playPrompt.
type MediaPrompt struct {
	ODataType string    `json:"@odata.type,omitempty"`
	MediaInfo MediaInfo `json:"mediaInfo"`
}

// PlayPromptRequest is the body of POST …/calls/{id}/playPrompt.
type PlayPromptRequest struct {
	// ClientContext comes back in the operation's notifications (at most
	// MaxClientContext characters).
	ClientContext string        `json:"clientContext,omitempty"`
	Prompts       []MediaPrompt `json:"prompts"`
}

// NewPlayPromptRequest plays media in order, with clientContext.
func NewPlayPromptRequest(clientContext string, media ...MediaInfo) PlayPromptRequest {
	req := PlayPromptRequest{ClientContext: clientContext}
	for _, m := range media {
		req.Prompts = append(req.Prompts, MediaPrompt{ODataType: ODataMediaPrompt, MediaInfo: m})
	}
	return req
}

// PlayPromptOperation is what POST …/playPrompt answers (200, status
// running) and what its notifications carry.
type PlayPromptOperation struct {
	ODataType        string      `json:"@odata.type,omitempty"`
	ID               string      `json:"id,omitempty"`
	Status           string      `json:"status,omitempty"`
	ClientContext    string      `json:"clientContext,omitempty"`
	CompletionReason string      `json:"completionReason,omitempty"`
	ResultInfo       *ResultInfo `json:"resultInfo,omitempty"`
}

// CommsOperation is returned by the older beta /app/calls/{id}/reject.
type CommsOperation struct {
	ODataType          string      `json:"@odata.type,omitempty"`
	ID                 string      `json:"id"`
	Status             string      `json:"status"`
	ClientContext      string      `json:"clientContext,omitempty"`
	CreatedDateTime    string      `json:"createdDateTime,omitempty"`
	LastActionDateTime string      `json:"lastActionDateTime,omitempty"`
	ResultInfo         *ResultInfo `json:"resultInfo,omitempty"`
}

// ResultInfo is Graph's resultInfo.
type ResultInfo struct {
	ODataType string `json:"@odata.type,omitempty"`
	Code      int    `json:"code"`
	Subcode   int    `json:"subcode,omitempty"`
	Message   string `json:"message,omitempty"`
}

// ErrorBody is Graph's error response body.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the error member of ErrorBody.
type ErrorDetail struct {
	Code       string      `json:"code"`
	Message    string      `json:"message"`
	InnerError *InnerError `json:"innerError,omitempty"`
}

// InnerError carries Graph's request correlation ids.
type InnerError struct {
	RequestID       string `json:"request-id,omitempty"`
	Date            string `json:"date,omitempty"`
	ClientRequestID string `json:"client-request-id,omitempty"`
}
