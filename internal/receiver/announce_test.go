package receiver_test

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/receiver"
	"github.com/callguard/callguard/internal/wav"
	"github.com/callguard/callguard/test/harness/local"
	"github.com/callguard/callguard/test/harness/redisserver"
)

// Callers the announce rules decide.
const (
	numAnnounce     = "+14255550005"
	numAnnounceLong = "+14255550006"
)

// announceRules announce a short prompt (kept in a ConfigMap, served by the
// receivers) to numAnnounce and a prompt longer than its maxSeconds to
// numAnnounceLong.
const announceRules = `    - name: announce-closed
      action: Announce
      announce:
        prompt: {configMapKeyRef: {name: prompts, key: closed.wav}}
        maxSeconds: 30
      match: {callers: {numbers: ["` + numAnnounce + `"]}}
    - name: announce-long
      action: Announce
      announce:
        prompt: {configMapKeyRef: {name: prompts, key: long.wav}}
        maxSeconds: 5
      match: {callers: {numbers: ["` + numAnnounceLong + `"]}}
`

// The prompts: closed plays 3 s (0.3 s at the emulator's prompt speed),
// long 60 s (6 s), past its rule's maxSeconds.
var (
	promptClosed = wav.Tone(3 * time.Second)
	promptLong   = wav.Tone(60 * time.Second)
)

const promptSpeed = 10

func sha(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// promptsConfigMap is the ConfigMap the announce rules name.
func promptsConfigMap() string {
	return `apiVersion: v1
kind: ConfigMap
metadata:
  name: prompts
  namespace: telephony
binaryData:
  closed.wav: ` + base64.StdEncoding.EncodeToString(promptClosed) + `
  long.wav: ` + base64.StdEncoding.EncodeToString(promptLong) + "\n"
}

// tlsCert is httptest's certificate (127.0.0.1, ::1, example.com): the
// receivers serve TLS with it, as their ingress would, and the emulator
// trusts it for callbacks and prompt fetches.
func tlsCert(t *testing.T) (tls.Certificate, []byte) {
	t.Helper()
	s := httptest.NewUnstartedServer(http.NotFoundHandler())
	s.StartTLS()
	defer s.Close()
	return s.TLS.Certificates[0], pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})
}

// announceEnv is an emulator and receivers behind TLS sharing a state key,
// as the replicas of one policy.
type announceEnv struct {
	t       *testing.T
	emu     *emulator.Server
	caFile  string
	cert    tls.Certificate
	certPEM []byte
	policy  string
	state   string
	// bot is the bot's registered callback: the first receiver's.
	bot      string
	backstop time.Duration
	maxConns int
}

type announceOptions struct {
	mode string
	// backstopDivisor divides maxSeconds for the backstop (promptSpeed
	// when 0, as prompts play that much faster).
	backstopDivisor int
	// maxConnections caps each receiver's callback connections.
	maxConnections int
	// redis is the address of a state store the receivers share ("": none).
	redis string
	// upstream is the upstream bot, nil for none.
	upstream *recorder
	// receivers is how many receivers to listen for (1 when 0): their
	// callback URLs are known before the emulator starts.
	receivers int
}

