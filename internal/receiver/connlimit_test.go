package receiver

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeNow is a settable clock for a limiter.
type fakeNow struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeNow) now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeNow) add(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = f.t.Add(d)
}

// limitedServer is a real http.Server on loopback behind a connLimiter,
// whose handler reads the body, reports the request whole and then holds
// it until release is closed.
type limitedServer struct {
	l       *connLimiter
	m       *metrics
	clock   *fakeNow
	addr    string
	release chan struct{}
}

func startLimitedServer(t *testing.T, limit int) *limitedServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &limitedServer{m: newMetrics(func() float64 { return 0 }), clock: &fakeNow{t: time.Now()},
		addr: ln.Addr().String(), release: make(chan struct{})}
	s.l = newConnLimiter(ln, limit, DefaultRequestBudget, s.m)
	s.l.now = s.clock.now
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, err := io.Copy(io.Discard, r.Body); err != nil {
				return
			}
			requestWhole(r.Context())
			<-s.release
		}),
		ConnState:   s.l.connState,
		ConnContext: s.l.connContext,
	}
	go func() { _ = srv.Serve(s.l) }()
	t.Cleanup(func() {
		close(s.release)
		_ = srv.Close()
	})
	return s
}

// phases returns the connections idle, reading and whole.
func (s *limitedServer) phases() (idle, reading, whole int) {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	return s.l.idle.Len(), s.l.reading.Len(), s.l.open - s.l.idle.Len() - s.l.reading.Len()
}

func (s *limitedServer) waitPhases(t *testing.T, idle, reading, whole int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		i, r, w := s.phases()
		if i == idle && r == reading && w == whole {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("connections idle/reading/whole = %d/%d/%d, want %d/%d/%d", i, r, w, idle, reading, whole)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *limitedServer) dial(t *testing.T, send string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if send != "" {
		if _, err := io.WriteString(c, send); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

const (
	wholeRequest = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
	halfBody     = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{"
)

// closed reports whether the server closed c (as opposed to keeping it
// open and silent).
func closed(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// TestConnLimiterEvictionOrder: at the cap a new connection closes the
// request incomplete past its budget first, then the longest idle, then
// an incomplete one within its budget; never one serving a whole request:
// when all are, the new one is shed.
func TestConnLimiterEvictionOrder(t *testing.T) {
	s := startLimitedServer(t, 3)
	whole := s.dial(t, wholeRequest)
	s.waitPhases(t, 0, 0, 1)
	overdue := s.dial(t, halfBody)
	s.waitPhases(t, 0, 1, 1)
	idle := s.dial(t, "")
	s.waitPhases(t, 1, 1, 1)
	s.clock.add(DefaultRequestBudget)

	// The overdue request goes before the idle connection.
	a := s.dial(t, "")
	s.waitPhases(t, 2, 0, 1)
	if !closed(overdue) || closed(idle) {
		t.Fatalf("first eviction: overdue closed %v, idle closed %v; want the overdue one only", closed(overdue), closed(idle))
	}
	// Then the longest idle: the silent one, not the newer a.
	b := s.dial(t, halfBody)
	s.waitPhases(t, 1, 1, 1)
	if !closed(idle) || closed(a) {
		t.Fatal("second eviction: want the longest idle connection closed, and only it")
	}
	// a turns whole; then an incomplete request within its budget (b) goes
	// rather than the new connection.
	if _, err := io.WriteString(a, wholeRequest); err != nil {
		t.Fatal(err)
	}
	s.waitPhases(t, 0, 1, 2)
	c := s.dial(t, wholeRequest)
	s.waitPhases(t, 0, 0, 3)
	if !closed(b) {
		t.Fatal("third eviction: the incomplete request within its budget was kept and the new connection's was served?")
	}
	// Every connection serves a whole request: the new one is shed.
	d := s.dial(t, "")
	if !closed(d) {
		t.Fatal("a connection over the cap was kept while every other served a whole request")
	}
	for i, conn := range []net.Conn{whole, a, c} {
		if closed(conn) {
			t.Fatalf("connection %d, serving a whole request, was closed", i)
		}
	}
	if ev, sh := testutil.ToFloat64(s.m.connsEvicted), testutil.ToFloat64(s.m.connsShed); ev != 3 || sh != 1 {
		t.Fatalf("evicted %v, shed %v; want 3 and 1", ev, sh)
	}
	if open := s.l.Open(); open != 3 {
		t.Fatalf("%d open, want the cap, 3", open)
	}
}

// TestConnLimiterNeverCountsOverTheCap: an evicted connection stops
// counting when the limiter closes it, before the server notices, so the
// count (and its gauge) is never above the cap, and the server's later
// StateClosed is not counted twice. The server's hooks are called here as
// net/http calls them.
func TestConnLimiterNeverCountsOverTheCap(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const limit = 3
	l := newConnLimiter(ln, limit, DefaultRequestBudget, newMetrics(func() float64 { return 0 }))
	accept := func() net.Conn {
		t.Helper()
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close() })
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		l.connState(c, http.StateNew)
		return c
	}
	var conns []net.Conn
	for range limit {
		conns = append(conns, accept())
	}
	for i := range 5 {
		conns = append(conns, accept())
		if open := l.Open(); open > limit {
			t.Fatalf("after eviction %d: %d open, cap %d", i+1, open, limit)
		}
		// The server notices the evicted connection's close.
		l.connState(conns[i], http.StateClosed)
		if open := l.Open(); open != limit {
			t.Fatalf("after the server closed evicted connection %d: %d open, want %d", i+1, open, limit)
		}
	}
	if _, err := conns[0].Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("the first connection was not closed by the limiter: %v", err)
	}
}
