package receiver

import (
	"container/list"
	"net"
	"net/http"
	"sync"

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

// ConnectionLimit is the cap on open callback connections for a container
// memory limit (0 or less: none).
func ConnectionLimit(memoryLimit int64) int {
	if memoryLimit <= 0 {
		return defaultConnections
	}
	return int(min(max(memoryLimit/4/connMemory, minConnections), maxConnections))
}

// connLimiter bounds the open connections of a listener. At the cap, a new
// connection makes room by closing the connection idle the longest (keep-
// alive, or opened and silent): a flood of idle connections cannot keep
// Graph out, since Graph's connections are busy and the flood's are not.
// Only when every connection is busy is the new one shed.
type connLimiter struct {
	net.Listener
	max int

	mu    sync.Mutex
	open  int
	idle  *list.List // of net.Conn, the longest idle first
	where map[net.Conn]*list.Element

	evicted, shed prometheus.Counter
}

func newConnLimiter(ln net.Listener, limit int, m *metrics) *connLimiter {
	return &connLimiter{
		Listener: ln, max: limit, idle: list.New(), where: map[net.Conn]*list.Element{},
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
		if l.open >= l.max {
			if e := l.idle.Front(); e != nil {
				victim := e.Value.(net.Conn)
				l.forget(victim)
				l.mu.Unlock()
				// The server sees its read fail and closes it (StateClosed).
				_ = victim.Close()
				l.evicted.Inc()
				l.mu.Lock()
			} else {
				l.mu.Unlock()
				_ = c.Close()
				l.shed.Inc()
				continue
			}
		}
		l.open++
		l.mu.Unlock()
		return c, nil
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

// connState is the http.Server's ConnState hook: it keeps the idle list.
func (l *connLimiter) connState(c net.Conn, s http.ConnState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch s {
	case http.StateNew, http.StateIdle:
		l.forget(c)
		l.where[c] = l.idle.PushBack(c)
	case http.StateActive:
		l.forget(c)
	case http.StateHijacked, http.StateClosed:
		l.forget(c)
		l.open--
	}
}

func (l *connLimiter) forget(c net.Conn) {
	if e, ok := l.where[c]; ok {
		l.idle.Remove(e)
		delete(l.where, c)
	}
}

// limitConnections bounds ln's open connections at limit (0: sized from the
// container's memory) and exports the count.
func (s *Server) limitConnections(ln net.Listener, limit int) *connLimiter {
	if limit <= 0 {
		limit = ConnectionLimit(readCgroupLimit())
	}
	l := newConnLimiter(ln, limit, s.metrics)
	s.metrics.registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "connections_open",
			Help: "Open callback connections.",
		}, func() float64 { return float64(l.Open()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "connections_idle",
			Help: "Open callback connections not serving a request (the first closed at the cap).",
		}, func() float64 { return float64(l.Idle()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "connections_max",
			Help: "The cap on open callback connections.",
		}, func() float64 { return float64(limit) }),
	)
	return l
}