func startAnnounceEnv(t *testing.T, o announceOptions) (*announceEnv, []net.Listener) {
	t.Helper()
	e := &announceEnv{t: t, backstop: time.Duration(cmp.Or(o.backstopDivisor, promptSpeed)), maxConns: o.maxConnections}
	e.cert, e.certPEM = tlsCert(t)
	n := max(o.receivers, 1)
	lns := make([]net.Listener, n)
	for i := range lns {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[i] = ln
	}
	e.bot = "https://" + lns[0].Addr().String() + "/api/calls"
	emu, err := emulator.New(emulator.Config{
		Bots:        []emulator.Bot{local.Bot(e.bot)},
		MissedAfter: time.Minute,
		CallbackCAs: e.certPEM,
		PromptSpeed: promptSpeed,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := emu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = emu.Close() })
	e.emu = emu
	dir := t.TempDir()
	e.caFile = filepath.Join(dir, "ca.crt")
	ca := emu.CACertPEM()
	if o.upstream != nil {
		ca = append(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: o.upstream.Certificate().Raw})...)
	}
	if err := os.WriteFile(e.caFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	// The replicas' shared key (the operator's state Secret).
	e.state = filepath.Join(dir, "state")
	if err := os.MkdirAll(e.state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.state, v1alpha1.StateSecretKey), bytes.Repeat([]byte("k"), 32), 0o600); err != nil {
		t.Fatal(err)
	}
	mode := o.mode
	if mode == "" {
		mode = "Enforce"
	}
	e.policy = filepath.Join(dir, "policy.yaml")
	state := ""
	if o.redis != "" {
		state = "  state:\n    redis: {address: \"" + o.redis + "\"}\n"
	}
	if o.upstream != nil {
		state += "  upstream: {url: \"" + o.upstream.URL + "\"}\n"
	}
	local.WriteFile(t, e.policy, local.PolicyFile{Emulator: emu.URL(), Spec: state + `  mode: ` + mode + `
  defaultAction: Allow
  rules:
` + announceRules, Extra: promptsConfigMap()}.YAML())
	return e, lns
}

// rcv is a receiver of an announceEnv.
type rcv struct {
	*local.Receiver
	url  string // its https callback URL
	logs *logSink
}

// startReceiver serves the callback over TLS on ln; callbackURL is its
// --callback-url ("" for none).
func (e *announceEnv) startReceiver(ln net.Listener, callbackURL string) *rcv {
	e.t.Helper()
	r := &rcv{url: "https://" + ln.Addr().String() + "/api/calls", logs: &logSink{}}
	r.Receiver = local.StartReceiver(e.t, local.Options{Options: receiver.Options{
		PolicyFile:     e.policy,
		CAFile:         e.caFile,
		StateDir:       e.state,
		MaxConnections: e.maxConns,
		Logger:         slog.New(slog.NewJSONHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Listener:       tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{e.cert}}),
		Server: receiver.Config{
			GraphBackoff:     20 * time.Millisecond,
			StateDir:         e.state,
			CallbackURL:      callbackURL,
			AnnounceBackstop: func(d time.Duration) time.Duration { return d / e.backstop },
		},
	}})
	return r
}

func (e *announceEnv) place(number string) string {
	e.t.Helper()
	return (&env{t: e.t, emu: e.emu}).placeCall(number)
}

// waitPlaying waits until the call's prompt started playing.
func (e *announceEnv) waitPlaying(id string) {
	e.t.Helper()
	eventually(e.t, 10*time.Second, "prompt playing", func() bool {
		rec, _ := e.emu.Call(id)
		return len(rec.Prompts) == 1 && !rec.Prompts[0].StartedAt.IsZero()
	})
}

// trusting is a TLS client configuration that trusts certPEM.
func trusting(certPEM []byte) *tls.Config {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	return &tls.Config{RootCAs: roots}
}

// ended waits until the call ended and returns its record.
func (e *announceEnv) ended(id string) emulator.CallRecord {
	e.t.Helper()
	var rec emulator.CallRecord
	eventually(e.t, 20*time.Second, "call "+id+" ended", func() bool {
		rec, _ = e.emu.Call(id)
		return rec.EndedBy != ""
	})
	return rec
}

// metric reads a receiver's metric (see env.metric).
func (r *rcv) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	return (&env{t: t, srv: r.Server}).metric(name, labels)
}

func (r *rcv) waitMetric(t *testing.T, name string, labels map[string]string, want float64) {
	t.Helper()
	(&env{t: t, srv: r.Server}).waitMetric(name, labels, want)
}

func action(op, result string) map[string]string {
	return map[string]string{"operation": op, "result": result}
}

const actionsMetric = "callguard_receiver_graph_actions_total"

