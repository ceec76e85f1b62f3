package receiver

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
)

// callLog remembers the calls decided in the last window, so a redelivered
// notification is not decided twice and follow-up notifications of a call
// go upstream only when it was allowed. Memory is bounded by max entries:
// past it the oldest are forgotten early.
//
// It holds no pointers, so the garbage collector never scans it: a map of
// strings with a ring of (string, time.Time) was most of the receiver's
// live heap under load, and scanning it on every cycle was most of the
// collector's work. A call is known by two 64-bit hashes of its id with
// independent random seeds; two ids sharing both (odds about n²/2¹²⁹, so
// below 10⁻²⁸ at the bound) would make the second look like a duplicate.
type callLog struct {
	window     time.Duration
	max        int
	base       time.Time // times are kept as offsets from base
	seed0      maphash.Seed
	seed1      maphash.Seed
	mu         sync.Mutex
	calls      map[callKey]actionCode
	order      []orderEntry // FIFO ring in insertion order, for expiry
	head, size int
}

type callKey [2]uint64

type orderEntry struct {
	key callKey
	at  time.Duration // since base
}

// actionCode is a v1alpha1.Action in one pointer-free byte.
type actionCode uint8

const (
	actionPending actionCode = iota // claimed, not decided yet
	actionAllow
	actionReject
	actionRedirect
)

var actionNames = [...]v1alpha1.Action{
	actionPending:  "",
	actionAllow:    v1alpha1.ActionAllow,
	actionReject:   v1alpha1.ActionReject,
	actionRedirect: v1alpha1.ActionRedirect,
}

func codeOf(a v1alpha1.Action) actionCode {
	switch a {
	case v1alpha1.ActionAllow:
		return actionAllow
	case v1alpha1.ActionReject:
		return actionReject
	case v1alpha1.ActionRedirect:
		return actionRedirect
	}
	return actionPending
}

func newCallLog(window time.Duration, max int) *callLog {
	return &callLog{
		window: window,
		max:    max,
		// Far enough back that times before New (tests pass fixed dates)
		// still give positive offsets; only differences are compared.
		base:  time.Now().Add(-100 * 365 * 24 * time.Hour),
		seed0: maphash.MakeSeed(),
		seed1: maphash.MakeSeed(),
		calls: make(map[callKey]actionCode, min(max, 1<<16)),
		order: make([]orderEntry, max),
	}
}

func (l *callLog) key(id string) callKey {
	return callKey{maphash.String(l.seed0, id), maphash.String(l.seed1, id)}
}

// claim records id as being decided at now. It returns false when the call
// was already claimed within the window.
func (l *callLog) claim(id string, now time.Time) bool {
	k := l.key(id)
	at := now.Sub(l.base)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expire(at)
	if _, ok := l.calls[k]; ok {
		return false
	}
	if l.size == l.max {
		l.evictOldest()
	}
	l.calls[k] = actionPending
	l.order[(l.head+l.size)%l.max] = orderEntry{key: k, at: at}
	l.size++
	return true
}

// decided stores the decision of a claimed call.
func (l *callLog) decided(id string, action v1alpha1.Action) {
	k := l.key(id)
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.calls[k]; ok {
		l.calls[k] = codeOf(action)
	}
}

// action returns the decision of a known call; known is false for calls not
// seen within the window.
func (l *callLog) action(id string, now time.Time) (action v1alpha1.Action, known bool) {
	k := l.key(id)
	at := now.Sub(l.base)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expire(at)
	code, ok := l.calls[k]
	if !ok {
		return "", false
	}
	return actionNames[code], true
}

func (l *callLog) expire(now time.Duration) {
	for l.size > 0 && now-l.order[l.head].at >= l.window {
		l.evictOldest()
	}
}

func (l *callLog) evictOldest() {
	// Each key is in the ring once: claim refuses keys already present.
	delete(l.calls, l.order[l.head].key)
	l.head = (l.head + 1) % l.max
	l.size--
}
