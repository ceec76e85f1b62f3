package state

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// DefaultMaxCallers bounds the callers a Memory store remembers when
// NewMemory is given no bound.
const DefaultMaxCallers = 1_000_000

// Memory is a Store in process memory, for one receiver replica. It
// answers exactly as Redis does. A caller is forgotten once its calls are
// older than the window and its blocks are over (as Redis keys expire),
// and, past maxCallers, the least recently seen caller is forgotten first
// (its calls and its blocks). A caller with one counted call costs about
// 125 bytes (see docs/state.md).
type Memory struct {
	hashers *hashers
	max     int

	mu sync.Mutex
	// idx finds a caller's slot in ents; ents is a slab of callers linked
	// from the most (head) to the least (tail) recently seen, by slot
	// index, -1 ending the list. Slabs and int32 links keep a caller to
	// about 50 bytes besides its map entry and calls.
	idx        map[callerKey]int32
	ents       []entry
	head, tail int32
	// free is the slots of expired callers, for reuse; hand is the next
	// slot a new caller looks at for expiry.
	free []int32
	hand int32
	// blocks holds the blocks of the few callers that have any, by slot.
	blocks map[int32]*blockSet
	claims map[callerKey]int64
	// claimSweep is the claims' size at which expired claims are next
	// dropped.
	claimSweep int
}

type entry struct {
	key        callerKey
	prev, next int32
	// expires is when the caller's calls and blocks are all over (ms): the
	// longest window or block it serves, like a Redis key's TTL.
	expires int64
	// arr is the caller's counted calls, in store order (time, then call).
	arr []arrival
}

type arrival struct {
	id uint64
	ms int64
}

func (a arrival) less(b arrival) bool { return a.ms < b.ms || a.ms == b.ms && a.id < b.id }

type blockSet struct {
	masked string
	rules  []ruleBlock
}

type ruleBlock struct {
	rule         string
	since, until int64
}

const minClaimSweep = 1024

// NewMemory makes a Memory store that hashes callers with hashKey and
// remembers at most maxCallers of them (DefaultMaxCallers when 0).
func NewMemory(hashKey []byte, maxCallers int) (*Memory, error) {
	if len(hashKey) == 0 {
		return nil, errors.New("state: memory store: empty hash key")
	}
	if maxCallers < 0 || maxCallers > 1<<30 {
		return nil, fmt.Errorf("state: memory store: maxCallers %d out of range 0..%d", maxCallers, 1<<30)
	}
	if maxCallers == 0 {
		maxCallers = DefaultMaxCallers
	}
	return &Memory{
		hashers:    newHashers(hashKey),
		max:        maxCallers,
		idx:        make(map[callerKey]int32),
		head:       -1,
		tail:       -1,
		blocks:     make(map[int32]*blockSet),
		claims:     make(map[callerKey]int64),
		claimSweep: minClaimSweep,
	}, nil
}

