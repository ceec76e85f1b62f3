package policycli

import (
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/wav"
)

// promptServer serves prompts over TLS as a web server would, counting the
// requests of each path.
type promptServer struct {
	*httptest.Server
	mu   sync.Mutex
	hits map[string]int
}

func (p *promptServer) count(path string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hits[path]
}

func (p *promptServer) total() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, h := range p.hits {
		n += h
	}
	return n
}

func servePrompts(t *testing.T, tls bool) *promptServer {
	t.Helper()
	good := wav.Tone(2 * time.Second)
	stereo := wav.Tone(time.Second)
	binary.LittleEndian.PutUint16(stereo[22:], 2)
	ps := &promptServer{hits: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		ps.mu.Lock()
		ps.hits[r.URL.Path]++
		ps.mu.Unlock()
		switch r.URL.Path {
		case "/good.wav":
			w.Header().Set("Content-Type", "audio/wav")
			_, _ = w.Write(good)
		case "/signed.wav":
			// As a storage service's signed URL: the signature is the query.
			if r.URL.Query().Get("sig") != "c2VjcmV0" {
				http.Error(w, "signature required", http.StatusForbidden)
				return
			}
			_, _ = w.Write(good)
		case "/stereo.wav":
			_, _ = w.Write(stereo)
		case "/big.wav":
			// A valid header, then more samples than Graph plays.
			big := wav.Tone(time.Second)
			binary.LittleEndian.PutUint32(big[40:], 3<<20)
			_, _ = w.Write(big)
			_, _ = w.Write(make([]byte, 3<<20))
		case "/to-http.wav":
			http.Redirect(w, r, "http://prompts.example.com/good.wav", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	})
	ps.Server = httptest.NewUnstartedServer(mux)
	// The handshakes the untrusted case fails are expected.
	ps.Config.ErrorLog = log.New(io.Discard, "", 0)
	if tls {
		ps.StartTLS()
	} else {
		ps.Start()
	}
	t.Cleanup(ps.Close)
	return ps
}

// caFile writes the server's certificate as a PEM file.
func caFile(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// promptPolicy has one Announce rule per URL, in order.
func promptPolicy(urls ...string) string {
	var b strings.Builder
	b.WriteString(policyHeader)
	for i, u := range urls {
		fmt.Fprintf(&b, "    - name: announce-%d\n      action: Announce\n      announce: {prompt: {url: %q}}\n      match: {callers: {numbers: [\"+1425555%04d\"]}}\n", i, u, i)
	}
	return b.String()
}

// TestLintPromptURLs fetches the url prompts of Announce rules from a real
// TLS server and reports those Graph could not play with their field path.
func TestLintPromptURLs(t *testing.T) {
	srv := servePrompts(t, true)
	plain := servePrompts(t, false)
	ca := caFile(t, srv.Server)
	bad := filepath.Join(t.TempDir(), "bad.crt")
	if err := os.WriteFile(bad, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := srv.URL + "/good.wav"

	tests := []struct {
		name      string
		policy    string
		args      []string
		code      int
		stdout    string
		stderrHas []string
		// hits are the requests the TLS server must have seen, by path.
		hits map[string]int
	}{
		{
			name:   "good prompt, used twice, fetched once",
			policy: promptPolicy(good, good),
			args:   []string{"--ca-file", ca},
			stdout: "telephony/hotline: 2 rules, 0 warnings, 2 prompt URLs fetched and checked\n",
			hits:   map[string]int{"/good.wav": 1},
		},
		{
			name:   "a signed URL is fetched with its query",
			policy: promptPolicy(srv.URL + "/signed.wav?sig=c2VjcmV0"),
			args:   []string{"--ca-file", ca},
			stdout: "telephony/hotline: 1 rule, 0 warnings, 1 prompt URL fetched and checked\n",
			hits:   map[string]int{"/signed.wav": 1},
		},
		{
			name:      "and reported without it",
			policy:    promptPolicy(srv.URL + "/signed.wav?sig=d3Jvbmc"),
			args:      []string{"--ca-file", ca},
			code:      2,
			stderrHas: []string{"spec.rules[0].announce.prompt.url: GET " + srv.URL + "/signed.wav: 403 Forbidden\n"},
			hits:      map[string]int{"/signed.wav": 1},
		},
		{
			name:   "every problem, with its rule's field path",
			policy: promptPolicy(good, srv.URL+"/stereo.wav", srv.URL+"/missing.wav", srv.URL+"/big.wav?sig=c2VjcmV0", srv.URL+"/to-http.wav"),
			args:   []string{"--ca-file", ca},
			code:   2,
			stderrHas: []string{
				"spec.rules[1].announce.prompt.url: GET " + srv.URL + "/stereo.wav: not a prompt Graph plays: 2 channels at byte 22, want 1 (mono)\n",
				"spec.rules[2].announce.prompt.url: GET " + srv.URL + "/missing.wav: 404 Not Found\n",
				"spec.rules[3].announce.prompt.url: GET " + srv.URL + "/big.wav: more than 2097152 bytes (2 MiB), the most Graph plays\n",
				"spec.rules[4].announce.prompt.url: GET " + srv.URL + "/to-http.wav: redirected to http://prompts.example.com: only https is fetched\n",
			},
			hits: map[string]int{"/good.wav": 1, "/stereo.wav": 1, "/missing.wav": 1, "/big.wav": 1, "/to-http.wav": 1},
		},
		{
			name:      "problems are located in the file",
			policy:    promptPolicy(good, srv.URL+"/missing.wav"),
			args:      []string{"--ca-file", ca},
			code:      2,
			stderrHas: []string{"error: <stdin>:"},
		},
		{
			name:      "a server not trusted",
			policy:    promptPolicy(good),
			code:      2,
			stderrHas: []string{"spec.rules[0].announce.prompt.url: GET " + good + ": tls: failed to verify certificate: x509: certificate signed by unknown authority"},
			hits:      map[string]int{},
		},
		{
			name:      "http is refused without a request",
			policy:    promptPolicy(good, plain.URL+"/good.wav"),
			args:      []string{"--ca-file", ca},
			code:      2,
			stderrHas: []string{"spec.rules[1].announce.prompt.url: ", "https"},
			hits:      map[string]int{"/good.wav": 1},
		},
		{
			name:   "offline: nothing fetched, and it says so",
			policy: promptPolicy(good, srv.URL+"/missing.wav"),
			args:   []string{"--offline"},
			stdout: "telephony/hotline: 2 rules, 0 warnings, 2 prompt URLs not fetched (--offline)\n",
			hits:   map[string]int{},
		},
		{
			name:   "no prompt URL: the summary as always",
			policy: expiringPolicy,
			stdout: "telephony/hotline: 1 rule, 0 warnings\n",
		},
		{name: "offline with a CA file", policy: promptPolicy(good), args: []string{"--offline", "--ca-file", ca}, code: 1, stderrHas: []string{"error: --ca-file is for the fetches --offline skips"}, hits: map[string]int{}},
		{name: "CA file missing", policy: promptPolicy(good), args: []string{"--ca-file", filepath.Join(t.TempDir(), "nope.crt")}, code: 1, stderrHas: []string{"error: --ca-file: open "}, hits: map[string]int{}},
		{name: "CA file without a certificate", policy: promptPolicy(good), args: []string{"--ca-file", bad}, code: 1, stderrHas: []string{"no PEM certificate in it"}, hits: map[string]int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := map[string]int{}
			for p := range tt.hits {
				before[p] = srv.count(p)
			}
			total := srv.total()
			var stdout, stderr strings.Builder
			code := Run(append([]string{"lint", "-f", "-"}, tt.args...), strings.NewReader(tt.policy), &stdout, &stderr)
			checkRun(t, code, stdout.String(), stderr.String(), tt.code, tt.stdout, tt.stderrHas)
			if tt.hits != nil {
				n := 0
				for p, want := range tt.hits {
					n += want
					if got := srv.count(p) - before[p]; got != want {
						t.Errorf("%s requested %d times, want %d", p, got, want)
					}
				}
				if got := srv.total() - total; got != n {
					t.Errorf("%d requests to the server, want %d", got, n)
				}
			}
		})
	}
	if n := plain.total(); n != 0 {
		t.Errorf("the http server got %d requests, want none", n)
	}
}

// TestCheckPromptRefuses refuses what is not an https URL before any
// request, whatever the compiler let through.
func TestCheckPromptRefuses(t *testing.T) {
	plain := servePrompts(t, false)
	client, err := promptClient("")
	if err != nil {
		t.Fatal(err)
	}
	for _, raw := range []string{plain.URL + "/good.wav", "https:///good.wav", "ftp://prompts.example.com/good.wav", "https://[::1"} {
		if err := checkPrompt(t.Context(), client, raw); err == nil {
			t.Errorf("%s: no error", raw)
		}
	}
	if n := plain.total(); n != 0 {
		t.Errorf("the http server got %d requests, want none", n)
	}
}
