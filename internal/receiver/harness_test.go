package receiver_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/receiver"
	"github.com/callguard/callguard/test/harness/local"
)

// The test bot (test/harness/local).
const (
	appID    = local.AppID
	tenantID = local.TenantID
	secret   = local.Secret
)

const (
	// Callers the standard rules decide.
	numBusy      = "+14255550001"
	numForbidden = "+14255550002"
	numNone      = "+14255550003"
	numRedirect  = "+14255550004"
	numAllowed   = "+14255550100"
	redirectTo   = "+14255550199"
)

// policyParams fill policyTemplate.
type policyParams struct {
	Emulator   string
	APIVersion string
	Mode       string
	Upstream   string
	// FlipReason is the reject reason of rule "flip", which matches
	// FlipNumber; reload tests change it.
	FlipReason string
	FlipNumber string
	// Extra is appended to the rules (YAML, already indented).
	Extra string
	// AdditionalTenants is spec.bot.additionalTenants.
	AdditionalTenants []string
}

// specTemplate is the spec after bot and graph (local.PolicyFile).
var specTemplate = template.Must(template.New("spec").Parse(`  mode: {{.Mode}}
{{- if .Upstream}}
  upstream:
    url: {{.Upstream}}
{{- end}}
  defaultAction: Allow
  rules:
    - name: reject-busy
      action: Reject
      reason: busy
      match: {callers: {numbers: ["` + numBusy + `"]}}
    - name: reject-forbidden
      action: Reject
      reason: forbidden
      match: {callers: {numbers: ["` + numForbidden + `"]}}
    - name: reject-none
      action: Reject
      match: {callers: {numbers: ["` + numNone + `"]}}
    - name: redirect-desk
      action: Redirect
      redirect:
        targets: [{phone: "` + redirectTo + `"}]
        timeoutSeconds: 20
      match: {callers: {numbers: ["` + numRedirect + `"]}}
    - name: flip
      action: Reject
      reason: {{.FlipReason}}
      match: {callers: {numbers: ["{{.FlipNumber}}"]}}
{{.Extra}}`))

// renderPolicy is the standalone policy file p describes.
func renderPolicy(t testing.TB, p policyParams) []byte {
	t.Helper()
	var spec bytes.Buffer
	if err := specTemplate.Execute(&spec, p); err != nil {
		t.Fatal(err)
	}
	return local.PolicyFile{Emulator: p.Emulator, APIVersion: p.APIVersion, AdditionalTenants: p.AdditionalTenants, Spec: spec.String()}.YAML()
}

// env is a receiver run in-process (receiver.Run) against an emulator over
// HTTPS, with its policy in a file.
type env struct {
	t          *testing.T
	emu        *emulator.Server
	dir        string
	policyPath string
	params     policyParams
	srv        *receiver.Server
	callback   string
	ops        string
	logs       *logSink
	rcv        *local.Receiver
	upstream   *recorder
	// sink takes notifications of calls placed for direct posting.
	sink *httptest.Server
	// caFile trusts the emulator (and the upstream bot), for more receivers.
	caFile string
}

type envOptions struct {
	mode       string
	apiVersion string
	upstream   bool
	legacy     bool
	deadline   time.Duration
	grace      time.Duration
	// maxConnections caps the callback connections (0: the default).
	maxConnections int
	// requestBudget replaces receiver.DefaultRequestBudget.
	requestBudget time.Duration
	// stateDir is the receiver's --state-dir (default: none).
	stateDir string
	// extra is the first policy's Extra.
	extra string
	// bots are registered in the emulator beside the test bot (e.g. its
	// app in further tenants).
	bots []emulator.Bot
	// additionalTenants is the first policy's AdditionalTenants.
	additionalTenants []string
}

func startEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), logs: &logSink{}}
	e.sink = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(e.sink.Close)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.callback = "http://" + ln.Addr().String() + "/api/calls"
	// The upstream bot is reached over https, as a bot outside the
	// cluster must be: its certificate is trusted beside the emulator's.
	var upstreamCA []byte
	if o.upstream {
		e.upstream = newRecorder(t)
		upstreamCA = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.upstream.Certificate().Raw})
	}
	bot := local.Bot(e.callback)
	bot.Legacy = o.legacy
	emu, caFile := local.StartEmulator(t, upstreamCA, append([]emulator.Bot{bot}, o.bots...)...)
	e.emu, e.caFile = emu, caFile

	e.params = policyParams{Emulator: emu.URL(), APIVersion: "v1.0", Mode: "Enforce", FlipReason: "busy", FlipNumber: "+14255550900", Extra: o.extra,
		AdditionalTenants: o.additionalTenants}
	if o.mode != "" {
		e.params.Mode = o.mode
	}
	if o.apiVersion != "" {
		e.params.APIVersion = o.apiVersion
	}
	if o.upstream {
		e.params.Upstream = e.upstream.URL
	}
	e.policyPath = filepath.Join(e.dir, "policy.yaml")
	e.writePolicy(e.params)

	e.rcv = local.StartReceiver(t, local.Options{Options: receiver.Options{
		PolicyFile:     e.policyPath,
		CAFile:         caFile,
		Logger:         slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Listener:       ln,
		ShutdownGrace:  o.grace,
		MaxConnections: o.maxConnections,
		RequestBudget:  o.requestBudget,
		StateDir:       cmp.Or(o.stateDir, filepath.Join(e.dir, "no-state")),
		Server:         receiver.Config{Deadline: o.deadline, GraphBackoff: 20 * time.Millisecond},
	}})
	e.srv, e.ops = e.rcv.Server, e.rcv.Ops
	return e
}

func (e *env) writePolicy(p policyParams) {
	e.t.Helper()
	e.writeFile(renderPolicy(e.t, p))
}

// writeFile replaces the policy file atomically.
func (e *env) writeFile(data []byte) {
	e.t.Helper()
	local.WriteFile(e.t, e.policyPath, data)
}

// placeCall places a call from number to the receiver and returns its id
// once the receiver acknowledged the notification.
func (e *env) placeCall(number string) string {
	e.t.Helper()
	return e.place(number, "")
}

// placeQuiet places a call whose notification goes to a sink, so that the
// test can deliver it itself.
func (e *env) placeQuiet(number string) *graph.Call {
	e.t.Helper()
	return e.placeRequest(emulator.PlaceCallRequest{CallbackURI: e.sink.URL, Source: phone(number)})
}

func (e *env) place(number, callback string) string {
	e.t.Helper()
	return e.placeRequest(emulator.PlaceCallRequest{CallbackURI: callback, Source: phone(number)}).ID
}

// placeIn places a call from number in tenant, delivered to the receiver
// with that tenant's claim, and returns its id.
func (e *env) placeIn(tenant, number string) string {
	e.t.Helper()
	return e.placeRequest(emulator.PlaceCallRequest{TenantID: tenant, Source: phone(number)}).ID
}