// checkPlayedOnce checks the record of a call announced to its end: answered,
// the prompt fetched and played once, hung up by the bot.
func checkPlayedOnce(t *testing.T, rec emulator.CallRecord, prompt []byte) {
	t.Helper()
	if rec.AnsweredAt.IsZero() {
		t.Errorf("call %s was not answered: %+v", rec.ID, rec)
	}
	if len(rec.Prompts) != 1 {
		t.Fatalf("call %s played %d prompts, want 1: %+v", rec.ID, len(rec.Prompts), rec.Prompts)
	}
	p := rec.Prompts[0]
	if p.SHA256 != sha(prompt) {
		t.Errorf("prompt played has sha256 %s, want %s (uri %s)", p.SHA256, sha(prompt), p.URI)
	}
	if want := int64(3000); p.DurationMs != want {
		t.Errorf("prompt lasted %d ms, want %d", p.DurationMs, want)
	}
	if rec.EndedBy != "bot" {
		t.Errorf("call ended by %q, want bot", rec.EndedBy)
	}
}

// TestAnnounce: a call the policy announces is answered, hears the prompt
// that the receiver itself serves to Graph, and is hung up when it ends;
// its notifications never reach the upstream bot.
func TestAnnounce(t *testing.T) {
	e, lns := startAnnounceEnv(t, announceOptions{})
	a := e.startReceiver(lns[0], e.bot)
	id := e.place(numAnnounce)
	rec := e.ended(id)
	checkPlayedOnce(t, rec, promptClosed)
	if want := e.bot + "/prompts/" + sha(promptClosed) + ".wav"; rec.Prompts[0].URI != want {
		t.Errorf("prompt uri %s, want %s", rec.Prompts[0].URI, want)
	}
	for _, op := range []string{graph.OpAnswer, graph.OpPlayPrompt, graph.OpHangup} {
		a.waitMetric(t, actionsMetric, action(op, "success"), 1)
	}
	a.waitMetric(t, "callguard_receiver_prompt_requests_total", map[string]string{"code": "200"}, 1)
	a.waitMetric(t, "callguard_receiver_announce_calls_in_progress", nil, 0)
	a.waitMetric(t, "callguard_receiver_decision_to_graph_seconds", map[string]string{"operation": graph.OpAnswer}, 1)
	if n := a.metric(t, "callguard_receiver_announce_tokens_refused_total", nil); n != 0 {
		t.Errorf("%v tokens refused", n)
	}
	d := a.logs.decisionFor(t, id)
	if d["action"] != "Announce" || d["rule"] != "announce-closed" || d["result"] != "success" {
		t.Errorf("decision %v", d)
	}
}

// TestAnnounceAnyReplica: the replica that answers need not be the one
// that plays or hangs up. Graph posts the call's notifications to the
// answer's callbackUri, here receiver B's, while A answered.
func TestAnnounceAnyReplica(t *testing.T) {
	e, lns := startAnnounceEnv(t, announceOptions{receivers: 2})
	bURL := "https://" + lns[1].Addr().String() + "/api/calls"
	a := e.startReceiver(lns[0], bURL)
	b := e.startReceiver(lns[1], bURL)
	id := e.place(numAnnounce)
	rec := e.ended(id)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("A:\n%s\nB:\n%s\nrecord: %+v", a.logs.String(), b.logs.String(), rec)
		}
	})
	checkPlayedOnce(t, rec, promptClosed)
	a.waitMetric(t, actionsMetric, action(graph.OpAnswer, "success"), 1)
	b.waitMetric(t, actionsMetric, action(graph.OpPlayPrompt, "success"), 1)
	b.waitMetric(t, actionsMetric, action(graph.OpHangup, "success"), 1)
	if n := a.metric(t, actionsMetric, action(graph.OpPlayPrompt, "success")); n != 0 {
		t.Errorf("A played %v prompts", n)
	}
	// A never heard of the end: its backstop hangs up at maxSeconds, which
	// finds the call ended.
	a.waitMetric(t, "callguard_receiver_announce_steps_total", map[string]string{"step": "backstop", "result": "already_done"}, 1)
	a.waitMetric(t, "callguard_receiver_announce_calls_in_progress", nil, 0)
}

