// Package local is the in-process test bed the package tests share: the
// Graph emulator over real TLS with the test bot registered, a standalone
// policy file on it, and a receiver (receiver.Run, as cmd/receiver runs it)
// on loopback listeners. The receiver's own tests and the plugin's use it;
// test/harness is its counterpart for a real cluster.
package local

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/receiver"
)

// The calling bot the tests register in the emulator.
const (
	AppID    = "6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10"
	TenantID = "0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55"
	Secret   = "emulated~secret"
)

// Bot is the test bot, its notifications sent to callback by default.
func Bot(callback string) emulator.Bot {
	return emulator.Bot{AppID: AppID, TenantID: TenantID, Secret: Secret, Callback: callback}
}

// StartEmulator starts the emulator with bots (the test bot when none),
// stopped when the test ends, and writes its CA certificate, plus any extra
// PEM certificates, to a file for --ca-file.
func StartEmulator(t testing.TB, extraCAs []byte, bots ...emulator.Bot) (emu *emulator.Server, caFile string) {
	t.Helper()
	if len(bots) == 0 {
		bots = []emulator.Bot{Bot("")}
	}
	emu, err := emulator.New(emulator.Config{Bots: bots, MissedAfter: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := emu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = emu.Close() })
	caFile = filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, append(emu.CACertPEM(), extraCAs...), 0o600); err != nil {
		t.Fatal(err)
	}
	return emu, caFile
}

// PolicyFile is the standalone policy file of the CallPolicy
// telephony/hotline of the test bot on the emulator at Emulator: the
// CallPolicy, with Spec (YAML lines indented two spaces, under spec:, after
// bot and graph) and Extra (more documents, e.g. ConfigMaps) appended, and
// the bot's Secret.
type PolicyFile struct {
	Emulator string
	// APIVersion is spec.graph.apiVersion (default v1.0).
	APIVersion string
	// AdditionalTenants is spec.bot.additionalTenants.
	AdditionalTenants []string
	Spec              string
	Extra             string
}

// YAML renders the file.
func (p PolicyFile) YAML() []byte {
	api := p.APIVersion
	if api == "" {
		api = "v1.0"
	}
	var b bytes.Buffer
	b.WriteString(`apiVersion: calls.callguard.dev/v1alpha1
kind: CallPolicy
metadata:
  name: hotline
  namespace: telephony
spec:
  bot:
    appId: ` + AppID + `
    tenantId: ` + TenantID + `
`)
	if len(p.AdditionalTenants) > 0 {
		b.WriteString(`    additionalTenants: ["` + strings.Join(p.AdditionalTenants, `", "`) + `"]
`)
	}
	b.WriteString(`    credentials:
      secretRef:
        name: hotline-bot
  graph:
    endpoint: ` + p.Emulator + `
    apiVersion: "` + api + `"
    authorityHost: ` + p.Emulator + `/
    openIDConfigURL: ` + p.Emulator + `/v1/.well-known/OpenIdConfiguration
`)
	b.WriteString(p.Spec)
	b.WriteString(`---
apiVersion: v1
kind: Secret
metadata:
  name: hotline-bot
  namespace: telephony
stringData:
  client-secret: ` + Secret + "\n")
	if p.Extra != "" {
		b.WriteString("---\n")
		b.WriteString(p.Extra)
	}
	return b.Bytes()
}

// WriteFile replaces path with data atomically, as editors and Kubernetes
// volume updates do.
func WriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// Options run a receiver; PolicyFile and CAFile are required.
type Options struct {
	receiver.Options
	// MetricsHost is where the metrics port listens (default 127.0.0.1),
	// e.g. an address the API server's pod proxy reaches.
	MetricsHost string
}

// Receiver is a receiver running in the test process.
type Receiver struct {
	// Callback is the callback URL, Ops the metrics port's base URL.
	Callback, Ops string
	MetricsPort   int
	Server        *receiver.Server

	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// StartReceiver runs receiver.Run on loopback listeners (unless given),
// waits until it is ready, and stops it when the test ends (an error from
// Run fails the test).
func StartReceiver(t testing.TB, o Options) *Receiver {
	t.Helper()
	if o.Listener == nil {
		o.Listener = listen(t, "127.0.0.1")
	}
	if o.MetricsListener == nil {
		o.MetricsListener = listen(t, cmpOr(o.MetricsHost, "127.0.0.1"))
	}
	if o.CredentialsDir == "" {
		o.CredentialsDir = filepath.Join(t.TempDir(), "no-credentials")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewJSONHandler(io.Discard, nil))
	}
	if o.ShutdownGrace == 0 {
		o.ShutdownGrace = 50 * time.Millisecond
	}
	r := &Receiver{
		Callback:    "http://" + o.Listener.Addr().String() + "/api/calls",
		Ops:         "http://" + o.MetricsListener.Addr().String(),
		MetricsPort: o.MetricsListener.Addr().(*net.TCPAddr).Port,
		done:        make(chan error, 1),
	}
	srv := make(chan *receiver.Server, 1)
	onServer := o.OnServer
	o.OnServer = func(s *receiver.Server) {
		if onServer != nil {
			onServer(s)
		}
		srv <- s
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- receiver.Run(ctx, o.Options) }()
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Errorf("receiver.Run: %v", err)
		}
	})
	select {
	case r.Server = <-srv:
	case err := <-r.done:
		t.Fatalf("receiver.Run returned early: %v", err)
	}
	Eventually(t, 10*time.Second, "receiver ready", func() bool {
		resp, err := http.Get(r.Ops + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return r
}

// Shutdown starts the receiver's shutdown (SIGTERM) without waiting.
func (r *Receiver) Shutdown() { r.cancel() }

// Wait waits up to 30 s for Run to return and returns what it returned.
func (r *Receiver) Wait() error {
	r.once.Do(func() {
		select {
		case r.err = <-r.done:
		case <-time.After(30 * time.Second):
			r.err = errors.New("receiver did not stop within 30s")
		}
	})
	return r.err
}

// Stop shuts the receiver down and returns what Run returned.
func (r *Receiver) Stop() error {
	r.Shutdown()
	return r.Wait()
}

func listen(t testing.TB, host string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Eventually polls cond until it holds, failing the test after timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// SyncBuffer is a buffer one goroutine writes (a logger, a running command)
// while the test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// Bytes returns a copy of what was written.
func (s *SyncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

func (s *SyncBuffer) String() string { return string(s.Bytes()) }
