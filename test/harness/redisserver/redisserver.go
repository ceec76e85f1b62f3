// Package redisserver runs a real redis-server for tests: a child process
// on a free loopback port, without persistence, stopped when the test ends.
//
// The binary is $REDIS_SERVER, else /usr/bin/redis-server, else
// redis-server from PATH. A machine without one fails the test (it is not
// skipped): install Debian's redis-server package.
package redisserver

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// startTimeout bounds how long a started server may take to answer PING.
const startTimeout = 10 * time.Second

// Server is a running redis-server.
type Server struct {
	tb    testing.TB
	bin   string
	port  int
	extra []string
	// tls is set for a server that speaks only TLS, and caPEM is its CA.
	tls   bool
	caPEM []byte

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start launches a redis-server on a free 127.0.0.1 port with
// `--save "" --appendonly no` and any extra command-line arguments (such as
// "--requirepass", "secret"), waits until it answers PING, and stops it
// when tb ends.
func Start(tb testing.TB, extra ...string) *Server {
	tb.Helper()
	return start(tb, false, extra)
}

// StartTLS is Start for a server that speaks only TLS on Addr (clients
// present no certificate), with a certificate for 127.0.0.1 from a CA of its
// own: CAPEM returns it.
func StartTLS(tb testing.TB, extra ...string) *Server {
	tb.Helper()
	caPEM, certPEM, keyPEM, err := newCA()
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(cert, certPEM, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
		tb.Fatal(err)
	}
	args := append([]string{"--tls-cert-file", cert, "--tls-key-file", key, "--tls-auth-clients", "no"}, extra...)
	s := start(tb, true, args)
	s.caPEM = caPEM
	return s
}

// CAPEM is the PEM certificate of the CA a StartTLS server's certificate
// comes from (nil for Start's).
func (s *Server) CAPEM() []byte { return s.caPEM }

// newCA makes a CA and a server certificate for 127.0.0.1 it signed.
func newCA() (caPEM, certPEM, keyPEM []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "redisserver test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "redis"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

func start(tb testing.TB, useTLS bool, extra []string) *Server {
	tb.Helper()
	bin, err := binary()
	if err != nil {
		tb.Fatal(err)
	}
	s := &Server{tb: tb, bin: bin, extra: extra, tls: useTLS}
	tb.Cleanup(s.Stop)
	// The port is free when picked but may be taken before the server binds
	// it: try a few.
	for attempt := 0; ; attempt++ {
		if s.port, err = freePort(); err != nil {
			tb.Fatalf("redis-server: %v", err)
		}
		err = s.start()
		if err == nil {
			return s
		}
		if attempt == 4 {
			tb.Fatalf("redis-server: %v", err)
		}
	}
}

// binary finds the redis-server to run.
func binary() (string, error) {
	if p := os.Getenv("REDIS_SERVER"); p != "" {
		return p, nil
	}
	if _, err := os.Stat("/usr/bin/redis-server"); err == nil {
		return "/usr/bin/redis-server", nil
	}
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("redis-server not found: install Debian's redis-server package (apt-get install redis-server)")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Addr is the server's "host:port".
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	port := []string{"--port", strconv.Itoa(s.port)}
	if s.tls {
		port = []string{"--port", "0", "--tls-port", strconv.Itoa(s.port)}
	}
	args := append(append(port,
		"--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no",
		"--dir", s.tb.TempDir(), "--daemonize", "no", "--loglevel", "warning",
	), s.extra...)
	cmd := exec.Command(s.bin, args...)
	log := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-done:
			return fmt.Errorf("%s exited at start: %s", s.bin, log.String())
		default:
		}
		if ping(s.Addr(), s.tls) == nil {
			s.cmd, s.done = cmd, done
			return nil
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("%s did not answer PING within %s: %s", s.bin, startTimeout, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ping sends PING and expects PONG. A server started with --requirepass
// answers NOAUTH, which still shows it is up. Over TLS it does not check
// the certificate: it only waits for the server to listen.
func ping(addr string, useTLS bool) error {
	var c net.Conn
	var err error
	d := &net.Dialer{Timeout: time.Second}
	if useTLS {
		c, err = tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // readiness probe only
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" && !bytes.HasPrefix([]byte(line), []byte("-NOAUTH")) {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// Stop stops the server (SIGTERM, then SIGKILL after 5 s). It is a no-op
// when the server is not running. What it held is lost.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Restart starts a stopped server again on the same address, empty; it
// fails the test when it cannot.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	var err error
	// The port was just released: a moment may pass before it binds again.
	for range 50 {
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.tb.Fatalf("redis-server restart on %s: %v", s.Addr(), err)
}