// TestAnnounceNeverUpstream: no notification of an announced call reaches
// the upstream bot, at the replica that answered it or at another one that
// never decided it; an allowed call's still do.
func TestAnnounceNeverUpstream(t *testing.T) {
	up := newRecorder(t)
	e, lns := startAnnounceEnv(t, announceOptions{receivers: 2, upstream: up})
	bURL := "https://" + lns[1].Addr().String() + "/api/calls"
	e.startReceiver(lns[0], bURL)
	b := e.startReceiver(lns[1], bURL)
	id := e.place(numAnnounce)
	checkPlayedOnce(t, e.ended(id), promptClosed)
	allowed := e.place("+14255550777")
	eventually(t, 10*time.Second, "the allowed call forwarded", func() bool { return len(up.forCall(t, allowed)) > 0 })
	// B withholds all five: establishing, established, the prompt's
	// completion, terminating and terminated.
	b.waitMetric(t, "callguard_receiver_notifications_withheld_total", nil, 5)
	if got := up.forCall(t, id); len(got) != 0 {
		t.Errorf("%d notifications of the announced call reached upstream", len(got))
	}
}

// recordingProxy stands between Graph and a receiver and keeps the
// requests it passed on, so a test can deliver them again as Graph does.
type recordingProxy struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []recorded
}

type recorded struct {
	uri  string
	auth string
	body []byte
}

func newRecordingProxy(t *testing.T, target string, certPEM []byte) *recordingProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: u.Scheme, Host: u.Host})
	rp.Transport = &http.Transport{TLSClientConfig: trusting(certPEM)}
	p := &recordingProxy{}
	p.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			body, _ := io.ReadAll(r.Body)
			p.mu.Lock()
			p.reqs = append(p.reqs, recorded{uri: r.URL.RequestURI(), auth: r.Header.Get("Authorization"), body: body})
			p.mu.Unlock()
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

// matching returns the recorded requests whose body contains all of subs.
func (p *recordingProxy) matching(subs ...string) []recorded {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []recorded
next:
	for _, r := range p.reqs {
		for _, s := range subs {
			if !bytes.Contains(r.body, []byte(s)) {
				continue next
			}
		}
		out = append(out, r)
	}
	return out
}

// redeliver posts a recorded request to the receiver at base again.
func redeliver(t *testing.T, base string, r recorded, certPEM []byte) {
	t.Helper()
	u, _ := url.Parse(base)
	req, err := http.NewRequest(http.MethodPost, "https://"+u.Host+r.uri, bytes.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", r.auth)
	req.Header.Set("Content-Type", "application/json")
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: trusting(certPEM)}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("redelivery answered %d", resp.StatusCode)
	}
}

// TestAnnounceRedelivered: Graph delivers the established and the
// completion notifications again. The prompt is played once; the second
// hang-up finds the call ended, which is no error.
func TestAnnounceRedelivered(t *testing.T) {
	e, lns := startAnnounceEnv(t, announceOptions{})
	// The receiver's --callback-url is the proxy, as an ingress would be.
	proxy := newRecordingProxy(t, "https://"+lns[0].Addr().String(), e.certPEM)
	a := e.startReceiver(lns[0], proxy.URL+"/api/calls")
	id := e.place(numAnnounce)
	checkPlayedOnce(t, e.ended(id), promptClosed)
	a.waitMetric(t, actionsMetric, action(graph.OpHangup, "success"), 1)

	established := proxy.matching(id, `"established"`)
	completed := proxy.matching(id, "playPromptOperation", `"completed"`)
	if len(established) != 1 || len(completed) != 1 {
		t.Fatalf("recorded %d established and %d completion notifications, want 1 each", len(established), len(completed))
	}
	redeliver(t, a.url, established[0], e.certPEM)
	redeliver(t, a.url, completed[0], e.certPEM)
	a.waitMetric(t, "callguard_receiver_announce_steps_total", map[string]string{"step": "play", "result": "duplicate"}, 1)
	a.waitMetric(t, "callguard_receiver_announce_steps_total", map[string]string{"step": "hangup", "result": "already_done"}, 1)
	if rec, _ := e.emu.Call(id); len(rec.Prompts) != 1 {
		t.Errorf("%d prompts played after redelivery, want 1", len(rec.Prompts))
	}
	if n := a.metric(t, actionsMetric, action(graph.OpHangup, "failed")); n != 0 {
		t.Errorf("%v hang-ups failed", n)
	}
}

