package receiver_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/receiver"
	"github.com/callguard/callguard/internal/state"
	"github.com/callguard/callguard/test/harness/local"
	"github.com/callguard/callguard/test/harness/redisserver"
)

// Callers of the state rules.
const (
	// numRepeat's third call within 10 minutes is rejected (rule repeat).
	numRepeat = "+14255550301"
	// numBlock is rejected and blocked for an hour (rule block).
	numBlock = "+14255550302"
)

// stateParams fill stateExtra.
type stateParams struct {
	// Redis is state.redis.address ("": the store is in memory).
	Redis   string
	OnError string
	// Repeat is the caller the repeat rule counts; BlockNumber the one
	// the block rule matches.
	Repeat, BlockNumber string
	// Mode is the first policy's spec.mode (default Enforce).
	Mode string
}

// stateExtra is the rules (and state) a stateful policy adds.
func stateExtra(p stateParams) string {
	s := fmt.Sprintf(`    - name: repeat
      action: Reject
      reason: busy
      match: {callers: {numbers: [%q], repeat: {calls: 3, within: 10m}}}
    - name: block
      action: Reject
      reason: forbidden
      blockFor: 1h
      match: {callers: {numbers: [%q]}}
`, p.Repeat, p.BlockNumber)
	if p.Redis != "" || p.OnError != "" {
		s += "  state:\n"
		if p.OnError != "" {
			s += "    onError: " + p.OnError + "\n"
		}
		if p.Redis != "" {
			s += "    redis: {address: " + p.Redis + "}\n"
		}
	}
	return s
}

// stateEnv is one or two receivers deciding with state: peer is a second
// receiver on the same policy file and state dir (the first itself when
// the store is in memory).
type stateEnv struct {
	*env
	params   stateParams
	stateDir string
	peer     *local.Receiver
	peerLogs *logSink
}

func startStateEnv(t *testing.T, p stateParams, replicas int) *stateEnv {
	t.Helper()
	if p.Repeat == "" {
		p.Repeat = numRepeat
	}
	if p.BlockNumber == "" {
		p.BlockNumber = numBlock
	}
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// The operator's Secret: one key for every replica.
	if err := os.WriteFile(filepath.Join(dir, "key"), bytes.Repeat([]byte("k"), 32), 0o600); err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, envOptions{stateDir: dir, extra: stateExtra(p), mode: p.Mode})
	se := &stateEnv{env: e, params: p, stateDir: dir, peer: e.rcv, peerLogs: e.logs}
	if replicas > 1 {
		se.peerLogs = &logSink{}
		se.peer = local.StartReceiver(t, local.Options{Options: receiver.Options{
			PolicyFile: e.policyPath,
			CAFile:     e.caFile,
			StateDir:   dir,
			Logger:     slog.New(slog.NewJSONHandler(se.peerLogs, nil)),
			Server:     receiver.Config{GraphBackoff: 20 * time.Millisecond},
		}})
	}
	return se
}

// setState rewrites the policy with p and waits until every receiver
// runs it.
func (se *stateEnv) setState(p stateParams) {
	se.t.Helper()
	before := se.srv.PolicyHash()
	se.params = p
	params := se.env.params
	params.Extra = stateExtra(p)
	se.writePolicy(params)
	eventually(se.t, 10*time.Second, "both receivers on the new policy", func() bool {
		h := se.srv.PolicyHash()
		return h != before && se.peer.Server.PolicyHash() == h
	})
}

// call places a call from number to the receiver at callback and waits
// until it was decided; it returns the call's decision record and what
// Graph saw of it (after the action, when there is one).
func (se *stateEnv) call(number string, r *local.Receiver) (map[string]any, emulator.CallRecord) {
	se.t.Helper()
	logs := se.logs
	if r != se.rcv {
		logs = se.peerLogs
	}
	id := se.place(number, r.Callback)
	d := logs.decisionFor(se.t, id)
	if d["action"] == "Reject" {
		return d, se.acted(id)
	}
	return d, se.record(id)
}

