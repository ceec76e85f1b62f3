package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/wav"
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
		{"prompt speed zero", []string{"--state-dir", dir, "--prompt-speed", "0"}, "--prompt-speed 0: want a positive number"},
		{"prompt speed negative", []string{"--state-dir", dir, "--prompt-speed", "-2"}, "want a positive number"},
		{"prompt speed infinite", []string{"--state-dir", dir, "--prompt-speed", "+Inf"}, "want a positive number"},
		{"prompt speed not a number", []string{"--state-dir", dir, "--prompt-speed", "fast"}, "invalid value"},
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

// TestRunPlaysPromptsAtPromptSpeed: with --prompt-speed 300 and the bot's
// CA given by --callback-ca, a 30 s prompt fetched from the bot's https
// server is played in a tenth of a second, and its end notified to the
// bot's callback.
func TestRunPlaysPromptsAtPromptSpeed(t *testing.T) {
	notes := make(chan []byte, 16)
	prompt := wav.Tone(30 * time.Second)
	bot := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/prompt.wav" {
			_, _ = w.Write(prompt)
			return
		}
		body, _ := io.ReadAll(r.Body)
		notes <- body
		w.WriteHeader(http.StatusAccepted)
	}))
	defer bot.Close()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "bot-ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: bot.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "state")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stdout, stdoutW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--state-dir", stateDir, "--prompt-speed", "300",
			"--callback-ca", caFile, "--bot", testBot + ",callback=" + bot.URL + "/calls"}, stdoutW, io.Discard)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	base := readReady(t, stdout)
	hc := clientFor(t, stateDir)
	call := func(method, path, token, body string, want int) []byte {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, out, want)
		}
		return out
	}
	next := func(what string) *graph.Notification {
		t.Helper()
		select {
		case b := <-notes:
			n, err := graph.DecodeNotifications(b)
			if err != nil || len(n.Value) != 1 {
				t.Fatalf("%s: %s (%v)", what, b, err)
			}
			return &n.Value[0]
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s notification within 10s", what)
			return nil
		}
	}

	resp, err := hc.PostForm(base+"/"+testTenant+"/oauth2/v2.0/token", url.Values{
		"grant_type": {"client_credentials"}, "client_id": {testApp}, "client_secret": {"s3cret"}, "scope": {base + "/.default"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	err = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if err != nil || tok.AccessToken == "" {
		t.Fatalf("token: %d %v", resp.StatusCode, err)
	}
	var placed graph.Call
	if err := json.Unmarshal(call(http.MethodPost, "/emulator/calls", "", `{"appId":"`+testApp+`"}`, http.StatusCreated), &placed); err != nil {
		t.Fatal(err)
	}
	next("created")
	call(http.MethodPost, "/v1.0/communications/calls/"+placed.ID+"/answer", tok.AccessToken,
		`{"acceptedModalities":["audio"],"mediaConfig":{"@odata.type":"#microsoft.graph.serviceHostedMediaConfig"}}`, http.StatusAccepted)
	for !next("established").IsCallEstablished() {
	}
	call(http.MethodPost, "/v1.0/communications/calls/"+placed.ID+"/playPrompt", tok.AccessToken,
		`{"clientContext":"c1","prompts":[{"mediaInfo":{"uri":"`+bot.URL+`/prompt.wav"}}]}`, http.StatusOK)
	// At speed 1 the prompt would play for 30 s, past next's 10 s.
	n := next("operation")
	op, err := n.PromptOperation()
	if err != nil || op == nil || !op.Succeeded() || op.ClientContext != "c1" {
		t.Fatalf("operation notification %s: %+v, %v", n.Raw, op, err)
	}
}
