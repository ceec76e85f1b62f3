package state

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/callguard/callguard/test/harness/redisserver"
)

var key = []byte("0123456789abcdef0123456789abcdef")

func newTestRedis(t testing.TB, addr string, o RedisOptions) *Redis {
	t.Helper()
	o.Address = addr
	if o.HashKey == nil {
		o.HashKey = key
	}
	if o.Namespace == "" {
		o.Namespace = "ns"
	}
	if o.Name == "" {
		o.Name = "policy"
	}
	r, err := NewRedis(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// admin is a plain client for looking at the server.
func admin(t testing.TB, addr string, db int) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr, DB: db, Protocol: 2})
	t.Cleanup(func() { c.Close() })
	return c
}

func now() time.Time { return time.UnixMilli(time.Now().UnixMilli()) }

// mixedQueries are calls of several callers that record calls and start
// blocks.
func mixedQueries(callers []string, t0 time.Time) []Query {
	var qs []Query
	for i, c := range callers {
		for j := range 3 {
			qs = append(qs, Query{
				Caller: c, Masked: "****" + c[len(c)-4:], CallID: fmt.Sprintf("call-%d-%d", i, j),
				At: t0.Add(time.Duration(j) * time.Second), Record: true, Keep: time.Hour, KeepCalls: 5,
				Steps: []Step{{Rule: "flood", Static: true, Calls: 2, Within: time.Hour, BlockFor: 2 * time.Hour}},
			})
		}
	}
	return qs
}

// TestRedisKeysExpireAndHoldNoNumber: after calls, blocks and claims every
// key has a TTL, and no key or value holds a caller's number or id.
func TestRedisKeysExpireAndHoldNoNumber(t *testing.T) {
	srv := redisserver.Start(t)
	r := newTestRedis(t, srv.Addr(), RedisOptions{KeyPrefix: "callguard:"})
	ctx := context.Background()
	callers := []string{"+14255550123", "+442071234567", "8:orgid:6a1f0c2e-3b52-4c1d-9a55-1f2b3c4d5e6f"}
	qs := mixedQueries(callers, now())
	if err := r.Eval(ctx, qs, make([]Answer, len(qs))); err != nil {
		t.Fatal(err)
	}
	if ok, err := r.Claim(ctx, "call-0-0:play", time.Minute); err != nil || !ok {
		t.Fatalf("claim: %v %v", ok, err)
	}
	forbidden := []string{"14255550123", "442071234567", "6a1f0c2e-3b52-4c1d-9a55-1f2b3c4d5e6f", "call-0-0"}
	a := admin(t, srv.Addr(), 0)
	keys, err := a.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	// Each caller has a calls key and a blocks key; one claim.
	if len(keys) != 2*len(callers)+1 {
		t.Fatalf("keys: %q", keys)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "callguard:ns/policy:") {
			t.Errorf("key %q lacks the prefix, namespace and name", k)
		}
		ttl, err := a.PTTL(ctx, k).Result()
		if err != nil || ttl <= 0 {
			t.Errorf("key %q: PTTL %v, %v: every key must expire", k, ttl, err)
		}
		var content []string
		switch typ := a.Type(ctx, k).Val(); typ {
		case "zset":
			zs := a.ZRangeWithScores(ctx, k, 0, -1).Val()
			for _, z := range zs {
				content = append(content, fmt.Sprint(z.Member), strconv.FormatFloat(z.Score, 'f', -1, 64))
			}
		case "hash":
			for f, v := range a.HGetAll(ctx, k).Val() {
				content = append(content, f, v)
			}
		case "string":
			content = append(content, a.Get(ctx, k).Val())
		default:
			t.Errorf("key %q of type %q", k, typ)
		}
		all := k + "\x00" + strings.Join(content, "\x00")
		for _, f := range forbidden {
			if strings.Contains(all, f) {
				t.Errorf("key %q holds %q: %q", k, f, all)
			}
		}
	}
	// The blocks keep the masked number for listings, nothing more.
	bs, err := r.Blocks(ctx, time.Now())
	if err != nil || len(bs) != len(callers) {
		t.Fatalf("blocks %v, %v", bs, err)
	}
}

