package emulator

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // x5t is defined as a SHA-1 thumbprint (RFC 7515 §4.1.7).
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// signingKey is an RSA key with a self-signed certificate: both Entra and the
// Skype token service publish x5c and x5t next to n and e, and some clients
// only read the certificate.
type signingKey struct {
	kid    string
	x5t    string
	key    *rsa.PrivateKey
	cert   *x509.Certificate
	signer jose.Signer

	// tokens are the callback tokens this key signed for notifications,
	// by app and tenant (notificationToken).
	mu     sync.Mutex
	tokens map[[2]string]signedToken
}

// signedToken is a callback token and when it was signed.
type signedToken struct {
	token string
	at    time.Time
}

func newSigningKey(subject string) (*signingKey, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("generating RSA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: subject},
		NotBefore: now.Add(-time.Hour),
		NotAfter:  now.AddDate(1, 0, 0),
		KeyUsage:  x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating signing certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing signing certificate: %w", err)
	}
	sum := sha1.Sum(der) //nolint:gosec // see import.
	x5t := base64.RawURLEncoding.EncodeToString(sum[:])
	// Like Entra and the Skype token service, the key id is the thumbprint.
	kid := x5t
	opts := (&jose.SignerOptions{}).WithType("JWT").WithHeader("x5t", x5t)
	signer, err := jose.NewSigner(jose.SigningKey{
		Algorithm: jose.RS256,
		Key:       jose.JSONWebKey{Key: key, KeyID: kid},
	}, opts)
	if err != nil {
		return nil, fmt.Errorf("creating JWT signer: %w", err)
	}
	return &signingKey{kid: kid, x5t: x5t, key: key, cert: cert, signer: signer, tokens: map[[2]string]signedToken{}}, nil
}

func (k *signingKey) sign(claims map[string]any) (string, error) {
	tok, err := jwt.Signed(k.signer).Claims(claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("signing JWT: %w", err)
	}
	return tok, nil
}

// notificationToken is the callback token of a notification to an app in a
// tenant: the one signed for them less than inboundTokenReuse ago, else a
// new one. Signing under the lock makes a burst of notifications wait for
// one signature rather than each make its own.
func (k *signingKey) notificationToken(appID, tenantID string) (string, error) {
	id := [2]string{appID, tenantID}
	k.mu.Lock()
	defer k.mu.Unlock()
	now := time.Now()
	if t, ok := k.tokens[id]; ok && now.Sub(t.at) < inboundTokenReuse {
		return t.token, nil
	}
	tok, err := k.sign(InboundClaims(appID, tenantID))
	if err != nil {
		return "", err
	}
	// Stale tokens go, so the map holds only the apps notified lately.
	for other, t := range k.tokens {
		if now.Sub(t.at) >= inboundTokenReuse {
			delete(k.tokens, other)
		}
	}
	k.tokens[id] = signedToken{token: tok, at: now}
	return tok, nil
}

// jwk is one key as Entra and api.aps.skype.com publish it.
type jwk struct {
	Kty          string   `json:"kty"`
	Use          string   `json:"use"`
	Kid          string   `json:"kid"`
	X5t          string   `json:"x5t"`
	N            string   `json:"n"`
	E            string   `json:"e"`
	X5c          []string `json:"x5c"`
	Endorsements []string `json:"endorsements,omitempty"`
}

type jwks struct {
	Keys []jwk `json:"keys"`
}

// keyRing holds the current signing key first and, after a rotation, the one
// before it, so tokens signed just before a rotation still verify.
type keyRing struct {
	mu   sync.RWMutex
	keys []*signingKey
}

func (r *keyRing) current() *signingKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.keys[0]
}

func (r *keyRing) lookup(kid string) *signingKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, k := range r.keys {
		if k.kid == kid {
			return k
		}
	}
	return nil
}

// rotate makes k the signing key, keeps the previous one published and drops
// any older one.
func (r *keyRing) rotate(k *signingKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := []*signingKey{k}
	if len(r.keys) > 0 {
		keys = append(keys, r.keys[0])
	}
	r.keys = keys
}

func (r *keyRing) kids() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, len(r.keys))
	for i, k := range r.keys {
		out[i] = k.kid
	}
	return out
}

func (r *keyRing) jwks(endorsements []string) jwks {
	r.mu.RLock()
	defer r.mu.RUnlock()
	set := jwks{Keys: make([]jwk, 0, len(r.keys))}
	for _, k := range r.keys {
		set.Keys = append(set.Keys, jwk{
			Kty:          "RSA",
			Use:          "sig",
			Kid:          k.kid,
			X5t:          k.x5t,
			N:            base64.RawURLEncoding.EncodeToString(k.key.N.Bytes()),
			E:            base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.key.E)).Bytes()),
			X5c:          []string{base64.StdEncoding.EncodeToString(k.cert.Raw)},
			Endorsements: endorsements,
		})
	}
	return set
}
