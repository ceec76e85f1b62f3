package emulator

import (
	"crypto/sha1" //nolint:gosec // the x5t assertion header is a SHA-1 thumbprint.
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"
)

// Token service constants.
const (
	// GraphResource is the real Graph audience; the emulator accepts it next
	// to its own URL so clients can keep their production scope.
	GraphResource = "https://graph.microsoft.com"
	// graphAppID is Graph's well-known application id, also a valid audience.
	graphAppID = "00000003-0000-0000-c000-000000000000"

	accessTokenLifetime = time.Hour
	clockSkew           = 5 * time.Minute
	assertionType       = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
)

// tokenIssuer is the iss of v1 access tokens, which Graph receives.
func tokenIssuer(tenantID string) string { return "https://sts.windows.net/" + tenantID + "/" }

// baseURL is the emulator's URL as the client addressed it, so discovery
// documents stay consistent behind a Service name or port mapping.
func (s *Server) baseURL(r *http.Request) string {
	if r.Host != "" {
		return "https://" + r.Host
	}
	return s.URL()
}

// ownResource reports whether resource names the emulator or Graph, the
// audiences the emulator issues tokens for and accepts.
func (s *Server) ownResource(resource string, r *http.Request) bool {
	resource = strings.TrimSuffix(resource, "/")
	if strings.EqualFold(resource, GraphResource) || strings.EqualFold(resource, graphAppID) {
		return true
	}
	return strings.EqualFold(resource, s.baseURL(r)) || strings.EqualFold(resource, s.URL())
}

// entraError is the body Entra ID answers token and discovery errors with.
type entraError struct {
	Error         string `json:"error"`
	Description   string `json:"error_description"`
	ErrorCodes    []int  `json:"error_codes"`
	Timestamp     string `json:"timestamp"`
	TraceID       string `json:"trace_id"`
	CorrelationID string `json:"correlation_id"`
	ErrorURI      string `json:"error_uri"`
}

// writeEntraError writes Entra's error body; aadsts is the AADSTS number
// that Entra puts in front of the message and in error_codes.
func (s *Server) writeEntraError(w http.ResponseWriter, r *http.Request, status int, code string, aadsts int, msg string) {
	now := time.Now().UTC()
	traceID := w.Header().Get("request-id")
	correlationID := r.Header.Get("client-request-id")
	if correlationID == "" {
		correlationID = uuid.NewString()
	}
	stamp := now.Format("2006-01-02 15:04:05Z")
	writeJSON(w, status, entraError{
		Error:         code,
		Description:   fmt.Sprintf("AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s", aadsts, msg, traceID, correlationID, stamp),
		ErrorCodes:    []int{aadsts},
		Timestamp:     stamp,
		TraceID:       traceID,
		CorrelationID: correlationID,
		ErrorURI:      fmt.Sprintf("https://login.microsoftonline.com/error?code=%d", aadsts),
	})
	s.log.Info("token service error", "status", status, "error", code, "aadsts", aadsts, "message", msg)
}

func (s *Server) knownTenant(tenant string) bool { return s.tenants[strings.ToLower(tenant)] }

func (s *Server) tenantNotFound(w http.ResponseWriter, r *http.Request, tenant string) {
	s.writeEntraError(w, r, http.StatusBadRequest, "invalid_tenant", 90002,
		fmt.Sprintf("Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.", tenant))
}

// handleInstanceDiscovery answers MSAL's instance discovery. MSAL sends it to
// login.microsoftonline.com for any authority it does not know, so it only
// reaches the emulator when clients route that host here; clients pointed at
// the emulator's URL should disable instance discovery instead.
func (s *Server) handleInstanceDiscovery(w http.ResponseWriter, r *http.Request) {
	endpoint := r.URL.Query().Get("authorization_endpoint")
	u, err := url.Parse(endpoint)
	if endpoint == "" || err != nil || u.Scheme != "https" || u.Host == "" {
		s.writeEntraError(w, r, http.StatusBadRequest, "invalid_instance", 50049, "Unknown or invalid instance.")
		return
	}
	tenant, _, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
	if tenant == "" {
		s.writeEntraError(w, r, http.StatusBadRequest, "invalid_instance", 50049, "Unknown or invalid instance.")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"tenant_discovery_endpoint": "https://" + u.Host + "/" + tenant + "/v2.0/.well-known/openid-configuration",
		"api-version":               "1.1",
		"metadata": []map[string]any{{
			"preferred_network": u.Host,
			"preferred_cache":   u.Host,
			"aliases":           []string{u.Host},
		}},
	})
}

