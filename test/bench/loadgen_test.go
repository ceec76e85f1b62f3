//go:build linux

package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The load generator plays Graph's notification delivery. It runs in a
// process of its own (this test binary again, GOMAXPROCS=1), apart from the
// emulator: in the emulator's process its sends and reads waited on the
// emulator's work and garbage collection, which the acknowledgement times
// then charged to the handler under test.
//
// Acknowledgement time is from just before a notification's write to the
// kernel's receive timestamp of the response (SO_TIMESTAMPING), so it does
// not include how long this process took to get round to reading it.

// loadPlan is what the parent asks of a load generator (on its stdin).
type loadPlan struct {
	Addr string // host:port of the handler
	// Addrs, when set, replace Addr: notification i goes to
	// Addrs[i%len(Addrs)] (handlers sharing the load), each with
	// connections of its own (Conns and MaxConns each).
	Addrs []string
	Path  string
	Auth  string // Authorization header value
	// Auths, when set, replace Auth: notification i carries
	// Auths[i%len(Auths)] (tokens of several tenants).
	Auths []string
	IDs   []string
	// Numbers are the callers, one per id.
	Numbers []string
	// Rate paces the notifications (notification i is due at i/Rate s);
	// 0 is a closed loop of Conns notifications in flight.
	Rate float64
	// Conns is the number of connections of the closed loop, and the
	// number opened up front when paced; paced, more are opened while all
	// are busy, up to MaxConns, as a sender does that must keep its pace.
	Conns    int
	MaxConns int
}

// loadResult is what a load generator reports (one JSON line on stdout).
type loadResult struct {
	Elapsed time.Duration // first send to last acknowledgement
	Refused int           // notifications not answered 202
	Error   string        // the first transport error, if any
	// Acks are the acknowledgement times, sorted.
	Acks []time.Duration
	// Sent are when each notification's write began (Unix ns), by index:
	// the start of its time to the Graph action the emulator records.
	Sent []int64
	// Late are how late paced notifications were sent, sorted.
	Late []time.Duration
	CPU  time.Duration // this process's CPU time while sending
}

const loadChild = "load"

