package graph

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Defaults of KeySetOptions.
const (
	// DefaultKeyRefresh is how often Run refreshes keys that are working
	// (at most every 2 h, and at once on an unknown kid: docs/security.md).
	DefaultKeyRefresh = 2 * time.Hour
	// DefaultKeyMaxAge is how long keys stay trusted after the last fetch
	// that succeeded. Entra and the Bot Framework publish a key well before
	// signing with it and keep signing keys for weeks, so a day of failed
	// refreshes (a dozen attempts a minute) loses nothing genuine, while a
	// key Microsoft withdrew is not trusted past a day of broken fetches.
	DefaultKeyMaxAge = 24 * time.Hour
	// DefaultUnknownKIDInterval is the least time between the start of one
	// key fetch and the start of a fetch caused by an unknown kid: a flood of
	// forged kids costs at most one fetch per interval.
	DefaultUnknownKIDInterval = 2 * time.Second
	// DefaultUnknownKIDWait is how long a token with an unknown kid waits for
	// a fetch that started after it arrived. It covers the interval plus a
	// second for the fetch, so the first tokens of a new key are accepted
	// even right after a forged kid spent a fetch, and stays well inside the
	// ~5 s Graph waits for an acknowledgement.
	DefaultUnknownKIDWait = 3 * time.Second
	// DefaultFetchBackoffMin and DefaultFetchBackoffMax bound the jittered,
	// doubling wait between failed fetches: recovery within seconds of the
	// OpenID endpoint coming back, about one attempt per 5 s while it is down.
	DefaultFetchBackoffMin = 250 * time.Millisecond
	DefaultFetchBackoffMax = 5 * time.Second
	// DefaultKeyFetchTimeout bounds one fetch (configuration and JWKS).
	DefaultKeyFetchTimeout = 10 * time.Second
	// DefaultUnknownKIDWaiters bounds the tokens with unknown kids waiting
	// for a fetch at once. Each holds a connection while it waits, so a
	// flood of forged kids could otherwise fill the receiver's connection
	// cap (256 at the least); past the bound they are refused at once.
	DefaultUnknownKIDWaiters = 32
)

// minRSABits is the smallest RSA signing key trusted.
const minRSABits = 2048

const maxDiscoveryBody = 1 << 20

// KeySetOptions tune a KeySet; zero fields take the defaults above.
type KeySetOptions struct {
	RefreshInterval    time.Duration
	MaxAge             time.Duration
	UnknownKIDInterval time.Duration
	UnknownKIDWait     time.Duration
	BackoffMin         time.Duration
	BackoffMax         time.Duration
	FetchTimeout       time.Duration
	// UnknownKIDWaiters replaces DefaultUnknownKIDWaiters.
	UnknownKIDWaiters int
	// Logger is told of keys skipped in a fetched set (nil: not logged).
	Logger *slog.Logger
	// Now and After are the clock (time.Now and time.After when nil), so
	// tests can step over hours without waiting for them.
	Now   func() time.Time
	After func(time.Duration) <-chan time.Time
}

