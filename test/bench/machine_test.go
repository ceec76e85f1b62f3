//go:build linux

package bench

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkMachineStalls measures the machine the latency benchmarks run
// on, not callguard: a thread pinned to each CPU spins reading the clock,
// and a gap of over a millisecond between two readings is time that CPU
// ran something else. A handler's p99 acknowledgement can be no better
// than what its CPU leaves it: on the 2-core VM of docs/benchmarks.md the
// sandbox's agent, a thread at nice -10, takes about 10 ms of one CPU in
// one piece every second whenever both are busy, and a backlog of
// acknowledgements waits behind it. Run it alone: b.N is milliseconds
// watched (-benchtime 10s watches for ten seconds).
//
// Per CPU: stalls of 5 ms or more per second, milliseconds stalled per
// second (gaps over 1 ms), and the longest stall.
func BenchmarkMachineStalls(b *testing.B) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		b.Fatal(err)
	}
	var cpus []int
	for c := range len(set) * 64 {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	watch := time.Duration(b.N) * time.Millisecond
	gaps := make([][]time.Duration, len(cpus))
	errs := make([]error, len(cpus))
	var wg sync.WaitGroup
	start := time.Now().Add(10 * time.Millisecond) // all spinning first
	for i, c := range cpus {
		wg.Go(func() {
			// Never unlocked: the thread, pinned, ends with the goroutine.
			runtime.LockOSThread()
			if errs[i] = unix.SchedSetaffinity(0, cpuSet(c)); errs[i] != nil {
				return
			}
			gaps[i] = spinGaps(start, watch)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			b.Fatalf("pin to CPU %d: %v", cpus[i], err)
		}
	}
	secs := watch.Seconds()
	for i, c := range cpus {
		var long float64
		var total, longest time.Duration
		for _, g := range gaps[i] {
			total += g
			longest = max(longest, g)
			if g >= 5*time.Millisecond {
				long++
			}
		}
		b.ReportMetric(long/secs, fmt.Sprintf("cpu%d-stalls-5ms/s", c))
		b.ReportMetric(float64(total.Microseconds())/1000/secs, fmt.Sprintf("cpu%d-stalled-ms/s", c))
		b.ReportMetric(float64(longest.Microseconds())/1000, fmt.Sprintf("cpu%d-longest-stall-ms", c))
	}
}

// spinGaps spins from start for d and returns every gap over a
// millisecond between two readings of the clock.
func spinGaps(start time.Time, d time.Duration) []time.Duration {
	for time.Now().Before(start) {
	}
	var gaps []time.Duration
	end := start.Add(d)
	prev := time.Now()
	for prev.Before(end) {
		now := time.Now()
		if gap := now.Sub(prev); gap > time.Millisecond {
			gaps = append(gaps, gap)
		}
		prev = now
	}
	return gaps
}
