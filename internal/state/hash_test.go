package state

import (
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"
)

// TestHashersAgreeWithHMAC: reused hashers, from many goroutines at once,
// give every caller the first 16 bytes of its HMAC-SHA256, whatever they
// hashed before (a longer caller included).
func TestHashersAgreeWithHMAC(t *testing.T) {
	hs := newHashers(key)
	callers := []string{"+14255550100", "", "8:orgid:2c9e2f7c-6a4e-4bd8-9d6e-6d0b0b7d9a11", "+1", "+14255550100"}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				c := callers[(g+i)%len(callers)] + fmt.Sprint(i%3)
				mac := hmac.New(sha256.New, key)
				mac.Write([]byte(c))
				var want callerKey
				copy(want[:], mac.Sum(nil))
				if got := hs.key(c); got != want {
					t.Errorf("caller %q: key %x, want %x", c, got, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestCallerKeysAreKeyNames: the two keys Eval names at once are keyName's.
func TestCallerKeysAreKeyNames(t *testing.T) {
	for _, prefix := range []string{"", "callguard:", "a*b?[c]:"} {
		r, err := NewRedis(RedisOptions{Address: "127.0.0.1:1", KeyPrefix: prefix, Namespace: "ns", Name: "p", HashKey: key})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []string{"+14255550100", "someone"} {
			k := r.hashers.key(c)
			calls, blocks := r.callerKeys(k)
			if want := r.keyName(kindCalls, k); calls != want {
				t.Errorf("prefix %q, caller %q: calls key %q, want %q", prefix, c, calls, want)
			}
			if want := r.keyName(kindBlocks, k); blocks != want {
				t.Errorf("prefix %q, caller %q: blocks key %q, want %q", prefix, c, blocks, want)
			}
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