func (o KeySetOptions) withDefaults() KeySetOptions {
	set := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	set(&o.RefreshInterval, DefaultKeyRefresh)
	set(&o.MaxAge, DefaultKeyMaxAge)
	set(&o.UnknownKIDInterval, DefaultUnknownKIDInterval)
	set(&o.UnknownKIDWait, DefaultUnknownKIDWait)
	set(&o.BackoffMin, DefaultFetchBackoffMin)
	set(&o.BackoffMax, DefaultFetchBackoffMax)
	set(&o.FetchTimeout, DefaultKeyFetchTimeout)
	if o.UnknownKIDWaiters <= 0 {
		o.UnknownKIDWaiters = DefaultUnknownKIDWaiters
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.After == nil {
		o.After = time.After
	}
	return o
}

// KeySet holds the inbound-token signing keys discovered from an OpenID
// configuration document. Run keeps them current; tokens with a kid it does
// not hold make it fetch again, rate-limited (see DefaultUnknownKIDInterval).
type KeySet struct {
	configURL string
	client    *http.Client
	opt       KeySetOptions

	keys atomic.Pointer[keySnapshot]
	// waiters counts the tokens with unknown kids waiting for a fetch.
	waiters atomic.Int64

	// mu guards the fetch bookkeeping: one fetch runs at a time.
	mu sync.Mutex
	// lastStart is when the latest fetch started.
	lastStart time.Time
	// inflight is the fetch running now; pending is the fetch that tokens
	// with unknown kids wait for, started once the interval allows.
	inflight, pending *fetchRound
	// skipped describes the keys the last fetch skipped, so that the same
	// ones are logged once, not on every fetch.
	skipped string
}

type keySnapshot struct {
	byKID map[string]*rsa.PublicKey
	// fetched is when the fetch that got these keys started.
	fetched time.Time
}

// fetchRound is one fetch that several callers may wait for.
type fetchRound struct {
	done chan struct{}
	err  error // set before done is closed
}

// NewKeySet returns an empty key set for the OpenID configuration at
// configURL, with the default timing; call Run to fill and refresh it.
func NewKeySet(configURL string, client *http.Client) *KeySet {
	return NewKeySetWithOptions(configURL, client, KeySetOptions{})
}

// NewKeySetWithOptions is NewKeySet with other timing.
func NewKeySetWithOptions(configURL string, client *http.Client, opts KeySetOptions) *KeySet {
	if client == nil {
		client = http.DefaultClient
	}
	// A copy that follows redirects only to https: an https configuration
	// redirecting to http would hand the keys to whoever is on that path.
	c := *client
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if req.URL.Scheme != "https" {
			return fmt.Errorf("redirect to %s refused: signing keys are fetched over https only", req.URL.Redacted())
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	return &KeySet{configURL: configURL, client: &c, opt: opts.withDefaults()}
}

// ConfigURL is the OpenID configuration the keys come from.
func (k *KeySet) ConfigURL() string { return k.configURL }

// Ready reports whether the set holds keys that have not expired: fetched,
// and confirmed by a fetch within MaxAge.
func (k *KeySet) Ready() bool {
	_, err := k.current()
	return err == nil
}

// current returns the keys if they may be used.
func (k *KeySet) current() (*keySnapshot, error) {
	snap := k.keys.Load()
	if snap == nil {
		return nil, fmt.Errorf("signing keys from %s not fetched yet", k.configURL)
	}
	if age := k.opt.Now().Sub(snap.fetched); age >= k.opt.MaxAge {
		return nil, fmt.Errorf("signing keys expired: no fetch from %s has succeeded for %s", k.configURL, age.Round(time.Second))
	}
	return snap, nil
}

// Run keeps the keys current until ctx ends: it fetches at once, retries
// failures after a jittered backoff (BackoffMin doubling to BackoffMax), and
// refreshes every RefreshInterval after a success. onError, when not nil, is
// told of every failed fetch. Call it once per key set, in its own
// goroutine.
func (k *KeySet) Run(ctx context.Context, onError func(error)) {
	backoff := k.opt.BackoffMin
	for {
		err := k.Refresh(ctx)
		if ctx.Err() != nil {
			return
		}
		wait := k.opt.RefreshInterval
		if err != nil {
			if onError != nil {
				onError(err)
			}
			// Between half and all of the backoff, so that replicas that
			// failed together do not retry together.
			wait = backoff/2 + rand.N(backoff/2+1)
			backoff = min(2*backoff, k.opt.BackoffMax)
		} else {
			backoff = k.opt.BackoffMin
		}
		select {
		case <-ctx.Done():
			return
		case <-k.opt.After(wait):
		}
	}
}

// Refresh fetches the keys now, or waits for the fetch already running.
// It returns nil when that fetch succeeded.
func (k *KeySet) Refresh(ctx context.Context) error {
	k.mu.Lock()
	if r := k.inflight; r != nil {
		k.mu.Unlock()
		select {
		case <-r.done:
			return r.err
		case <-ctx.Done():
			return fmt.Errorf("waiting for the signing key fetch: %w", ctx.Err())
		}
	}
	r := &fetchRound{done: make(chan struct{})}
	started := k.beginLocked(r)
	k.mu.Unlock()
	k.finish(ctx, r, started)
	return r.err
}

// beginLocked makes r the running fetch; k.mu is held.
func (k *KeySet) beginLocked(r *fetchRound) time.Time {
	k.inflight = r
	k.lastStart = k.opt.Now()
	return k.lastStart
}

// finish runs the fetch of r and publishes its result.
func (k *KeySet) finish(ctx context.Context, r *fetchRound, started time.Time) {
	fctx, cancel := context.WithTimeout(ctx, k.opt.FetchTimeout)
	keys, err := k.fetch(fctx)
	cancel()
	if err == nil {
		k.keys.Store(&keySnapshot{byKID: keys, fetched: started})
	}
	r.err = err
	k.mu.Lock()
	k.inflight = nil
	k.mu.Unlock()
	close(r.done)
}

// holds reports whether kid is among the current, unexpired keys.
func (k *KeySet) holds(kid string) bool {
	snap, err := k.current()
	return err == nil && snap.byKID[kid] != nil
}

// lookup returns the key for kid. An unknown kid waits, at most
// UnknownKIDWait, for a fetch that starts after it arrived: so a forged kid
// that spent the previous fetch cannot make a genuine new key wait longer
// than one interval. When UnknownKIDWaiters wait already it does not wait
// (errKeyWaitersFull), but still has that fetch made, so that the key is
// there when Graph redelivers.
func (k *KeySet) lookup(ctx context.Context, kid string) (*rsa.PublicKey, error) {
	snap, err := k.current()
	if err != nil {
		return nil, err
	}
	if key, ok := snap.byKID[kid]; ok {
		return key, nil
	}
	k.mu.Lock()
	// A fetch may have finished since the keys were loaded above.
	if key, ok := k.keys.Load().byKID[kid]; ok {
		k.mu.Unlock()
		return key, nil
	}
	r := k.pending
	if r == nil {
		r = &fetchRound{done: make(chan struct{})}
		k.pending = r
		go k.startWhenAllowed(r)
	}
	k.mu.Unlock()
	if k.waiters.Add(1) > int64(k.opt.UnknownKIDWaiters) {
		k.waiters.Add(-1)
		return nil, fmt.Errorf("%w: %d tokens with unknown kids wait for keys already", errKeyWaitersFull, k.opt.UnknownKIDWaiters)
	}
	defer k.waiters.Add(-1)
	select {
	case <-r.done:
	case <-k.opt.After(k.opt.UnknownKIDWait):
		return nil, fmt.Errorf("%w: no key fetch within %s", errUnknownKID, k.opt.UnknownKIDWait)
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: request ended while keys were fetched: %w", errUnknownKID, ctx.Err())
	}
	if r.err != nil {
		return nil, fmt.Errorf("%w: fetching keys failed: %w", errUnknownKID, r.err)
	}
	snap, err = k.current()
	if err != nil {
		return nil, err
	}
	if key, ok := snap.byKID[kid]; ok {
		return key, nil
	}
	return nil, errUnknownKID
}

// startWhenAllowed starts the pending fetch r once no fetch is running and
// UnknownKIDInterval has passed since the last one started. Tokens that
// arrive until then join r; later ones make the next round.
func (k *KeySet) startWhenAllowed(r *fetchRound) {
	for {
		k.mu.Lock()
		if running := k.inflight; running != nil {
			k.mu.Unlock()
			<-running.done
			continue
		}
		if d := k.lastStart.Add(k.opt.UnknownKIDInterval).Sub(k.opt.Now()); d > 0 {
			k.mu.Unlock()
			<-k.opt.After(d)
			continue
		}
		k.pending = nil
		started := k.beginLocked(r)
		k.mu.Unlock()
		// Detached from the requests: one hanging up must not waste the
		// fetch the others wait for.
		k.finish(context.Background(), r, started)
		return
	}
}

var (
	errUnknownKID     = errors.New("unknown signing key id")
	errKeyWaitersFull = errors.New("unknown signing key id, not waited for")
)

func (k *KeySet) fetch(ctx context.Context) (map[string]*rsa.PublicKey, error) {
	if err := requireHTTPS("openid configuration URL", k.configURL); err != nil {
		return nil, err
	}
	var cfg struct {
		JWKSURI string `json:"jwks_uri"`
	}
	if err := k.getJSON(ctx, k.configURL, &cfg); err != nil {
		return nil, fmt.Errorf("openid configuration: %w", err)
	}
	if cfg.JWKSURI == "" {
		return nil, fmt.Errorf("openid configuration %s has no jwks_uri", k.configURL)
	}
	if err := requireHTTPS("jwks_uri of "+k.configURL, cfg.JWKSURI); err != nil {
		return nil, err
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := k.getJSON(ctx, cfg.JWKSURI, &set); err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	keys, skipped, err := signingKeys(set.Keys)
	if err != nil {
		return nil, fmt.Errorf("jwks %s: %w", cfg.JWKSURI, err)
	}
	k.logSkipped(cfg.JWKSURI, skipped)
	if len(keys) == 0 {
		return nil, fmt.Errorf("jwks %s holds no RSA signing key with a kid", cfg.JWKSURI)
	}
	return keys, nil
}

// signingKeys picks the RS256 signing keys of a JWKS's entries by kid, and
// says why it skipped the others. A key that does not parse, is labelled
// for another algorithm or is too short is skipped, not fatal: Graph may
// publish keys for others, and one odd key must not stop the rest from
// being trusted. Two entries with one kid make the set ambiguous: refused.
func signingKeys(entries []json.RawMessage) (map[string]*rsa.PublicKey, []string, error) {
	keys := make(map[string]*rsa.PublicKey, len(entries))
	seen := make(map[string]bool, len(entries))
	var skipped []string
	for i, raw := range entries {
		var head struct {
			KID string `json:"kid"`
			Alg string `json:"alg"`
			Use string `json:"use"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d: %v", i, err))
			continue
		}
		if head.KID != "" && seen[head.KID] {
			return nil, nil, fmt.Errorf("kid %q is listed twice: the set is ambiguous, refused", head.KID)
		}
		seen[head.KID] = true
		switch {
		case head.KID == "":
			skipped = append(skipped, fmt.Sprintf("key %d: no kid", i))
			continue
		case head.Use != "" && head.Use != "sig":
			// An encryption key: not for us, not worth a log line.
			continue
		case head.Alg != "" && head.Alg != string(jose.RS256):
			skipped = append(skipped, fmt.Sprintf("kid %q: alg %s, not RS256", head.KID, head.Alg))
			continue
		}
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(raw); err != nil {
			skipped = append(skipped, fmt.Sprintf("kid %q: %v", head.KID, err))
			continue
		}
		pub, ok := jwk.Key.(*rsa.PublicKey)
		switch {
		case !ok:
			skipped = append(skipped, fmt.Sprintf("kid %q: not an RSA public key", head.KID))
		case pub.N.BitLen() < minRSABits:
			skipped = append(skipped, fmt.Sprintf("kid %q: RSA key of %d bits, under %d", head.KID, pub.N.BitLen(), minRSABits))
		default:
			keys[head.KID] = pub
		}
	}
	return keys, skipped, nil
}

// logSkipped logs the keys a fetch skipped, when they differ from the last
// fetch's.
func (k *KeySet) logSkipped(jwksURI string, skipped []string) {
	desc := strings.Join(skipped, "; ")
	k.mu.Lock()
	changed := desc != k.skipped
	k.skipped = desc
	k.mu.Unlock()
	if changed && desc != "" {
		k.opt.Logger.Warn("signing keys skipped; the others are used", "jwksURI", jwksURI, "skipped", skipped)
	}
}

// requireHTTPS refuses a key URL that is not https: whoever can serve the
// keys can forge every notification.
func requireHTTPS(what, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%s %q is not an https URL: keys fetched over plain http could be replaced on the way, and every notification forged", what, u.Redacted())
	}
	return nil
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
