package policy

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// TestIndexAgainstNaive builds number sets of random exact numbers and
// prefixes of every length and checks the index against brute force.
func TestIndexAgainstNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	digits := func(n int) string {
		var sb strings.Builder
		for range n {
			// Few distinct digits, so that prefixes and numbers collide often.
			sb.WriteByte(byte('0' + r.IntN(3)))
		}
		return sb.String()
	}
	type set struct{ exact, prefix []string }
	sets := make([]set, 6)
	var b indexBuilder
	for i := range sets {
		var exact, prefix []uint64
		for range 40 {
			e := digits(1 + r.IntN(maxKeyDigits))
			sets[i].exact = append(sets[i].exact, e)
			exact = append(exact, numberKey([]byte(e)))
			p := digits(1 + r.IntN(6))
			sets[i].prefix = append(sets[i].prefix, p)
			prefix = append(prefix, numberKey([]byte(p)))
		}
		b.add(b.newSet(), exact, prefix)
	}
	ix := b.build()
	for range 20000 {
		num := digits(1 + r.IntN(maxKeyDigits+4))
		var got setBits
		ix.lookup([]byte(num), &got)
		for i, s := range sets {
			want := false
			for _, e := range s.exact {
				want = want || e == num
			}
			for _, p := range s.prefix {
				want = want || strings.HasPrefix(num, p)
			}
			if got.has(int32(i)) != want {
				t.Fatalf("number %s in set %d: index says %v, brute force %v", num, i, got.has(int32(i)), want)
			}
		}
	}
}
