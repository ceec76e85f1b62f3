package receiver

import (
	"container/list"
	"context"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Connection bounds. An idle keep-alive connection costs the receiver about
// 20 KiB (buffers, goroutine, socket): unbounded, ~12,000 of them from any
// pod that can reach the port exhaust a 256 MiB receiver. The cap is sized
// so that the connections use at most a quarter of the container's memory
// at connMemory each (a measured idle connection, with room for one that
// has just served a request), within [minConnections, maxConnections].
const (
	connMemory     = 32 << 10
	minConnections = 256
	maxConnections = 16384
	// defaultConnections is the cap without a container memory limit.
	defaultConnections = 4096
)

// DefaultRequestBudget is how long a request may take to deliver its body
// once its headers are in. Graph sends a few KiB at once, so a request still
// incomplete after it is slow on purpose: its read is cut off then, and
// at the cap it is the first connection closed.
const DefaultRequestBudget = 2 * time.Second

// ConnectionLimit is the cap on open callback connections for a container
// memory limit (0 or less: none).
func ConnectionLimit(memoryLimit int64) int {
	if memoryLimit <= 0 {
		return defaultConnections
	}
	return int(min(max(memoryLimit/4/connMemory, minConnections), maxConnections))
}

// connPhase is where a connection is in serving its requests.
type connPhase int

const (
	// phaseIdle: between requests, or opened and not yet sent whole headers.
	phaseIdle connPhase = iota
	// phaseReading: headers in, body not yet read by the handler.
	phaseReading
	// phaseWhole: the whole request is in and being answered.
	phaseWhole
)

// tracked is the limiter's record of one open connection.
type tracked struct {
	conn  net.Conn
	phase connPhase
	// since is when the phase began; elem is the connection's place in
	// the list of its phase (nil when whole).
	since time.Time
	elem  *list.Element
}

// connLimiter bounds the open connections of a listener. At the cap, a new
// connection makes room by closing, in this order: the one whose request
// has been incomplete the longest past its budget, the one idle the
// longest (keep-alive, or opened and silent), the one whose request has
// been incomplete the longest. A connection whose whole request is in is
// never closed: Graph sends its requests whole, so floods of idle, slow
// or forged requests cannot keep Graph out. Only when every connection
// is serving a whole request is the new one shed.
type connLimiter struct {
	net.Listener
	max int
	// budget is the request budget (DefaultRequestBudget).
	budget time.Duration
	now    func() time.Time

	mu sync.Mutex
	// open counts the tracked connections: an evicted one stops counting
	// when it is closed, not when the server notices.
	open int
	// idle and reading are ordered by since, the oldest first.
	idle, reading *list.List
	conns         map[net.Conn]*tracked

	evicted, shed prometheus.Counter
}

func newConnLimiter(ln net.Listener, limit int, budget time.Duration, m *metrics) *connLimiter {
	return &connLimiter{
		Listener: ln, max: limit, budget: budget, now: time.Now,
		idle: list.New(), reading: list.New(), conns: map[net.Conn]*tracked{},
		evicted: m.connsEvicted, shed: m.connsShed,
	}
}

// Accept returns the next connection once there is room for it.
func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		var victim net.Conn
		if l.open >= l.max {
			if t := l.victimLocked(); t != nil {
				victim = t.conn
				l.dropLocked(t)
			}
		}
		admitted := l.open < l.max
		if admitted {
			l.trackLocked(c)
		}
		l.mu.Unlock()
		if victim != nil {
			// The server sees its read fail and closes it (StateClosed,
			// no longer counted).
			_ = victim.Close()
			l.evicted.Inc()
		}
		if !admitted {
			_ = c.Close()
			l.shed.Inc()
			continue
		}
		return c, nil
	}
}

// victimLocked picks the connection to close at the cap, or nil.
func (l *connLimiter) victimLocked() *tracked {
	if e := l.reading.Front(); e != nil && l.now().Sub(e.Value.(*tracked).since) >= l.budget {
		return e.Value.(*tracked)
	}
	if e := l.idle.Front(); e != nil {
		return e.Value.(*tracked)
	}
	if e := l.reading.Front(); e != nil {
		return e.Value.(*tracked)
	}
	return nil
}

func (l *connLimiter) trackLocked(c net.Conn) {
	t := &tracked{conn: c}
	l.conns[c] = t
	l.open++
	l.moveLocked(t, phaseIdle)
}

// dropLocked stops tracking and counting t.
func (l *connLimiter) dropLocked(t *tracked) {
	l.moveLocked(t, phaseWhole)
	delete(l.conns, t.conn)
	l.open--
}

// moveLocked puts t in phase p, at the back of its list.
func (l *connLimiter) moveLocked(t *tracked, p connPhase) {
	if t.elem != nil {
		if t.phase == phaseIdle {
			l.idle.Remove(t.elem)
		} else {
			l.reading.Remove(t.elem)
		}
		t.elem = nil
	}
	t.phase, t.since = p, l.now()
	switch p {
	case phaseIdle:
		t.elem = l.idle.PushBack(t)
	case phaseReading:
		t.elem = l.reading.PushBack(t)
	}
}

// Open reports the connections open.
func (l *connLimiter) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// Idle reports the connections open and not serving a request.
func (l *connLimiter) Idle() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.idle.Len()
}

// connState is the http.Server's ConnState hook: it keeps the phases.
func (l *connLimiter) connState(c net.Conn, s http.ConnState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.conns[c]
	if t == nil {
		// Evicted, or shed before the server saw it.
		return
	}
	switch s {
	case http.StateNew, http.StateIdle:
		l.moveLocked(t, phaseIdle)
	case http.StateActive:
		// The server has read the request's headers.
		l.moveLocked(t, phaseReading)
	case http.StateHijacked, http.StateClosed:
		l.dropLocked(t)
	}
}

type connKey struct{}

// connContext is the http.Server's ConnContext hook: it lets the handler
// report its connection's progress (requestWhole).
func (l *connLimiter) connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, connHandle{l: l, c: c})
}

type connHandle struct {
	l *connLimiter
	c net.Conn
}

// requestBudget is the budget for the body of ctx's request.
func requestBudget(ctx context.Context) time.Duration {
	if h, ok := ctx.Value(connKey{}).(connHandle); ok {
		return h.l.budget
	}
	return DefaultRequestBudget
}

// requestWhole tells the limiter of ctx's connection, if any, that its
// request has been read whole: it is no longer closed to make room.
func requestWhole(ctx context.Context) {
	h, ok := ctx.Value(connKey{}).(connHandle)
	if !ok {
		return
	}
	h.l.mu.Lock()
	defer h.l.mu.Unlock()
	if t := h.l.conns[h.c]; t != nil && t.phase == phaseReading {
		h.l.moveLocked(t, phaseWhole)
	}
}

// limitConnections bounds ln's open connections at limit (0: sized from the
// container's memory) with a request budget (0: DefaultRequestBudget), and
// exports the count.
func (s *Server) limitConnections(ln net.Listener, limit int, budget time.Duration) *connLimiter {
	if limit <= 0 {
		limit = ConnectionLimit(readCgroupLimit())
	}
	if budget <= 0 {
		budget = DefaultRequestBudget
	}
	l := newConnLimiter(ln, limit, budget, s.metrics)
	s.metrics.registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "connections_open",
			Help: "Open callback connections.",
		}, func() float64 { return float64(l.Open()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "connections_idle",
			Help: "Open callback connections not serving a request.",
		}, func() float64 { return float64(l.Idle()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "connections_max",
			Help: "The cap on open callback connections.",
		}, func() float64 { return float64(limit) }),
	)
	return l
}
