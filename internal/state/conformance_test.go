package state_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/state"
	"github.com/callguard/callguard/test/harness/redisserver"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

// kinds are the stores every conformance test runs against: process
// memory and a real redis-server. open makes a fresh, empty store.
type kind struct {
	name string
	open func(t *testing.T) state.Store
}

func kinds(t *testing.T) []kind {
	srv := redisserver.Start(t)
	n := 0
	return []kind{
		{"memory", func(t *testing.T) state.Store {
			m, err := state.NewMemory(testKey, 0)
			if err != nil {
				t.Fatal(err)
			}
			return m
		}},
		{"redis", func(t *testing.T) state.Store {
			n++
			return openRedis(t, srv, fmt.Sprintf("policy-%d", n))
		}},
	}
}

func openRedis(t testing.TB, srv *redisserver.Server, name string) *state.Redis {
	t.Helper()
	r, err := state.NewRedis(state.RedisOptions{
		Address: srv.Addr(), KeyPrefix: "callguard:", Namespace: "ns", Name: name, HashKey: testKey,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// base is the tests' time zero: now, to the millisecond, so that blocks
// the tests start are running when Unblock (which counts by the clock)
// lifts them.
func base() time.Time { return time.UnixMilli(time.Now().UnixMilli()) }

const caller = "+14255550123"

// call is one incoming call of a conformance case and the answer it must
// get.
type call struct {
	caller string // caller when empty
	id     string
	at     time.Duration // after base
	steps  []state.Step
	// keep and keepCalls default to 10m and 3.
	keep      time.Duration
	keepCalls int
	noRecord  bool

	step    int
	blocked bool
	until   time.Duration // after base; 0 for none
	started bool
}

var (
	repeat3  = []state.Step{{Rule: "repeat", Static: true, Calls: 3, Within: 10 * time.Minute}}
	repeat2b = func(static bool) []state.Step {
		return []state.Step{{Rule: "flood", Static: static, Calls: 2, Within: 10 * time.Minute, BlockFor: time.Hour}}
	}
	listed = func(static bool) []state.Step {
		return []state.Step{{Rule: "listed", Static: static, BlockFor: time.Hour}}
	}
)

func (c *call) query(t0 time.Time) state.Query {
	q := state.Query{
		Caller: c.caller, Masked: "****0123", CallID: c.id, At: t0.Add(c.at),
		Record: !c.noRecord, Keep: 10 * time.Minute, KeepCalls: 3, Steps: c.steps,
	}
	if q.Caller == "" {
		q.Caller = caller
	}
	if c.keep != 0 {
		q.Keep = c.keep
	}
	if c.keepCalls != 0 {
		q.KeepCalls = c.keepCalls
	}
	return q
}

func (c *call) want(t0 time.Time) state.Answer {
	a := state.Answer{Step: c.step, Blocked: c.blocked, Started: c.started}
	if c.until != 0 {
		a.Until = t0.Add(c.until)
	}
	return a
}

func sameAnswer(a, b state.Answer) bool {
	return a.Step == b.Step && a.Blocked == b.Blocked && a.Started == b.Started && a.Until.Equal(b.Until)
}

const (
	milli  = time.Millisecond
	minute = time.Minute
	hour   = time.Hour
)

var conformance = []struct {
	name  string
	calls []call
}{
	{"repeat holds at the calls-th call, not before", []call{
		{id: "a", at: 0, steps: repeat3, step: -1},
		{id: "b", at: 1 * minute, steps: repeat3, step: -1},
		{id: "c", at: 2 * minute, steps: repeat3, step: 0},
		{id: "d", at: 3 * minute, steps: repeat3, step: 0},
	}},
	{"a call exactly one window earlier is outside it", []call{
		{id: "a", at: 0, steps: repeat3, step: -1},
		{id: "b", at: 5 * minute, steps: repeat3, step: -1},
		{id: "c", at: 10 * minute, steps: repeat3, step: -1},
		{id: "d", at: 10*minute + milli, steps: repeat3, step: 0},
	}},
	{"a call one millisecond inside the window counts", []call{
		{id: "a", at: 0, steps: repeat3, step: -1},
		{id: "b", at: 5 * minute, steps: repeat3, step: -1},
		{id: "c", at: 10*minute - milli, steps: repeat3, step: 0},
	}},
	{"a redelivered call counts once", []call{
		{id: "a", at: 0, steps: repeat3, step: -1},
		{id: "a", at: 1 * minute, steps: repeat3, step: -1},
		{id: "a", at: 0, steps: repeat3, step: -1},
		{id: "b", at: 2 * minute, steps: repeat3, step: -1},
		{id: "c", at: 3 * minute, steps: repeat3, step: 0},
	}},
	{"other callers count apart", []call{
		{id: "a", at: 0, steps: repeat3, step: -1},
		{caller: "+14255550124", id: "b", at: 1 * minute, steps: repeat3, step: -1},
		{caller: "8:orgid:6a1f0c2e-3b52-4c1d-9a55-1f2b3c4d5e6f", id: "c", at: 1 * minute, steps: repeat3, step: -1},
		{id: "d", at: 2 * minute, steps: repeat3, step: -1},
		{id: "e", at: 3 * minute, steps: repeat3, step: 0},
	}},
	{"calls not recorded are not counted", []call{
		{id: "a", at: 0, steps: repeat3, step: -1, noRecord: true},
		{id: "b", at: 1 * minute, steps: repeat3, step: -1, noRecord: true},
		{id: "c", at: 2 * minute, steps: repeat3, step: -1},
		{id: "d", at: 3 * minute, steps: repeat3, step: -1},
	}},
	{"keep drops calls older than it", []call{
		{id: "a", at: 0, steps: repeat3, keep: 5 * minute, step: -1},
		{id: "b", at: 6 * minute, steps: repeat3, keep: 5 * minute, step: -1},
		{id: "c", at: 7 * minute, steps: repeat3, keep: 5 * minute, step: -1},
		{id: "d", at: 8 * minute, steps: repeat3, keep: 5 * minute, step: 0},
	}},
	{"keepCalls keeps only the newest calls", []call{
		{id: "a", at: 0, steps: repeat3, keepCalls: 2, step: -1},
		{id: "b", at: 1 * minute, steps: repeat3, keepCalls: 2, step: -1},
		{id: "c", at: 2 * minute, steps: repeat3, keepCalls: 2, step: -1},
		{id: "d", at: 3 * minute, steps: repeat3, keepCalls: 2, step: -1},
		// Trimmed earlier, a's redelivery counts as new: b is gone, c, d
		// and a remain.
		{id: "a", at: 4 * minute, steps: repeat3, step: 0},
	}},
	{"a block starts, holds without the match, extends and ends", []call{
		{id: "a", at: 0, steps: repeat2b(true), step: -1},
		{id: "b", at: 1 * minute, steps: repeat2b(true), step: 0, until: 1*minute + hour, started: true},
		{id: "c", at: 30 * minute, steps: repeat2b(false), step: 0, blocked: true, until: 30*minute + hour},
		{id: "d", at: 30*minute + hour - milli, steps: repeat2b(false), step: 0, blocked: true, until: 30*minute + 2*hour - milli},
		{id: "e", at: 30*minute + 2*hour - milli, steps: repeat2b(false), step: -1},
		{id: "f", at: 3 * hour, steps: repeat2b(true), step: -1},
		{id: "g", at: 3*hour + minute, steps: repeat2b(true), step: 0, until: 3*hour + minute + hour, started: true},
	}},
	{"a held block is never shortened", []call{
		{id: "a", at: 1 * minute, steps: listed(true), step: 0, until: 1*minute + hour, started: true},
		{id: "b", at: 0, steps: listed(false), step: 0, blocked: true, until: 1*minute + hour},
	}},
	{"a static rule's block: the block is the reason", []call{
		{id: "a", at: 0, steps: listed(true), step: 0, until: hour, started: true},
		{id: "b", at: 10 * minute, steps: listed(true), step: 0, blocked: true, until: 10*minute + hour},
	}},
	{"a block of a rule without blockFor any more still holds, unextended", []call{
		{id: "a", at: 0, steps: listed(true), step: 0, until: hour, started: true},
		{id: "b", at: 10 * minute, steps: []state.Step{{Rule: "listed"}}, step: 0, blocked: true, until: hour},
	}},
	{"earlier steps come first", []call{
		{id: "a", at: 0, steps: []state.Step{
			{Rule: "repeat", Static: true, Calls: 2, Within: 10 * minute},
			{Rule: "final", Static: true},
		}, step: 1},
		{id: "b", at: 1 * minute, steps: []state.Step{
			{Rule: "repeat", Static: true, Calls: 2, Within: 10 * minute},
			{Rule: "final", Static: true},
		}, step: 0},
	}},
	{"an earlier rule decides over a later block, and starts its own", []call{
		{id: "a", at: 0, steps: []state.Step{
			{Rule: "first", BlockFor: hour},
			{Rule: "second", Static: true, BlockFor: 30 * minute},
		}, step: 1, until: 30 * minute, started: true},
		{id: "b", at: 1 * minute, steps: []state.Step{
			{Rule: "first", Static: true, BlockFor: hour},
			{Rule: "second", Static: true, BlockFor: 30 * minute},
		}, step: 0, until: 1*minute + hour, started: true},
		{id: "c", at: 2 * minute, steps: []state.Step{
			{Rule: "first", BlockFor: hour},
			{Rule: "second", BlockFor: 30 * minute},
		}, step: 0, blocked: true, until: 2*minute + hour},
		{id: "d", at: 2 * hour, steps: []state.Step{
			{Rule: "first", BlockFor: hour},
			{Rule: "second", BlockFor: 30 * minute},
		}, step: -1},
	}},
	{"windows of several steps count apart", []call{
		{id: "a", at: 0, steps: []state.Step{
			{Rule: "short", Static: true, Calls: 2, Within: 1 * minute},
			{Rule: "long", Static: true, Calls: 2, Within: 10 * minute},
		}, step: -1},
		{id: "b", at: 5 * minute, steps: []state.Step{
			{Rule: "short", Static: true, Calls: 2, Within: 1 * minute},
			{Rule: "long", Static: true, Calls: 2, Within: 10 * minute},
		}, step: 1},
		{id: "c", at: 5*minute + 30*time.Second, steps: []state.Step{
			{Rule: "short", Static: true, Calls: 2, Within: 1 * minute},
			{Rule: "long", Static: true, Calls: 2, Within: 10 * minute},
		}, step: 0},
	}},
}

// TestConformance: the memory store and Redis give the same answers, the
// ones the Step semantics ask for, call after call.
func TestConformance(t *testing.T) {
	for _, k := range kinds(t) {
		t.Run(k.name, func(t *testing.T) {
			for _, tc := range conformance {
				t.Run(tc.name, func(t *testing.T) {
					st := k.open(t)
					t0 := base()
					for i, c := range tc.calls {
						qs := []state.Query{c.query(t0)}
						ans := make([]state.Answer, 1)
						if err := st.Eval(context.Background(), qs, ans); err != nil {
							t.Fatalf("call %d: %v", i, err)
						}
						if want := c.want(t0); !sameAnswer(ans[0], want) {
							t.Fatalf("call %d (%s at %s): got %+v, want %+v", i, c.id, c.at, ans[0], want)
						}
					}
				})
			}
		})
	}
}

// TestConformanceBatch: a batch answers each query as if asked alone, in
// order (a later query of the batch sees an earlier one's call).
func TestConformanceBatch(t *testing.T) {
	for _, k := range kinds(t) {
		t.Run(k.name, func(t *testing.T) {
			for _, tc := range conformance {
				t.Run(tc.name, func(t *testing.T) {
					st := k.open(t)
					t0 := base()
					qs := make([]state.Query, len(tc.calls))
					for i := range tc.calls {
						qs[i] = tc.calls[i].query(t0)
					}
					ans := make([]state.Answer, len(qs))
					if err := st.Eval(context.Background(), qs, ans); err != nil {
						t.Fatal(err)
					}
					for i := range tc.calls {
						if want := tc.calls[i].want(t0); !sameAnswer(ans[i], want) {
							t.Errorf("call %d: got %+v, want %+v", i, ans[i], want)
						}
					}
				})
			}
		})
	}
}

func eval(t *testing.T, st state.Store, qs ...state.Query) []state.Answer {
	t.Helper()
	ans := make([]state.Answer, len(qs))
	if err := st.Eval(context.Background(), qs, ans); err != nil {
		t.Fatal(err)
	}
	return ans
}

// TestBlocksAndUnblock: listings show each running block with the masked
// number, its rule, since and until; Unblock lifts one caller's or all.
func TestBlocksAndUnblock(t *testing.T) {
	for _, k := range kinds(t) {
		t.Run(k.name, func(t *testing.T) {
			st := k.open(t)
			ctx := context.Background()
			t0 := base()
			other := "+14255550999"
			q := func(who, masked, id string, at time.Duration, steps []state.Step) state.Query {
				return state.Query{Caller: who, Masked: masked, CallID: id, At: t0.Add(at), Steps: steps}
			}
			eval(t, st,
				q(caller, "****0123", "a", 0, listed(true)),
				q(caller, "****0123", "b", minute, []state.Step{{Rule: "second", Static: true, BlockFor: 2 * hour}}),
				q(other, "****0999", "c", 2*minute, listed(true)),
				// A block over before now is not listed.
				q("+14255550777", "****0777", "d", -2*hour, listed(true)),
			)
			got, err := st.Blocks(ctx, t0.Add(3*minute))
			if err != nil {
				t.Fatal(err)
			}
			want := []state.Block{
				{Masked: "****0123", Rule: "listed", Since: t0, Until: t0.Add(hour)},
				{Masked: "****0123", Rule: "second", Since: t0.Add(minute), Until: t0.Add(minute + 2*hour)},
				{Masked: "****0999", Rule: "listed", Since: t0.Add(2 * minute), Until: t0.Add(2*minute + hour)},
			}
			sameBlocks(t, got, want)
			// Past the first hour only the longer block runs.
			got, err = st.Blocks(ctx, t0.Add(hour+3*minute))
			if err != nil {
				t.Fatal(err)
			}
			sameBlocks(t, got, want[1:2])

			if n, err := st.Unblock(ctx, caller); err != nil || n != 2 {
				t.Fatalf("Unblock(caller) = %d, %v; want 2", n, err)
			}
			if n, err := st.Unblock(ctx, caller); err != nil || n != 0 {
				t.Fatalf("second Unblock(caller) = %d, %v; want 0", n, err)
			}
			got, err = st.Blocks(ctx, t0.Add(3*minute))
			if err != nil {
				t.Fatal(err)
			}
			sameBlocks(t, got, want[2:])
			// The lifted caller is decided by the rule's match again.
			if a := eval(t, st, q(caller, "****0123", "e", 4*minute, listed(false)))[0]; a.Step != -1 {
				t.Fatalf("unblocked caller: %+v, want no step", a)
			}
			eval(t, st, q(caller, "****0123", "f", 5*minute, listed(true)))
			if n, err := st.Unblock(ctx, ""); err != nil || n != 2 {
				t.Fatalf(`Unblock("") = %d, %v; want 2`, n, err)
			}
			got, err = st.Blocks(ctx, t0.Add(6*minute))
			if err != nil || len(got) != 0 {
				t.Fatalf("after Unblock(\"\"): %v, %v", got, err)
			}
		})
	}
}

func sameBlocks(t *testing.T, got, want []state.Block) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		g, w := got[i], want[i]
		ok = g.Masked == w.Masked && g.Rule == w.Rule && g.Since.Equal(w.Since) && g.Until.Equal(w.Until)
	}
	if !ok {
		t.Fatalf("blocks:\n got %v\nwant %v", got, want)
	}
}

// TestClaim: an id is claimed once while its claim lasts, then again.
func TestClaim(t *testing.T) {
	for _, k := range kinds(t) {
		t.Run(k.name, func(t *testing.T) {
			st := k.open(t)
			ctx := context.Background()
			claim := func(id string, ttl time.Duration, want bool) {
				t.Helper()
				ok, err := st.Claim(ctx, id, ttl)
				if err != nil || ok != want {
					t.Fatalf("Claim(%q) = %v, %v; want %v", id, ok, err, want)
				}
			}
			claim("call-1:play", time.Minute, true)
			claim("call-1:play", time.Minute, false)
			claim("call-2:play", time.Minute, true)
			claim("short", 50*time.Millisecond, true)
			claim("short", 50*time.Millisecond, false)
			time.Sleep(120 * time.Millisecond)
			claim("short", 50*time.Millisecond, true)
			claim("call-1:play", time.Minute, false)
		})
	}
}

// TestConcurrentEval: calls evaluated at once from many goroutines are
// each counted once.
func TestConcurrentEval(t *testing.T) {
	const workers, each = 8, 25
	for _, k := range kinds(t) {
		t.Run(k.name, func(t *testing.T) {
			st := k.open(t)
			t0 := base()
			steps := []state.Step{{Rule: "many", Static: true, Calls: workers*each + 1, Within: hour}}
			q := func(id string) state.Query {
				return state.Query{Caller: caller, CallID: id, At: t0, Record: true, Keep: hour, KeepCalls: 1000, Steps: steps}
			}
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				wg.Go(func() {
					for i := range each {
						ans := make([]state.Answer, 1)
						if err := st.Eval(context.Background(), []state.Query{q(fmt.Sprintf("%d-%d", w, i))}, ans); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if a := eval(t, st, q("last"))[0]; a.Step != 0 {
				t.Fatalf("call %d: %+v, want the step to hold", workers*each+1, a)
			}
			steps[0].Calls++
			if a := eval(t, st, q("last"))[0]; a.Step != -1 {
				t.Fatalf("redelivered last call counted again: %+v", a)
			}
		})
	}
}

// TestBadQueries: queries a store cannot answer are refused with an
// error naming what is wrong, by both stores alike, and change nothing.
func TestBadQueries(t *testing.T) {
	ok := state.Query{Caller: caller, CallID: "a", At: base(), Record: true, Keep: minute, KeepCalls: 2, Steps: repeat3}
	for _, k := range kinds(t) {
		t.Run(k.name, func(t *testing.T) {
			st := k.open(t)
			for _, tc := range []struct {
				name, want string
				edit       func(q *state.Query)
			}{
				{"no keep", "keep", func(q *state.Query) { q.Keep = 0 }},
				{"no keepCalls", "keepCalls", func(q *state.Query) { q.KeepCalls = 0 }},
				{"empty rule", `rule name ""`, func(q *state.Query) { q.Steps = []state.Step{{Static: true}} }},
				{"rule named #", `rule name "#"`, func(q *state.Query) { q.Steps = []state.Step{{Rule: "#", Static: true}} }},
				{"negative calls", "calls -1", func(q *state.Query) { q.Steps = []state.Step{{Rule: "r", Calls: -1}} }},
				{"no window", "within 0s", func(q *state.Query) { q.Steps = []state.Step{{Rule: "r", Calls: 2}} }},
				{"negative blockFor", "blockFor -1m0s", func(q *state.Query) { q.Steps = []state.Step{{Rule: "r", BlockFor: -minute}} }},
			} {
				q := ok
				tc.edit(&q)
				err := st.Eval(context.Background(), []state.Query{ok, q}, make([]state.Answer, 2))
				if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "query 1") {
					t.Errorf("%s: %v, want an error about query 1's %s", tc.name, err, tc.want)
				}
			}
			if err := st.Eval(context.Background(), []state.Query{ok}, make([]state.Answer, 0)); err == nil {
				t.Error("no room for the answers: no error")
			}
			// Nothing was recorded: this is the caller's first call.
			steps := []state.Step{{Rule: "r", Static: true, Calls: 2, Within: minute}}
			q := ok
			q.Steps = steps
			if a := eval(t, st, q)[0]; a.Step != -1 {
				t.Fatalf("a refused batch counted calls: %+v", a)
			}
		})
	}
}