// placeRequest places a call of the test bot's app.
func (e *env) placeRequest(req emulator.PlaceCallRequest) *graph.Call {
	e.t.Helper()
	req.AppID = appID
	c, err := e.emu.PlaceCall(context.Background(), req)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func phone(number string) *graph.IdentitySet {
	return &graph.IdentitySet{Phone: &graph.Identity{ID: number}}
}

// record waits until the call was acted on (or missed) and returns it.
func (e *env) acted(id string) emulator.CallRecord {
	e.t.Helper()
	var rec emulator.CallRecord
	eventually(e.t, 20*time.Second, "call "+id+" acted on", func() bool {
		rec, _ = e.emu.Call(id)
		return rec.Action != "" || rec.Missed
	})
	return rec
}

func (e *env) record(id string) emulator.CallRecord {
	e.t.Helper()
	rec, ok := e.emu.Call(id)
	if !ok {
		e.t.Fatalf("no call %s", id)
	}
	return rec
}

// graphActions counts the reject and redirect requests Graph received.
func (e *env) graphActions() int {
	n := 0
	for route, byStatus := range e.emu.Stats().Requests {
		if strings.HasSuffix(route, "/reject") || strings.HasSuffix(route, "/redirect") {
			for _, c := range byStatus {
				n += c
			}
		}
	}
	return n
}

func (e *env) token(claims map[string]any) string {
	e.t.Helper()
	tok, err := e.emu.SignInboundToken(claims)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

func (e *env) genuineAuth() string {
	return e.tenantAuth(tenantID)
}

// tenantAuth is an Authorization header as Graph sends it from tenant.
func (e *env) tenantAuth(tenant string) string {
	return "Bearer " + e.token(emulator.InboundClaims(appID, tenant))
}

// post sends a callback request and returns the status and body.
func (e *env) post(method, auth string, body []byte) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.callback, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// createdBody is the created notification of a call, as Graph sends it.
func createdBody(t *testing.T, c *graph.Call) []byte {
	t.Helper()
	b, err := json.Marshal(graph.Notifications{
		ODataType: graph.ODataCommsNotifications,
		Value: []graph.Notification{{
			ODataType: graph.ODataCommsNotification, ChangeType: graph.ChangeCreated,
			ResourceURL: "/communications/calls/" + c.ID, ResourceData: c,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// metric returns the value of a counter or gauge with the given labels
// (0 when absent), or the sample count of a histogram.
func (e *env) metric(name string, labels map[string]string) float64 {
	e.t.Helper()
	families, err := e.srv.Registry().Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	total := 0.0
	for _, mf := range families {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabels(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				total += m.GetCounter().GetValue()
			case m.Gauge != nil:
				total += m.GetGauge().GetValue()
			case m.Histogram != nil:
				total += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return total
}

// waitMetric waits until a metric reaches want: the receiver counts after
// Graph answered, which may be after the emulator recorded the action.
func (e *env) waitMetric(name string, labels map[string]string, want float64) {
	e.t.Helper()
	var got float64
	deadline := time.Now().Add(10 * time.Second)
	for got = e.metric(name, labels); got != want; got = e.metric(name, labels) {
		if time.Now().After(deadline) {
			e.t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// statusOf is the status GET url answers, 0 when it cannot be reached.
func statusOf(url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, lp := range m.GetLabel() {
		have[lp.GetName()] = lp.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	local.Eventually(t, timeout, what, cond)
}

// recorder is an upstream bot that records what it is sent.
type recorder struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []upstreamRequest
}

type upstreamRequest struct {
	auth string
	body []byte
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{}
	r.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.reqs = append(r.reqs, upstreamRequest{auth: req.Header.Get("Authorization"), body: body})
		r.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(r.Close)
	return r
}

// forCall returns the requests whose notifications name the call.
func (r *recorder) forCall(t *testing.T, id string) []upstreamRequest {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []upstreamRequest
	for _, req := range r.reqs {
		n, err := graph.DecodeNotifications(req.body)
		if err != nil {
			t.Fatalf("upstream got a body that is not a notification: %v", err)
		}
		for i := range n.Value {
			if n.Value[i].CallID() == id {
				out = append(out, req)
				break
			}
		}
	}
	return out
}

// logSink collects the receiver's JSON log lines.
type logSink struct{ local.SyncBuffer }

// decisions returns the records of the decision log lines.
func (l *logSink) decisions(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range bytes.Split(l.Bytes(), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("log line is not JSON: %s", line)
		}
		if m["msg"] == "decision" {
			// The record (telemetry.Decision), with the line's level.
			d, ok := m["decision"].(map[string]any)
			if !ok {
				t.Fatalf("decision log line without its record: %s", line)
			}
			d["level"] = m["level"]
			out = append(out, d)
		}
	}
	return out
}

func (l *logSink) decisionFor(t *testing.T, id string) map[string]any {
	t.Helper()
	var found map[string]any
	eventually(t, 20*time.Second, "decision log of "+id, func() bool {
		for _, d := range l.decisions(t) {
			if d["callId"] == id {
				found = d
				return true
			}
		}
		return false
	})
	return found
}

func errorCode(t *testing.T, body []byte) string {
	t.Helper()
	var eb graph.ErrorBody
	if err := json.Unmarshal(body, &eb); err != nil {
		t.Fatalf("error body %q is not Graph-shaped JSON: %v", body, err)
	}
	return fmt.Sprintf("%s: %s", eb.Error.Code, eb.Error.Message)
}
