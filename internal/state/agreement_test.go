package state_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/state"
	"github.com/callguard/callguard/test/harness/redisserver"
)

// randomCalls is a seeded sequence of calls of a few callers as one
// receiver sees them (times never go back; several calls may share a
// millisecond), with redeliveries, calls not recorded, and steps drawn
// from a few rules with and without repeat conditions and blocks.
func randomCalls(seed uint64, n int, t0 time.Time) []state.Query {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	pick := func(xs ...time.Duration) time.Duration { return xs[rng.IntN(len(xs))] }
	var qs []state.Query
	at := t0
	ids := map[string][]string{}
	for i := range n {
		at = at.Add(pick(0, time.Millisecond, 10*time.Second, 40*time.Second, 3*time.Minute))
		who := fmt.Sprintf("+1425555%04d", rng.IntN(4))
		id := fmt.Sprintf("call-%d", i)
		if prev := ids[who]; len(prev) > 0 && rng.IntN(5) == 0 {
			id = prev[rng.IntN(len(prev))]
		}
		ids[who] = append(ids[who], id)
		var steps []state.Step
		for _, rule := range []string{"a", "b", "c"} {
			if rng.IntN(3) == 0 {
				continue
			}
			s := state.Step{Rule: rule, Static: rng.IntN(3) > 0}
			if rng.IntN(2) == 0 {
				s.Calls, s.Within = 2+rng.IntN(2), pick(time.Minute, 5*time.Minute)
			}
			if rng.IntN(2) == 0 {
				s.BlockFor = pick(2*time.Minute, 10*time.Minute)
			}
			steps = append(steps, s)
		}
		qs = append(qs, state.Query{
			Caller: who, Masked: "****" + who[len(who)-4:], CallID: id, At: at,
			Record: rng.IntN(10) > 0, Keep: 5 * time.Minute, KeepCalls: 3, Steps: steps,
		})
	}
	return qs
}

// TestRandomAgreement: the Lua script and the memory store give the same
// answers to long random sequences of calls, one call at a time and in
// batches, and list the same blocks after.
func TestRandomAgreement(t *testing.T) {
	srv := redisserver.Start(t)
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			t0 := base()
			qs := randomCalls(seed, 1500, t0)
			mem, err := state.NewMemory(testKey, 0)
			if err != nil {
				t.Fatal(err)
			}
			red := openRedis(t, srv, fmt.Sprint("random-", seed))
			batched := openRedis(t, srv, fmt.Sprint("random-batched-", seed))
			ctx := context.Background()
			held, blocked, started := 0, 0, 0
			for i := 0; i < len(qs); {
				// Batches of 1..40 calls for the batched store.
				k := min(len(qs)-i, 1+i%40)
				bans := make([]state.Answer, k)
				if err := batched.Eval(ctx, qs[i:i+k], bans); err != nil {
					t.Fatal(err)
				}
				for j := range k {
					ma, ra := make([]state.Answer, 1), make([]state.Answer, 1)
					if err := mem.Eval(ctx, qs[i+j:i+j+1], ma); err != nil {
						t.Fatal(err)
					}
					if err := red.Eval(ctx, qs[i+j:i+j+1], ra); err != nil {
						t.Fatal(err)
					}
					if !sameAnswer(ma[0], ra[0]) || !sameAnswer(ma[0], bans[j]) {
						t.Fatalf("call %d %+v:\nmemory  %+v\nredis   %+v\nbatched %+v", i+j, qs[i+j], ma[0], ra[0], bans[j])
					}
					if ma[0].Step >= 0 {
						held++
					}
					if ma[0].Blocked {
						blocked++
					}
					if ma[0].Started {
						started++
					}
				}
				i += k
			}
			// The sequence exercises the store: steps hold, and not always;
			// blocks start and hold.
			if held == 0 || held == len(qs) || blocked == 0 || started == 0 {
				t.Fatalf("of %d calls %d had a step hold, %d under a block, %d starting one", len(qs), held, blocked, started)
			}
			t.Logf("of %d calls %d had a step hold, %d under a block, %d starting one", len(qs), held, blocked, started)
			end := qs[len(qs)-1].At
			mb, _ := mem.Blocks(ctx, end)
			rb, err := red.Blocks(ctx, end)
			if err != nil {
				t.Fatal(err)
			}
			sameBlocks(t, rb, mb)
		})
	}
}
