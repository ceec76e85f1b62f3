package policy

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
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
		ix.lookup([]byte(num), wed, &got)
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

// indexModel is the index as the simplest code says it: per set, exact
// numbers and prefixes as digit strings, each with the second it expires
// (never when it does not).
type indexModel []struct {
	exact  []modelEntry
	prefix []modelEntry
}

type modelEntry struct {
	digits string
	until  uint64
}

const never = math.MaxUint64

func (m indexModel) sets(num string) []int32 { return m.setsAt(num, unixSeconds(wed)) }

func (m indexModel) setsAt(num string, now uint32) []int32 {
	var sets []int32
	for i, s := range m {
		hit := false
		for _, e := range s.exact {
			hit = hit || e.digits == num && len(num) <= maxKeyDigits && uint64(now) < e.until
		}
		for _, e := range s.prefix {
			hit = hit || strings.HasPrefix(num, e.digits) && uint64(now) < e.until
		}
		if hit {
			sets = append(sets, int32(i))
		}
	}
	return sets
}

// buildIndex builds an index and its model of sets given as entries: digit
// strings, a prefix ending in '*', either followed by @ and the second it
// expires.
func buildIndex(sets [][]string) (numberIndex, indexModel) {
	var b indexBuilder
	model := make(indexModel, len(sets))
	for i, entries := range sets {
		var (
			exact, prefix           []uint64
			exactTimed, prefixTimed []timedKey
		)
		for _, e := range entries {
			until := uint64(never)
			if d, at, ok := strings.Cut(e, "@"); ok {
				e = d
				until, _ = strconv.ParseUint(at, 10, 32)
			}
			p, isPrefix := strings.CutSuffix(e, "*")
			k := numberKey([]byte(p))
			switch {
			case isPrefix && until != never:
				prefixTimed = append(prefixTimed, timedKey{k, uint32(until)})
			case isPrefix:
				prefix = append(prefix, k)
			case until != never:
				exactTimed = append(exactTimed, timedKey{k, uint32(until)})
			default:
				exact = append(exact, k)
			}
			if isPrefix {
				model[i].prefix = append(model[i].prefix, modelEntry{p, until})
			} else {
				model[i].exact = append(model[i].exact, modelEntry{p, until})
			}
		}
		set := b.newSet()
		b.add(set, exact, prefix)
		b.addTimed(set, exactTimed, prefixTimed)
	}
	return b.build(), model
}

func lookupSets(ix *numberIndex, num string) []int32 { return lookupSetsAt(ix, num, wed) }

func lookupSetsAt(ix *numberIndex, num string, at time.Time) []int32 {
	var bits setBits
	ix.lookup([]byte(num), at, &bits)
	var sets []int32
	for s := range int32(maxSets) {
		if bits.has(s) {
			sets = append(sets, s)
		}
	}
	return sets
}

// TestIndexTable: exact entries and prefixes of one or several sets, the
// sets each number is in.
func TestIndexTable(t *testing.T) {
	const (
		largestE164  = "999999999999999" // 15 digits
		smallestE164 = "10"              // E.164 numbers have 2 digits or more
		longest      = "999999999999999999"
	)
	for _, tc := range []struct {
		name string
		sets [][]string
		// want maps a number to the sets it is in.
		want map[string][]int32
	}{{
		name: "exact",
		sets: [][]string{{"14255550100", "14255550101", "442071234567"}},
		want: map[string][]int32{
			"14255550100": {0}, "14255550101": {0}, "442071234567": {0},
			"14255550102": nil, "1425555010": nil, "142555501000": nil, "4": nil, "": nil,
		},
	}, {
		name: "leading zeros are digits",
		sets: [][]string{{"01", "1"}, {"001"}},
		want: map[string][]int32{"1": {0}, "01": {0}, "001": {1}, "0001": nil, "10": nil, "0": nil},
	}, {
		name: "duplicates",
		sets: [][]string{{"14255550100", "14255550100", "1900*", "1900*"}, {"14255550100", "14255550100"}},
		want: map[string][]int32{"14255550100": {0, 1}, "19005550100": {0}, "1900": {0}, "14255550101": nil},
	}, {
		name: "prefixes of several lengths overlap exact entries",
		sets: [][]string{
			{"1*", "1900*"},
			{"1900", "19005550100", "1900555*"},
			{"19005550100*", "44*", "4420*", "442071234567"},
		},
		want: map[string][]int32{
			"1":             {0},
			"1900":          {0, 1},
			"19005":         {0},
			"1900555":       {0, 1},
			"19005550100":   {0, 1, 2},
			"190055501001":  {0, 1, 2},
			"19005550101":   {0, 1},
			"442071234567":  {2},
			"4420712345678": {2},
			"4":             nil,
			"2":             nil,
		},
	}, {
		name: "largest and smallest E.164 numbers, and the longest key",
		sets: [][]string{{largestE164, smallestE164}, {longest, "99999999999999*"}},
		want: map[string][]int32{
			largestE164:        {0, 1},
			smallestE164:       {0},
			longest:            {1},
			longest + "9":      {1}, // longer than a key: only prefixes
			"99999999999999":   {1},
			"9999999999999":    nil,
			"9999999999999999": {1},
			"1":                nil,
			"11":               nil,
			"100":              nil,
		},
	}, {
		name: "many sets, each its own key",
		sets: func() [][]string {
			var sets [][]string
			for i := range 100 {
				sets = append(sets, []string{fmt.Sprintf("1555%07d", i), "1555*"})
			}
			return sets
		}(),
		want: map[string][]int32{"15550000042": func() []int32 {
			var all []int32
			for i := range int32(100) {
				all = append(all, i)
			}
			return all
		}()},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			ix, model := buildIndex(tc.sets)
			for num, want := range tc.want {
				if tc.name != "many sets, each its own key" && !slices.Equal(model.sets(num), want) {
					t.Fatalf("the test is wrong: the model puts %s in %v", num, model.sets(num))
				}
				if got := lookupSets(&ix, num); !slices.Equal(got, want) {
					t.Errorf("%s is in sets %v, want %v", num, got, want)
				}
			}
		})
	}
}

