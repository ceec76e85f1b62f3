package graph

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// DefaultSkew is the clock skew allowed on exp and nbf.
const DefaultSkew = 5 * time.Minute

// AuthError is a refused inbound request: Status is 401 (no usable token),
// 403 (a genuine token not meant for this bot) or 503 (a token with an
// unknown kid while too many wait for keys: to be sent again); Reason is a
// short label for metrics.
type AuthError struct {
	Status int
	Reason string
	Err    error
}

func (e *AuthError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *AuthError) Unwrap() error { return e.Err }

// Reasons an inbound token is refused.
const (
	AuthMissing     = "missing"
	AuthScheme      = "scheme"
	AuthMalformed   = "malformed"
	AuthUnknownKey  = "unknown_key"
	AuthKeysBusy    = "unknown_key_busy"
	AuthKeys        = "keys_unavailable"
	AuthSignature   = "signature"
	AuthExpired     = "expired"
	AuthNotYetValid = "not_yet_valid"
	AuthAudience    = "audience"
	AuthIssuer      = "issuer"
	AuthTenant      = "tenant"
)

const (
	maxTokenBytes     = 16 << 10
	bearerPrefixBytes = len("Bearer ")
)

func unauthorized(reason string, err error) *AuthError {
	return &AuthError{Status: http.StatusUnauthorized, Reason: reason, Err: err}
}

func forbidden(reason string, err error) *AuthError {
	return &AuthError{Status: http.StatusForbidden, Reason: reason, Err: err}
}

// verifiedCacheSize bounds the tokens remembered as verified.
const verifiedCacheSize = 1024

// Verifier checks the bearer tokens Graph sends with notifications.
//
// A token that passed every check is remembered, by its exact bytes, until
// it expires: a sender that reuses its token (as token services do until
// near expiry) then costs no RSA verification per request. Its lifetime,
// and that its key is still published and unexpired, are checked again on
// every use, and a Verifier is made per policy version, so a changed
// audience, tenant or issuer list starts afresh.
type Verifier struct {
	Keys     *KeySet
	Issuers  []string
	Audience string
	// TenantID is the bot's home tenant.
	TenantID string
	// AdditionalTenants are the other tenants whose tokens are accepted
	// (multi-tenant bots: bot.additionalTenants); the single entry "*"
	// accepts every tenant. Compared without regard to ASCII case.
	AdditionalTenants []string
	// Skew is the leeway on exp and nbf; zero means DefaultSkew.
	Skew time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu       sync.Mutex
	verified map[string]tokenLifetime
	order    []string // FIFO of verified's keys, for eviction

	tenantsOnce sync.Once
	tenants     map[string]struct{} // lower-cased: TenantID and AdditionalTenants
	anyTenant   bool
}

// anyTenant is the AdditionalTenants entry that accepts every tenant.
const anyTenant = "*"

// tokenLifetime is what a remembered token needs checked again: its
// validity window, and the key it was signed with, which must still be
// published and current.
type tokenLifetime struct {
	notBefore, expiry time.Time
	kid               string
	// tenant is the token's tenant claim, lower-cased.
	tenant string
}

// inboundClaims are the claims checked: the tenant comes as tid or, in
// older tokens, as the long claim name.
type inboundClaims struct {
	jwt.Claims
	TID    string `json:"tid"`
	TIDURI string `json:"http://schemas.microsoft.com/identity/claims/tenantid"`
}

// Verify checks an Authorization header value. It returns nil or an
// *AuthError.
func (v *Verifier) Verify(ctx context.Context, authorization string) error {
	_, err := v.VerifyTenant(ctx, authorization)
	return err
}

