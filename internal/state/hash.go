package state

import (
	"crypto/hmac"
	"crypto/sha256"
	"hash"
	"slices"
	"sync"
	"time"
)

// keyLen is how much of a caller's HMAC-SHA256 a store keeps: 128 bits,
// far beyond any collision among a policy's callers.
const keyLen = 16

// callerKey is a caller's (or a claim's) key in a store.
type callerKey [keyLen]byte

// hasher computes callerKeys with one HMAC; not safe for concurrent use.
type hasher struct {
	mac hash.Hash
	sum [sha256.Size]byte
	// in holds the caller's bytes: Write takes a []byte, and converting
	// the string would allocate for every call.
	in []byte
}

func (h *hasher) key(s string) callerKey {
	h.mac.Reset()
	h.in = append(h.in[:0], s...)
	h.mac.Write(h.in)
	var k callerKey
	copy(k[:], h.mac.Sum(h.sum[:0]))
	return k
}

// hashers hands out hashers of one key. A hasher is kept for reuse: making
// one (hmac.New) costs more than hashing a caller, and a store hashes
// every call.
type hashers struct{ pool sync.Pool }

func newHashers(key []byte) *hashers {
	key = slices.Clone(key)
	return &hashers{pool: sync.Pool{New: func() any { return &hasher{mac: hmac.New(sha256.New, key)} }}}
}

func (hs *hashers) get() *hasher  { return hs.pool.Get().(*hasher) }
func (hs *hashers) put(h *hasher) { hs.pool.Put(h) }

// key is s's callerKey.
func (hs *hashers) key(s string) callerKey {
	h := hs.get()
	defer hs.put(h)
	return h.key(s)
}

// callMember is what a store keeps of a call id to count the call once:
// FNV-1a 64, the same on every replica (the id is Graph's, not the
// caller's, so it needs no key).
func callMember(id string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= prime
	}
	return h
}

// ms is t in Unix milliseconds, the unit of every time a store keeps.
func ms(t time.Time) int64 { return t.UnixMilli() }

// durMS is d in whole milliseconds.
func durMS(d time.Duration) int64 { return d.Milliseconds() }

// fromMS is the time of Unix milliseconds m; 0 is the zero time.
func fromMS(m int64) time.Time {
	if m == 0 {
		return time.Time{}
	}
	return time.UnixMilli(m)
}
