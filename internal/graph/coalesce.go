package graph

import (
	"context"
	"net"
	"sync"
)

// coalescingConn hands its writes to a goroutine of its own, which sends
// whatever accumulated in one system call. Go's HTTP/2 client flushes a
// request's HEADERS and DATA frames separately, each a TLS record and a
// write of its own; through this connection they, and the frames of other
// requests made meanwhile, leave together. Order is kept; a write error is
// returned by the next Write, and the read side fails on a broken
// connection as well.
type coalescingConn struct {
	net.Conn

	mu     sync.Mutex
	space  sync.Cond // signalled when buf empties, on error and on close
	buf    []byte
	err    error
	closed bool

	kick chan struct{}
	done chan struct{}
}

// maxPendingWrite bounds what waits to be sent: past it Write blocks, as a
// write to a full socket buffer would.
const maxPendingWrite = 1 << 20

func newCoalescingConn(c net.Conn) *coalescingConn {
	cc := &coalescingConn{Conn: c, kick: make(chan struct{}, 1), done: make(chan struct{})}
	cc.space.L = &cc.mu
	go cc.run()
	return cc
}

// dialCoalescing dials with d and wraps the connection.
func dialCoalescing(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return newCoalescingConn(c), nil
	}
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for len(c.buf) >= maxPendingWrite && c.err == nil && !c.closed {
		c.space.Wait()
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	if c.closed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	c.buf = append(c.buf, p...)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default: // a send is already due and will take p too
	}
	return len(p), nil
}

func (c *coalescingConn) run() {
	var spare []byte
	for {
		select {
		case <-c.kick:
		case <-c.done:
			return
		}
		c.mu.Lock()
		// spare is c.buf's now: it must never also be the buffer sent.
		b := c.buf
		c.buf, spare = spare, nil
		c.mu.Unlock()
		c.space.Broadcast()
		if len(b) > 0 {
			if _, err := c.Conn.Write(b); err != nil {
				c.mu.Lock()
				c.err = err
				c.mu.Unlock()
				c.space.Broadcast()
				return
			}
		}
		if cap(b) <= 64<<10 {
			spare = b[:0]
		}
	}
}

// Close closes the connection; what was not sent yet is dropped, as
// closing a socket with unsent data would.
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.done)
	}
	c.mu.Unlock()
	c.space.Broadcast()
	return c.Conn.Close()
}