// wantDecision checks a decision and what Graph did with the call.
func wantDecision(t *testing.T, what string, d map[string]any, rec emulator.CallRecord, rule, action string, blocked bool) {
	t.Helper()
	gotRule, _ := d["rule"].(string)
	gotBlocked, _ := d["blocked"].(bool)
	if gotRule != rule || d["action"] != action || gotBlocked != blocked {
		t.Fatalf("%s: decided rule %q action %v blocked %v, want %q %s %v (%v)", what, gotRule, d["action"], gotBlocked, rule, action, blocked, d)
	}
	wantGraph := ""
	if action == "Reject" {
		wantGraph = "reject"
	}
	if rec.Action != wantGraph {
		t.Fatalf("%s: Graph saw action %q, want %q (%+v)", what, rec.Action, wantGraph, rec)
	}
}

// blocks reads GET /blocks of a receiver.
func blocks(t *testing.T, r *local.Receiver) []state.Block {
	t.Helper()
	resp, err := http.Get(r.Ops + "/blocks")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /blocks: %d %s", resp.StatusCode, body)
	}
	var out []state.Block
	for _, line := range bytes.Split(body, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var b state.Block
		if err := json.Unmarshal(line, &b); err != nil {
			t.Fatalf("GET /blocks line %q: %v", line, err)
		}
		out = append(out, b)
	}
	return out
}

// unblock posts body to /blocks/unblock and returns the status and body.
func unblock(t *testing.T, r *local.Receiver, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(r.Ops+"/blocks/unblock", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// stores are the two kinds of store: Redis shared by two receivers, and
// memory in one.
var stores = []struct {
	name     string
	redis    bool
	replicas int
}{
	{name: "redis shared by two receivers", redis: true, replicas: 2},
	{name: "memory", replicas: 1},
}

func newStateEnv(t *testing.T, redis bool, replicas int) (*stateEnv, *redisserver.Server) {
	t.Helper()
	var p stateParams
	var rs *redisserver.Server
	if redis {
		rs = redisserver.Start(t)
		p.Redis = rs.Addr()
	}
	return startStateEnv(t, p, replicas), rs
}

func TestStateRepeatCallers(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			se, _ := newStateEnv(t, st.redis, st.replicas)
			// The calls alternate between the receivers: the third within
			// the window is rejected wherever it arrives.
			on := []*local.Receiver{se.rcv, se.peer, se.rcv, se.peer}
			want := []string{"Allow", "Allow", "Reject", "Reject"}
			for i, r := range on {
				d, rec := se.call(numRepeat, r)
				rule := ""
				if want[i] == "Reject" {
					rule = "repeat"
				}
				wantDecision(t, fmt.Sprintf("call %d", i+1), d, rec, rule, want[i], false)
			}
			// Another caller's count is its own.
			d, rec := se.call(numAllowed, se.peer)
			wantDecision(t, "another caller", d, rec, "", "Allow", false)
			if n := se.metric("callguard_receiver_state_requests_total", map[string]string{"result": "ok"}); n < 2 {
				t.Errorf("state_requests_total{result=ok} = %v on the first receiver, want 2 or more", n)
			}
		})
	}
}

