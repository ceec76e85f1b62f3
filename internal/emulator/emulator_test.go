package emulator

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewValidatesBots(t *testing.T) {
	good := Bot{AppID: appID, TenantID: tenantID, Secret: secret}
	tests := []struct {
		name string
		bots []Bot
		want string
	}{
		{"app id not a UUID", []Bot{{AppID: "bot", TenantID: tenantID, Secret: secret}}, "appId"},
		{"tenant not a UUID", []Bot{{AppID: appID, TenantID: "contoso", Secret: secret}}, "tenantId"},
		{"no credential", []Bot{{AppID: appID, TenantID: tenantID}}, "a secret, a certificate or a federated credential"},
		{"bad certificate", []Bot{{AppID: appID, TenantID: tenantID, CertPEM: []byte("not pem")}}, "no PEM CERTIFICATE"},
		{"bad callback", []Bot{{AppID: appID, TenantID: tenantID, Secret: secret, Callback: "localhost:8080"}}, "absolute"},
		{"duplicate", []Bot{good, good}, "registered twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(Config{Bots: tt.bots})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New: %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := New(Config{Listen: "no-port"}); err == nil {
		t.Error("New accepted a listen address without a port")
	}
}

func TestStateDirKeepsTheCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := startEmulator(t, "", func(c *Config) { c.StateDir = dir; c.Hosts = []string{"graph-emulator.callguard.svc"} })
	written, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(written, s.CACertPEM()) {
		t.Error("ca.crt differs from CACertPEM")
	}
	if info, err := os.Stat(filepath.Join(dir, "ca.key")); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("ca.key: %v %v", info, err)
	}
	block, _ := pem.Decode(written)
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(s.tlsCert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, name := range []string{"localhost", "127.0.0.1", "::1", "graph-emulator.callguard.svc"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: name}); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}

	again, err := New(Config{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if !bytes.Equal(again.CACertPEM(), written) {
		t.Error("a restart made a new CA instead of reusing the state dir's")
	}
}

func TestStartAndCloseLifecycle(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if s.URL() != "" {
		t.Errorf("URL before Start = %q", s.URL())
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(s.URL(), "https://127.0.0.1:") || strings.HasSuffix(s.URL(), ":0") {
		t.Errorf("URL = %q", s.URL())
	}
	if err := s.Start(); err == nil {
		t.Error("second Start succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := s.Client().Get(s.URL() + "/v1/.well-known/keys"); err == nil {
		t.Error("closed emulator still serves")
	}
}