// TestAnnounceSharedStorePlaysOnce: with a state store the replicas share,
// the play step is claimed there: an established notification delivered to
// a second replica after the first played the prompt is not played again.
func TestAnnounceSharedStorePlaysOnce(t *testing.T) {
	rs := redisserver.Start(t)
	e, lns := startAnnounceEnv(t, announceOptions{receivers: 2, redis: rs.Addr()})
	proxy := newRecordingProxy(t, "https://"+lns[0].Addr().String(), e.certPEM)
	a := e.startReceiver(lns[0], proxy.URL+"/api/calls")
	b := e.startReceiver(lns[1], proxy.URL+"/api/calls")
	id := e.place(numAnnounce)
	checkPlayedOnce(t, e.ended(id), promptClosed)
	a.waitMetric(t, actionsMetric, action(graph.OpPlayPrompt, "success"), 1)
	established := proxy.matching(id, `"established"`)
	if len(established) != 1 {
		t.Fatalf("recorded %d established notifications, want 1", len(established))
	}
	redeliver(t, b.url, established[0], e.certPEM)
	b.waitMetric(t, "callguard_receiver_announce_steps_total", map[string]string{"step": "play", "result": "duplicate"}, 1)
	if n := b.metric(t, actionsMetric, map[string]string{"operation": graph.OpPlayPrompt}); n != 0 {
		t.Errorf("B sent %v playPrompts", n)
	}
}

// TestAnnounceCallerHangsUp: the caller hangs up while the prompt plays.
// The call ends by the caller; the prompt's failed completion finds it
// ended, and nothing fails or is retried.
func TestAnnounceCallerHangsUp(t *testing.T) {
	e, lns := startAnnounceEnv(t, announceOptions{backstopDivisor: 1})
	a := e.startReceiver(lns[0], e.bot)
	id := e.place(numAnnounceLong)
	e.waitPlaying(id)
	if err := e.emu.CallerHangup(id); err != nil {
		t.Fatal(err)
	}
	rec := e.ended(id)
	if rec.EndedBy != "caller" {
		t.Errorf("ended by %q, want caller", rec.EndedBy)
	}
	// The terminated notification stops the backstop at once.
	a.waitMetric(t, "callguard_receiver_announce_calls_in_progress", nil, 0)
	time.Sleep(200 * time.Millisecond)
	for _, r := range []string{"failed", "deadline"} {
		for _, op := range []string{graph.OpAnswer, graph.OpPlayPrompt, graph.OpHangup} {
			if n := a.metric(t, actionsMetric, action(op, r)); n != 0 {
				t.Errorf("%s %s: %v", op, r, n)
			}
		}
	}
	if n := a.metric(t, "callguard_receiver_announce_tokens_refused_total", nil); n != 0 {
		t.Errorf("%v tokens refused", n)
	}
	if n := a.metric(t, "callguard_receiver_announce_steps_total", map[string]string{"step": "backstop"}); n != 0 {
		t.Errorf("the backstop fired %v times after the caller hung up", n)
	}
}

// TestAnnounceBackstop: a prompt longer than the rule's maxSeconds is cut
// off by the replica that answered, maxSeconds after answering.
func TestAnnounceBackstop(t *testing.T) {
	e, lns := startAnnounceEnv(t, announceOptions{})
	a := e.startReceiver(lns[0], e.bot)
	id := e.place(numAnnounceLong)
	rec := e.ended(id)
	if rec.EndedBy != "bot" {
		t.Errorf("ended by %q, want bot", rec.EndedBy)
	}
	a.waitMetric(t, "callguard_receiver_announce_steps_total", map[string]string{"step": "backstop", "result": "success"}, 1)
	// maxSeconds 5, a tenth of it here; the prompt would play 6 s.
	if took := rec.EndedAt.Sub(rec.AnsweredAt); took < 400*time.Millisecond || took > 5*time.Second {
		t.Errorf("hung up %v after answering, want about 0.5 s", took)
	}
	a.waitMetric(t, "callguard_receiver_announce_calls_in_progress", nil, 0)
}