// TestMemoryHoldsNoNumber: the memory store keeps the same hashes.
func TestMemoryHoldsNoNumber(t *testing.T) {
	m, err := NewMemory(key, 10)
	if err != nil {
		t.Fatal(err)
	}
	callers := []string{"+14255550123", "+442071234567", "8:orgid:6a1f0c2e-3b52-4c1d-9a55-1f2b3c4d5e6f"}
	qs := mixedQueries(callers, now())
	if err := m.Eval(context.Background(), qs, make([]Answer, len(qs))); err != nil {
		t.Fatal(err)
	}
	m.Claim(context.Background(), "call-0-0:play", time.Minute)
	dump := fmt.Sprintf("%+v %+v %+v", m.idx, m.ents, m.claims)
	for _, bs := range m.blocks {
		dump += fmt.Sprintf(" %+v", *bs)
	}
	for _, f := range []string{"14255550123", "442071234567", "6a1f0c2e", "call-0-0"} {
		if strings.Contains(dump, f) {
			t.Errorf("memory store holds %q", f)
		}
	}
	if !strings.Contains(dump, "****0123") {
		t.Errorf("the masked number is kept for listings: %s", dump)
	}
}

// TestMemoryForgetsLeastRecentlySeen: past maxCallers the caller seen
// longest ago is forgotten, calls and blocks alike.
func TestMemoryForgetsLeastRecentlySeen(t *testing.T) {
	m, err := NewMemory(key, 3)
	if err != nil {
		t.Fatal(err)
	}
	t0 := now()
	n := 0
	call := func(who string, static bool) Answer {
		n++
		a := make([]Answer, 1)
		steps := []Step{{Rule: "r", Static: static, Calls: 2, Within: time.Hour, BlockFor: time.Hour}}
		q := Query{Caller: who, CallID: strconv.Itoa(n), At: t0.Add(time.Duration(n) * time.Second), Record: true, Keep: time.Hour, KeepCalls: 2, Steps: steps}
		if err := m.Eval(context.Background(), []Query{q}, a); err != nil {
			t.Fatal(err)
		}
		return a[0]
	}
	call("a", true)
	call("b", true)
	call("c", true)
	if a := call("a", true); !a.Started {
		t.Fatalf("a's second call: %+v, want a block started", a)
	}
	// Seen from most to least recently: a c b. d forgets b.
	call("d", true)
	if len(m.idx) != 3 {
		t.Fatalf("%d callers remembered, want 3", len(m.idx))
	}
	if a := call("b", true); a.Step != -1 {
		t.Fatalf("b was forgotten, its second call is its first: %+v", a)
	}
	// b d a (b forgot c): a is remembered, and under its block.
	if a := call("a", false); !a.Blocked {
		t.Fatalf("a's block: %+v", a)
	}
	// a b d: e forgets d, then d forgets b.
	call("e", true)
	if a := call("d", true); a.Step != -1 {
		t.Fatalf("d was forgotten: %+v", a)
	}
	// d e a: f and g forget a, its calls and its block.
	call("f", true)
	call("g", true)
	if a := call("a", false); a.Step != -1 {
		t.Fatalf("a was forgotten, its block too: %+v", a)
	}
	if len(m.blocks) != 0 {
		t.Fatalf("%d block sets remain of forgotten callers", len(m.blocks))
	}
	if len(m.idx) != 3 || len(m.ents) != 3 {
		t.Fatalf("callers %d, slots %d: the store grew past its bound", len(m.idx), len(m.ents))
	}
}

// TestMemoryForgetsExpiredCallers: a caller whose calls are past the
// window and whose blocks are over is forgotten as new callers come, its
// slot reused: the store keeps about the callers of one window.
func TestMemoryForgetsExpiredCallers(t *testing.T) {
	m, err := NewMemory(key, 1000)
	if err != nil {
		t.Fatal(err)
	}
	t0 := now()
	call := func(who string, at time.Duration, blockFor time.Duration) {
		q := Query{Caller: who, CallID: who, At: t0.Add(at), Record: true, Keep: time.Minute, KeepCalls: 2,
			Steps: []Step{{Rule: "r", Static: blockFor > 0, BlockFor: blockFor}}}
		if err := m.Eval(context.Background(), []Query{q}, make([]Answer, 1)); err != nil {
			t.Fatal(err)
		}
	}
	// old-0 is blocked for an hour; old-1..9 only counted.
	call("old-0", 0, time.Hour)
	for i := 1; i < 10; i++ {
		call("old-"+strconv.Itoa(i), 0, 0)
	}
	for i := range 10 {
		call("new-"+strconv.Itoa(i), 2*time.Minute, 0)
	}
	if len(m.ents) != 11 || len(m.idx) != 11 {
		t.Fatalf("slots %d, callers %d: want the 9 expired callers' slots reused and the blocked one kept", len(m.ents), len(m.idx))
	}
	if bs, _ := m.Blocks(context.Background(), t0.Add(2*time.Minute)); len(bs) != 1 {
		t.Fatalf("the running block was forgotten: %v", bs)
	}
}

