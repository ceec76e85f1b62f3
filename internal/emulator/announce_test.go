package emulator

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/wav"
)

// hit is one notification a TLS test bot got, with the URI it was sent to.
type hit struct {
	uri  string // path and query, as sent
	body []byte
}

func (h hit) notification(t *testing.T) *graph.Notification {
	t.Helper()
	n, err := graph.DecodeNotifications(h.body)
	if err != nil || len(n.Value) != 1 {
		t.Fatalf("notification %s: %v", h.body, err)
	}
	return &n.Value[0]
}

// tlsBot is a bot behind https (httptest's certificate) that records
// notifications and serves prompts: /prompts/NAME answers prompts[NAME],
// /prompts/to-http/NAME redirects to it over plain http.
type tlsBot struct {
	*httptest.Server
	hits    chan hit
	prompts map[string][]byte
}

func newTLSBot(t *testing.T, prompts map[string][]byte) *tlsBot {
	t.Helper()
	b := &tlsBot{hits: make(chan hit, 64), prompts: prompts}
	b.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if name, ok := strings.CutPrefix(r.URL.Path, "/prompts/"); ok {
			if target, ok := strings.CutPrefix(name, "to-http/"); ok {
				http.Redirect(w, r, "http://"+r.Host+"/prompts/"+target, http.StatusFound)
				return
			}
			p, found := b.prompts[name]
			if !found {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "audio/wav")
			_, _ = w.Write(p)
			return
		}
		body, _ := io.ReadAll(r.Body)
		b.hits <- hit{uri: r.URL.RequestURI(), body: body}
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *tlsBot) next(t *testing.T, what string) hit {
	t.Helper()
	select {
	case h := <-b.hits:
		return h
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s notification within 10s", what)
		return hit{}
	}
}

// announceEmulator starts an emulator calling back to bot's /calls, which
// trusts bot's certificate for callbacks and prompts.
func announceEmulator(t *testing.T, bot *tlsBot, mutate func(*Config)) (*Server, string) {
	t.Helper()
	s := startEmulator(t, bot.URL+"/calls", func(c *Config) {
		c.CallbackClient = bot.Client()
		c.PromptSpeed = 100
		if mutate != nil {
			mutate(c)
		}
	})
	return s, accessToken(t, s, appID, tenantID)
}