// TestAnnounceForgedClientContext: a completion whose clientContext does
// not verify is ignored and counted, even with Graph's signature on the
// notification; the call goes on.
func TestAnnounceForgedClientContext(t *testing.T) {
	e, lns := startAnnounceEnv(t, announceOptions{backstopDivisor: 1})
	a := e.startReceiver(lns[0], e.bot)
	id := e.place(numAnnounceLong)
	e.waitPlaying(id)
	auth := (&env{t: t, emu: e.emu}).genuineAuth()
	for i, cc := range []string{
		"v1.eyJzIjoicGxheWVkIn0.AAAAAAAAAAAAAAAAAAAAAA", // a played token not signed with the key
		"v1.garbage",
	} {
		body := `{"value":[{"changeType":"deleted","resourceUrl":"/communications/calls/` + id + `/operations/op-` + string(rune('a'+i)) + `",
			"resourceData":{"@odata.type":"#microsoft.graph.playPromptOperation","status":"completed","completionReason":"completedSuccessfully","clientContext":"` + cc + `"}}]}`
		redeliver(t, a.url, recorded{uri: "/api/calls", auth: auth, body: []byte(body)}, e.certPEM)
	}
	a.waitMetric(t, "callguard_receiver_announce_tokens_refused_total", nil, 2)
	if rec, _ := e.emu.Call(id); rec.EndedBy != "" {
		t.Errorf("a forged completion ended the call (by %s)", rec.EndedBy)
	}
	if n := a.metric(t, actionsMetric, map[string]string{"operation": graph.OpHangup}); n != 0 {
		t.Errorf("%v hang-ups sent", n)
	}
	_ = e.emu.CallerHangup(id)
}

// TestAnnounceDryRun: DryRun decides and logs Announce and sends nothing to
// Graph.
func TestAnnounceDryRun(t *testing.T) {
	e, lns := startAnnounceEnv(t, announceOptions{mode: "DryRun"})
	a := e.startReceiver(lns[0], e.bot)
	id := e.place(numAnnounce)
	d := a.logs.decisionFor(t, id)
	if d["action"] != "Announce" || d["mode"] != "DryRun" || d["result"] != "dry_run" {
		t.Errorf("decision %v", d)
	}
	time.Sleep(200 * time.Millisecond)
	if rec, _ := e.emu.Call(id); rec.Action != "" || !rec.AnsweredAt.IsZero() {
		t.Errorf("DryRun acted on the call: %+v", rec)
	}
	for route, byStatus := range e.emu.Stats().Requests {
		if strings.Contains(route, "/communications/calls/") {
			t.Errorf("Graph got %s: %v", route, byStatus)
		}
	}
}

// TestAnnounceWithoutCallbackURL: without --callback-url Graph can neither
// fetch a ConfigMap prompt nor route the call's steps: the call is
// rejected instead, and that is counted.
func TestAnnounceWithoutCallbackURL(t *testing.T) {
	e, lns := startAnnounceEnv(t, announceOptions{})
	a := e.startReceiver(lns[0], "")
	id := e.place(numAnnounce)
	eventually(t, 10*time.Second, "call rejected", func() bool {
		rec, _ := e.emu.Call(id)
		return rec.Action == "reject"
	})
	a.waitMetric(t, "callguard_receiver_announce_steps_total", map[string]string{"step": "answer", "result": "no_callback_url"}, 1)
}

