package state

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/callguard/callguard/test/harness/redisserver"
)

// benchSteps is a typical stateful policy: a repeat rule that blocks, then
// the rule that decides otherwise.
var benchSteps = []Step{
	{Rule: "floods", Static: true, Calls: 5, Within: time.Hour, BlockFor: time.Hour},
	{Rule: "allow-rest", Static: true},
}

// benchBatch fills qs with calls of distinct callers first..first+len-1,
// call ids unique per round.
func benchBatch(qs []Query, first, round int, at time.Time, keep time.Duration, keepCalls int, steps []Step) {
	for i := range qs {
		c := first + i
		qs[i] = Query{
			Caller: "+1" + strconv.Itoa(2000000000+c), Masked: "****", CallID: strconv.Itoa(round) + "-" + strconv.Itoa(c),
			At: at, Record: true, Keep: keep, KeepCalls: keepCalls, Steps: steps,
		}
	}
}

// benchBatchSizes are BenchmarkEval's batches: one call (a Graph
// notification usually carries one) and 50.
var benchBatchSizes = []int{1, 50}

// BenchmarkEval: one batch of calls of distinct callers (out of 10,000)
// per op, through Redis on loopback and in memory; ns/query is the cost
// of one call, cpu-ns/query this process's CPU for it (user and system:
// the client's side of a round trip, not the server's) and allocs/op
// what the garbage collector sees of it.
func BenchmarkEval(b *testing.B) {
	srv := redisserver.Start(b)
	r := newTestRedis(b, srv.Addr(), RedisOptions{KeyPrefix: "callguard:", Namespace: "default", Name: "block-floods"})
	m, err := NewMemory(key, 0)
	if err != nil {
		b.Fatal(err)
	}
	for _, st := range []struct {
		name string
		s    Store
	}{{"redis", r}, {"memory", m}} {
		for _, size := range benchBatchSizes {
			b.Run(st.name+"/batch="+strconv.Itoa(size), func(b *testing.B) {
				qs := make([]Query, size)
				ans := make([]Answer, size)
				ctx := context.Background()
				at := now()
				b.ReportAllocs()
				cpu0 := processCPU(b)
				b.ResetTimer()
				for i := 0; b.Loop(); i++ {
					first := i * size % 10_000
					benchBatch(qs, first, i, at.Add(time.Duration(i)*time.Millisecond), time.Hour, 5, benchSteps)
					if err := st.s.Eval(ctx, qs, ans); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				queries := float64(b.N * size)
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/queries, "ns/query")
				b.ReportMetric(float64((processCPU(b)-cpu0).Nanoseconds())/queries, "cpu-ns/query")
			})
		}
	}
}