// answered places a call, answers it with callbackURI ("" for none) and
// waits for it to be established, returning the call id.
func answered(t *testing.T, s *Server, bot *tlsBot, tok, callbackURI string) string {
	t.Helper()
	id := place(t, s, phoneCaller)
	if n := bot.next(t, "created").notification(t); !n.IsIncomingCall() {
		t.Fatalf("created notification = %+v", n)
	}
	cb := ""
	if callbackURI != "" {
		cb = `"callbackUri":"` + callbackURI + `",`
	}
	resp, body := do(t, s, http.MethodPost, "/v1.0/communications/calls/"+id+"/answer", tok,
		`{`+cb+`"acceptedModalities":["audio"],"mediaConfig":{"@odata.type":"#microsoft.graph.serviceHostedMediaConfig","preFetchMedia":[{"uri":"`+bot.URL+`/prompts/ok","resourceId":"r1"}]}}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("answer: %d %s", resp.StatusCode, body)
	}
	for _, want := range []string{graph.StateEstablishing, graph.StateEstablished} {
		h := bot.next(t, want)
		n := h.notification(t)
		if n.CallID() != id || n.CallState() != want || !graph.EnumEqual(n.ChangeType, graph.ChangeUpdated) {
			t.Fatalf("notification %s, want updated %s", h.body, want)
		}
	}
	return id
}

// playPrompt posts a playPrompt of uris and returns the response and its
// decoded operation.
func playPrompt(t *testing.T, s *Server, tok, id, clientContext string, uris ...string) (*http.Response, graph.PlayPromptOperation) {
	t.Helper()
	req := graph.NewPlayPromptRequest(clientContext)
	for _, u := range uris {
		req.Prompts = append(req.Prompts, graph.MediaPrompt{ODataType: graph.ODataMediaPrompt, MediaInfo: graph.MediaInfo{ODataType: graph.ODataMediaInfo, URI: u}})
	}
	raw, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	resp, body := do(t, s, http.MethodPost, "/v1.0/communications/calls/"+id+"/playPrompt", tok, string(raw))
	var op graph.PlayPromptOperation
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &op); err != nil {
			t.Fatalf("playPrompt answer %s: %v", body, err)
		}
	}
	return resp, op
}

func TestAnswerEstablishesAtTheAnswersCallback(t *testing.T) {
	bot := newTLSBot(t, nil)
	s, tok := announceEmulator(t, bot, func(c *Config) { c.MissedAfter = time.Second })

	// The query the bot put in its callbackUri comes back exactly.
	const query = "/answered/x%2Fy?policy=ns%2Fname&sig=a+b%3D&empty="
	id := answered(t, s, bot, tok, bot.URL+query)
	resp, raw := do(t, s, http.MethodGet, "/emulator/calls/"+id, "", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET record: %d %s", resp.StatusCode, raw)
	}
	var rec map[string]any
	if err := json.Unmarshal(raw, &rec); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"answeredAt", "prompts", "endedBy", "endedAt"} {
		if _, ok := rec[f]; !ok {
			t.Errorf("record has no %q: %s", f, raw)
		}
	}
	if rec["endedAt"] != nil || rec["endedBy"] != "" || rec["state"] != graph.StateEstablished || rec["action"] != "answer" {
		t.Errorf("answered record = %s", raw)
	}
	if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(rec["answeredAt"])); err != nil {
		t.Errorf("answeredAt: %v", err)
	}

	// Every later notification goes there too: the hang-up's.
	if resp, body := do(t, s, http.MethodDelete, "/v1.0/communications/calls/"+id, tok, ""); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", resp.StatusCode, body)
	}
	for _, want := range []string{"terminating", graph.StateTerminated} {
		if h := bot.next(t, want); h.uri != query || h.notification(t).CallState() != want {
			t.Errorf("%s notification at %q: %s; want it at %q", want, h.uri, h.body, query)
		}
	}

	// Without a callbackUri the call's notifications stay where they went;
	// and an answered call is not missed after MissedAfter.
	id = answered(t, s, bot, tok, "")
	time.Sleep(2 * s.cfg.MissedAfter)
	if rec, _ := s.Call(id); rec.Missed || rec.State != graph.StateEstablished || rec.EndedBy != "" || rec.CallbackURI != bot.URL+"/calls" {
		t.Errorf("answered call after MissedAfter: %+v", rec)
	}
	select {
	case h := <-bot.hits:
		t.Errorf("unexpected notification %s", h.body)
	default:
	}
}

func TestAnswerTakesServiceHostedMediaOnly(t *testing.T) {
	bot := newTLSBot(t, nil)
	s, tok := announceEmulator(t, bot, nil)
	id := place(t, s, phoneCaller)
	bot.next(t, "created")
	resp, body := do(t, s, http.MethodPost, "/v1.0/communications/calls/"+id+"/answer", tok,
		`{"acceptedModalities":["audio"],"mediaConfig":{"@odata.type":"#microsoft.graph.appHostedMediaConfig","blob":"x"}}`)
	if e := graphErr(t, body); resp.StatusCode != http.StatusBadRequest || !strings.Contains(e.Error.Message, "serviceHostedMediaConfig") {
		t.Errorf("app-hosted answer: %d %s", resp.StatusCode, body)
	}
}

func TestPlayPrompt(t *testing.T) {
	ok := wav.Tone(2 * time.Second)
	stereo := wav.Tone(time.Second)
	stereo[22] = 2 // channels
	bot := newTLSBot(t, map[string][]byte{"ok": ok, "stereo": stereo, "text": []byte("hello, caller")})
	s, tok := announceEmulator(t, bot, nil)
	okSum := sha256.Sum256(ok)
	stereoSum := sha256.Sum256(stereo)
	textSum := sha256.Sum256([]byte("hello, caller"))

	tests := []struct {
		name        string
		uri         string
		wantStatus  string
		wantReason  string
		wantCode    float64
		wantSubcode float64
		wantSHA     string
		wantMs      int64
	}{
		{"played", bot.URL + "/prompts/ok", "completed", "completedSuccessfully", 200, 0, hex.EncodeToString(okSum[:]), 2000},
		{"plain http", strings.Replace(bot.URL, "https:", "http:", 1) + "/prompts/ok", "failed", "unknown", 400, 8536, "", 0},
		{"redirected to http", bot.URL + "/prompts/to-http/ok", "failed", "unknown", 400, 8536, "", 0},
		{"not found", bot.URL + "/prompts/none", "failed", "unknown", 400, 8536, "", 0},
		{"unreachable", "https://127.0.0.1:1/prompt.wav", "failed", "unknown", 400, 8536, "", 0},
		{"not a WAV", bot.URL + "/prompts/text", "failed", "unknown", 400, 8535, hex.EncodeToString(textSum[:]), 0},
		{"stereo", bot.URL + "/prompts/stereo", "failed", "unknown", 400, 8535, hex.EncodeToString(stereoSum[:]), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := answered(t, s, bot, tok, "")
			resp, op := playPrompt(t, s, tok, id, "ctx-"+tt.name, tt.uri)
			if resp.StatusCode != http.StatusOK || op.ID == "" || op.Status != "running" || op.ClientContext != "ctx-"+tt.name ||
				op.ODataType != graph.ODataPlayPromptOperation {
				t.Fatalf("playPrompt: %d %+v", resp.StatusCode, op)
			}
			if loc := resp.Header.Get("Location"); loc != s.URL()+"/v1.0/communications/calls/"+id+"/operations/"+op.ID {
				t.Errorf("Location = %q", loc)
			}
			h := bot.next(t, "operation")
			n := h.notification(t)
			got, err := n.PromptOperation()
			if err != nil || got == nil {
				t.Fatalf("operation notification %s: %+v %v", h.body, got, err)
			}
			if got.CallID != id || got.ID != op.ID || got.Status != tt.wantStatus || got.CompletionReason != tt.wantReason || got.ClientContext != "ctx-"+tt.name ||
				!graph.EnumEqual(n.ChangeType, graph.ChangeDeleted) {
				t.Errorf("operation = %+v (%s)", got, n.ChangeType)
			}
			// Shaped as Graph's: numeric code and subcode, the resource's
			// @odata.id and etag.
			var raw struct {
				Value []struct {
					ResourceData struct {
						ODataID    string         `json:"@odata.id"`
						ETag       string         `json:"@odata.etag"`
						ResultInfo map[string]any `json:"resultInfo"`
					} `json:"resourceData"`
				} `json:"value"`
			}
			if err := json.Unmarshal(h.body, &raw); err != nil {
				t.Fatal(err)
			}
			d := raw.Value[0].ResourceData
			if d.ODataID != n.URL() || !strings.HasPrefix(d.ETag, `W/"`) || d.ResultInfo["code"] != tt.wantCode || d.ResultInfo["subcode"] != tt.wantSubcode ||
				d.ResultInfo["@odata.type"] != graph.ODataResultInfo || d.ResultInfo["message"] == "" {
				t.Errorf("resourceData = %+v", d)
			}
			rec, _ := s.Call(id)
			if len(rec.Prompts) != 1 {
				t.Fatalf("prompts = %+v", rec.Prompts)
			}
			p := rec.Prompts[0]
			if p.URI != tt.uri || p.OperationID != op.ID || p.Status != tt.wantStatus || p.SHA256 != tt.wantSHA || p.DurationMs != tt.wantMs ||
				p.CompletedAt == nil || p.CompletedAt.Before(p.StartedAt) {
				t.Errorf("prompt record = %+v", p)
			}
			if tt.wantStatus == "failed" && p.Detail == "" {
				t.Error("a failed prompt records no detail")
			}
			if rec.State != graph.StateEstablished || rec.EndedBy != "" {
				t.Errorf("call after the prompt: %s ended by %q", rec.State, rec.EndedBy)
			}
		})
	}
}