// TestPrompts: the prompts endpoint serves the live policy's prompts,
// immutable and by hash, and nothing else.
func TestPrompts(t *testing.T) {
	e, lns := startAnnounceEnv(t, announceOptions{})
	a := e.startReceiver(lns[0], e.bot)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: trusting(e.certPEM)}}
	base := a.url + "/prompts/"
	closed := base + sha(promptClosed) + ".wav"
	tests := []struct {
		name, method, url, ifNoneMatch string
		status                         int
		body                           []byte
	}{
		{"get", http.MethodGet, closed, "", http.StatusOK, promptClosed},
		{"head", http.MethodHead, closed, "", http.StatusOK, nil},
		{"not modified", http.MethodGet, closed, `"` + sha(promptClosed) + `"`, http.StatusNotModified, nil},
		{"modified", http.MethodGet, closed, `"` + sha(promptLong) + `"`, http.StatusOK, promptClosed},
		{"other policy's prompt", http.MethodGet, base + sha(wav.Tone(time.Second)) + ".wav", "", http.StatusNotFound, nil},
		{"upper case", http.MethodGet, base + strings.ToUpper(sha(promptClosed)) + ".wav", "", http.StatusNotFound, nil},
		{"no extension", http.MethodGet, base + sha(promptClosed), "", http.StatusNotFound, nil},
		{"short", http.MethodGet, base + "abc.wav", "", http.StatusNotFound, nil},
		{"deeper", http.MethodGet, base + "x/" + sha(promptClosed) + ".wav", "", http.StatusNotFound, nil},
		{"dir", http.MethodGet, base, "", http.StatusNotFound, nil},
		{"post", http.MethodPost, closed, "", http.StatusMethodNotAllowed, nil},
		{"callback path by GET", http.MethodGet, a.url, "", http.StatusMethodNotAllowed, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, tt.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.ifNoneMatch != "" {
				req.Header.Set("If-None-Match", tt.ifNoneMatch)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tt.status, body)
			}
			if tt.status == http.StatusOK || tt.status == http.StatusNotModified {
				h := resp.Header
				if h.Get("ETag") != `"`+sha(promptClosed)+`"` || h.Get("Cache-Control") != "public, max-age=31536000, immutable" {
					t.Errorf("headers %v", h)
				}
			}
			if tt.status == http.StatusOK {
				if ct := resp.Header.Get("Content-Type"); ct != "audio/wav" {
					t.Errorf("Content-Type %q", ct)
				}
				if resp.ContentLength != int64(len(promptClosed)) {
					t.Errorf("Content-Length %d, want %d", resp.ContentLength, len(promptClosed))
				}
			}
			if ok := tt.status == http.StatusOK || tt.status == http.StatusNotModified; ok && !bytes.Equal(body, tt.body) {
				t.Errorf("body of %d bytes, want %d", len(body), len(tt.body))
			}
		})
	}
}

// TestPromptFetchesDoNotStarveNotifications: prompt requests share the
// callback port's connection cap, and at the cap they are closed to make
// room for a notification: readers that stall on a prompt cannot keep Graph
// out.
func TestPromptFetchesDoNotStarveNotifications(t *testing.T) {
	const maxConns = 4
	e, lns := startAnnounceEnv(t, announceOptions{maxConnections: maxConns})
	a := e.startReceiver(lns[0], e.bot)
	u, _ := url.Parse(a.url)
	for range maxConns {
		// A small receive window: the receiver's writes stall.
		d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024) })
			return cmp.Or(err, serr)
		}}
		c, err := tls.DialWithDialer(d, "tcp", u.Host, trusting(e.certPEM))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		// The long prompt (1.9 MB) is never read past what the socket
		// buffers hold: the receiver's write stalls.
		if _, err := io.WriteString(c, "GET /api/calls/prompts/"+sha(promptLong)+".wav HTTP/1.1\r\nHost: "+u.Host+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	a.waitMetric(t, "callguard_receiver_connections_open", nil, maxConns)
	// Every one is being answered (none idle), its write stalled.
	a.waitMetric(t, "callguard_receiver_connections_idle", nil, 0)
	time.Sleep(100 * time.Millisecond)
	// An allowed call: its notification is acknowledged.
	id := e.place("+14255550777")
	rec, _ := e.emu.Call(id)
	delivered := false
	for _, ev := range rec.History {
		if ev.Event == emulator.EventCreatedNotification && ev.Status == http.StatusAccepted {
			delivered = true
		}
	}
	if !delivered {
		t.Errorf("the notification was not acknowledged with prompt fetches at the cap: %+v", rec.History)
	}
	if n := a.metric(t, "callguard_receiver_connections_evicted_total", nil); n < 1 {
		t.Errorf("%v connections evicted, want a stalled prompt fetch closed", n)
	}
}