// TestIndexSharedList: a list that several rules name is parsed once and
// its keys added to each set; the index is built from it once.
func TestIndexSharedList(t *testing.T) {
	keys := []uint64{numberKey([]byte("300")), numberKey([]byte("100")), numberKey([]byte("200")), numberKey([]byte("100"))}
	var b indexBuilder
	b.add(b.newSet(), keys, nil)
	b.add(b.newSet(), []uint64{numberKey([]byte("400"))}, nil)
	b.add(b.newSet(), keys, nil)
	ix := b.build()
	if n := ix.exact.len(); n != 4 {
		t.Errorf("%d keys in the index, want 4", n)
	}
	for num, want := range map[string][]int32{"100": {0, 2}, "200": {0, 2}, "300": {0, 2}, "400": {1}, "500": nil} {
		if got := lookupSets(&ix, num); !slices.Equal(got, want) {
			t.Errorf("%s is in sets %v, want %v", num, got, want)
		}
	}
}

// FuzzIndex compares the index with the model on sets and numbers made of
// few distinct digits, so that entries, prefixes and numbers collide, and
// expiries (an entry's @second) of few distinct seconds, looked up at a
// second around them.
func FuzzIndex(f *testing.F) {
	f.Add([]byte("0123\n01*\n0\n;012\n0123*\n"), "0123", uint8(0))
	f.Add([]byte("1\n1\n;1*\n;11\n"), "11", uint8(0))
	f.Add([]byte("222222222222222222\n2222222222222222222\n;2*\n"), "222222222222222222", uint8(0))
	f.Add([]byte("0123@5\n01*@3\n0123@7\n;0123\n;012*@5\n0123@2\n"), "0123", uint8(4))
	f.Add([]byte("11@1\n11\n;1*@2\n1*@4\n"), "11", uint8(3))
	f.Fuzz(func(t *testing.T, spec []byte, num string, now uint8) {
		var sets [][]string
		for _, set := range strings.Split(string(spec), ";") {
			var entries []string
			for _, e := range strings.Split(set, "\n") {
				entry, at, timed := strings.Cut(e, "@")
				digits := strings.TrimSuffix(entry, "*")
				if digits == "" || len(digits) > maxKeyDigits || strings.Trim(digits, "0123") != "" ||
					timed && (len(at) != 1 || at[0] < '0' || at[0] > '9') {
					continue
				}
				entries = append(entries, e)
			}
			sets = append(sets, entries)
			if len(sets) == maxSets {
				break
			}
		}
		if strings.Trim(num, "0123456789") != "" || len(num) > 24 {
			return
		}
		ix, model := buildIndex(sets)
		sec := uint32(now % 12)
		if got, want := lookupSetsAt(&ix, num, time.Unix(int64(sec), 0)), model.setsAt(num, sec); !slices.Equal(got, want) {
			t.Fatalf("%q at second %d is in sets %v, the model says %v", num, sec, got, want)
		}
	})
}