func TestPromptPlayedTwiceIsRecordedTwice(t *testing.T) {
	bot := newTLSBot(t, map[string][]byte{"ok": wav.Tone(time.Second)})
	s, tok := announceEmulator(t, bot, nil)
	id := answered(t, s, bot, tok, "")
	for range 2 {
		if resp, _ := playPrompt(t, s, tok, id, "same", bot.URL+"/prompts/ok"); resp.StatusCode != http.StatusOK {
			t.Fatalf("playPrompt: %d", resp.StatusCode)
		}
		bot.next(t, "operation")
	}
	rec, _ := s.Call(id)
	if len(rec.Prompts) != 2 || rec.Prompts[0].OperationID == rec.Prompts[1].OperationID ||
		rec.Prompts[0].SHA256 != rec.Prompts[1].SHA256 || rec.Prompts[1].Status != PromptCompleted {
		t.Errorf("prompts = %+v", rec.Prompts)
	}
	n := 0
	for _, e := range rec.History {
		if e.Event == "playPrompt" && e.Status == http.StatusOK {
			n++
		}
	}
	if n != 2 {
		t.Errorf("history holds %d playPrompt, want 2: %+v", n, rec.History)
	}
}

func TestPlayPromptErrors(t *testing.T) {
	bot := newTLSBot(t, nil)
	s, tok := announceEmulator(t, bot, nil)
	incoming := place(t, s, phoneCaller)
	bot.next(t, "created")
	id := answered(t, s, bot, tok, "")
	prompt := `{"mediaInfo":{"uri":"https://example.invalid/p.wav"}}`
	tests := []struct {
		name, id, body string
		wantStatus     int
		wantIn         string
	}{
		{"not answered", incoming, `{"prompts":[` + prompt + `]}`, http.StatusConflict, "established"},
		{"no prompts", id, `{"prompts":[]}`, http.StatusBadRequest, "1 to 20"},
		{"21 prompts", id, `{"prompts":[` + strings.Repeat(prompt+",", 20) + prompt + `]}`, http.StatusBadRequest, "got 21"},
		{"no uri", id, `{"prompts":[{"mediaInfo":{}}]}`, http.StatusBadRequest, "prompts[0].mediaInfo.uri"},
		{"relative uri", id, `{"prompts":[{"mediaInfo":{"uri":"/p.wav"}}]}`, http.StatusBadRequest, "not an absolute URL"},
		{"clientContext too long", id, `{"clientContext":"` + strings.Repeat("é", 257) + `","prompts":[` + prompt + `]}`, http.StatusBadRequest, "257 characters"},
		{"not JSON", id, `{"prompts":`, http.StatusBadRequest, "Unable to read JSON"},
		{"unknown call", "no-such-call", `{"prompts":[` + prompt + `]}`, http.StatusNotFound, "was not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, s, http.MethodPost, "/v1.0/communications/calls/"+tt.id+"/playPrompt", tok, tt.body)
			if e := graphErr(t, body); resp.StatusCode != tt.wantStatus || !strings.Contains(e.Error.Message, tt.wantIn) {
				t.Errorf("%d %s, want %d naming %q", resp.StatusCode, body, tt.wantStatus, tt.wantIn)
			}
		})
	}
	if rec, _ := s.Call(id); len(rec.Prompts) != 0 {
		t.Errorf("refused playPrompts recorded prompts: %+v", rec.Prompts)
	}
}

