package redisserver_test

import (
	"net"
	"testing"

	"github.com/callguard/callguard/test/harness/redisserver"
)

// TestStopRestart: the server answers on Addr, refuses connections once
// stopped, and answers on the same address after Restart.
func TestStopRestart(t *testing.T) {
	s := redisserver.Start(t)
	addr := s.Addr()
	dial := func() error {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(); err != nil {
		t.Fatalf("started server: %v", err)
	}
	s.Stop()
	if err := dial(); err == nil {
		t.Fatal("stopped server still accepts connections")
	}
	s.Restart()
	if s.Addr() != addr {
		t.Fatalf("restarted on %s, want %s", s.Addr(), addr)
	}
	if err := dial(); err != nil {
		t.Fatalf("restarted server: %v", err)
	}
}
