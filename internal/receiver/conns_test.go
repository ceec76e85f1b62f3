package receiver_test

import (
	"bufio"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/emulator"
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

// idleConn opens a connection to the callback port that stays silent, as
// an idle flood's would. (One that sends a request without a genuine token
// is refused and closed: TestRefusedRequestDoesNotHoldItsConnection.)
func idleConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
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
	// The oldest went first: the newest are still open (silent ones are
	// closed after the 5 s header timeout, so this comes first).
	if closedByServer(conns[flood-1]) {
		t.Fatal("the newest idle connection was closed")
	}
	closed := 0
	for _, c := range conns[:flood-limit] {
		if closedByServer(c) {
			closed++
		}
	}
	if closed < flood-limit {
		t.Fatalf("%d of the %d oldest idle connections closed, want all", closed, flood-limit)
	}
	id := e.placeCall(numBusy)
	if rec := e.acted(id); rec.Action != "reject" {
		t.Fatalf("a call placed during the flood was not rejected: %+v", rec)
	}
	if got := e.metric("callguard_receiver_connections_evicted_total", nil); got < flood-limit {
		t.Fatalf("evicted %v, want at least %d", got, flood-limit)
	}
}

// callbackAddr is the host:port of the env's callback listener.
func (e *env) callbackAddr() string {
	return strings.TrimSuffix(strings.TrimPrefix(e.callback, "http://"), "/api/calls")
}

// halfRequest opens a connection and sends a callback request's headers,
// promising a body of bodyLen bytes, and only the first of them.
func halfRequest(t *testing.T, addr, auth string, bodyLen int) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	head := fmt.Sprintf("POST /api/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n", bodyLen)
	if auth != "" {
		head += "Authorization: " + auth + "\r\n"
	}
	if _, err := io.WriteString(c, head+"\r\n{"); err != nil {
		t.Fatal(err)
	}
	return c
}

// readAnswer reads the response on c, within wait.
func readAnswer(t *testing.T, c net.Conn, wait time.Duration) *http.Response {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(wait))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer within %s: %v", wait, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// closedWithin reports whether the server closes c within wait.
func closedWithin(c net.Conn, wait time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(wait))
	_, err := io.Copy(io.Discard, c)
	return err == nil || !errors.Is(err, os.ErrDeadlineExceeded)
}

// TestRefusedRequestDoesNotHoldItsConnection: requests refused before
// their body is read (no token, a forged one, a wrong path) promise a
// body and never send it. They are answered and their connections closed
// at once, so at the cap Graph still gets in. (Before, each connection
// waited for the promised body until the 10 s read timeout, busy, and a
// few hundred of them a second locked Graph out.)
func TestRefusedRequestDoesNotHoldItsConnection(t *testing.T) {
	const limit = 4
	e := startEnv(t, envOptions{maxConnections: limit})
	addr := e.callbackAddr()
	forger, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	// Under Graph's kid: refused at the signature, without a key fetch.
	forged := "Bearer " + signRS256(t, forger, e.kidOf(t), emulator.InboundClaims(appID, tenantID))
	for round := range 3 {
		var conns []net.Conn
		for _, auth := range []string{"", "Bearer not.a.jwt", forged, "Basic eA=="} {
			conns = append(conns, halfRequest(t, addr, auth, 1000))
		}
		for i, c := range conns {
			if resp := readAnswer(t, c, 5*time.Second); resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("round %d, request %d: status %d, want 401", round, i, resp.StatusCode)
			}
			if !closedWithin(c, 5*time.Second) {
				t.Fatalf("round %d: the connection of refused request %d was kept open, waiting for its body", round, i)
			}
		}
	}
	if got := e.metric("callguard_receiver_connections_shed_total", nil); got != 0 {
		t.Fatalf("%v connections shed", got)
	}
	id := e.placeCall(numBusy)
	if rec := e.acted(id); rec.Action != "reject" {
		t.Fatalf("a call placed after the refusals was not rejected: %+v", rec)
	}
}

// kidOf is the kid of the emulator's current callback-token key.
func (e *env) kidOf(t *testing.T) string {
	header, _, _ := jwtParts(t, e.token(emulator.InboundClaims(appID, tenantID)))
	kid, _ := header["kid"].(string)
	return kid
}