// TestRedisOutage: a stopped or stalled server fails Eval within the
// context's budget; once it answers again so does the store.
func TestRedisOutage(t *testing.T) {
	srv := redisserver.Start(t)
	r := newTestRedis(t, srv.Addr(), RedisOptions{})
	steps := []Step{{Rule: "r", Static: true, Calls: 2, Within: time.Hour}}
	n := 0
	eval := func(budget time.Duration) (Answer, time.Duration, error) {
		n++
		ctx, cancel := context.WithTimeout(context.Background(), budget)
		defer cancel()
		a := make([]Answer, 1)
		q := Query{Caller: "+14255550123", CallID: strconv.Itoa(n), At: now(), Record: true, Keep: time.Hour, KeepCalls: 2, Steps: steps}
		start := time.Now()
		err := r.Eval(ctx, []Query{q}, a)
		return a[0], time.Since(start), err
	}
	if _, _, err := eval(time.Second); err != nil {
		t.Fatal(err)
	}
	// The bound is generous (a loaded machine): what matters is that the
	// store does not wait for its own timeouts (seconds) or retries.
	const slack = 900 * time.Millisecond

	srv.Stop()
	if _, took, err := eval(100 * time.Millisecond); err == nil || took > 100*time.Millisecond+slack {
		t.Fatalf("stopped server: %v after %s, want an error within the budget", err, took)
	}
	srv.Restart()
	// The restarted server is empty: no script (EVALSHA's NOSCRIPT makes
	// the store send it) and no calls.
	a, _, err := eval(time.Second)
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if a.Step != -1 {
		t.Fatalf("first call after restart: %+v", a)
	}
	if a, _, err = eval(time.Second); err != nil || a.Step != 0 {
		t.Fatalf("second call after restart: %+v, %v", a, err)
	}

	// A server that stops answering (CLIENT PAUSE) costs the budget, then
	// an error that says the deadline passed.
	adm := admin(t, srv.Addr(), 0)
	if err := adm.Do(context.Background(), "CLIENT", "PAUSE", "1500", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	_, took, err := eval(100 * time.Millisecond)
	var ne net.Error
	if err == nil || !(errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()) || took > 100*time.Millisecond+slack {
		t.Fatalf("paused server: %v after %s, want a timeout within the budget", err, took)
	}
	if err := adm.Do(context.Background(), "CLIENT", "UNPAUSE").Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err = eval(time.Second); err != nil {
		t.Fatalf("after the pause: %v", err)
	}
}

// TestRedisReplicasShare: two stores of one policy (two replicas) see each
// other's calls and blocks; another policy's store on the same server
// sees none of them, even with a key prefix that is a SCAN pattern.
func TestRedisReplicasShare(t *testing.T) {
	srv := redisserver.Start(t)
	a := newTestRedis(t, srv.Addr(), RedisOptions{KeyPrefix: "cg*"})
	b := newTestRedis(t, srv.Addr(), RedisOptions{KeyPrefix: "cg*"})
	other := newTestRedis(t, srv.Addr(), RedisOptions{KeyPrefix: "cgx"})
	ctx := context.Background()
	t0 := now()
	steps := []Step{{Rule: "flood", Static: true, Calls: 3, Within: time.Hour, BlockFor: time.Hour}}
	q := func(id string, at time.Duration) []Query {
		return []Query{{Caller: "+14255550123", Masked: "****0123", CallID: id, At: t0.Add(at), Record: true, Keep: time.Hour, KeepCalls: 3, Steps: steps}}
	}
	ans := make([]Answer, 1)
	for i, st := range []*Redis{a, b, other} {
		if err := st.Eval(ctx, q(strconv.Itoa(i), time.Duration(i)*time.Second), ans); err != nil || ans[0].Step != -1 {
			t.Fatalf("call %d: %+v, %v", i, ans[0], err)
		}
	}
	// b's call and a's: the third of this policy (other's does not count).
	if err := a.Eval(ctx, q("3", 3*time.Second), ans); err != nil || ans[0].Step != 0 || !ans[0].Started {
		t.Fatalf("third call: %+v, %v", ans[0], err)
	}
	// The redelivery through the other replica counts no more, and finds
	// the block a started.
	if err := b.Eval(ctx, q("3", 3*time.Second), ans); err != nil || !ans[0].Blocked {
		t.Fatalf("redelivered through b: %+v, %v", ans[0], err)
	}
	for name, st := range map[string]*Redis{"a": a, "b": b} {
		bs, err := st.Blocks(ctx, t0)
		if err != nil || len(bs) != 1 || bs[0].Masked != "****0123" || !bs[0].Since.Equal(t0.Add(3*time.Second)) {
			t.Fatalf("%s lists %v, %v", name, bs, err)
		}
	}
	if bs, err := other.Blocks(ctx, t0); err != nil || len(bs) != 0 {
		t.Fatalf("another policy lists %v, %v", bs, err)
	}
	if n, err := other.Unblock(ctx, ""); err != nil || n != 0 {
		t.Fatalf("another policy lifted %d, %v", n, err)
	}
	if n, err := b.Unblock(ctx, ""); err != nil || n != 1 {
		t.Fatalf("b lifted %d, %v", n, err)
	}
	if bs, err := a.Blocks(ctx, t0); err != nil || len(bs) != 0 {
		t.Fatalf("a still lists %v, %v", bs, err)
	}
}

// roundTrips counts what a client sends: pipelines and lone commands.
type roundTrips struct{ pipelines, commands, pipelined atomic.Int64 }

func (rt *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (rt *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		rt.commands.Add(1)
		return next(ctx, cmd)
	}
}
func (rt *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		rt.pipelines.Add(1)
		rt.pipelined.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// TestRedisOneRoundTripPerBatch: a batch of 50 calls is one pipeline of
// 50 EVALSHA, as the server counts them too.
func TestRedisOneRoundTripPerBatch(t *testing.T) {
	srv := redisserver.Start(t)
	r := newTestRedis(t, srv.Addr(), RedisOptions{})
	rt := &roundTrips{}
	r.client.AddHook(rt)
	adm := admin(t, srv.Addr(), 0)
	ctx := context.Background()
	batch := func(round int) []Query {
		qs := make([]Query, 50)
		for i := range qs {
			qs[i] = Query{
				Caller: fmt.Sprintf("+1425555%04d", i), Masked: "****", CallID: fmt.Sprintf("%d-%d", round, i), At: now(),
				Record: true, Keep: time.Hour, KeepCalls: 4,
				Steps: []Step{{Rule: "r", Static: true, Calls: 4, Within: time.Hour, BlockFor: time.Hour}},
			}
		}
		return qs
	}
	ans := make([]Answer, 50)
	// The first batch on a fresh server also sends the script (a second
	// pipeline of EVAL): once.
	if err := r.Eval(ctx, batch(0), ans); err != nil {
		t.Fatal(err)
	}
	if p := rt.pipelines.Load(); p != 2 {
		t.Fatalf("first batch: %d pipelines, want 2 (EVALSHA, then EVAL after NOSCRIPT)", p)
	}
	evalsha := func() int64 {
		info := adm.Info(ctx, "commandstats").Val()
		for _, line := range strings.Split(info, "\n") {
			if rest, ok := strings.CutPrefix(line, "cmdstat_evalsha:calls="); ok {
				n, _ := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
				return n
			}
		}
		return 0
	}
	before := evalsha()
	rt.pipelines.Store(0)
	rt.pipelined.Store(0)
	rt.commands.Store(0)
	for round := 1; round <= 3; round++ {
		if err := r.Eval(ctx, batch(round), ans); err != nil {
			t.Fatal(err)
		}
	}
	if p, c, n := rt.pipelines.Load(), rt.commands.Load(), rt.pipelined.Load(); p != 3 || c != 0 || n != 150 {
		t.Fatalf("3 batches: %d pipelines of %d commands and %d lone commands, want 3 of 150 and none", p, n, c)
	}
	if got := evalsha() - before; got != 150 {
		t.Fatalf("server ran %d EVALSHA for 3 batches of 50", got)
	}
	// The fourth call of each caller: the step holds and starts a block.
	for i, a := range ans {
		if a.Step != 0 || !a.Started {
			t.Fatalf("caller %d's fourth call: %+v", i, a)
		}
	}
}

// pipelineStarts signals each pipeline the client begins to send.
type pipelineStarts chan struct{}

func (ps pipelineStarts) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (ps pipelineStarts) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (ps pipelineStarts) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		select {
		case ps <- struct{}{}:
		default:
		}
		return next(ctx, cmds)
	}
}

