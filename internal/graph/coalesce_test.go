package graph

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
)

// recordingConn is the far side of a coalescingConn: it records each write
// made to it, and can hold writes until released.
type recordingConn struct {
	net.Conn
	mu      sync.Mutex
	writes  []string
	entered chan struct{}
	release chan struct{}
	written chan struct{} // signalled after each write, when set
	err     error
	closed  bool
}

func (r *recordingConn) Write(p []byte) (int, error) {
	if r.entered != nil {
		r.entered <- struct{}{}
		<-r.release
	}
	r.mu.Lock()
	if r.err != nil {
		r.mu.Unlock()
		return 0, r.err
	}
	r.writes = append(r.writes, string(p))
	r.mu.Unlock()
	if r.written != nil {
		r.written <- struct{}{}
	}
	return len(p), nil
}

func (r *recordingConn) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	return nil
}

func (r *recordingConn) sent() ([]string, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.writes...), strings.Join(r.writes, "")
}

func TestCoalescingConnSendsWritesMadeMeanwhileTogether(t *testing.T) {
	rc := &recordingConn{entered: make(chan struct{}), release: make(chan struct{}), written: make(chan struct{})}
	c := newCoalescingConn(rc)
	defer c.Close()
	if _, err := io.WriteString(c, "HEADERS1"); err != nil {
		t.Fatal(err)
	}
	<-rc.entered // the first write is being sent, and held there
	for _, s := range []string{"DATA1", "HEADERS2", "DATA2"} {
		if _, err := io.WriteString(c, s); err != nil {
			t.Fatal(err)
		}
	}
	rc.release <- struct{}{}
	<-rc.written
	<-rc.entered
	rc.release <- struct{}{}
	<-rc.written
	writes, all := rc.sent()
	if len(writes) != 2 || writes[0] != "HEADERS1" || writes[1] != "DATA1HEADERS2DATA2" {
		t.Fatalf("writes = %q, want the first, then the three made meanwhile in one", writes)
	}
	if all != "HEADERS1DATA1HEADERS2DATA2" {
		t.Fatalf("sent %q", all)
	}
}

func TestCoalescingConnKeepsOrderUnderConcurrentWrites(t *testing.T) {
	a, b := net.Pipe()
	c := newCoalescingConn(a)
	defer c.Close()
	const writers, each = 4, 200
	lines := make(chan []string)
	go func() {
		var got []string
		sc := bufio.NewScanner(b)
		for sc.Scan() && sc.Text() != "end" {
			got = append(got, sc.Text())
		}
		lines <- got
	}()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				fmt.Fprintf(c, "%d:%d\n", w, i)
			}
		})
	}
	wg.Wait()
	if _, err := io.WriteString(c, "end\n"); err != nil {
		t.Fatal(err)
	}
	next := make([]int, writers)
	for _, line := range <-lines {
		var w, i int
		if _, err := fmt.Sscanf(line, "%d:%d", &w, &i); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if i != next[w] {
			t.Fatalf("writer %d: line %d after %d", w, i, next[w]-1)
		}
		next[w]++
	}
	for w, n := range next {
		if n != each {
			t.Errorf("writer %d: %d lines arrived, want %d", w, n, each)
		}
	}
}

func TestCoalescingConnReportsWriteErrorsAndClose(t *testing.T) {
	rc := &recordingConn{err: errors.New("connection reset")}
	c := newCoalescingConn(rc)
	if _, err := io.WriteString(c, "x"); err != nil {
		t.Fatalf("first write: %v (errors come with the next write)", err)
	}
	// The sender stops at the error; the next write returns it.
	for {
		_, err := io.WriteString(c, "y")
		if err == nil {
			continue
		}
		if err.Error() != "connection reset" {
			t.Fatalf("write error = %v", err)
		}
		break
	}
	if err := c.Close(); err != nil || !rc.closed {
		t.Fatalf("Close = %v, closed %v", err, rc.closed)
	}
	c2 := newCoalescingConn(&recordingConn{})
	c2.Close()
	if _, err := io.WriteString(c2, "z"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close = %v, want net.ErrClosed", err)
	}
}
