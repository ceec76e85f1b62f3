//go:build linux

package bench

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// The benchmark gives the handler under test a core of its own, as a pod
// with one CPU has, and the emulator and load generator the others: on a
// two-core machine they need about one core between them, and sharing
// both cores with them, the handler waited for one behind their threads.

func cpuSet(cpus ...int) *unix.CPUSet {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	return &set
}

// pinProcess moves every thread of this process to set; threads started
// later inherit it from the thread that starts them. It repeats until a
// pass finds every thread already there, in case one started meanwhile.
func pinProcess(set *unix.CPUSet) error {
	for range 10 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		moved := false
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			var cur unix.CPUSet
			if err := unix.SchedGetaffinity(tid, &cur); err != nil {
				continue // the thread ended
			}
			if cur == *set {
				continue
			}
			if err := unix.SchedSetaffinity(tid, set); err != nil {
				return fmt.Errorf("thread %d: %w", tid, err)
			}
			moved = true
		}
		if !moved {
			return nil
		}
	}
	return fmt.Errorf("threads kept starting while pinning")
}

// splitCPUs picks the handler's CPU (the last this process may use) and
// the rest for the driver; ok is false with fewer than two CPUs.
func splitCPUs() (handler int, driver *unix.CPUSet, all *unix.CPUSet, ok bool) {
	all = new(unix.CPUSet)
	if err := unix.SchedGetaffinity(0, all); err != nil || all.Count() < 2 {
		return 0, nil, nil, false
	}
	driver = new(unix.CPUSet)
	*driver = *all
	for c := len(all) * 64; c >= 0; c-- {
		if all.IsSet(c) {
			handler = c
			break
		}
	}
	driver.Clear(handler)
	return handler, driver, all, true
}