// oneCall is a batch of one call of caller that records it.
func oneCall(caller, id string) []Query {
	return []Query{{Caller: caller, Masked: "****", CallID: id, At: now(), Record: true, Keep: time.Hour, KeepCalls: 4,
		Steps: []Step{{Rule: "r", Static: true, Calls: 3, Within: time.Hour}}}}
}

// TestRedisConcurrentBatchesShareRoundTrips: batches that ask while a round
// trip is on its way go together in the next one, each getting its own
// answers; the store counts its round trips.
func TestRedisConcurrentBatchesShareRoundTrips(t *testing.T) {
	srv := redisserver.Start(t)
	var counted atomic.Int64
	r := newTestRedis(t, srv.Addr(), RedisOptions{RoundTrip: func() { counted.Add(1) }})
	rt := &roundTrips{}
	r.client.AddHook(rt)
	adm := admin(t, srv.Addr(), 0)
	ctx := context.Background()
	ans := make([]Answer, 1)
	// The script loaded: every later round trip is one pipeline.
	if err := r.Eval(ctx, oneCall("+14255550000", "load"), ans); err != nil {
		t.Fatal(err)
	}
	rt.pipelines.Store(0)
	counted.Store(0)
	// The server holds every command for a while: the first round trip
	// waits, and the batches asking meanwhile queue behind it.
	if err := adm.Do(ctx, "CLIENT", "PAUSE", "300", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	const batches = 20
	answers := make([][]Answer, batches)
	errs := make([]error, batches)
	var wg sync.WaitGroup
	for i := range batches {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			var qs []Query
			for j := range callsIn(i) {
				qs = append(qs, oneCall(fmt.Sprintf("+1425555%04d", i+1), fmt.Sprintf("%d-%d", i, j))...)
			}
			answers[i] = make([]Answer, len(qs))
			errs[i] = r.Eval(ctx, qs, answers[i])
		})
	}
	wg.Wait()
	for i := range batches {
		if errs[i] != nil {
			t.Fatalf("batch %d: %v", i, errs[i])
		}
		// Each batch is one caller's first calls, 1 to 4 of them: the rule
		// (three calls) holds from the third, so an answer handed to the
		// wrong batch shows.
		for j, a := range answers[i] {
			want := -1
			if j >= 2 {
				want = 0
			}
			if a.Step != want {
				t.Fatalf("batch %d, call %d: %+v, want step %d", i, j, a, want)
			}
		}
	}
	p := rt.pipelines.Load()
	if p > 3 {
		t.Fatalf("%d batches asking at once took %d round trips, want at most 3 (the one on its way, the rest together)", batches, p)
	}
	if c := counted.Load(); c != p {
		t.Fatalf("RoundTrip counted %d round trips, the client sent %d pipelines", c, p)
	}
	for i := range batches {
		callsKey, _ := r.callerKeys(r.hashers.key(fmt.Sprintf("+1425555%04d", i+1)))
		if n := adm.ZCard(ctx, callsKey).Val(); n != int64(callsIn(i)) {
			t.Fatalf("caller %d: %d calls counted, want %d", i+1, n, callsIn(i))
		}
	}
}

