package policy

import (
	"cmp"
	"math"
	"math/bits"
	"slices"
	"time"
)

// A number set holds the entries of the numbers, numberPrefixes and
// numberLists fields of one rule together, since they are one condition. All sets share one numberIndex, so deciding a phone call costs one
// exact lookup plus one lookup per distinct prefix length, however many rules
// and entries the policy has; each rule then tests a bit.
const maxSets = maxRules

type setBits [maxSets / 64]uint64

func (b *setBits) has(set int32) bool { return b[set>>6]&(1<<(set&63)) != 0 }

func (b *setBits) addAll(sets []uint16) {
	for _, s := range sets {
		b[s>>6] |= 1 << (s & 63)
	}
}

// numberIndex finds the sets that hold a number. Exact entries and
// prefixes are each a keyTable: numberKeys laid out for search, 8 bytes an
// entry (a million entries are 8 MB, where the Go map this replaced took
// about 30), and combinations of sets per key only for keys whose sets
// differ.
type numberIndex struct {
	// timed is set when some entry expires. It comes first, in the cache
	// line lookup reads anyway.
	timed         bool
	exact, prefix keyTable
	// prefixLens has bit L set when some prefix has L digits.
	prefixLens uint32
	// prefixLead has, for each length of 3 digits or more, a bit per first
	// three digits that some prefix of that length starts with: most prefix
	// lengths can then be ruled out without a search.
	prefixLead [maxKeyDigits + 1][1000/64 + 1]uint64
	// combos[c] lists the sets of combination c in ascending order; combos[0]
	// is empty.
	combos [][]uint16
}

// unixSeconds is t in seconds of the Unix epoch, clamped to what a uint32
// holds (1970 to 2106), the unit of expiries in the index.
func unixSeconds(t time.Time) uint32 {
	return uint32(min(max(t.Unix(), 0), math.MaxUint32))
}

// keyTable is a set of numberKeys, each with the combination of sets that
// holds it.
//
// The keys are in Eytzinger order (the sorted keys laid out as a complete
// binary search tree, breadth first: the children of node i are 2i and
// 2i+1), so that the first steps of every search read the same few cache
// lines and pages, which stay cached between calls, and each later step
// reads one new line: a search of a million keys in random order costs
// less than a binary search of the sorted keys (BenchmarkIndex: 0.17-0.21
// µs against 0.24-0.27 on a loaded machine).
type keyTable struct {
	// keys[1:] are the distinct keys; keys[0] is unused.
	keys []uint64
	// The combination of keys[i] is combo[i] when combo is not nil. Else
	// it is all, unless other has i<<32|c, sorted: then c. A policy whose
	// list rule shares a few numbers with other rules keeps 8 bytes a key.
	combo []uint32
	other []uint64
	all   uint32
	// Keys of list entries with an expiry (expires=) change combination
	// over time: from second s (of the Unix epoch) on, keys[i] has
	// timedCombo[j] where timed[j] is i<<32|s, sorted; the combination above
	// holds before the first. A table without expiries has neither, and
	// costs a lookup one nil check; one with some, 12 bytes an expiring key.
	timed      []uint64
	timedCombo []uint32
}

// find returns the combination of sets that holds k at second now, 0 when
// none does.
func (t *keyTable) find(k uint64, now uint32) uint32 {
	keys := t.keys
	i := 1
	for i < len(keys) {
		// A branch, mispredicted every other step: the processor then
		// runs ahead down the side it guessed and starts that node's load
		// early, half the time rightly. A branch-free form (SETcc, which
		// waits for each load) took twice as long in BenchmarkIndex.
		next := 2 * i
		if keys[i] < k {
			next++
		}
		i = next
	}
	// The lower bound (the first key >= k) is the last node where the
	// search went left; it went right at every step after: drop those
	// steps and that one.
	i >>= bits.TrailingZeros(^uint(i)) + 1
	if i == 0 || keys[i] != k {
		return 0
	}
	if t.timed != nil {
		return t.findTimed(i, now)
	}
	return t.comboOf(i)
}

// comboOf returns the combination of keys[i] before any of its entries
// expires.
func (t *keyTable) comboOf(i int) uint32 {
	if t.combo != nil {
		return t.combo[i]
	}
	if t.other != nil {
		if j := lowerBound(t.other, uint64(i)<<32); j < len(t.other) && t.other[j]>>32 == uint64(i) {
			return uint32(t.other[j])
		}
	}
	return t.all
}