// TestSlowBodyIsCutOff: a request with a genuine (replayed) token whose
// body trickles in is cut off after the request budget (408, closed), not
// held for the 10 s read timeout.
func TestSlowBodyIsCutOff(t *testing.T) {
	e := startEnv(t, envOptions{})
	c := halfRequest(t, e.callbackAddr(), e.genuineAuth(), 1000)
	// Well under the read timeout, which is what held it before.
	if resp := readAnswer(t, c, 7*time.Second); resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("status %d, want 408", resp.StatusCode)
	}
	if !closedWithin(c, 2*time.Second) {
		t.Fatal("the connection of the cut-off request stayed open")
	}
	e.waitMetric("callguard_receiver_connections_open", nil, 0)
}

// TestIncompleteRequestsAreClosedBeforeNewConnectionsAreShed: at the cap,
// with every connection holding a request whose body has not come (a
// replayed genuine token, within its budget here), a new connection closes
// the oldest of them instead of being shed, and Graph's request on it,
// sent whole, is acknowledged.
func TestIncompleteRequestsAreClosedBeforeNewConnectionsAreShed(t *testing.T) {
	const limit = 4
	e := startEnv(t, envOptions{maxConnections: limit, requestBudget: time.Minute})
	addr := e.callbackAddr()
	auth := e.genuineAuth()
	var slow []net.Conn
	for range limit {
		slow = append(slow, halfRequest(t, addr, auth, 1000))
		// In order: the first is the oldest.
		e.waitMetric("callguard_receiver_connections_idle", nil, 0)
	}
	e.waitMetric("callguard_receiver_connections_open", nil, limit)
	body := createdBody(t, e.placeQuiet(numBusy))
	if status, resp := e.post(http.MethodPost, auth, body); status != http.StatusAccepted {
		t.Fatalf("Graph's request at the cap: %d %s", status, resp)
	}
	if got := e.metric("callguard_receiver_connections_shed_total", nil); got != 0 {
		t.Fatalf("%v connections shed, want 0", got)
	}
	if got := e.metric("callguard_receiver_connections_evicted_total", nil); got != 1 {
		t.Fatalf("%v connections evicted, want 1", got)
	}
	if !closedWithin(slow[0], 2*time.Second) {
		t.Fatal("the oldest incomplete request's connection was not closed")
	}
	if closedByServer(slow[limit-1]) {
		t.Fatal("the newest incomplete request's connection was closed")
	}
}

// slowHeaders opens a connection that sends a request line and one header
// line, and never the blank line that ends the headers.
func slowHeaders(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, "POST /api/calls HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestMixedFloodAtTheCap: 1.5 × the cap of idle, slow-header and slow-body
// connections (with and without a replayed genuine token) leave at most
// the cap open, none shed, and Graph's call is decided. (Before, the
// slow bodies held the cap, busy, and Graph's connection was shed.)
func TestMixedFloodAtTheCap(t *testing.T) {
	const limit = 8
	e := startEnv(t, envOptions{maxConnections: limit, requestBudget: time.Minute})
	addr := e.callbackAddr()
	auth := e.genuineAuth()
	for range 2 {
		idleConn(t, addr)
		slowHeaders(t, addr)
	}
	var refused []net.Conn
	for range 4 {
		refused = append(refused, halfRequest(t, addr, "", 1000))
		halfRequest(t, addr, auth, 1000)
	}
	// The slow bodies without a token are answered (or were closed to make
	// room) and closed.
	for _, c := range refused {
		if !closedWithin(c, 5*time.Second) {
			t.Fatal("a refused slow body's connection stayed open")
		}
	}
	if open := e.metric("callguard_receiver_connections_open", nil); open > limit {
		t.Fatalf("%v connections open, cap %d", open, limit)
	}
	id := e.placeCall(numBusy)
	if rec := e.acted(id); rec.Action != "reject" {
		t.Fatalf("a call placed during the flood was not rejected: %+v", rec)
	}
	if got := e.metric("callguard_receiver_connections_shed_total", nil); got != 0 {
		t.Fatalf("%v connections shed", got)
	}
}