// handleTenantDiscovery serves the tenant's OpenID configuration; MSAL takes
// the token endpoint from it and checks that the issuer's host is the
// authority's.
func (s *Server) handleTenantDiscovery(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("tenant")
	if !s.knownTenant(tenant) {
		s.tenantNotFound(w, r, tenant)
		return
	}
	base := s.baseURL(r) + "/" + tenant
	writeJSON(w, http.StatusOK, map[string]any{
		"token_endpoint":                        base + "/oauth2/v2.0/token",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"jwks_uri":                              base + "/discovery/v2.0/keys",
		"response_modes_supported":              []string{"query", "fragment", "form_post"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
		"scopes_supported":                      []string{"openid", "profile", "email", "offline_access"},
		"issuer":                                base + "/v2.0",
		"request_uri_parameter_supported":       false,
		"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
		"tenant_region_scope":                   nil,
		"cloud_instance_name":                   "microsoftonline.com",
		"msgraph_host":                          r.Host,
	})
}

// handleTokenKeys publishes the keys access tokens are signed with.
func (s *Server) handleTokenKeys(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("tenant")
	if !s.knownTenant(tenant) && !strings.EqualFold(tenant, "common") {
		s.tenantNotFound(w, r, tenant)
		return
	}
	writeJSON(w, http.StatusOK, s.tokenKeys.jwks(nil))
}

// handleToken is the client credentials grant with a client secret (in the
// body or HTTP Basic) or a client assertion signed by a registered
// certificate.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("tenant")
	if !s.knownTenant(tenant) {
		s.tenantNotFound(w, r, tenant)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		s.writeEntraError(w, r, http.StatusBadRequest, "invalid_request", 900144,
			fmt.Sprintf("The request body must be application/x-www-form-urlencoded parameters: %v.", err))
		return
	}
	form := r.PostForm
	grant := form.Get("grant_type")
	if grant == "" {
		s.missingParameter(w, r, "grant_type")
		return
	}
	if grant != "client_credentials" {
		s.writeEntraError(w, r, http.StatusBadRequest, "unsupported_grant_type", 70003,
			fmt.Sprintf("The app requested an unsupported grant type '%s'.", grant))
		return
	}
	clientID := form.Get("client_id")
	basicID, basicSecret, basic := r.BasicAuth()
	if clientID == "" && basic {
		clientID = basicID
	}
	if clientID == "" {
		s.missingParameter(w, r, "client_id")
		return
	}
	b := s.bots[strings.ToLower(clientID)]
	if b == nil || b.tenant(tenant) == "" {
		s.writeEntraError(w, r, http.StatusBadRequest, "unauthorized_client", 700016,
			fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", clientID, tenant))
		return
	}
	resource, ok := s.scopeResource(w, r, form.Get("scope"), tenant)
	if !ok {
		return
	}
	secret := form.Get("client_secret")
	if secret == "" && basic {
		secret = basicSecret
	}
	var acr string
	switch assertion := form.Get("client_assertion"); {
	case secret != "":
		if b.Secret == "" || secret != b.Secret {
			s.writeEntraError(w, r, http.StatusUnauthorized, "invalid_client", 7000215,
				fmt.Sprintf("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", b.AppID))
			return
		}
		acr = "1"
	case assertion != "":
		if t := form.Get("client_assertion_type"); t != assertionType {
			s.writeEntraError(w, r, http.StatusBadRequest, "invalid_request", 700025,
				fmt.Sprintf("Client assertion type '%s' is not supported; expected '%s'.", t, assertionType))
			return
		}
		if aadsts, msg := s.checkAssertion(assertion, b, tenant, r); aadsts != 0 {
			s.writeEntraError(w, r, http.StatusUnauthorized, "invalid_client", aadsts, msg)
			return
		}
		acr = "2"
	default:
		s.writeEntraError(w, r, http.StatusUnauthorized, "invalid_client", 7000218,
			"The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
		return
	}
	// A multi-tenant app's token is issued by the tenant asked, and carries
	// it as tid.
	tid := b.tenant(tenant)
	now := time.Now()
	claims := map[string]any{
		"aud":             resource,
		"iss":             tokenIssuer(tid),
		"iat":             now.Unix(),
		"nbf":             now.Unix(),
		"exp":             now.Add(accessTokenLifetime).Unix(),
		"app_displayname": "callguard emulated bot",
		"appid":           b.AppID,
		"appidacr":        acr,
		"idp":             tokenIssuer(tid),
		"idtyp":           "app",
		"oid":             b.objectID,
		"sub":             b.objectID,
		"tid":             tid,
		"uti":             strings.ReplaceAll(uuid.NewString(), "-", ""),
		"ver":             "1.0",
	}
	// Exactly the app's granted permissions; Entra leaves roles out of the
	// token of an app that has none.
	if len(b.roles) > 0 {
		claims["roles"] = b.roles
	}
	tok, err := s.tokenKeys.current().sign(claims)
	if err != nil {
		s.log.Error("signing access token", "err", err)
		s.writeEntraError(w, r, http.StatusInternalServerError, "server_error", 50000, "There was an error issuing a token.")
		return
	}
	lifetime := int(accessTokenLifetime/time.Second) - 1
	w.Header().Set("Cache-Control", "no-store, no-cache")
	writeJSON(w, http.StatusOK, map[string]any{
		"token_type":     "Bearer",
		"expires_in":     lifetime,
		"ext_expires_in": lifetime,
		"access_token":   tok,
	})
	s.log.Info("access token issued", "appId", b.AppID, "tenantId", tid, "resource", resource, "appidacr", acr)
}

func (s *Server) missingParameter(w http.ResponseWriter, r *http.Request, name string) {
	s.writeEntraError(w, r, http.StatusBadRequest, "invalid_request", 900144,
		fmt.Sprintf("The request body must contain the following parameter: '%s'.", name))
}

// oidcScopes are added by MSAL to every request and ignored by Entra for the
// client credentials grant.
var oidcScopes = []string{"openid", "profile", "offline_access", "email"}

// scopeResource returns the resource of a client credentials scope
// ("<resource>/.default"), or writes the error Entra answers.
func (s *Server) scopeResource(w http.ResponseWriter, r *http.Request, scope, tenant string) (string, bool) {
	var resources []string
	for _, sc := range strings.Fields(scope) {
		if !slices.Contains(oidcScopes, sc) {
			resources = append(resources, sc)
		}
	}
	if len(resources) == 0 {
		s.missingParameter(w, r, "scope")
		return "", false
	}
	if len(resources) > 1 || !strings.HasSuffix(resources[0], "/.default") {
		s.writeEntraError(w, r, http.StatusBadRequest, "invalid_scope", 1002012,
			fmt.Sprintf("The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", scope))
		return "", false
	}
	resource := strings.TrimSuffix(resources[0], "/.default")
	if !s.ownResource(resource, r) {
		s.writeEntraError(w, r, http.StatusBadRequest, "invalid_resource", 500011,
			fmt.Sprintf("The resource principal named %s was not found in the tenant named %s. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.", resource, tenant))
		return "", false
	}
	return resource, true
}

// checkAssertion verifies a client assertion as Entra does: RS256 or PS256,
// signed by a certificate registered for the app (found by its x5t#S256 or
// x5t thumbprint), iss = sub = client id, aud = the token endpoint, within
// its lifetime. It returns the AADSTS code and message of the first failure.
func (s *Server) checkAssertion(assertion string, b *bot, tenant string, r *http.Request) (int, string) {
	// Federated issuers may sign with ES256 (a Kubernetes API server's
	// default key is ECDSA); certificates sign with RS256 or PS256.
	tok, err := jwt.ParseSigned(assertion, []jose.SignatureAlgorithm{jose.RS256, jose.PS256, jose.ES256})
	if err != nil {
		return 50027, fmt.Sprintf("JWT token is invalid or malformed: %v.", err)
	}
	cert := findCertificate(b.certs, tok.Headers[0])
	if cert == nil && len(b.Federated) > 0 && tok.Headers[0].ExtraHeaders["x5t"] == nil && tok.Headers[0].ExtraHeaders["x5t#S256"] == nil {
		return checkFederatedAssertion(tok, b)
	}
	if alg := tok.Headers[0].Algorithm; alg != string(jose.RS256) && alg != string(jose.PS256) {
		return 50027, fmt.Sprintf("JWT token is invalid or malformed: unexpected signature algorithm %q; expected [\"RS256\" \"PS256\"].", alg)
	}
	if cert == nil {
		return 700027, fmt.Sprintf("The certificate with identifier used to sign the client assertion is not registered on application %s. The x5t or x5t#S256 header must be the thumbprint of a registered certificate.", b.AppID)
	}
	var claims jwt.Claims
	if err := tok.Claims(cert.PublicKey, &claims); err != nil {
		return 700027, "Client assertion failed signature validation."
	}
	if claims.Issuer != b.AppID || claims.Subject != b.AppID {
		return 700021, fmt.Sprintf("Client assertion application identifier doesn't match 'client_id' parameter: iss %q and sub %q must both be %q.", claims.Issuer, claims.Subject, b.AppID)
	}
	if claims.Expiry == nil {
		return 50027, "JWT token is invalid or malformed: the exp claim is required."
	}
	var audiences []string
	for _, base := range []string{s.baseURL(r), s.URL()} {
		audiences = append(audiences, base+"/"+tenant+"/oauth2/v2.0/token", base+"/"+tenant+"/v2.0")
	}
	// With no expectations set, only the time checks can fail.
	if err := claims.ValidateWithLeeway(jwt.Expected{Time: time.Now()}, clockSkew); err != nil {
		return 700024, fmt.Sprintf("Client assertion is not within its valid time range: %v.", err)
	}
	if !slices.ContainsFunc(claims.Audience, func(a string) bool {
		return slices.ContainsFunc(audiences, func(want string) bool { return strings.EqualFold(a, want) })
	}) {
		return 50027, fmt.Sprintf("JWT token is invalid or malformed: invalid audience %v; expected the token endpoint %s.", []string(claims.Audience), audiences[0])
	}
	return 0, ""
}

// findCertificate returns the registered certificate a JWS header names by
// thumbprint. MSAL encodes thumbprints in standard base64 although RFC 7515
// says base64url; Entra accepts both, and so does this.
func findCertificate(certs []*x509.Certificate, h jose.Header) *x509.Certificate {
	for _, c := range certs {
		s256 := sha256.Sum256(c.Raw)
		s1 := sha1.Sum(c.Raw) //nolint:gosec // see import.
		if thumbprintMatches(h.ExtraHeaders["x5t#S256"], s256[:]) || thumbprintMatches(h.ExtraHeaders["x5t"], s1[:]) {
			return c
		}
	}
	return nil
}

func thumbprintMatches(header any, sum []byte) bool {
	v, ok := header.(string)
	if !ok || v == "" {
		return false
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if got, err := enc.DecodeString(v); err == nil && slices.Equal(got, sum) {
			return true
		}
	}
	return false
}

// checkFederatedAssertion verifies an assertion against the app's federated
// identity credentials as Entra does: a credential for its issuer, whose
// keys signed it, for its subject and one of its audiences, within its
// lifetime.
func checkFederatedAssertion(tok *jwt.JSONWebToken, b *bot) (int, string) {
	var unverified jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return 50027, fmt.Sprintf("JWT token is invalid or malformed: %v.", err)
	}
	issuerKnown := false
	for i, f := range b.Federated {
		if f.Issuer != unverified.Issuer {
			continue
		}
		issuerKnown = true
		var claims jwt.Claims
		keys := b.fedKeys[i].Key(tok.Headers[0].KeyID)
		if len(keys) == 0 || tok.Claims(keys[0].Key, &claims) != nil {
			return 700027, "Client assertion failed signature validation: no key of the issuer's JWKS verifies it."
		}
		if claims.Subject != f.Subject {
			continue
		}
		audiences := f.Audiences
		if len(audiences) == 0 {
			audiences = []string{FederatedAudience}
		}
		if !slices.ContainsFunc(claims.Audience, func(a string) bool { return slices.Contains(audiences, a) }) {
			return 700212, fmt.Sprintf("No matching federated identity record found for presented assertion audience '%s'.", strings.Join(claims.Audience, ","))
		}
		if claims.Expiry == nil {
			return 50027, "JWT token is invalid or malformed: the exp claim is required."
		}
		if err := claims.ValidateWithLeeway(jwt.Expected{Time: time.Now()}, clockSkew); err != nil {
			return 700024, fmt.Sprintf("Client assertion is not within its valid time range: %v.", err)
		}
		return 0, ""
	}
	if !issuerKnown {
		return 700211, fmt.Sprintf("No matching federated identity record found for presented assertion issuer '%s'.", unverified.Issuer)
	}
	return 700213, fmt.Sprintf("No matching federated identity record found for presented assertion subject '%s'.", unverified.Subject)
}