func TestStateTemporaryBlock(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			se, _ := newStateEnv(t, st.redis, st.replicas)
			d, rec := se.call(numBlock, se.rcv)
			wantDecision(t, "first call", d, rec, "block", "Reject", false)
			se.waitMetric("callguard_receiver_blocks_started_total", map[string]string{"rule": "block"}, 1)

			// The rule no longer matches the caller, but its block holds,
			// on the other receiver too, and survives the reload.
			p := se.params
			p.BlockNumber = "+14255550399"
			se.setState(p)
			d, rec = se.call(numBlock, se.peer)
			wantDecision(t, "blocked call", d, rec, "block", "Reject", true)

			list := blocks(t, se.peer)
			if len(list) != 1 || list[0].Masked != "****0302" || list[0].Rule != "block" {
				t.Fatalf("GET /blocks = %+v, want one block of ****0302 under rule block", list)
			}
			if got := list[0].Until.Sub(list[0].Since); got < 59*time.Minute || got > 61*time.Minute+time.Second {
				t.Errorf("block from %v until %v, want an hour", list[0].Since, list[0].Until)
			}
			if strings.Contains(fmt.Sprint(blocks(t, se.rcv)), "+1") {
				t.Error("GET /blocks shows a full number")
			}

			// Lifting it (the number as people write it) frees the caller.
			if code, body := unblock(t, se.rcv, `{"number": "+1 (425) 555-0302"}`); code != http.StatusOK || strings.TrimSpace(body) != `{"unblocked":1}` {
				t.Fatalf("unblock: %d %s", code, body)
			}
			if list := blocks(t, se.peer); len(list) != 0 {
				t.Fatalf("GET /blocks after unblock = %+v, want none", list)
			}
			d, rec = se.call(numBlock, se.peer)
			wantDecision(t, "call after unblock", d, rec, "", "Allow", false)
			if code, body := unblock(t, se.peer, `{"all": true}`); code != http.StatusOK || strings.TrimSpace(body) != `{"unblocked":0}` {
				t.Fatalf("unblock all: %d %s", code, body)
			}
		})
	}
}

func TestStateRedeliveredNotCountedTwice(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			se, _ := newStateEnv(t, st.redis, st.replicas)
			c := se.placeQuiet(numRepeat)
			body := createdBody(t, c)
			// Graph delivers the call again, to this receiver and (by a
			// retry through the load balancer) to the other.
			for _, r := range []*local.Receiver{se.rcv, se.rcv, se.peer} {
				req, err := http.NewRequest(http.MethodPost, r.Callback, bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				req.Header.Set("Authorization", se.genuineAuth())
				req.Header.Set("Content-Type", "application/json")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					t.Fatalf("delivery: %d", resp.StatusCode)
				}
			}
			se.logs.decisionFor(t, c.ID)
			if st.replicas > 1 {
				se.peerLogs.decisionFor(t, c.ID)
			}
			// The call counted once: the next is the second.
			d, rec := se.call(numRepeat, se.peer)
			wantDecision(t, "second call", d, rec, "", "Allow", false)
			d, rec = se.call(numRepeat, se.rcv)
			wantDecision(t, "third call", d, rec, "repeat", "Reject", false)
		})
	}
}

func TestStateStoreDown(t *testing.T) {
	se, rs := newStateEnv(t, true, 2)
	d, rec := se.call(numRepeat, se.rcv)
	wantDecision(t, "before the outage", d, rec, "", "Allow", false)

	rs.Stop()
	// Ignore: the repeat part does not hold; the block rule still decides
	// by its match, without starting a block.
	d, rec = se.call(numRepeat, se.rcv)
	wantDecision(t, "Ignore, store down", d, rec, "", "Allow", false)
	d, rec = se.call(numBlock, se.rcv)
	wantDecision(t, "Ignore, store down, block rule", d, rec, "block", "Reject", false)
	if n := se.metric("callguard_receiver_state_errors_total", nil); n != 2 {
		t.Errorf("state_errors_total = %v, want 2", n)
	}
	if n := se.metric("callguard_receiver_state_requests_total", map[string]string{"result": "ok"}) +
		se.metric("callguard_receiver_state_requests_total", map[string]string{"result": "error"}) +
		se.metric("callguard_receiver_state_requests_total", map[string]string{"result": "timeout"}); n != 3 {
		t.Errorf("state_requests_total = %v, want 3", n)
	}
	if n := se.metric("callguard_receiver_blocks_started_total", nil); n != 0 {
		t.Errorf("blocks_started_total = %v with the store down, want 0", n)
	}
	if !strings.Contains(se.logs.String(), "state store did not answer") {
		t.Error("no warning of the store's miss")
	}

	// Match: the repeat part holds, a first call of its caller included.
	p := se.params
	p.OnError = "Match"
	se.setState(p)
	d, rec = se.call(numRepeat, se.peer)
	wantDecision(t, "Match, store down", d, rec, "repeat", "Reject", false)
	d, rec = se.call(numAllowed, se.peer)
	wantDecision(t, "Match, store down, no repeat rule for the caller", d, rec, "", "Allow", false)

	// The store back: counting resumes (a fresh caller: the restarted
	// server may have kept the earlier counts or not).
	rs.Restart()
	eventually(t, 10*time.Second, "the store answering again", func() bool {
		return statusOf(se.peer.Ops+"/blocks") == http.StatusOK
	})
	const fresh = "+14255550311"
	p.Repeat = fresh
	se.setState(p)
	errorsBefore := se.metric("callguard_receiver_state_errors_total", nil)
	want := []string{"Allow", "Allow", "Reject"}
	for i, r := range []*local.Receiver{se.peer, se.rcv, se.peer} {
		d, rec := se.call(fresh, r)
		rule := ""
		if want[i] == "Reject" {
			rule = "repeat"
		}
		wantDecision(t, fmt.Sprintf("after the restart, call %d", i+1), d, rec, rule, want[i], false)
	}
	if n := se.metric("callguard_receiver_state_errors_total", nil); n != errorsBefore {
		t.Errorf("state_errors_total rose from %v to %v with the store up", errorsBefore, n)
	}
}