// findTimed returns the combination of keys[i] at second now: that of its
// last change at or before now, if any.
func (t *keyTable) findTimed(i int, now uint32) uint32 {
	if j := lowerBound(t.timed, uint64(i)<<32|uint64(now)+1) - 1; j >= 0 && t.timed[j]>>32 == uint64(i) {
		return t.timedCombo[j]
	}
	return t.comboOf(i)
}

func (t *keyTable) len() int { return max(len(t.keys)-1, 0) }

// lookup adds to bits every set that holds the number with these digits at
// the given time (list entries expire).
func (ix *numberIndex) lookup(digits []byte, at time.Time, bits *setBits) {
	var now uint32
	if ix.timed {
		now = unixSeconds(at)
	}
	if ix.exact.len() > 0 && len(digits) <= maxKeyDigits {
		if c := ix.exact.find(numberKey(digits), now); c != 0 {
			bits.addAll(ix.combos[c])
		}
	}
	if ix.prefixLens == 0 {
		return
	}
	k, lead := uint64(1), uint64(0)
	for i := 0; i < len(digits) && i < maxKeyDigits; i++ {
		k = k*10 + uint64(digits[i]-'0')
		if i == 2 {
			lead = k - 1000
		}
		if ix.prefixLens&(1<<(i+1)) == 0 || i >= 2 && ix.prefixLead[i+1][lead>>6]&(1<<(lead&63)) == 0 {
			continue
		}
		if c := ix.prefix.find(k, now); c != 0 {
			bits.addAll(ix.combos[c])
		}
	}
}

// indexBuilder collects the keys of each set while rules compile; build
// sorts them once when all are known.
type indexBuilder struct {
	sets          int
	exact, prefix []pendingKeys
}

// pendingKeys are keys of one set: keys that never expire, or timed keys,
// which do. The slice may be shared with other sets (a list that several
// rules name is parsed once); build sorts it.
type pendingKeys struct {
	set   uint16
	keys  []uint64
	timed []timedKey
}

// timedKey is a key that stops matching at second until of the Unix epoch.
type timedKey struct {
	key   uint64
	until uint32
}

func (p *pendingKeys) len() int {
	if p.timed != nil {
		return len(p.timed)
	}
	return len(p.keys)
}

func (p *pendingKeys) key(i int) uint64 {
	if p.timed != nil {
		return p.timed[i].key
	}
	return p.keys[i]
}

func (b *indexBuilder) newSet() int32 {
	b.sets++
	return int32(b.sets - 1)
}

// add adds keys to a set; sets must be added to in ascending order (a set's
// keys may come in several calls), which keeps every combination sorted.
func (b *indexBuilder) add(set int32, exact, prefix []uint64) {
	if len(exact) > 0 {
		b.exact = append(b.exact, pendingKeys{set: uint16(set), keys: exact})
	}
	if len(prefix) > 0 {
		b.prefix = append(b.prefix, pendingKeys{set: uint16(set), keys: prefix})
	}
}

// addTimed adds keys that expire to a set, in the same order as add.
func (b *indexBuilder) addTimed(set int32, exact, prefix []timedKey) {
	if len(exact) > 0 {
		b.exact = append(b.exact, pendingKeys{set: uint16(set), timed: exact})
	}
	if len(prefix) > 0 {
		b.prefix = append(b.prefix, pendingKeys{set: uint16(set), timed: prefix})
	}
}

func (b *indexBuilder) build() numberIndex {
	in := interner{combos: [][]uint16{nil}, next: map[uint64]uint32{}}
	ix := numberIndex{}
	ix.exact = in.table(b.exact)
	ix.prefix = in.table(b.prefix)
	for _, k := range ix.prefix.keys[min(1, len(ix.prefix.keys)):] {
		n := keyDigits(k)
		ix.prefixLens |= 1 << n
		if n >= 3 {
			lead := leadingDigits(k, n)
			ix.prefixLead[n][lead>>6] |= 1 << (lead & 63)
		}
	}
	ix.combos = in.combos
	ix.timed = ix.exact.timed != nil || ix.prefix.timed != nil
	return ix
}

