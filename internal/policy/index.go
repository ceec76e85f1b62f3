package policy

import "slices"

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

// numberIndex maps numberKeys to the sets that hold them. Keys map to an
// interned combination of sets rather than to a slice each, which keeps a
// million entries at a few bytes apiece.
type numberIndex struct {
	exact  map[uint64]uint32
	prefix map[uint64]uint32
	// prefixLens has bit L set when some prefix has L digits.
	prefixLens uint32
	// prefixLead has, for each length of 3 digits or more, a bit per first
	// three digits that some prefix of that length starts with: most prefix
	// lengths can then be ruled out without a map lookup.
	prefixLead [maxKeyDigits + 1][1000/64 + 1]uint64
	// combos[c] lists the sets of combination c in ascending order; combos[0]
	// is empty so that a missing map entry reads as "no set".
	combos [][]uint16
}

// lookup adds to bits every set that holds the number with these digits.
func (ix *numberIndex) lookup(digits []byte, bits *setBits) {
	if len(ix.exact) > 0 && len(digits) <= maxKeyDigits {
		if c, ok := ix.exact[numberKey(digits)]; ok {
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
		if c, ok := ix.prefix[k]; ok {
			bits.addAll(ix.combos[c])
		}
	}
}

// indexBuilder collects the keys of each set while rules compile, so that the
// maps can be sized once when the total is known.
type indexBuilder struct {
	sets            int
	exact, prefix   []pendingKeys
	nExact, nPrefix int
}

type pendingKeys struct {
	set  uint16
	keys []uint64
}

func (b *indexBuilder) newSet() int32 {
	b.sets++
	return int32(b.sets - 1)
}

func (b *indexBuilder) add(set int32, exact, prefix []uint64) {
	if len(exact) > 0 {
		b.exact = append(b.exact, pendingKeys{uint16(set), exact})
		b.nExact += len(exact)
	}
	if len(prefix) > 0 {
		b.prefix = append(b.prefix, pendingKeys{uint16(set), prefix})
		b.nPrefix += len(prefix)
	}
}

func (b *indexBuilder) build() numberIndex {
	in := interner{combos: [][]uint16{nil}, next: map[uint64]uint32{}}
	ix := numberIndex{}
	if b.nExact > 0 {
		ix.exact = make(map[uint64]uint32, b.nExact)
		in.fill(ix.exact, b.exact)
	}
	if b.nPrefix > 0 {
		ix.prefix = make(map[uint64]uint32, b.nPrefix)
		in.fill(ix.prefix, b.prefix)
		for _, p := range b.prefix {
			for _, k := range p.keys {
				n := keyDigits(k)
				ix.prefixLens |= 1 << n
				if n >= 3 {
					lead := leadingDigits(k, n)
					ix.prefixLead[n][lead>>6] |= 1 << (lead & 63)
				}
			}
		}
	}
	ix.combos = in.combos
	return ix
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

type interner struct {
	combos [][]uint16
	next   map[uint64]uint32
	// The last transition, since consecutive keys of a list almost always
	// take the same one.
	lastFrom, lastTo uint32
	lastSet          uint16
	cached           bool
}

// fill adds pending keys in set order, which keeps every combo sorted and
// makes a repeated key within one set a no-op.
func (in *interner) fill(m map[uint64]uint32, pending []pendingKeys) {
	for _, p := range pending {
		for _, k := range p.keys {
			m[k] = in.extend(m[k], p.set)
		}
	}
}

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