// BenchmarkIndex looks up numbers in an index of a million: the same one
// each time (hot, as BenchmarkDecide), and a different one each time, so
// that the search reads memory the last one did not.
func BenchmarkIndex(b *testing.B) {
	const n = 1_000_000
	r := rand.New(rand.NewPCG(1, 2))
	keys := make([]uint64, n)
	numbers := make([][]byte, 0, 2*4096)
	for i := range keys {
		num := fmt.Appendf(nil, "1%d", 2_000_000_000+r.Uint64N(8_000_000_000))
		keys[i] = numberKey(num)
		if i%(n/4096) == 0 && len(numbers) < 4096 {
			numbers = append(numbers, num)
		}
	}
	for len(numbers) < cap(numbers) {
		// Numbers of the same range, almost all of them not listed.
		numbers = append(numbers, fmt.Appendf(nil, "1%d", 2_000_000_000+r.Uint64N(8_000_000_000)))
	}
	var bld indexBuilder
	bld.add(bld.newSet(), keys, []uint64{numberKey([]byte("1900"))})
	ix := bld.build()
	var bits setBits
	if ix.lookup(numbers[1], wed, &bits); !bits.has(0) {
		b.Fatal("a listed number is not in the index")
	}
	for _, c := range []struct {
		name    string
		numbers [][]byte
	}{{"hit", numbers[1:2]}, {"hit-random", numbers[:4096]}, {"miss-random", numbers[4096:]}} {
		b.Run("entries=1M/"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			i, start := 0, cpuTime()
			for b.Loop() {
				var bits setBits
				ix.lookup(c.numbers[i&(len(c.numbers)-1)], wed, &bits)
				i++
			}
			b.ReportMetric(float64(cpuTime()-start)/float64(i), "cpu-ns/op")
		})
	}
}

// BenchmarkIndexBuild builds the index of a million numbers of six lists.
func BenchmarkIndexBuild(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 4))
	lists := make([][]uint64, 6)
	for i := range lists {
		for range 1_000_000 / len(lists) {
			lists[i] = append(lists[i], numberKey(fmt.Appendf(nil, "1%d", 2_000_000_000+r.Uint64N(8_000_000_000))))
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		var bld indexBuilder
		set := bld.newSet()
		for _, l := range lists {
			bld.add(set, slices.Clone(l), nil)
		}
		_ = bld.build()
	}
}

// TestIndexCombinationsStored: a key's sets are stored once for all keys
// when they share them, per key that differs when few do, per key when
// many do; lookups give the same either way.
func TestIndexCombinationsStored(t *testing.T) {
	list := make([]string, 1000)
	for i := range list {
		list[i] = fmt.Sprintf("1425555%04d", i)
	}
	for _, tc := range []struct {
		name         string
		sets         [][]string
		combo, other int
	}{
		{"one set", [][]string{list}, 0, 0},
		{"a list and a few numbers of other rules", [][]string{{"14255550007"}, list, {"14255550999", "19005550100"}}, 0, 3},
		{"half the keys in two sets", [][]string{list[:600], list[400:]}, 1001, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ix, model := buildIndex(tc.sets)
			if len(ix.exact.combo) != tc.combo || len(ix.exact.other) != tc.other {
				t.Errorf("%d combinations per key and %d other, want %d and %d", len(ix.exact.combo), len(ix.exact.other), tc.combo, tc.other)
			}
			for _, num := range append(list, "19005550100", "14255551000", "1425555000") {
				if got, want := lookupSets(&ix, num), model.sets(num); !slices.Equal(got, want) {
					t.Fatalf("%s is in sets %v, want %v", num, got, want)
				}
			}
		})
	}
}

// TestIndexExpiriesAgainstModel: random sets whose entries expire at a few
// distinct seconds, looked up at every second around them.
func TestIndexExpiriesAgainstModel(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	digits := func(n int) string {
		var sb strings.Builder
		for range n {
			sb.WriteByte(byte('0' + r.IntN(2)))
		}
		return sb.String()
	}
	for round := range 50 {
		sets := make([][]string, 1+r.IntN(5))
		for i := range sets {
			for range r.IntN(30) {
				e := digits(1 + r.IntN(6))
				if r.IntN(3) == 0 {
					e += "*"
				}
				if r.IntN(2) == 0 {
					e += fmt.Sprintf("@%d", r.IntN(6))
				}
				sets[i] = append(sets[i], e)
			}
		}
		ix, model := buildIndex(sets)
		for range 200 {
			num, sec := digits(1+r.IntN(7)), uint32(r.IntN(8))
			if got, want := lookupSetsAt(&ix, num, time.Unix(int64(sec), 0)), model.setsAt(num, sec); !slices.Equal(got, want) {
				t.Fatalf("round %d: %s at second %d is in sets %v, the model says %v (sets %q)", round, num, sec, got, want, sets)
			}
		}
	}
}
