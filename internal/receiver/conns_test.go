package receiver_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/receiver"
)

func TestConnectionLimit(t *testing.T) {
	for _, tt := range []struct {
		memory int64
		want   int
	}{
		{0, 4096},
		{256 << 20, 2048},
		{1 << 30, 8192},
		{64 << 30, 16384},
		{16 << 20, 256},
	} {
		if got := receiver.ConnectionLimit(tt.memory); got != tt.want {
			t.Errorf("ConnectionLimit(%d) = %d, want %d", tt.memory, got, tt.want)
		}
	}
}

// idleConn opens a keep-alive connection to the callback port that sends
// one small request and then stays idle, as a flood would.
func idleConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return c
}

// closedByServer reports whether the server closed c.
func closedByServer(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || (err != nil && strings.Contains(err.Error(), "reset"))
}

// TestIdleConnectionFloodIsBounded: more idle connections than the cap
// leave at most the cap open (the longest idle are closed), and Graph's
// notifications, on connections of their own, are still decided.
func TestIdleConnectionFloodIsBounded(t *testing.T) {
	const limit, flood = 32, 200
	e := startEnv(t, envOptions{maxConnections: limit})
	addr := strings.TrimSuffix(strings.TrimPrefix(e.callback, "http://"), "/api/calls")
	conns := make([]net.Conn, flood)
	for i := range conns {
		conns[i] = idleConn(t, addr)
	}
	if open := e.metric("callguard_receiver_connections_open", nil); open > limit {
		t.Fatalf("%v connections open, cap %d", open, limit)
	}
	closed := 0
	for _, c := range conns {
		if closedByServer(c) {
			closed++
		}
	}
	if closed < flood-limit {
		t.Fatalf("%d of %d idle connections closed, want at least %d", closed, flood, flood-limit)
	}
	// The oldest went first: the newest are still open.
	if closedByServer(conns[flood-1]) {
		t.Fatal("the newest idle connection was closed")
	}
	id := e.placeCall(numBusy)
	if rec := e.acted(id); rec.Action != "reject" {
		t.Fatalf("a call placed during the flood was not rejected: %+v", rec)
	}
	if got := e.metric("callguard_receiver_connections_evicted_total", nil); got < flood-limit {
		t.Fatalf("evicted %v, want at least %d", got, flood-limit)
	}
}

// TestBusyConnectionsShedNewOnes: when every connection at the cap is busy
// (here: a genuine request whose body is slow), a new one is closed on arrival.
func TestBusyConnectionsShedNewOnes(t *testing.T) {
	const limit = 4
	e := startEnv(t, envOptions{maxConnections: limit})
	addr := strings.TrimSuffix(strings.TrimPrefix(e.callback, "http://"), "/api/calls")
	for range limit {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := io.WriteString(c, "POST /api/calls HTTP/1.1\r\nHost: x\r\nAuthorization: "+e.genuineAuth()+"\r\nContent-Length: 100\r\n\r\n{"); err != nil {
			t.Fatal(err)
		}
	}
	e.waitMetric("callguard_receiver_connections_open", nil, limit)
	// Busy: the server read the headers and waits for the body.
	e.waitMetric("callguard_receiver_connections_idle", nil, 0)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !closedByServer(c) {
		t.Fatal("a connection over the cap was kept while all others were busy")
	}
	e.waitMetric("callguard_receiver_connections_shed_total", nil, 1)
}