// BenchmarkEvalConcurrent: one-call batches from 16 goroutines at once, as
// a receiver's workers ask when notifications arrive faster than round
// trips (a backlog); round-trips/query is how many round trips the Redis
// store made per call.
func BenchmarkEvalConcurrent(b *testing.B) {
	srv := redisserver.Start(b)
	var trips atomic.Int64
	r := newTestRedis(b, srv.Addr(), RedisOptions{KeyPrefix: "callguard:", Namespace: "default", Name: "block-floods",
		RoundTrip: func() { trips.Add(1) }})
	if err := r.Warm(context.Background()); err != nil {
		b.Fatal(err)
	}
	at := now()
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(16 / runtime.GOMAXPROCS(0))
	trips0, cpu0 := trips.Load(), processCPU(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		qs, ans := make([]Query, 1), make([]Answer, 1)
		for pb.Next() {
			i := int(next.Add(1))
			benchBatch(qs, i%10_000, i, at.Add(time.Duration(i)*time.Millisecond), time.Hour, 5, benchSteps)
			if err := r.Eval(context.Background(), qs, ans); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(trips.Load()-trips0)/float64(b.N), "round-trips/query")
	b.ReportMetric(float64((processCPU(b)-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/query")
}

// processCPU is this process's user and system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRedisConnect: a store's first connection (Warm dials it), as a
// receiver makes it again after a round trip the budget cut off; B/op is
// what a store and its dial allocate (go-redis's pipeline connections read
// and write through 128 KiB buffers each way).
func BenchmarkRedisConnect(b *testing.B) {
	srv := redisserver.Start(b)
	b.ReportAllocs()
	for b.Loop() {
		r, err := NewRedis(RedisOptions{Address: srv.Addr(), Name: "policy", HashKey: key})
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Warm(context.Background()); err != nil {
			b.Fatal(err)
		}
		if err := r.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// million is the callers of the memory benchmarks.
const million = 1_000_000

// sizes are the loads of the memory benchmarks: distinct callers, each
// with calls counted calls (a second apart) in a 24 h window.
var sizes = []struct {
	name           string
	callers, calls int
}{
	{"callers=1M/calls=1", million, 1},
	{"callers=200k/calls=5", 200_000, 5},
}

// loadSteps count calls and block nobody in the memory benchmarks.
var loadSteps = []Step{
	{Rule: "floods", Static: true, Calls: 10, Within: 24 * time.Hour},
	{Rule: "allow-rest", Static: true},
}

// load evaluates calls calls of each of n callers, in batches of 1,000
// from 4 goroutines, with a 24 h window.
func load(b *testing.B, st Store, n, calls int, at time.Time) {
	const batch, workers = 1000, 4
	for round := range calls {
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				qs := make([]Query, batch)
				ans := make([]Answer, batch)
				for first := w * batch; first < n; first += workers * batch {
					k := min(batch, n-first)
					benchBatch(qs[:k], first, round, at.Add(time.Duration(round)*time.Second), 24*time.Hour, 10, loadSteps)
					if err := st.Eval(context.Background(), qs[:k], ans[:k]); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
}

// BenchmarkRedisMillionCallers: the server's used_memory for distinct
// callers in a 24 h window (run with -benchtime 1x: an op is the whole
// load).
func BenchmarkRedisMillionCallers(b *testing.B) {
	for _, sz := range sizes {
		b.Run(sz.name, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				srv := redisserver.Start(b)
				r := newTestRedis(b, srv.Addr(), RedisOptions{KeyPrefix: "callguard:", Namespace: "default", Name: "block-floods"})
				adm := admin(b, srv.Addr(), 0)
				used := func() float64 {
					info := adm.Info(context.Background(), "memory").Val()
					for _, line := range strings.Split(info, "\r\n") {
						if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
							n, _ := strconv.ParseFloat(v, 64)
							return n
						}
					}
					b.Fatal("no used_memory in INFO memory")
					return 0
				}
				before := used()
				b.StartTimer()
				start := time.Now()
				load(b, r, sz.callers, sz.calls, now())
				took := time.Since(start)
				b.StopTimer()
				after := used()
				if keys := adm.DBSize(context.Background()).Val(); keys != int64(sz.callers) {
					b.Fatalf("%d keys for %d callers", keys, sz.callers)
				}
				b.ReportMetric((after-before)/float64(sz.callers), "bytes/caller")
				b.ReportMetric((after-before)/(1<<20), "used-MiB")
				b.ReportMetric(float64(sz.callers*sz.calls)/took.Seconds(), "calls/s")
				srv.Stop()
				b.StartTimer()
			}
		})
	}
}

// heap is the live heap after a collection.
func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkMemoryMillionCallers: the memory store's heap for distinct
// callers in a 24 h window, and at its bound: 1,500,000 callers into a
// store of DefaultMaxCallers (run with -benchtime 1x).
func BenchmarkMemoryMillionCallers(b *testing.B) {
	cases := append(sizes[:len(sizes):len(sizes)], struct {
		name           string
		callers, calls int
	}{"callers=1.5M-into-bound/calls=1", million + million/2, 1})
	for _, sz := range cases {
		b.Run(sz.name, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				before := heap()
				m, err := NewMemory(key, 0)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				load(b, m, sz.callers, sz.calls, now())
				b.StopTimer()
				after := heap()
				if len(m.idx) != min(sz.callers, DefaultMaxCallers) {
					b.Fatalf("%d callers remembered", len(m.idx))
				}
				b.ReportMetric(float64(after-before)/float64(len(m.idx)), "bytes/caller")
				b.ReportMetric(float64(after-before)/(1<<20), "heap-MiB")
				b.ReportMetric(float64(len(m.idx)), "callers")
				runtime.KeepAlive(m)
				b.StartTimer()
			}
		})
	}
}