// Eval implements Store.
func (m *Memory) Eval(ctx context.Context, qs []Query, ans []Answer) error {
	if err := checkQueries(qs, ans); err != nil {
		return fmt.Errorf("state: eval: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("state: eval: %w", err)
	}
	h := m.hashers.get()
	keys := make([]callerKey, len(qs))
	for i := range qs {
		keys[i] = h.key(qs[i].Caller)
	}
	m.hashers.put(h)
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range qs {
		ans[i] = m.eval(&qs[i], keys[i])
	}
	return nil
}

// eval is the store's script (redis.go) in Go: keep them alike.
func (m *Memory) eval(q *Query, k callerKey) Answer {
	at := ms(q.At)
	slot, ok := m.idx[k]
	if ok {
		m.touch(slot)
	}
	if q.Record {
		if !ok {
			slot, ok = m.add(k, at), true
		}
		e := &m.ents[slot]
		e.arr = record(e.arr, arrival{id: callMember(q.CallID), ms: at}, durMS(q.Keep), q.KeepCalls)
		e.expires = max(e.expires, at+durMS(q.Keep))
	}
	var arr []arrival
	if ok {
		arr = m.ents[slot].arr
	}
	counts := map[int64]int(nil)
	var bs *blockSet
	if ok {
		bs = m.blocks[slot]
	}
	for i := range q.Steps {
		s := &q.Steps[i]
		var since, until int64
		if bs != nil {
			if j := bs.find(s.Rule); j >= 0 {
				since, until = bs.rules[j].since, bs.rules[j].until
			}
		}
		blocked := until > at
		count := 0
		if !blocked && s.Static && s.Calls > 0 {
			w := durMS(s.Within)
			c, seen := counts[w]
			if !seen {
				c = countWithin(arr, at-w, at)
				if counts == nil {
					counts = make(map[int64]int, 2)
				}
				counts[w] = c
			}
			count = c
		}
		if !s.holds(count, blocked) {
			continue
		}
		a := Answer{Step: i, Blocked: blocked}
		if s.BlockFor > 0 {
			nu := at + durMS(s.BlockFor)
			if blocked {
				nu = max(nu, until)
			} else {
				since = at
				a.Started = true
			}
			until = nu
			if !ok {
				slot, ok = m.add(k, at), true
			}
			m.ents[slot].expires = max(m.ents[slot].expires, until)
			if bs == nil {
				bs = &blockSet{}
				m.blocks[slot] = bs
			}
			bs.set(q.Masked, s.Rule, since, until, at)
		}
		a.Until = fromMS(until)
		return a
	}
	return Answer{Step: -1}
}

// record adds a to arr unless its call is there, then drops calls at or
// before a's time less keep and all but the newest keepCalls.
func record(arr []arrival, a arrival, keep int64, keepCalls int) []arrival {
	if !slices.ContainsFunc(arr, func(b arrival) bool { return b.id == a.id }) {
		i := sort.Search(len(arr), func(i int) bool { return a.less(arr[i]) })
		arr = slices.Insert(arr, i, a)
	}
	drop := sort.Search(len(arr), func(i int) bool { return arr[i].ms > a.ms-keep })
	drop = max(drop, len(arr)-keepCalls)
	if drop > 0 {
		arr = arr[:copy(arr, arr[drop:])]
	}
	return arr
}

// countWithin counts the calls of arr in (from, to].
func countWithin(arr []arrival, from, to int64) int {
	lo := sort.Search(len(arr), func(i int) bool { return arr[i].ms > from })
	hi := sort.Search(len(arr), func(i int) bool { return arr[i].ms > to })
	return hi - lo
}

func (bs *blockSet) find(rule string) int {
	for i := range bs.rules {
		if bs.rules[i].rule == rule {
			return i
		}
	}
	return -1
}

// set records rule's block and drops the blocks over at at.
func (bs *blockSet) set(masked, rule string, since, until, at int64) {
	bs.masked = masked
	bs.rules = slices.DeleteFunc(bs.rules, func(r ruleBlock) bool { return r.rule != rule && r.until <= at })
	if j := bs.find(rule); j >= 0 {
		bs.rules[j].since, bs.rules[j].until = since, until
		return
	}
	bs.rules = append(bs.rules, ruleBlock{rule: rule, since: since, until: until})
}

// expireSweep is how many slots each new caller looks at, in turn, to
// forget a caller that expired: more than one, so that a full turn takes
// fewer new callers than there are slots.
const expireSweep = 2

// freeSlot marks an entry's prev when its slot is free.
const freeSlot = -2

// add makes k's slot, the most recently seen, at at: it first forgets the
// callers in the next slots that expired, then, when the store is still
// full, the least recently seen one.
func (m *Memory) add(k callerKey, at int64) int32 {
	for range expireSweep {
		if len(m.ents) == 0 {
			break
		}
		if int(m.hand) >= len(m.ents) {
			m.hand = 0
		}
		if e := &m.ents[m.hand]; e.prev != freeSlot && e.expires <= at {
			m.free = append(m.free, m.forget(m.hand))
			e.prev = freeSlot
		}
		m.hand++
	}
	var slot int32
	switch {
	case len(m.free) > 0:
		slot = m.free[len(m.free)-1]
		m.free = m.free[:len(m.free)-1]
	case len(m.idx) >= m.max:
		slot = m.forget(m.tail)
	default:
		slot = int32(len(m.ents))
		m.ents = append(m.ents, entry{})
	}
	e := &m.ents[slot]
	e.key, e.arr, e.expires = k, e.arr[:0], 0
	m.idx[k] = slot
	m.pushFront(slot)
	return slot
}

// forget drops the caller in slot, calls and blocks, and returns the slot.
func (m *Memory) forget(slot int32) int32 {
	m.unlink(slot)
	delete(m.idx, m.ents[slot].key)
	delete(m.blocks, slot)
	return slot
}

func (m *Memory) touch(slot int32) {
	if m.head != slot {
		m.unlink(slot)
		m.pushFront(slot)
	}
}

func (m *Memory) unlink(slot int32) {
	e := &m.ents[slot]
	if e.prev >= 0 {
		m.ents[e.prev].next = e.next
	} else {
		m.head = e.next
	}
	if e.next >= 0 {
		m.ents[e.next].prev = e.prev
	} else {
		m.tail = e.prev
	}
}

func (m *Memory) pushFront(slot int32) {
	e := &m.ents[slot]
	e.prev, e.next = -1, m.head
	if m.head >= 0 {
		m.ents[m.head].prev = slot
	}
	m.head = slot
	if m.tail < 0 {
		m.tail = slot
	}
}

// Claim implements Store.
func (m *Memory) Claim(ctx context.Context, id string, ttl time.Duration) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("state: claim: %w", err)
	}
	k := m.hashers.key(id)
	now := ms(time.Now())
	m.mu.Lock()
	defer m.mu.Unlock()
	if until, ok := m.claims[k]; ok && until > now {
		return false, nil
	}
	if len(m.claims) >= m.claimSweep {
		maps.DeleteFunc(m.claims, func(_ callerKey, until int64) bool { return until <= now })
		m.claimSweep = max(minClaimSweep, 2*len(m.claims))
	}
	m.claims[k] = now + max(durMS(ttl), 1)
	return true, nil
}

