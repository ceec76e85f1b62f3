package emulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"

	"github.com/callguard/callguard/internal/graph"
)

// Callback-token constants: what Graph's notifications are signed as.
const (
	// InboundIssuer is the iss of the tokens on Graph's callbacks.
	InboundIssuer = "https://api.botframework.com"
	// TenantIDClaim is the long form of the tenant claim, which callback
	// tokens carry next to tid.
	TenantIDClaim = "http://schemas.microsoft.com/identity/claims/tenantid"
	// InboundTokenLifetime is how long a callback token is valid.
	InboundTokenLifetime = 10 * time.Minute
	// inboundTokenReuse is how long a callback token is sent again on
	// notifications to the same app and tenant. Graph reuses its tokens
	// rather than signing one per notification; here an RSA signature per
	// notification was most of the emulator's CPU in a burst of calls. A
	// token sent is valid for at least InboundTokenLifetime less this.
	inboundTokenReuse = 30 * time.Second
)

// Graph error codes the emulator answers with.
const (
	codeInvalidToken = "InvalidAuthenticationToken"
	codeAccessDenied = "accessDenied"
	codeNotFound     = "itemNotFound"
	codeBadRequest   = "badRequest"
	codeConflict     = "conflict"
)

// InboundClaims returns the claims of a genuine callback token for a bot:
// tests change them (exp, aud, tid…) and sign them with SignInboundToken.
func InboundClaims(appID, tenantID string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss":         InboundIssuer,
		"aud":         appID,
		"tid":         tenantID,
		TenantIDClaim: tenantID,
		"iat":         now.Unix(),
		"nbf":         now.Unix(),
		"exp":         now.Add(InboundTokenLifetime).Unix(),
	}
}

// SignInboundToken signs claims with the current callback-token key (RS256,
// with kid and x5t), exactly as notifications are signed.
func (s *Server) SignInboundToken(claims map[string]any) (string, error) {
	return s.inboundKeys.current().sign(claims)
}

// handleInboundDiscovery serves the OpenID configuration of callback tokens
// in the shape api.aps.skype.com serves it.
func (s *Server) handleInboundDiscovery(w http.ResponseWriter, r *http.Request) {
	base := s.baseURL(r)
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                InboundIssuer,
		"authorization_endpoint":                base + "/v1/auth",
		"jwks_uri":                              base + "/v1/.well-known/keys",
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"token_endpoint_auth_methods_supported": []string{"private_key_jwt"},
	})
}

func (s *Server) handleInboundKeys(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.inboundKeys.jwks([]string{"msteams"}))
}

// writeGraphError writes Graph's error body; the request-id was already set
// on the response by serveHTTP.
func writeGraphError(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	writeJSON(w, status, graph.ErrorBody{Error: graph.ErrorDetail{
		Code:    code,
		Message: msg,
		InnerError: &graph.InnerError{
			RequestID:       w.Header().Get("request-id"),
			Date:            time.Now().UTC().Format("2006-01-02T15:04:05"),
			ClientRequestID: r.Header.Get("client-request-id"),
		},
	}})
}

// accessClaims are the access-token claims Graph authorizes with.
type accessClaims struct {
	AppID    string   `json:"appid"`
	TenantID string   `json:"tid"`
	Roles    []string `json:"roles"`
}

// authenticate validates the bearer token of a Graph request: signed by the
// token service, issued for a tenant, for the emulator or Graph, in its
// lifetime. The error's text is Graph's 401 message.
func (s *Server) authenticate(r *http.Request) (*accessClaims, error) {
	h := r.Header.Get("Authorization")
	scheme, raw, _ := strings.Cut(h, " ")
	if h == "" || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(raw) == "" {
		return nil, errors.New("Access token is empty.")
	}
	raw = strings.TrimSpace(raw)
	std, c, err := s.verifiedAccessToken(raw)
	if err != nil {
		return nil, err
	}
	if c.TenantID == "" || std.Issuer != tokenIssuer(c.TenantID) {
		return nil, errors.New("Access token validation failure. Invalid issuer.")
	}
	if std.Expiry == nil {
		return nil, errors.New("Access token validation failure. The token has no expiry.")
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Time: time.Now()}, clockSkew); err != nil {
		return nil, errors.New("Lifetime validation failed, the token is expired.")
	}
	if !slices.ContainsFunc(std.Audience, func(a string) bool { return s.ownResource(a, r) }) {
		return nil, errors.New("Access token validation failure. Invalid audience.")
	}
	return &c, nil
}