// callsIn is how many calls batch i of TestRedisConcurrentBatchesShareRoundTrips has.
func callsIn(i int) int { return i%4 + 1 }

// roundTripOnItsWay starts a store whose server holds every command for
// pauseMS, and has the Eval of caller +14255550001's first call on its way
// to it when it returns; first gets that Eval's error.
func roundTripOnItsWay(t *testing.T, pauseMS int) (*Redis, *redis.Client, chan error) {
	t.Helper()
	srv := redisserver.Start(t)
	r := newTestRedis(t, srv.Addr(), RedisOptions{})
	starts := make(pipelineStarts, 1)
	adm := admin(t, srv.Addr(), 0)
	ctx := context.Background()
	// The script loaded: the round trips after are one pipeline each.
	if err := r.Eval(ctx, oneCall("+14255550000", "load"), make([]Answer, 1)); err != nil {
		t.Fatal(err)
	}
	r.client.AddHook(starts)
	if err := adm.Do(ctx, "CLIENT", "PAUSE", strconv.Itoa(pauseMS), "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() { first <- r.Eval(ctx, oneCall("+14255550001", "first"), make([]Answer, 1)) }()
	<-starts
	return r, adm, first
}

// TestRedisBatchThatGaveUpIsNotSent: a batch whose budget ends while it
// waits behind a round trip gets its context's error at once; its calls
// are not sent later (not counted: state.onError decided them), and the
// batches that wait with it still get their answers.
func TestRedisBatchThatGaveUpIsNotSent(t *testing.T) {
	r, adm, first := roundTripOnItsWay(t, 500)
	ctx := context.Background()
	second := make(chan error, 1)
	go func() { second <- r.Eval(ctx, oneCall("+14255550003", "second"), make([]Answer, 1)) }()
	late, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := r.Eval(late, oneCall("+14255550002", "late"), make([]Answer, 1)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a batch whose budget ended while waiting: %v, want %v", err, context.DeadlineExceeded)
	}
	if err := <-first; err != nil {
		t.Fatalf("the batch on its way: %v", err)
	}
	if err := <-second; err != nil {
		t.Fatalf("the batch that waited with the one that gave up: %v", err)
	}
	for caller, want := range map[string]int64{"+14255550001": 1, "+14255550002": 0, "+14255550003": 1} {
		callsKey, _ := r.callerKeys(r.hashers.key(caller))
		if n := adm.ZCard(ctx, callsKey).Val(); n != want {
			t.Errorf("caller %s: %d calls counted, want %d", caller, n, want)
		}
	}
}

// TestRedisCloseEndsWaitingBatches: closing the store (a policy version
// retired) ends the round trip on its way and the batches waiting behind
// it with an error, rather than leaving them to their budgets.
func TestRedisCloseEndsWaitingBatches(t *testing.T) {
	r, _, first := roundTripOnItsWay(t, 2000)
	ctx := context.Background()
	waiting := make(chan error, 1)
	go func() { waiting <- r.Eval(ctx, oneCall("+14255550002", "waiting"), make([]Answer, 1)) }()
	// The second batch is queued once the sender could see it; Close
	// fails it either way.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-first; err == nil {
		t.Fatal("the round trip on its way answered after Close")
	}
	if err := <-waiting; !errors.Is(err, redis.ErrClosed) {
		t.Fatalf("a batch waiting at Close: %v, want %v", err, redis.ErrClosed)
	}
}

