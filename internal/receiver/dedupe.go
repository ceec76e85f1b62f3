package receiver

import (
	"sync"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
)

// callLog remembers the calls decided in the last window, so a redelivered
// notification is not decided twice and follow-up notifications of a call
// go upstream only when it was allowed. Memory is bounded by max entries:
// past it the oldest are forgotten early.
type callLog struct {
	window time.Duration
	max    int

	mu    sync.Mutex
	calls map[string]*callEntry
	// order is a FIFO ring of ids in insertion order, for expiry.
	order      []orderEntry
	head, size int
}

type callEntry struct {
	at     time.Time
	action v1alpha1.Action // "" while the decision is being made
}

type orderEntry struct {
	id string
	at time.Time
}

func newCallLog(window time.Duration, max int) *callLog {
	return &callLog{
		window: window,
		max:    max,
		calls:  make(map[string]*callEntry, min(max, 1<<16)),
		order:  make([]orderEntry, max),
	}
}

// claim records id as being decided at now. It returns false when the call
// was already claimed within the window.
func (l *callLog) claim(id string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expire(now)
	if _, ok := l.calls[id]; ok {
		return false
	}
	if l.size == l.max {
		l.evictOldest()
	}
	l.calls[id] = &callEntry{at: now}
	l.order[(l.head+l.size)%l.max] = orderEntry{id: id, at: now}
	l.size++
	return true
}

// decided stores the decision of a claimed call.
func (l *callLog) decided(id string, action v1alpha1.Action) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.calls[id]; ok {
		e.action = action
	}
}

// action returns the decision of a known call; known is false for calls not
// seen within the window.
func (l *callLog) action(id string, now time.Time) (action v1alpha1.Action, known bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expire(now)
	e, ok := l.calls[id]
	if !ok {
		return "", false
	}
	return e.action, true
}

func (l *callLog) expire(now time.Time) {
	for l.size > 0 && now.Sub(l.order[l.head].at) >= l.window {
		l.evictOldest()
	}
}

func (l *callLog) evictOldest() {
	// Each id is in the ring once: claim refuses ids already present.
	delete(l.calls, l.order[l.head].id)
	l.order[l.head] = orderEntry{}
	l.head = (l.head + 1) % l.max
	l.size--
}