// maxVerifiedTokens bounds the cache of verified access-token signatures.
const maxVerifiedTokens = 10_000

// verifiedToken is an access token whose signature was checked.
type verifiedToken struct {
	std jwt.Claims
	c   accessClaims
}

// verifiedAccessToken checks a token's signature, remembering tokens that
// passed: clients reuse an access token for an hour, and an RSA check on
// every Graph request would make the emulator, not the bot under test, the
// bottleneck of throughput benchmarks. Issuer, lifetime and audience are
// still checked on every request by the caller.
func (s *Server) verifiedAccessToken(raw string) (jwt.Claims, accessClaims, error) {
	s.verifiedMu.Lock()
	v, ok := s.verified[raw]
	s.verifiedMu.Unlock()
	if ok {
		return v.std, v.c, nil
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return jwt.Claims{}, accessClaims{}, errors.New("Invalid JWT token. The token is not in JWS compact serialization format or uses an unsupported algorithm.")
	}
	key := s.tokenKeys.lookup(tok.Headers[0].KeyID)
	if key == nil {
		return jwt.Claims{}, accessClaims{}, errors.New("Access token validation failure. The signing key was not found.")
	}
	if err := tok.Claims(&key.key.PublicKey, &v.std, &v.c); err != nil {
		return jwt.Claims{}, accessClaims{}, errors.New("Access token validation failure. Invalid signature.")
	}
	s.verifiedMu.Lock()
	if len(s.verified) >= maxVerifiedTokens {
		clear(s.verified)
	}
	s.verified[raw] = v
	s.verifiedMu.Unlock()
	return v.std, v.c, nil
}

// Call actions.
const (
	actionReject   = "reject"
	actionRedirect = "redirect"
	actionAnswer   = "answer"
)

// rejectReasons are Graph's rejectReason values.
var rejectReasons = []string{"none", "busy", "forbidden"}

// modalities are Graph's modality values.
var modalities = []string{"audio", "video", "videoBasedScreenSharing", "data"}

// rejectBody is graph.RejectRequest plus clientContext, which the older beta
// API echoes in its commsOperation.
type rejectBody struct {
	Reason        string `json:"reason"`
	CallbackURI   string `json:"callbackUri"`
	ClientContext string `json:"clientContext"`
}

// answerBody is the part of Graph's answer request the emulator checks.
type answerBody struct {
	CallbackURI         string          `json:"callbackUri"`
	AcceptedModalities  []string        `json:"acceptedModalities"`
	MediaConfig         json.RawMessage `json:"mediaConfig"`
	ParticipantCapacity int             `json:"participantCapacity"`
}

// actionRequest is a validated action on a call.
type actionRequest struct {
	kind          string
	reason        string
	targets       []graph.InvitationParticipantInfo
	timeout       int32
	callbackURI   string
	clientContext string
	receivedAt    time.Time
	// status is what a successful action answers: 202, or 200 on the older
	// beta API.
	status int
}

// handleAction serves reject, redirect and answer. Checks run in Graph's
// order: token (401), the application permission the action needs (403,
// graph.ActionPermissions), call (404), ownership (403)
// (authorizeCallAction), body (400), state (409: acting twice, or on a call
// that is no longer incoming).
func (s *Server) handleAction(kind string, commsOperation bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		received := time.Now()
		c, fail, ok := s.authorizeCallAction(w, r, kind, graph.CallAction(kind))
		if !ok {
			return
		}
		req, err := parseAction(kind, r, w)
		if err != nil {
			fail(http.StatusBadRequest, codeBadRequest, err.Error())
			return
		}
		req.receivedAt = received
		req.status = http.StatusAccepted
		if commsOperation {
			req.status = http.StatusOK
		}
		if err := s.act(c, req); err != nil {
			fail(http.StatusConflict, codeConflict, err.Error())
			return
		}
		if commsOperation {
			now := time.Now().UTC().Format(time.RFC3339)
			writeJSON(w, req.status, graph.CommsOperation{
				ID:                 uuid.NewString(),
				Status:             "Completed",
				ClientContext:      req.clientContext,
				CreatedDateTime:    now,
				LastActionDateTime: now,
			})
			return
		}
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(req.status)
	}
}