// Blocks implements Store.
func (m *Memory) Blocks(ctx context.Context, now time.Time) ([]Block, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("state: blocks: %w", err)
	}
	at := ms(now)
	m.mu.Lock()
	var out []Block
	for _, bs := range m.blocks {
		for _, r := range bs.rules {
			if r.until > at {
				out = append(out, Block{Masked: bs.masked, Rule: r.rule, Since: fromMS(r.since), Until: fromMS(r.until)})
			}
		}
	}
	m.mu.Unlock()
	sortBlocks(out)
	return out, nil
}

// sortBlocks orders a listing: oldest block first.
func sortBlocks(bs []Block) {
	slices.SortFunc(bs, func(a, b Block) int {
		if c := a.Since.Compare(b.Since); c != 0 {
			return c
		}
		if c := strings.Compare(a.Rule, b.Rule); c != 0 {
			return c
		}
		return strings.Compare(a.Masked, b.Masked)
	})
}

// Unblock implements Store.
func (m *Memory) Unblock(ctx context.Context, caller string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("state: unblock: %w", err)
	}
	now := ms(time.Now())
	var k callerKey
	if caller != "" {
		k = m.hashers.key(caller)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	lift := func(slot int32, bs *blockSet) {
		for _, r := range bs.rules {
			if r.until > now {
				n++
			}
		}
		delete(m.blocks, slot)
	}
	if caller == "" {
		for slot, bs := range m.blocks {
			lift(slot, bs)
		}
		return n, nil
	}
	if slot, ok := m.idx[k]; ok {
		if bs := m.blocks[slot]; bs != nil {
			lift(slot, bs)
		}
	}
	return n, nil
}

// Close implements Store; a Memory store holds nothing to release.
func (m *Memory) Close() error { return nil }