func TestHangup(t *testing.T) {
	bot := newTLSBot(t, nil)
	s, tok := announceEmulator(t, bot, nil)
	for _, version := range []string{"v1.0", "beta"} {
		t.Run(version, func(t *testing.T) {
			id := answered(t, s, bot, tok, "")
			path := "/" + version + "/communications/calls/" + id
			resp, body := do(t, s, http.MethodDelete, path, tok, "")
			if resp.StatusCode != http.StatusNoContent || len(body) != 0 {
				t.Fatalf("DELETE: %d %s", resp.StatusCode, body)
			}
			if n := bot.next(t, "terminating").notification(t); n.CallState() != "terminating" || !graph.EnumEqual(n.ChangeType, graph.ChangeUpdated) {
				t.Errorf("terminating notification = %+v", n)
			}
			h := bot.next(t, "terminated")
			if n := h.notification(t); !n.IsCallTerminated() || !graph.EnumEqual(n.ChangeType, graph.ChangeDeleted) || n.CallID() != id {
				t.Errorf("terminated notification = %s", h.body)
			}
			if !strings.Contains(string(h.body), `"resultInfo":{"@odata.type":"#microsoft.graph.resultInfo","code":"200","message":"The conversation has ended by bot.","subcode":"7000"}`) {
				t.Errorf("terminated notification carries no resultInfo as Graph's: %s", h.body)
			}
			rec, _ := s.Call(id)
			if rec.State != graph.StateTerminated || rec.EndedBy != EndedByBot || rec.EndedAt.IsZero() || !hasEvent(rec, actionHangup, http.StatusNoContent) {
				t.Errorf("record after DELETE: %+v", rec)
			}
			resp, body = do(t, s, http.MethodDelete, path, tok, "")
			if e := graphErr(t, body); resp.StatusCode != http.StatusNotFound || e.Error.Code != codeNotFound || e.Error.InnerError == nil || e.Error.InnerError.RequestID == "" {
				t.Errorf("second DELETE: %d %s", resp.StatusCode, body)
			}
			if resp, body := do(t, s, http.MethodPost, "/emulator/calls/"+id+"/hangup", "", ""); resp.StatusCode != http.StatusConflict {
				t.Errorf("caller hang-up of an ended call: %d %s", resp.StatusCode, body)
			}
		})
	}
	if resp, body := do(t, s, http.MethodPost, "/emulator/calls/no-such-call/hangup", "", ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("caller hang-up of an unknown call: %d %s", resp.StatusCode, body)
	}
}