func TestBlocksEndpoints(t *testing.T) {
	t.Run("a policy without state", func(t *testing.T) {
		e := startEnv(t, envOptions{})
		for _, req := range []struct{ method, path, body string }{
			{http.MethodGet, "/blocks", ""},
			{http.MethodPost, "/blocks/unblock", `{"all":true}`},
		} {
			r, err := http.NewRequest(req.method, e.ops+req.path, strings.NewReader(req.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(r)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var je struct{ Error string }
			if resp.StatusCode != http.StatusNotFound || json.Unmarshal(body, &je) != nil || !strings.Contains(je.Error, "keeps no state") {
				t.Errorf("%s %s: %d %s, want 404 with a JSON error saying the policy keeps no state", req.method, req.path, resp.StatusCode, body)
			}
		}
	})
	t.Run("bad requests", func(t *testing.T) {
		se := startStateEnv(t, stateParams{}, 1)
		for _, tt := range []struct {
			body     string
			wantCode int
			want     string
		}{
			{`{"number":`, http.StatusBadRequest, "want"},
			{`{"number":"not a number"}`, http.StatusBadRequest, "is not a phone number"},
			{`{"all":false}`, http.StatusBadRequest, "exactly one"},
			{`{"all":true,"` + strings.Repeat("x", 5000) + `":1}`, http.StatusRequestEntityTooLarge, "body over 4096 bytes"},
		} {
			code, body := unblock(t, se.rcv, tt.body)
			var je struct{ Error string }
			if code != tt.wantCode || json.Unmarshal([]byte(body), &je) != nil || !strings.Contains(je.Error, tt.want) {
				t.Errorf("unblock %.40q: %d %s, want %d with a JSON error containing %q", tt.body, code, body, tt.wantCode, tt.want)
			}
		}
		if code := statusOf(se.ops + "/blocks/unblock"); code != http.StatusMethodNotAllowed {
			t.Errorf("GET /blocks/unblock: %d, want 405", code)
		}
	})
}

// TestStateRedisCredentials: the store's user name and password come from
// the state dir, as the operator mounts them.
func TestStateRedisCredentials(t *testing.T) {
	tests := []struct {
		name string
		// files are written to the state dir beside the key.
		files  map[string]string
		wantOK bool
	}{
		{name: "user and password", files: map[string]string{"redis-username": "callguard", "redis-password": "s3cret"}, wantOK: true},
		{name: "wrong password", files: map[string]string{"redis-username": "callguard", "redis-password": "guess"}},
		{name: "no credentials", files: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := redisserver.Start(t, "--user", "callguard", "on", ">s3cret", "~*", "&*", "+@all", "--user", "default", "off")
			se := startStateEnv(t, stateParams{Redis: rs.Addr()}, 1)
			for name, v := range tt.files {
				if err := os.WriteFile(filepath.Join(se.stateDir, name), []byte(v), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			// The files are read on apply.
			p := se.params
			p.OnError = "Match"
			se.setState(p)
			d, rec := se.call(numRepeat, se.rcv)
			if tt.wantOK {
				wantDecision(t, "first call", d, rec, "", "Allow", false)
				if list := blocks(t, se.rcv); len(list) != 0 {
					t.Fatalf("blocks %+v, want none", list)
				}
				return
			}
			// Refused by the server: decided as onError Match says.
			wantDecision(t, "first call", d, rec, "repeat", "Reject", false)
			if n := se.metric("callguard_receiver_state_errors_total", nil); n != 1 {
				t.Errorf("state_errors_total = %v, want 1", n)
			}
			if code := statusOf(se.ops + "/blocks"); code != http.StatusServiceUnavailable {
				t.Errorf("GET /blocks with the store refusing: %d, want 503", code)
			}
		})
	}
}

// TestStateRedisTLS: with state.redis.tls the store is reached over TLS,
// trusting the state dir's redis-ca.crt; a server it does not trust is a
// store that does not answer.
func TestStateRedisTLS(t *testing.T) {
	rs := redisserver.StartTLS(t)
	addr := rs.Addr()

	for _, trusted := range []bool{true, false} {
		t.Run(fmt.Sprintf("trusted=%v", trusted), func(t *testing.T) {
			se := startStateEnv(t, stateParams{}, 1)
			if trusted {
				if err := os.WriteFile(filepath.Join(se.stateDir, "redis-ca.crt"), rs.CAPEM(), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			params := se.env.params
			params.Extra = stateExtra(se.params) + "  state:\n    onError: Match\n    redis: {address: \"" + addr + "\", tls: {enabled: true}}\n"
			before := se.srv.PolicyHash()
			se.writePolicy(params)
			eventually(t, 10*time.Second, "the TLS policy live", func() bool { return se.srv.PolicyHash() != before })
			d, rec := se.call(numRepeat, se.rcv)
			if trusted {
				wantDecision(t, "over TLS", d, rec, "", "Allow", false)
				if n := se.metric("callguard_receiver_state_requests_total", map[string]string{"result": "ok"}); n != 1 {
					t.Errorf("state_requests_total{result=ok} = %v, want 1", n)
				}
				return
			}
			wantDecision(t, "untrusted server", d, rec, "repeat", "Reject", false)
			if n := se.metric("callguard_receiver_state_errors_total", nil); n != 1 {
				t.Errorf("state_errors_total = %v, want 1", n)
			}
		})
	}
}

// TestStateStoreFollowsSettings: a version that changes only the rules
// keeps the store's counts; one that changes the store's settings starts
// on the new store.
func TestStateStoreFollowsSettings(t *testing.T) {
	rs := redisserver.Start(t)
	se := startStateEnv(t, stateParams{Redis: rs.Addr()}, 1)
	for i := range 2 {
		d, rec := se.call(numRepeat, se.rcv)
		wantDecision(t, fmt.Sprintf("call %d", i+1), d, rec, "", "Allow", false)
	}
	// Only onError changes: the third call is still the third.
	p := se.params
	p.OnError = "Match"
	se.setState(p)
	d, rec := se.call(numRepeat, se.rcv)
	wantDecision(t, "third call after a reload", d, rec, "repeat", "Reject", false)

	// Another key prefix is another store: the count starts again.
	params := se.env.params
	params.Extra = stateExtra(stateParams{Repeat: numRepeat, BlockNumber: numBlock}) +
		"  state:\n    redis: {address: \"" + rs.Addr() + "\", keyPrefix: \"other:\"}\n"
	before := se.srv.PolicyHash()
	se.writePolicy(params)
	eventually(t, 10*time.Second, "the new key prefix live", func() bool { return se.srv.PolicyHash() != before })
	d, rec = se.call(numRepeat, se.rcv)
	wantDecision(t, "first call under the new prefix", d, rec, "", "Allow", false)
}

// TestStateStoreHangs: a store that takes connections but never answers
// costs a batch its 100 ms budget, then onError decides; the round trip
// counts as a timeout.
func TestStateStoreHangs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// Read and never answer.
			go func() { _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	se := startStateEnv(t, stateParams{Redis: ln.Addr().String(), OnError: "Match"}, 1)
	d, rec := se.call(numRepeat, se.rcv)
	wantDecision(t, "store hanging", d, rec, "repeat", "Reject", false)
	if n := se.metric("callguard_receiver_state_requests_total", map[string]string{"result": "timeout"}); n != 1 {
		t.Errorf("state_requests_total{result=timeout} = %v, want 1", n)
	}
	// The budget, not the call's 15 s deadline, ended the wait.
	families, err := se.srv.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() != "callguard_receiver_state_seconds" {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		if h.GetSampleCount() != 1 || h.GetSampleSum() > 5 {
			t.Errorf("state_seconds: %d round trips taking %vs, want one cut short by the budget", h.GetSampleCount(), h.GetSampleSum())
		}
	}
}

// TestStateDryRun: DryRun decides as Enforce would, counting calls and
// starting blocks alike, and sends nothing to Graph.
func TestStateDryRun(t *testing.T) {
	se := startStateEnv(t, stateParams{Mode: "DryRun"}, 1)
	var ids []string
	for range 3 {
		id := se.place(numRepeat, se.rcv.Callback)
		se.logs.decisionFor(t, id)
		ids = append(ids, id)
	}
	id := se.place(numBlock, se.rcv.Callback)
	se.logs.decisionFor(t, id)
	ids = append(ids, id)
	want := []struct{ rule, action string }{{"", "Allow"}, {"", "Allow"}, {"repeat", "Reject"}, {"block", "Reject"}}
	for i, id := range ids {
		d := se.logs.decisionFor(t, id)
		rule, _ := d["rule"].(string)
		if rule != want[i].rule || d["action"] != want[i].action || d["mode"] != "DryRun" || d["result"] != "dry_run" {
			t.Errorf("call %d: %v, want rule %q action %s in DryRun", i+1, d, want[i].rule, want[i].action)
		}
	}
	se.waitMetric("callguard_receiver_blocks_started_total", map[string]string{"rule": "block"}, 1)
	if list := blocks(t, se.rcv); len(list) != 1 || list[0].Rule != "block" {
		t.Errorf("GET /blocks = %+v, want the block DryRun started", list)
	}
	if n := se.graphActions(); n != 0 {
		t.Errorf("Graph got %d actions in DryRun, want none", n)
	}
}

// TestStateOneRoundTripPerBatch: the calls of a batch are asked about in
// one round trip, counted in their order.
func TestStateOneRoundTripPerBatch(t *testing.T) {
	for _, redis := range []bool{true, false} {
		t.Run(fmt.Sprintf("redis=%v", redis), func(t *testing.T) {
			se, _ := newStateEnv(t, redis, 1)
			batch := graph.Notifications{ODataType: graph.ODataCommsNotifications}
			var ids []string
			for range 3 {
				c := se.placeQuiet(numRepeat)
				ids = append(ids, c.ID)
				batch.Value = append(batch.Value, graph.Notification{
					ODataType: graph.ODataCommsNotification, ChangeType: graph.ChangeCreated,
					ResourceURL: "/communications/calls/" + c.ID, ResourceData: c,
				})
			}
			body, err := json.Marshal(batch)
			if err != nil {
				t.Fatal(err)
			}
			if code, resp := se.post(http.MethodPost, se.genuineAuth(), body); code != http.StatusAccepted {
				t.Fatalf("batch: %d %s", code, resp)
			}
			want := []string{"Allow", "Allow", "Reject"}
			for i, id := range ids {
				if d := se.logs.decisionFor(t, id); d["action"] != want[i] {
					t.Errorf("call %d of the batch: %v, want %s", i+1, d, want[i])
				}
			}
			if rec := se.acted(ids[2]); rec.Action != "reject" {
				t.Errorf("Graph saw %q for the batch's third call, want reject", rec.Action)
			}
			if n := se.metric("callguard_receiver_state_requests_total", nil); n != 1 {
				t.Errorf("state_requests_total = %v for one batch, want 1", n)
			}
		})
	}
}