// table makes the keyTable of pending keys: it sorts each slice of keys,
// then merges them twice, to count the distinct keys and the keys of each
// combination of sets, and to lay them out. Only the table is allocated,
// not a sorted copy of all keys as well.
func (in *interner) table(pending []pendingKeys) keyTable {
	if len(pending) == 0 {
		return keyTable{}
	}
	for _, p := range pending {
		slices.Sort(p.keys)
		slices.SortFunc(p.timed, func(a, b timedKey) int { return cmp.Compare(a.key, b.key) })
	}
	n, changes, count := 0, 0, map[uint32]int{}
	m := newMerger(pending)
	for {
		_, c, ok := m.next(in)
		if !ok {
			break
		}
		n++
		count[c]++
		changes += len(m.changes)
	}
	t := keyTable{keys: make([]uint64, n+1)}
	for c, k := range count {
		if k > count[t.all] || k == count[t.all] && c < t.all {
			t.all = c
		}
	}
	// A combination per key costs 4 bytes a key; one per key that is not
	// of the commonest costs 8 bytes a key that is not.
	if others := n - count[t.all]; others > n/2 {
		t.combo = make([]uint32, n+1)
	} else if others > 0 {
		t.other = make([]uint64, 0, others)
	}
	if changes > 0 {
		t.timed = make([]uint64, 0, changes)
		t.timedCombo = make([]uint32, 0, changes)
	}
	m = newMerger(pending)
	// An in-order walk of the tree visits its nodes in sorted order.
	var walk func(i int)
	walk = func(i int) {
		if i >= len(t.keys) {
			return
		}
		walk(2 * i)
		k, c, _ := m.next(in)
		t.keys[i] = k
		switch {
		case t.combo != nil:
			t.combo[i] = c
		case c != t.all:
			t.other = append(t.other, uint64(i)<<32|uint64(c))
		}
		for _, ch := range m.changes {
			t.timed = append(t.timed, uint64(i)<<32|uint64(ch.from))
			t.timedCombo = append(t.timedCombo, ch.combo)
		}
		walk(2*i + 1)
	}
	walk(1)
	slices.Sort(t.other)
	sortTimed(t.timed, t.timedCombo)
	return t
}

// sortTimed sorts timed, which the walk filled in key order, not node
// order, and its combinations with it.
func sortTimed(timed []uint64, combos []uint32) {
	if len(timed) == 0 {
		return
	}
	type entry struct {
		at    uint64
		combo uint32
	}
	es := make([]entry, len(timed))
	for j := range timed {
		es[j] = entry{timed[j], combos[j]}
	}
	slices.SortFunc(es, func(a, b entry) int { return cmp.Compare(a.at, b.at) })
	for j, e := range es {
		timed[j], combos[j] = e.at, e.combo
	}
}

// merger yields the distinct keys of sorted pending keys in order, each
// with its combination of sets, and in changes how that combination changes
// as the key's timed entries expire.
type merger struct {
	pending []pendingKeys
	pos     []int
	// heap holds the pending slices not read to the end, by their next
	// key, then by their index: a key's sets come out in ascending order.
	heap []int

	changes []change
	// expiring holds, while next merges a key, the sets that stop holding
	// it and when (the latest of a set's entries; a set holding the key
	// with no expiry is not in it).
	expiring []setExpiry
	live     []uint16
}

// change: from second from on, a key has combination combo.
type change struct {
	from  uint32
	combo uint32
}

type setExpiry struct {
	set   uint16
	until uint32
}

func newMerger(pending []pendingKeys) *merger {
	m := &merger{pending: pending, pos: make([]int, len(pending))}
	for i, p := range pending {
		if p.len() > 0 {
			m.heap = append(m.heap, i)
			m.up(len(m.heap) - 1)
		}
	}
	return m
}