// parseAction decodes and validates an action body as Graph does.
func parseAction(kind string, r *http.Request, w http.ResponseWriter) (actionRequest, error) {
	req := actionRequest{kind: kind}
	switch kind {
	case actionReject:
		var b rejectBody
		if err := decodeJSON(w, r, &b, false, true); err != nil {
			return req, graphBodyError(err)
		}
		if b.Reason == "" {
			b.Reason = "none"
		}
		if !slices.Contains(rejectReasons, b.Reason) {
			return req, fmt.Errorf("Invalid value '%s' for reason: must be one of %s.", b.Reason, strings.Join(rejectReasons, ", "))
		}
		req.reason, req.callbackURI, req.clientContext = b.Reason, b.CallbackURI, b.ClientContext
	case actionRedirect:
		var b graph.RedirectRequest
		if err := decodeJSON(w, r, &b, false, false); err != nil {
			return req, graphBodyError(err)
		}
		if len(b.Targets) < 1 || len(b.Targets) > 25 {
			return req, fmt.Errorf("targets must hold 1 to 25 invitationParticipantInfo, got %d.", len(b.Targets))
		}
		for i, t := range b.Targets {
			if !hasIdentity(t.Identity) {
				return req, fmt.Errorf("targets[%d].identity must name a user, phone, application or other identity with an id.", i)
			}
		}
		if b.Timeout != 0 && (b.Timeout < 15 || b.Timeout > 90) {
			return req, fmt.Errorf("timeout must be between 15 and 90 seconds, got %d.", b.Timeout)
		}
		req.targets, req.timeout, req.callbackURI = b.Targets, b.Timeout, b.CallbackURI
	case actionAnswer:
		var b answerBody
		if err := decodeJSON(w, r, &b, false, false); err != nil {
			return req, graphBodyError(err)
		}
		if len(b.MediaConfig) == 0 || string(b.MediaConfig) == "null" {
			return req, errors.New("mediaConfig is required.")
		}
		for _, m := range b.AcceptedModalities {
			if !slices.Contains(modalities, m) {
				return req, fmt.Errorf("Invalid value '%s' in acceptedModalities: must be one of %s.", m, strings.Join(modalities, ", "))
			}
		}
		var media struct {
			ODataType string `json:"@odata.type"`
		}
		if err := json.Unmarshal(b.MediaConfig, &media); err != nil {
			return req, fmt.Errorf("mediaConfig must be an object: %w.", describeJSONError(err))
		}
		if !strings.EqualFold(media.ODataType, graph.ODataServiceHostedMediaConfig) {
			// The emulator hosts no media sessions for bots.
			return req, fmt.Errorf("mediaConfig of type %q is not supported here: answer with %s.", media.ODataType, graph.ODataServiceHostedMediaConfig)
		}
		req.callbackURI = b.CallbackURI
	}
	if req.callbackURI != "" {
		if err := checkCallbackURL(req.callbackURI); err != nil {
			return req, fmt.Errorf("callbackUri: %w.", err)
		}
	}
	return req, nil
}

// graphBodyError words a body decoding failure as Graph does.
func graphBodyError(err error) error {
	return fmt.Errorf("Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format: %w.", err)
}

func hasIdentity(set *graph.IdentitySet) bool {
	if set == nil {
		return false
	}
	for _, id := range []*graph.Identity{set.User, set.Phone, set.Application, set.ApplicationInstance, set.Guest,
		set.Device, set.Encrypted, set.OnPremises, set.AzureCommunicationServicesUser} {
		if id != nil && id.ID != "" {
			return true
		}
	}
	return false
}
