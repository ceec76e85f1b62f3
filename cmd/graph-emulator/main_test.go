package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	testApp    = "11111111-1111-4111-8111-111111111111"
	testTenant = "22222222-2222-4222-8222-222222222222"
	testBot    = "appId=" + testApp + ",tenantId=" + testTenant + ",secret=s3cret"
)

var readyLine = regexp.MustCompile(`^listening on (https://127\.0\.0\.1:[1-9][0-9]*)$`)

func TestParseBot(t *testing.T) {
	certFile := filepath.Join(t.TempDir(), "bot.pem")
	if err := os.WriteFile(certFile, []byte("-----BEGIN CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, spec, wantErr string
	}{
		{name: "minimal", spec: testBot},
		{name: "all keys", spec: testBot + ",callback=http://127.0.0.1:8080/api/calls,legacy=true,cert=" + certFile},
		{name: "missing tenant", spec: "appId=" + testApp + ",secret=x", wantErr: "appId and tenantId are required"},
		{name: "not key=value", spec: testBot + ",legacy", wantErr: "field 4 is not key=value"},
		{name: "empty value", spec: testBot + ",callback=", wantErr: "field 4"},
		{name: "unknown key", spec: testBot + ",tenant=x", wantErr: `unknown key "tenant"`},
		{name: "bad legacy", spec: testBot + ",legacy=maybe", wantErr: "legacy must be true or false"},
		{name: "missing cert file", spec: testBot + ",cert=/nonexistent.pem", wantErr: "reading the certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := parseBot(tt.spec)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Errorf("error leaks the secret: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b.AppID != testApp || b.TenantID != testTenant || b.Secret != "s3cret" {
				t.Errorf("bot = %+v", b)
			}
		})
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not-pem.crt")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"no state dir", []string{"--bot", testBot}, "--state-dir is required"},
		{"bad bot", []string{"--state-dir", dir, "--bot", "appId=x"}, "appId and tenantId"},
		{"bot not a UUID", []string{"--state-dir", dir, "--bot", "appId=x,tenantId=y,secret=z"}, "not a UUID"},
		{"unknown flag", []string{"--state-dir", dir, "--port", "1"}, "flag provided but not defined"},
		{"extra argument", []string{"--state-dir", dir, "serve"}, "unexpected arguments"},
		{"bad listen", []string{"--state-dir", dir, "--listen", "localhost"}, "listen address"},
		{"resolve without address", []string{"--state-dir", dir, "--resolve", "hotline.callguard.test:443"}, "want HOST:PORT:ADDR"},
		{"resolve to a name", []string{"--state-dir", dir, "--resolve", "hotline.callguard.test:443:localhost"}, "not an IP address"},
		{"resolve bad port", []string{"--state-dir", dir, "--resolve", "hotline.callguard.test:https:10.213.0.1"}, "not a port"},
		{"callback CA missing", []string{"--state-dir", dir, "--callback-ca", filepath.Join(dir, "none.crt")}, "no such file"},
		{"callback CA not PEM", []string{"--state-dir", dir, "--callback-ca", notPEM}, "no PEM certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(t.Context(), tt.args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("run: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseResolve(t *testing.T) {
	for in, want := range map[string][2]string{
		"hotline.callguard.test:443:10.213.0.1": {"hotline.callguard.test:443", "10.213.0.1"},
		"bot.example.test:8443:[::1]":           {"bot.example.test:8443", "::1"},
		"bot.example.test:8443:::1":             {"bot.example.test:8443", "::1"},
	} {
		hostPort, addr, err := parseResolve(in)
		if err != nil || hostPort != want[0] || addr != want[1] {
			t.Errorf("parseResolve(%q) = %q, %q, %v; want %q, %q", in, hostPort, addr, err, want[0], want[1])
		}
	}
}

// clientFor trusts the CA the emulator wrote to its state dir.
func clientFor(t *testing.T, stateDir string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(stateDir, "ca.crt"))
	if err != nil {
		t.Fatalf("ca.crt: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("ca.crt holds no certificate")
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// checkServing fetches the callback-token OpenID configuration.
func checkServing(t *testing.T, base, stateDir string) {
	t.Helper()
	resp, err := clientFor(t, stateDir).Get(base + "/v1/.well-known/OpenIdConfiguration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var cfg map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&cfg); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("OpenID configuration: %d %v", resp.StatusCode, err)
	}
	if cfg["jwks_uri"] != base+"/v1/.well-known/keys" {
		t.Errorf("jwks_uri = %v", cfg["jwks_uri"])
	}
}

// readReady waits for the ready line on r.
func readReady(t *testing.T, r io.Reader) string {
	t.Helper()
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		lines <- strings.TrimSuffix(line, "\n")
	}()
	select {
	case line := <-lines:
		m := readyLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("first stdout line = %q", line)
		}
		return m[1]
	case <-time.After(60 * time.Second):
		t.Fatal("no ready line within 60s")
		return ""
	}
}

func TestRunServesUntilCancelled(t *testing.T) {
	stateDir := filepath.Join(t.TempDir(), "state")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stdout, stdoutW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--state-dir", stateDir, "--bot", testBot}, stdoutW, io.Discard)
	}()
	base := readReady(t, stdout)
	checkServing(t, base, stateDir)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after cancellation")
	}
}

// TestBinary builds the command and stops it with SIGTERM, as a user or a
// Kubernetes pod would.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "graph-emulator")
	build := exec.CommandContext(t.Context(), "go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	stateDir := t.TempDir()
	cmd := exec.CommandContext(t.Context(), bin, "--listen", "127.0.0.1:0", "--state-dir", stateDir, "--bot", testBot)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	base := readReady(t, stdout)
	checkServing(t, base, stateDir)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v\nstderr:\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), `"msg":"stopped"`) {
		t.Errorf("no graceful stop in the logs:\n%s", stderr.String())
	}
}

func TestParseBotRoles(t *testing.T) {
	for _, tt := range []struct {
		spec string
		want []string
	}{
		{testBot, nil}, // every calling permission, decided by the emulator
		{testBot + ",roles=Calls.Initiate.All|Calls.JoinGroupCall.All", []string{"Calls.Initiate.All", "Calls.JoinGroupCall.All"}},
		{testBot + ",roles=", []string{}},
	} {
		b, err := parseBot(tt.spec)
		if err != nil {
			t.Fatalf("parseBot(%q): %v", tt.spec, err)
		}
		if (b.Roles == nil) != (tt.want == nil) || strings.Join(b.Roles, "|") != strings.Join(tt.want, "|") {
			t.Errorf("parseBot(%q).Roles = %#v, want %#v", tt.spec, b.Roles, tt.want)
		}
	}
}
