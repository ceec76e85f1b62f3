package emulator

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// publicBot is a bot behind an https URL whose host no DNS names: its
// certificate is for bot.callguard.test, from a CA of its own.
func publicBot(t *testing.T) (callback, hostPort string, caPEM []byte, b *botServer) {
	t.Helper()
	ca, err := newCA()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.serverCertificate([]string{"bot.callguard.test"})
	if err != nil {
		t.Fatal(err)
	}
	b = &botServer{ch: make(chan received, 64)}
	b.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.ch <- received{auth: r.Header.Get("Authorization"), body: body}
		w.WriteHeader(http.StatusAccepted)
	}))
	b.Server.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	b.StartTLS()
	t.Cleanup(b.Close)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(b.URL, "https://"))
	hostPort = net.JoinHostPort("bot.callguard.test", port)
	return "https://" + hostPort + "/api/calls", hostPort, ca.certPEM, b
}

func TestCallbackResolveAndCAReachAPublicHTTPSURL(t *testing.T) {
	callback, hostPort, caPEM, bot := publicBot(t)
	s := startEmulator(t, callback, func(c *Config) {
		c.CallbackResolve = map[string]string{hostPort: "127.0.0.1"}
		c.CallbackCAs = caPEM
	})
	id := place(t, s, phoneCaller)
	if r := bot.next(t); !strings.HasPrefix(r.auth, "Bearer ") {
		t.Errorf("notification without a bearer token: %q", r.auth)
	}
	rec := waitRecord(t, s, id, func(r CallRecord) bool { return len(r.History) > 0 })
	if !hasEvent(rec, EventCreatedNotification, http.StatusAccepted) {
		t.Fatalf("created notification not delivered to %s: %+v", callback, rec.History)
	}
}

func TestCallbackWithoutTheCAIsNotTrusted(t *testing.T) {
	callback, hostPort, _, bot := publicBot(t)
	s := startEmulator(t, callback, func(c *Config) {
		c.CallbackResolve = map[string]string{hostPort: "127.0.0.1"}
	})
	id := place(t, s, phoneCaller)
	rec := waitRecord(t, s, id, func(r CallRecord) bool { return len(r.History) > 0 })
	if !hasEvent(rec, EventCreatedNotification, 0) || !strings.Contains(rec.History[0].Detail, "certificate") {
		t.Fatalf("delivery to a host of an unknown CA: %+v, want a certificate error", rec.History)
	}
	bot.quiet(t, 50*time.Millisecond)
}

func TestCallbackClientOptionsAreChecked(t *testing.T) {
	for name, cfg := range map[string]Config{
		"resolve without port": {CallbackResolve: map[string]string{"bot.callguard.test": "127.0.0.1"}},
		"resolve to a name":    {CallbackResolve: map[string]string{"bot.callguard.test:443": "localhost"}},
		"CA without PEM":       {CallbackCAs: []byte("not a certificate")},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := New(cfg); err == nil {
				t.Fatal("New accepted it")
			}
		})
	}
}
