package state

import (
	"crypto/hmac"
	"crypto/sha256"
	"hash"
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
}

func newHasher(key []byte) *hasher { return &hasher{mac: hmac.New(sha256.New, key)} }

func (h *hasher) key(s string) callerKey {
	h.mac.Reset()
	h.mac.Write([]byte(s))
	var k callerKey
	copy(k[:], h.mac.Sum(h.sum[:0]))
	return k
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