// aclCommands are the commands a Redis store sends, its scripts included.
const aclCommands = "evalsha eval set scan hgetall select zadd zremrangebyscore zremrangebyrank zcount pexpire hset hdel del"

// TestRedisOptions: the database, ACL user and password reach the server;
// bad options are refused by NewRedis.
func TestRedisOptions(t *testing.T) {
	// The user may run only the commands docs/state.md lists, on its
	// prefix's keys.
	acl := []string{"--user", "default", "off", "--user", "callguard", "on", ">s3cret", "~callguard:*"}
	for _, c := range strings.Fields(aclCommands) {
		acl = append(acl, "+"+c)
	}
	srv := redisserver.Start(t, acl...)
	ctx := context.Background()
	q := []Query{{Caller: "+14255550123", CallID: "1", At: now(), Record: true, Keep: time.Hour, KeepCalls: 2,
		Steps: []Step{{Rule: "r", Static: true, Calls: 2, Within: time.Hour}}}}
	good := newTestRedis(t, srv.Addr(), RedisOptions{KeyPrefix: "callguard:", Username: "callguard", Password: "s3cret", Database: 3})
	if err := good.Warm(ctx); err != nil {
		t.Fatalf("warming with the ACL user: %v", err)
	}
	q[0].Steps[0].BlockFor = time.Hour
	q[0].Steps[0].Calls = 0
	if err := good.Eval(ctx, q, make([]Answer, 1)); err != nil {
		t.Fatalf("with the ACL user: %v", err)
	}
	if ok, err := good.Claim(ctx, "x", time.Minute); err != nil || !ok {
		t.Fatalf("claim with the ACL user: %v, %v", ok, err)
	}
	if bs, err := good.Blocks(ctx, time.Now()); err != nil || len(bs) != 1 {
		t.Fatalf("blocks with the ACL user: %v, %v", bs, err)
	}
	if n, err := good.Unblock(ctx, ""); err != nil || n != 1 {
		t.Fatalf("unblock with the ACL user: %d, %v", n, err)
	}
	if err := good.Eval(ctx, q, make([]Answer, 1)); err != nil {
		t.Fatalf("with the ACL user: %v", err)
	}
	adm := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "callguard", Password: "s3cret", DB: 3, Protocol: 2})
	defer adm.Close()
	// The calls key, the blocks key and the claim.
	if keys, _, err := adm.Scan(ctx, 0, "callguard:*", 100).Result(); err != nil || len(keys) != 3 {
		t.Fatalf("database 3 holds %q, %v; want 3 keys", keys, err)
	}
	if bad := newTestRedis(t, srv.Addr(), RedisOptions{KeyPrefix: "other:", Username: "callguard", Password: "s3cret"}); bad.Eval(ctx, q, make([]Answer, 1)) == nil {
		t.Fatal("keys outside the user's pattern were written")
	}
	bad := newTestRedis(t, srv.Addr(), RedisOptions{Username: "callguard", Password: "wrong"})
	if err := bad.Eval(ctx, q, make([]Answer, 1)); err == nil {
		t.Fatal("a wrong password was accepted")
	}

	for _, o := range []RedisOptions{
		{HashKey: key, Namespace: "ns", Name: "p"},
		{Address: "x:1", Namespace: "ns", Name: "p"},
		{Address: "x:1", HashKey: key, Namespace: "ns"},
		{Address: "x:1", HashKey: key, Namespace: "ns", Name: "p", Database: -1},
	} {
		if _, err := NewRedis(o); err == nil {
			t.Errorf("NewRedis(%+v) accepted", o)
		}
	}
}