// VerifyTenant checks an Authorization header value as Verify does and
// returns the token's tenant claim, lower-cased: the tenant the call
// arrived in, whose app tokens act on it.
func (v *Verifier) VerifyTenant(ctx context.Context, authorization string) (string, error) {
	if authorization == "" {
		return "", unauthorized(AuthMissing, errors.New("no Authorization header"))
	}
	if len(authorization) < bearerPrefixBytes || !strings.EqualFold(authorization[:bearerPrefixBytes], "Bearer ") {
		return "", unauthorized(AuthScheme, errors.New("authorization scheme is not Bearer"))
	}
	raw := strings.TrimSpace(authorization[bearerPrefixBytes:])
	if len(raw) > maxTokenBytes {
		return "", unauthorized(AuthMalformed, errors.New("token too long"))
	}
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	skew := v.Skew
	if skew == 0 {
		skew = DefaultSkew
	}
	if lt, ok := v.cached(raw); ok && !now.After(lt.expiry.Add(skew)) && !now.Add(skew).Before(lt.notBefore) && v.Keys.holds(lt.kid) {
		return lt.tenant, nil
	}
	// Only RS256 is accepted: this refuses "none", HS256 with the public key
	// as secret, and every other algorithm before any key is looked at.
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return "", unauthorized(AuthMalformed, fmt.Errorf("parse token: %w", err))
	}
	if len(tok.Headers) != 1 || tok.Headers[0].KeyID == "" {
		return "", unauthorized(AuthMalformed, errors.New("token header has no kid"))
	}
	kid := tok.Headers[0].KeyID
	key, err := v.Keys.lookup(ctx, kid)
	if errors.Is(err, errKeyWaitersFull) {
		return "", &AuthError{Status: http.StatusServiceUnavailable, Reason: AuthKeysBusy, Err: fmt.Errorf("kid %q: %w", kid, err)}
	}
	if errors.Is(err, errUnknownKID) {
		return "", unauthorized(AuthUnknownKey, fmt.Errorf("kid %q: %w", kid, err))
	}
	if err != nil {
		return "", unauthorized(AuthKeys, err)
	}
	var c inboundClaims
	if err := tok.Claims(key, &c); err != nil {
		return "", unauthorized(AuthSignature, fmt.Errorf("verify signature: %w", err))
	}

	if c.Expiry == nil {
		return "", unauthorized(AuthMalformed, errors.New("token has no exp"))
	}
	if now.After(c.Expiry.Time().Add(skew)) {
		return "", unauthorized(AuthExpired, fmt.Errorf("token expired at %s", c.Expiry.Time().UTC().Format(time.RFC3339)))
	}
	if c.NotBefore != nil && now.Add(skew).Before(c.NotBefore.Time()) {
		return "", unauthorized(AuthNotYetValid, fmt.Errorf("token not valid before %s", c.NotBefore.Time().UTC().Format(time.RFC3339)))
	}
	if !slices.Contains(v.Issuers, c.Issuer) {
		return "", forbidden(AuthIssuer, fmt.Errorf("issuer %q is not accepted", c.Issuer))
	}
	if !c.Audience.Contains(v.Audience) {
		return "", forbidden(AuthAudience, errors.New("token audience is not this bot"))
	}
	tenant := c.TID
	if tenant == "" {
		tenant = c.TIDURI
	}
	tenant = strings.ToLower(tenant)
	if !v.accepts(tenant) {
		return "", forbidden(AuthTenant, fmt.Errorf("tenant %q is not the bot's tenant nor one of its additional tenants", tenant))
	}
	lt := tokenLifetime{expiry: c.Expiry.Time(), kid: kid, tenant: tenant}
	if c.NotBefore != nil {
		lt.notBefore = c.NotBefore.Time()
	}
	v.remember(raw, lt)
	return tenant, nil
}

// accepts reports whether a lower-cased tenant claim is the home tenant or
// one of the additional tenants (any tenant with "*").
func (v *Verifier) accepts(tenant string) bool {
	if tenant == "" {
		return false
	}
	v.tenantsOnce.Do(func() {
		v.tenants = make(map[string]struct{}, 1+len(v.AdditionalTenants))
		v.tenants[strings.ToLower(v.TenantID)] = struct{}{}
		for _, t := range v.AdditionalTenants {
			if t == anyTenant {
				v.anyTenant = true
				continue
			}
			v.tenants[strings.ToLower(t)] = struct{}{}
		}
	})
	if v.anyTenant {
		return true
	}
	_, ok := v.tenants[tenant]
	return ok
}

func (v *Verifier) cached(raw string) (tokenLifetime, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	lt, ok := v.verified[raw]
	return lt, ok
}

func (v *Verifier) remember(raw string, lt tokenLifetime) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.verified == nil {
		v.verified = make(map[string]tokenLifetime, verifiedCacheSize)
	}
	if _, ok := v.verified[raw]; ok {
		v.verified[raw] = lt
		return
	}
	if len(v.order) == verifiedCacheSize {
		delete(v.verified, v.order[0])
		v.order = v.order[1:]
	}
	v.verified[raw] = lt
	v.order = append(v.order, raw)
}