func TestCallerHangsUpMidPrompt(t *testing.T) {
	// At speed 1 the minute-long prompt plays until the caller hangs up.
	bot := newTLSBot(t, map[string][]byte{"long": wav.Tone(time.Minute)})
	s, tok := announceEmulator(t, bot, func(c *Config) { c.PromptSpeed = 1 })
	id := answered(t, s, bot, tok, "")
	resp, op := playPrompt(t, s, tok, id, "ctx-long", bot.URL+"/prompts/long")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("playPrompt: %d", resp.StatusCode)
	}
	waitRecord(t, s, id, func(r CallRecord) bool { return len(r.Prompts) == 1 && r.Prompts[0].DurationMs > 0 })
	if resp, body := do(t, s, http.MethodPost, "/emulator/calls/"+id+"/hangup", "", ""); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("caller hang-up: %d %s", resp.StatusCode, body)
	}
	// The operation fails first, then the call is terminated.
	h := bot.next(t, "operation")
	got, err := h.notification(t).PromptOperation()
	if err != nil || got == nil || got.ID != op.ID || got.Status != "failed" || got.ClientContext != "ctx-long" || got.CompletionReason != graph.CompletionMediaOperationCanceled {
		t.Fatalf("operation notification %s: %+v %v", h.body, got, err)
	}
	h = bot.next(t, "terminated")
	if n := h.notification(t); !n.IsCallTerminated() || !strings.Contains(string(h.body), `"subcode":"4097"`) {
		t.Errorf("terminated notification = %s", h.body)
	}
	rec, _ := s.Call(id)
	if rec.EndedBy != EndedByCaller || rec.State != graph.StateTerminated || rec.Prompts[0].Status != PromptFailed || rec.Prompts[0].CompletedAt == nil ||
		!hasEvent(rec, EventCallerHangup, 0) {
		t.Errorf("record = %+v", rec)
	}
	// The bot's hang-up that follows finds the call gone.
	if resp, _ := do(t, s, http.MethodDelete, "/v1.0/communications/calls/"+id, tok, ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("DELETE after the caller hung up: %d, want 404", resp.StatusCode)
	}
}

func TestAnnounceWithoutItsPermissionIsForbidden(t *testing.T) {
	bot := newTLSBot(t, map[string][]byte{"ok": wav.Tone(time.Second)})
	// Answering needs Calls.JoinGroupCall.All; playPrompt and DELETE one of
	// Calls.Initiate.All and Calls.AccessMedia.All.
	s, tok := announceEmulator(t, bot, func(c *Config) {
		c.Bots[0].Roles = without(graph.PermissionCallsInitiate, graph.PermissionCallsAccessMedia)
	})
	id := answered(t, s, bot, tok, "")
	for _, tt := range []struct{ method, path, body string }{
		{http.MethodPost, "/v1.0/communications/calls/" + id + "/playPrompt", `{"prompts":[{"mediaInfo":{"uri":"` + bot.URL + `/prompts/ok"}}]}`},
		{http.MethodDelete, "/v1.0/communications/calls/" + id, ""},
	} {
		resp, body := do(t, s, tt.method, tt.path, tok, tt.body)
		e := graphErr(t, body)
		if resp.StatusCode != http.StatusForbidden || e.Error.Code != codeAccessDenied ||
			!strings.Contains(e.Error.Message, graph.PermissionCallsInitiate) || !strings.Contains(e.Error.Message, graph.PermissionCallsAccessMedia) {
			t.Errorf("%s %s: %d %s, want 403 naming both permissions", tt.method, tt.path, resp.StatusCode, body)
		}
	}
	rec, _ := s.Call(id)
	if rec.State != graph.StateEstablished || len(rec.Prompts) != 0 || !hasEvent(rec, actionPlayPrompt, http.StatusForbidden) || !hasEvent(rec, actionHangup, http.StatusForbidden) {
		t.Errorf("record after refused actions: %+v", rec)
	}
}