// FuzzParseBlock: a blocks hash value read from the server never panics,
// and what the script writes reads back.
func FuzzParseBlock(f *testing.F) {
	f.Add("1733300000000:1733303600000")
	f.Add("-1:x")
	f.Add(":")
	f.Fuzz(func(t *testing.T, v string) {
		since, until, ok := parseBlock(v)
		if ok {
			if s, u, ok2 := parseBlock(strconv.FormatInt(since, 10) + ":" + strconv.FormatInt(until, 10)); !ok2 || s != since || u != until {
				t.Fatalf("%q: %d:%d does not read back", v, since, until)
			}
		}
	})
}

// TestRedisWarm: a warmed store has its connections open and its script
// loaded, so the first batch is one pipeline of EVALSHA (no NOSCRIPT
// retry), and an empty server is left empty.
func TestRedisWarm(t *testing.T) {
	srv := redisserver.Start(t)
	r := newTestRedis(t, srv.Addr(), RedisOptions{})
	adm := admin(t, srv.Addr(), 0)
	ctx := context.Background()
	if err := r.Warm(ctx); err != nil {
		t.Fatal(err)
	}
	if n := adm.DBSize(ctx).Val(); n != 0 {
		t.Fatalf("warming wrote %d keys", n)
	}
	// The admin client's own connection is one of them.
	if clients := strings.Count(adm.ClientList(ctx).Val(), "\n"); clients != 2 {
		t.Fatalf("%d connections after warming, want 1", clients-1)
	}
	rt := &roundTrips{}
	r.client.AddHook(rt)
	q := []Query{{Caller: "+14255550100", Masked: "****0100", CallID: "c1", At: now(), Record: true, Keep: time.Hour, KeepCalls: 2,
		Steps: []Step{{Rule: "r", Static: true, Calls: 2, Within: time.Hour}}}}
	if err := r.Eval(ctx, q, make([]Answer, 1)); err != nil {
		t.Fatal(err)
	}
	if p := rt.pipelines.Load(); p != 1 {
		t.Fatalf("first batch after warming: %d pipelines, want 1", p)
	}
	srv.Stop()
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := r.Warm(wctx); err == nil {
		t.Fatal("warming a stopped server succeeded")
	}
}
