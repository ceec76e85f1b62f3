package graph

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Inbound-token key refresh limits: keys are trusted for KeyMaxAge, and an
// unknown kid forces a refresh at most once per KeyMinRefresh so that forged
// tokens cannot make the receiver hammer the key endpoint.
const (
	KeyMaxAge     = 2 * time.Hour
	KeyMinRefresh = 30 * time.Second
	// DefaultSkew is the clock skew allowed on exp and nbf.
	DefaultSkew = 5 * time.Minute
)

const maxDiscoveryBody = 1 << 20

// KeySet holds the inbound-token signing keys discovered from an OpenID
// configuration document, refreshed as the receiver contract says.
type KeySet struct {
	configURL string
	client    *http.Client
	now       func() time.Time

	keys atomic.Pointer[keySnapshot]

	// mu serialises fetches; lastTry is guarded by it.
	mu      sync.Mutex
	lastTry time.Time
	// refreshing stops a second background refresh from starting.
	refreshing atomic.Bool
}

type keySnapshot struct {
	byKID   map[string]*rsa.PublicKey
	fetched time.Time
}

// NewKeySet returns an empty key set for the OpenID configuration at
// configURL; call Refresh to fill it.
func NewKeySet(configURL string, client *http.Client) *KeySet {
	if client == nil {
		client = http.DefaultClient
	}
	return &KeySet{configURL: configURL, client: client, now: time.Now}
}

// ConfigURL is the OpenID configuration the keys come from.
func (k *KeySet) ConfigURL() string { return k.configURL }

// Ready reports whether keys have been fetched at least once.
func (k *KeySet) Ready() bool { return k.keys.Load() != nil }

// Refresh fetches the keys now unless another fetch ran within
// KeyMinRefresh. It returns nil when the keys are current.
func (k *KeySet) Refresh(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.refreshLocked(ctx)
}

func (k *KeySet) refreshLocked(ctx context.Context) error {
	now := k.now()
	if !k.lastTry.IsZero() && now.Sub(k.lastTry) < KeyMinRefresh {
		if k.keys.Load() == nil {
			return errors.New("signing keys not fetched yet; next try after the refresh interval")
		}
		return nil
	}
	k.lastTry = now
	keys, err := k.fetch(ctx)
	if err != nil {
		return err
	}
	k.keys.Store(&keySnapshot{byKID: keys, fetched: now})
	return nil
}

// lookup returns the key for kid, refreshing once on an unknown kid and in
// the background when the keys are older than KeyMaxAge.
func (k *KeySet) lookup(ctx context.Context, kid string) (*rsa.PublicKey, error) {
	snap := k.keys.Load()
	if snap != nil {
		if k.now().Sub(snap.fetched) >= KeyMaxAge && k.refreshing.CompareAndSwap(false, true) {
			go func() {
				defer k.refreshing.Store(false)
				// Detached: the request that noticed must not wait for it.
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				_ = k.Refresh(rctx)
			}()
		}
		if key, ok := snap.byKID[kid]; ok {
			return key, nil
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	// Another request may have fetched while this one waited.
	if cur := k.keys.Load(); cur != snap && cur != nil {
		if key, ok := cur.byKID[kid]; ok {
			return key, nil
		}
	}
	// Detached from the request: a caller hanging up must not waste the
	// one fetch the rate limit allows.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := k.refreshLocked(fctx); err != nil {
		return nil, err
	}
	if cur := k.keys.Load(); cur != nil {
		if key, ok := cur.byKID[kid]; ok {
			return key, nil
		}
	}
	return nil, errUnknownKID
}

var errUnknownKID = errors.New("unknown signing key id")

func (k *KeySet) fetch(ctx context.Context) (map[string]*rsa.PublicKey, error) {
	var cfg struct {
		JWKSURI string `json:"jwks_uri"`
	}
	if err := k.getJSON(ctx, k.configURL, &cfg); err != nil {
		return nil, fmt.Errorf("openid configuration: %w", err)
	}
	if cfg.JWKSURI == "" {
		return nil, fmt.Errorf("openid configuration %s has no jwks_uri", k.configURL)
	}
	var set jose.JSONWebKeySet
	if err := k.getJSON(ctx, cfg.JWKSURI, &set); err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	keys := make(map[string]*rsa.PublicKey, len(set.Keys))
	for _, jwk := range set.Keys {
		pub, ok := jwk.Key.(*rsa.PublicKey)
		if !ok || jwk.KeyID == "" || (jwk.Use != "" && jwk.Use != "sig") {
			continue
		}
		keys[jwk.KeyID] = pub
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("jwks %s holds no RSA signing key with a kid", cfg.JWKSURI)
	}
	return keys, nil
}

func (k *KeySet) getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDiscoveryBody))
	if err != nil {
		return fmt.Errorf("GET %s: read body: %w", url, err)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s: decode: %w", url, err)
	}
	return nil
}

