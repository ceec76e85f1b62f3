package receiver

import (
	"container/list"
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	azpolicy "github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/callguard/callguard/internal/graph"
)

// Multi-tenant bots (bot.additionalTenants): every Graph action on a call
// uses an app token from the tenant the call arrived in. Each tenant has
// its own credential (authority {authorityHost}{tenant}) and Graph client,
// made on its first call and kept in a bounded LRU; the home tenant's
// stays. Token requests are made by the credential, outside the cache's
// lock, one at a time per tenant (single flight).

// maxTenantClients bounds the tenants whose credential and token are kept:
// bot.additionalTenants holds at most 1,000, so all of them fit; with "*"
// the least recently used tenant's are dropped beyond it.
const maxTenantClients = 2048

// maxTokenRequests bounds the token requests in flight across tenants. A
// receiver that starts under load from many tenants asks for every
// tenant's token at once; each costs about half a millisecond of CPU here
// (TLS, the tenant's OpenID configuration, the token) and mostly waits on
// the authority (100-300 ms over the internet). A thousand runnable at once
// held the acknowledgements back on one core; 4 at a time made 1,000
// tenants' first calls miss their deadline waiting for a token (with
// authority latency, 4 would take a minute). 64 keeps a thousand tenants'
// tokens within seconds and the acknowledgements' share of the CPU.
const maxTokenRequests = 64

// tokenFailureTTL is how long a tenant whose token request failed for good
// (Entra refused it: the app is not consented there, or not multi-tenant)
// is answered from memory, without asking Entra again.
const tokenFailureTTL = 30 * time.Second

// tokenRefreshLead is how long before expiry a cached token is renewed, as
// the Graph client does.
const tokenRefreshLead = 5 * time.Minute

// tenantCredential hands out one tenant's app tokens: from memory while
// valid, else from one token request at a time, shared by every caller
// that needs it meanwhile; a token request Entra refused is remembered for
// tokenFailureTTL, so that the calls of an unconsented tenant fail at once
// instead of each asking and waiting.
type tenantCredential struct {
	cred azcore.TokenCredential
	// onRequest, if set, is told about every token request: its error.
	onRequest func(err error)
	// slots, if set, bounds the token requests in flight across tenants.
	slots chan struct{}

	token atomic.Pointer[cachedAccessToken]

	mu       sync.Mutex
	inflight *tokenFlight
	failure  error
	failedAt time.Time
}

type cachedAccessToken struct {
	scopes    string
	token     azcore.AccessToken
	refreshAt time.Time
}

type tokenFlight struct {
	done  chan struct{}
	token azcore.AccessToken
	err   error
}

// GetToken implements azcore.TokenCredential.
func (c *tenantCredential) GetToken(ctx context.Context, opts azpolicy.TokenRequestOptions) (azcore.AccessToken, error) {
	scopes := scopeKey(opts.Scopes)
	if t := c.token.Load(); t != nil && t.scopes == scopes && time.Now().Before(t.refreshAt) {
		return t.token, nil
	}
	c.mu.Lock()
	if c.failure != nil && time.Since(c.failedAt) < tokenFailureTTL {
		err := c.failure
		c.mu.Unlock()
		return azcore.AccessToken{}, err
	}
	f := c.inflight
	if f == nil {
		f = &tokenFlight{done: make(chan struct{})}
		c.inflight = f
		// The request outlives a caller that gives up: the others wait for
		// it, bounded by the attempt timeout of the caller that started it.
		go c.request(context.WithoutCancel(ctx), deadlineOf(ctx), opts, scopes, f)
	}
	c.mu.Unlock()
	select {
	case <-f.done:
		return f.token, f.err
	case <-ctx.Done():
		return azcore.AccessToken{}, ctx.Err()
	}
}

// scopeKey names the scopes of a token request; the Graph client asks for
// one scope, named without allocating.
func scopeKey(scopes []string) string {
	if len(scopes) == 1 {
		return scopes[0]
	}
	return strings.Join(scopes, " ")
}

// deadlineOf is ctx's deadline, or 30 s from now.
func deadlineOf(ctx context.Context) time.Time {
	if dl, ok := ctx.Deadline(); ok {
		return dl
	}
	return time.Now().Add(30 * time.Second)
}

func (c *tenantCredential) request(ctx context.Context, deadline time.Time, opts azpolicy.TokenRequestOptions, scopes string, f *tokenFlight) {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	f.err = ctx.Err()
	if c.slots != nil {
		select {
		case c.slots <- struct{}{}:
			defer func() { <-c.slots }()
		case <-ctx.Done():
			f.err = ctx.Err()
		}
	}
	if f.err == nil {
		f.token, f.err = c.cred.GetToken(ctx, opts)
	}
	if c.onRequest != nil {
		c.onRequest(f.err)
	}
	if f.err == nil {
		refresh := f.token.ExpiresOn.Add(-tokenRefreshLead)
		if !f.token.RefreshOn.IsZero() && f.token.RefreshOn.Before(refresh) {
			refresh = f.token.RefreshOn
		}
		c.token.Store(&cachedAccessToken{scopes: scopes, token: f.token, refreshAt: refresh})
	}
	c.mu.Lock()
	c.inflight = nil
	if f.err == nil {
		c.failure = nil
	} else if refusedByAuthority(f.err) {
		c.failure, c.failedAt = f.err, time.Now()
	}
	c.mu.Unlock()
	close(f.done)
}

// refusedByAuthority tells a token request Entra answered with a client
// error (400 or 401: no consent in that tenant, an app that is not
// multi-tenant, a wrong secret) from one that may succeed on another try
// (the authority unreachable, 429, 5xx).
func refusedByAuthority(err error) bool {
	var afe *azidentity.AuthenticationFailedError
	if errors.As(err, &afe) && afe.RawResponse != nil {
		s := afe.RawResponse.StatusCode
		return s >= 400 && s < 500 && s != http.StatusTooManyRequests && s != http.StatusRequestTimeout
	}
	return false
}

// tenantClient is one tenant's credential and Graph client.
type tenantClient struct {
	tenant string
	cred   *tenantCredential
	graph  *graph.Client
	// scopes are the Graph client's token scopes ({endpoint}/.default).
	scopes []string
}

// tenantClients are the Graph clients of a policy version by tenant: the
// home tenant's, made with the version, and the other tenants' made on
// their first call, at most maxTenantClients of them, least recently used
// dropped first.
type tenantClients struct {
	home *tenantClient
	// make builds a tenant's credential and client; it does no network
	// request (the credential asks for tokens when first used).
	make func(tenant string) (*tenantClient, error)
	max  int

	mu    sync.Mutex
	byID  map[string]*list.Element // of *tenantClient
	order list.List                // most recently used first
}

// get returns the client of a tenant (lower-cased; "" is the home tenant).
func (tc *tenantClients) get(tenant string) (*tenantClient, error) {
	if tenant == "" || tenant == tc.home.tenant {
		return tc.home, nil
	}
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if e, ok := tc.byID[tenant]; ok {
		tc.order.MoveToFront(e)
		return e.Value.(*tenantClient), nil
	}
	c, err := tc.make(tenant)
	if err != nil {
		return nil, err
	}
	if tc.byID == nil {
		tc.byID = map[string]*list.Element{}
	}
	tc.byID[tenant] = tc.order.PushFront(c)
	if tc.order.Len() > tc.max {
		last := tc.order.Back()
		tc.order.Remove(last)
		delete(tc.byID, last.Value.(*tenantClient).tenant)
	}
	return c, nil
}

// len is how many tenants other than the home tenant have a client.
func (tc *tenantClients) len() int {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.order.Len()
}