// runLoadChild is the load generator's main: read the plan, prepare every
// request and connect, say "ready", wait for "go", send, report.
func runLoadChild() int {
	in := bufio.NewReader(os.Stdin)
	var plan loadPlan
	if err := json.NewDecoder(in).Decode(&plan); err != nil {
		fmt.Fprintln(os.Stderr, "load plan:", err)
		return 1
	}
	res, err := generateLoad(plan, func() error {
		fmt.Println("ready")
		line, err := in.ReadString('\n')
		if err != nil || line != "go\n" {
			return fmt.Errorf("waiting for go: %q %v", line, err)
		}
		return nil
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func generateLoad(plan loadPlan, ready func() error) (*loadResult, error) {
	n := len(plan.IDs)
	if len(plan.Addrs) == 0 {
		plan.Addrs = []string{plan.Addr}
	}
	reqs := make([][]byte, n)
	for i := range n {
		body := benchBody(plan.IDs[i], plan.Numbers[i])
		auth := plan.Auth
		if len(plan.Auths) > 0 {
			auth = plan.Auths[i%len(plan.Auths)]
		}
		reqs[i] = append(fmt.Appendf(nil, "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
			plan.Path, plan.Addrs[i%len(plan.Addrs)], auth, len(body)), body...)
	}
	g := &loadGen{plan: plan, reqs: reqs, acks: make([]time.Duration, n), sent: make([]int64, n), conns: make([][]*loadConn, len(plan.Addrs))}
	defer g.closeAll()
	for t := range plan.Addrs {
		for range plan.Conns {
			if _, err := g.dial(t); err != nil {
				return nil, err
			}
		}
	}
	if err := ready(); err != nil {
		return nil, err
	}
	cpu0 := selfCPU()
	start := time.Now()
	var late []time.Duration
	if plan.Rate > 0 {
		var err error
		if late, err = g.paced(start); err != nil {
			return nil, err
		}
	} else {
		g.closedLoop()
	}
	res := &loadResult{Elapsed: time.Since(start), Refused: int(g.refused.Load()), Acks: g.acks, Sent: g.sent, Late: late,
		CPU: selfCPU() - cpu0}
	if e := g.firstErr.Load(); e != nil {
		res.Error = e.(error).Error()
	}
	slices.Sort(res.Acks)
	slices.Sort(res.Late)
	return res, nil
}

type loadGen struct {
	plan     loadPlan
	reqs     [][]byte
	acks     []time.Duration
	sent     []int64
	refused  atomic.Int64
	firstErr atomic.Value
	conns    [][]*loadConn // by target (plan.Addrs)
}

func (g *loadGen) dial(target int) (*loadConn, error) {
	lc := &loadConn{addr: g.plan.Addrs[target]}
	if err := lc.dial(); err != nil {
		return nil, err
	}
	g.conns[target] = append(g.conns[target], lc)
	return lc, nil
}

func (g *loadGen) closeAll() {
	for _, conns := range g.conns {
		for _, lc := range conns {
			lc.close()
		}
	}
}

// send posts notification i on lc and records its acknowledgement.
func (g *loadGen) send(lc *loadConn, i int) {
	t0 := time.Now()
	g.sent[i] = t0.UnixNano()
	status, arrived, err := lc.roundTrip(g.reqs[i])
	g.acks[i] = arrived.Sub(t0)
	if err != nil || status != http.StatusAccepted {
		if err == nil {
			err = fmt.Errorf("HTTP %d", status)
		}
		g.firstErr.CompareAndSwap(nil, err)
		g.refused.Add(1)
	}
}

// closedLoop keeps one notification in flight on each connection, each
// target's connections taking its notifications in turn.
func (g *loadGen) closedLoop() {
	var wg sync.WaitGroup
	targets := len(g.conns)
	for t, conns := range g.conns {
		var next atomic.Int64
		for _, lc := range conns {
			wg.Go(func() {
				for {
					i := (int(next.Add(1))-1)*targets + t
					if i >= len(g.reqs) {
						return
					}
					g.send(lc, i)
				}
			})
		}
	}
	wg.Wait()
}

// paced sends notification i at start + i/rate on an idle connection of
// its target, opening another while all are busy, and returns how late
// each was sent.
func (g *loadGen) paced(start time.Time) ([]time.Duration, error) {
	interval := time.Duration(float64(time.Second) / g.plan.Rate)
	late := make([]time.Duration, len(g.reqs))
	idle := make([]chan *loadConn, len(g.conns)) // by target
	work := map[*loadConn]chan int{}
	var wg sync.WaitGroup
	worker := func(t int, lc *loadConn) {
		ch := make(chan int, 1)
		work[lc] = ch
		go func() {
			for i := range ch {
				g.send(lc, i)
				wg.Done()
				idle[t] <- lc
			}
		}()
	}
	for t, conns := range g.conns {
		idle[t] = make(chan *loadConn, max(g.plan.MaxConns, len(conns)))
		for _, lc := range conns {
			worker(t, lc)
			idle[t] <- lc
		}
	}
	defer func() {
		for _, ch := range work {
			close(ch)
		}
	}()
	for i := range g.reqs {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		t := i % len(g.conns)
		var lc *loadConn
		select {
		case lc = <-idle[t]:
		default:
			if len(g.conns[t]) < g.plan.MaxConns {
				var err error
				if lc, err = g.dial(t); err != nil {
					return nil, err
				}
				worker(t, lc)
			} else {
				lc = <-idle[t]
			}
		}
		late[i] = time.Since(due)
		wg.Add(1)
		work[lc] <- i
	}
	wg.Wait()
	return late, nil
}

// runLoad runs a load generator process on plan and returns its report;
// started is called once it is ready to send, just before it is told to.
func runLoad(plan loadPlan, started func()) (*loadResult, error) {
	c, err := startPlanChild("load generator", loadChild, plan, "GOMAXPROCS=1")
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.cmd.Wait() }()
	defer c.stdin.Close()
	started()
	if err := c.start(); err != nil {
		return nil, err
	}
	var res loadResult
	if err := json.NewDecoder(c.out).Decode(&res); err != nil {
		return nil, fmt.Errorf("load generator report: %w", err)
	}
	return &res, nil
}

// loadConn is one kept-alive connection of the load generator. Each
// notification is a prepared HTTP/1.1 request written whole, and the
// response is read with http.ReadResponse: a fraction of net/http's
// client's CPU, on a machine shared with the handler under test.
type loadConn struct {
	addr string
	conn net.Conn
	sr   *stampedReader
	br   *bufio.Reader
}

func (lc *loadConn) dial() error {
	conn, err := net.Dial("tcp", lc.addr)
	if err != nil {
		return err
	}
	sr, err := newStampedReader(conn.(*net.TCPConn))
	if err != nil {
		conn.Close()
		return err
	}
	lc.conn, lc.sr, lc.br = conn, sr, bufio.NewReader(sr)
	return nil
}

func (lc *loadConn) close() {
	if lc.conn != nil {
		_ = lc.conn.Close()
		lc.conn = nil
	}
}

// roundTrip writes a prepared request and returns the response's status
// and the kernel's time of its arrival, redialling when the server closed
// the connection.
func (lc *loadConn) roundTrip(req []byte) (int, time.Time, error) {
	if lc.conn == nil {
		if err := lc.dial(); err != nil {
			return 0, time.Time{}, err
		}
	}
	lc.sr.last = time.Time{}
	if _, err := lc.conn.Write(req); err != nil {
		lc.close()
		return 0, time.Time{}, err
	}
	resp, err := http.ReadResponse(lc.br, nil)
	if err != nil {
		lc.close()
		return 0, time.Time{}, err
	}
	// No request is pipelined, so the head was in the first bytes read.
	arrived := lc.sr.last
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.Close {
		lc.close()
	}
	if arrived.IsZero() {
		return 0, time.Time{}, errors.New("no kernel receive timestamp")
	}
	return resp.StatusCode, arrived, nil
}

// stampedReader reads a TCP connection with the kernel's software receive
// timestamps.
type stampedReader struct {
	rc   syscall.RawConn
	oob  []byte
	last time.Time // kernel receive time of the last bytes read
}

func newStampedReader(c *net.TCPConn) (*stampedReader, error) {
	rc, err := timestamp(c)
	if err != nil {
		return nil, err
	}
	return &stampedReader{rc: rc, oob: make([]byte, 256)}, nil
}

// timestamp asks the kernel for software receive timestamps on c.
func timestamp(c syscall.Conn) (syscall.RawConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPING,
			unix.SOF_TIMESTAMPING_RX_SOFTWARE|unix.SOF_TIMESTAMPING_SOFTWARE)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return nil, fmt.Errorf("SO_TIMESTAMPING: %w", err)
	}
	return rc, nil
}

// holdTimestamping returns a socket that keeps the kernel's receive
// timestamping on while it is open. The kernel turns it on when a first
// socket asks and off when the last one closes, both in deferred work: with
// the load generators' sockets the only ones, a new generator's first
// answers could come before it was on again, without a timestamp (seen on
// a busy machine).
func holdTimestamping() (net.PacketConn, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	if _, err := timestamp(pc.(*net.UDPConn)); err != nil {
		pc.Close()
		return nil, err
	}
	return pc, nil
}

func (s *stampedReader) Read(p []byte) (int, error) {
	var n, oobn int
	var rerr error
	err := s.rc.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = unix.Recvmsg(int(fd), p, s.oob, 0)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	msgs, err := unix.ParseSocketControlMessage(s.oob[:oobn])
	if err != nil {
		return 0, err
	}
	for _, m := range msgs {
		// SCM_TIMESTAMPING holds three timespecs; the first is software.
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPING && len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
			ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
			s.last = time.Unix(ts.Unix())
		}
	}
	return n, nil
}