// AuthError is a refused inbound request: Status is 401 (no usable token)
// or 403 (a genuine token not meant for this bot); Reason is a short label
// for metrics.
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
// near expiry) then costs no RSA verification per request. Its lifetime is
// checked again on every use, and a Verifier is made per policy version, so
// a changed audience, tenant or issuer list starts afresh.
type Verifier struct {
	Keys     *KeySet
	Issuers  []string
	Audience string
	TenantID string
	// Skew is the leeway on exp and nbf; zero means DefaultSkew.
	Skew time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu       sync.Mutex
	verified map[string]tokenLifetime
	order    []string // FIFO of verified's keys, for eviction
}

type tokenLifetime struct{ notBefore, expiry time.Time }

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
	if authorization == "" {
		return unauthorized(AuthMissing, errors.New("no Authorization header"))
	}
	if len(authorization) < bearerPrefixBytes || !strings.EqualFold(authorization[:bearerPrefixBytes], "Bearer ") {
		return unauthorized(AuthScheme, errors.New("authorization scheme is not Bearer"))
	}
	raw := strings.TrimSpace(authorization[bearerPrefixBytes:])
	if len(raw) > maxTokenBytes {
		return unauthorized(AuthMalformed, errors.New("token too long"))
	}
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	skew := v.Skew
	if skew == 0 {
		skew = DefaultSkew
	}
	if lt, ok := v.cached(raw); ok && !now.After(lt.expiry.Add(skew)) && !now.Add(skew).Before(lt.notBefore) {
		return nil
	}
	// Only RS256 is accepted: this refuses "none", HS256 with the public key
	// as secret, and every other algorithm before any key is looked at.
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return unauthorized(AuthMalformed, fmt.Errorf("parse token: %w", err))
	}
	if len(tok.Headers) != 1 || tok.Headers[0].KeyID == "" {
		return unauthorized(AuthMalformed, errors.New("token header has no kid"))
	}
	key, err := v.Keys.lookup(ctx, tok.Headers[0].KeyID)
	if errors.Is(err, errUnknownKID) {
		return unauthorized(AuthUnknownKey, fmt.Errorf("kid %q: %w", tok.Headers[0].KeyID, err))
	}
	if err != nil {
		return unauthorized(AuthKeys, err)
	}
	var c inboundClaims
	if err := tok.Claims(key, &c); err != nil {
		return unauthorized(AuthSignature, fmt.Errorf("verify signature: %w", err))
	}

	if c.Expiry == nil {
		return unauthorized(AuthMalformed, errors.New("token has no exp"))
	}
	if now.After(c.Expiry.Time().Add(skew)) {
		return unauthorized(AuthExpired, fmt.Errorf("token expired at %s", c.Expiry.Time().UTC().Format(time.RFC3339)))
	}
	if c.NotBefore != nil && now.Add(skew).Before(c.NotBefore.Time()) {
		return unauthorized(AuthNotYetValid, fmt.Errorf("token not valid before %s", c.NotBefore.Time().UTC().Format(time.RFC3339)))
	}
	if !slices.Contains(v.Issuers, c.Issuer) {
		return forbidden(AuthIssuer, fmt.Errorf("issuer %q is not accepted", c.Issuer))
	}
	if !c.Audience.Contains(v.Audience) {
		return forbidden(AuthAudience, errors.New("token audience is not this bot"))
	}
	tenant := c.TID
	if tenant == "" {
		tenant = c.TIDURI
	}
	if !strings.EqualFold(tenant, v.TenantID) {
		return forbidden(AuthTenant, fmt.Errorf("tenant %q is not the bot's tenant", tenant))
	}
	lt := tokenLifetime{expiry: c.Expiry.Time()}
	if c.NotBefore != nil {
		lt.notBefore = c.NotBefore.Time()
	}
	v.remember(raw, lt)
	return nil
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