func (m *merger) next(in *interner) (key uint64, combo uint32, ok bool) {
	if len(m.heap) == 0 {
		return 0, 0, false
	}
	key = m.key(m.heap[0])
	m.changes, m.expiring = m.changes[:0], m.expiring[:0]
	// lastSet is the last set merged and never whether it holds key with no
	// expiry: a set's slices come one after the other.
	lastSet, never := -1, false
	for len(m.heap) > 0 && m.key(m.heap[0]) == key {
		i := m.heap[0]
		p := &m.pending[i]
		combo = in.extend(combo, p.set)
		if int(p.set) != lastSet {
			lastSet, never = int(p.set), false
		}
		until := uint32(0)
		for m.pos[i] < p.len() && p.key(m.pos[i]) == key {
			if p.timed != nil {
				until = max(until, p.timed[m.pos[i]].until)
			}
			m.pos[i]++
		}
		switch e := &m.expiring; {
		case never:
		case p.timed == nil:
			never = true
			if n := len(*e); n > 0 && (*e)[n-1].set == p.set {
				*e = (*e)[:n-1]
			}
		case len(*e) > 0 && (*e)[len(*e)-1].set == p.set:
			(*e)[len(*e)-1].until = max((*e)[len(*e)-1].until, until)
		default:
			*e = append(*e, setExpiry{p.set, until})
		}
		if m.pos[i] == p.len() {
			last := len(m.heap) - 1
			m.heap[0] = m.heap[last]
			m.heap = m.heap[:last]
		}
		m.down(0)
	}
	if len(m.expiring) > 0 {
		m.timeline(in, combo)
	}
	return key, combo, true
}

// timeline fills changes from the key's combination and its expiring sets.
func (m *merger) timeline(in *interner, combo uint32) {
	slices.SortFunc(m.expiring, func(a, b setExpiry) int { return cmp.Compare(a.until, b.until) })
	m.live = append(m.live[:0], in.combos[combo]...)
	for j := 0; j < len(m.expiring); {
		from := m.expiring[j].until
		for ; j < len(m.expiring) && m.expiring[j].until == from; j++ {
			m.live = slices.DeleteFunc(m.live, func(s uint16) bool { return s == m.expiring[j].set })
		}
		c := uint32(0)
		for _, s := range m.live {
			c = in.extend(c, s)
		}
		m.changes = append(m.changes, change{from, c})
	}
}

func (m *merger) key(i int) uint64 { return m.pending[i].key(m.pos[i]) }

func (m *merger) less(a, b int) bool {
	ka, kb := m.key(a), m.key(b)
	return ka < kb || ka == kb && a < b
}

func (m *merger) up(j int) {
	for j > 0 {
		parent := (j - 1) / 2
		if !m.less(m.heap[j], m.heap[parent]) {
			return
		}
		m.heap[j], m.heap[parent] = m.heap[parent], m.heap[j]
		j = parent
	}
}

func (m *merger) down(j int) {
	for {
		small, l, r := j, 2*j+1, 2*j+2
		if l < len(m.heap) && m.less(m.heap[l], m.heap[small]) {
			small = l
		}
		if r < len(m.heap) && m.less(m.heap[r], m.heap[small]) {
			small = r
		}
		if small == j {
			return
		}
		m.heap[j], m.heap[small] = m.heap[small], m.heap[j]
		j = small
	}
}

// lowerBound returns the index of the first key >= k.
func lowerBound(keys []uint64, k uint64) int {
	lo, hi := 0, len(keys)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if keys[mid] < k {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// keyDigits returns how many digits a numberKey packs.
func keyDigits(k uint64) int {
	n := 0
	for k >= 10 {
		k /= 10
		n++
	}
	return n
}

// leadingDigits returns the first three of the n digits a numberKey packs.
func leadingDigits(k uint64, n int) uint64 {
	for ; n > 3; n-- {
		k /= 10
	}
	return k - 1000
}

// interner numbers the combinations of sets that keys have.
type interner struct {
	combos [][]uint16
	next   map[uint64]uint32
	// The last transition, since consecutive keys of a list almost always
	// take the same one.
	lastFrom, lastTo uint32
	lastSet          uint16
	cached           bool
}

// extend returns the combination of c and set, which must be at least
// every set of c.
func (in *interner) extend(c uint32, set uint16) uint32 {
	if cs := in.combos[c]; len(cs) > 0 && cs[len(cs)-1] == set {
		return c
	}
	if in.cached && in.lastFrom == c && in.lastSet == set {
		return in.lastTo
	}
	k := uint64(c)<<16 | uint64(set)
	to, ok := in.next[k]
	if !ok {
		to = uint32(len(in.combos))
		in.combos = append(in.combos, append(slices.Clone(in.combos[c]), set))
		in.next[k] = to
	}
	in.lastFrom, in.lastSet, in.lastTo, in.cached = c, set, to, true
	return to
}
