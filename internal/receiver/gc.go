package receiver

import (
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// GCPercent is the receiver's garbage collection target unless GOGC is
// set. Its live heap is small (the compiled policy and the call log, tens
// of MB) and its work latency-bound: at Go's default of 100 it collected
// every ~15 MB allocated, a few times a second at Graph's per-tenant rate,
// and the acknowledgements that waited behind a collection set the p99
// (docs/benchmarks.md). At 400 it collects a quarter as often, for a peak
// heap of about five times the live one.
const GCPercent = 400

// memoryLimitShare is the share of the container's memory limit given to
// the Go heap as a soft limit, so that the higher GCPercent collects
// harder instead of running out of memory near the limit.
const memoryLimitShare = 0.9

// cgroupMemoryFiles hold the container's memory limit (cgroup v2, v1).
var cgroupMemoryFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// TuneGC applies GCPercent unless GOGC is set, and a soft memory limit of
// 90 % of the container's unless GOMEMLIMIT is set. Call it once, early in
// main.
func TuneGC(log *slog.Logger) {
	percent, limit := gcSettings(os.Getenv, readCgroupLimit())
	if percent > 0 {
		debug.SetGCPercent(percent)
	}
	if limit > 0 {
		debug.SetMemoryLimit(limit)
	}
	if percent > 0 || limit > 0 {
		log.Info("garbage collection tuned", "gcPercent", percent, "memoryLimitBytes", limit)
	}
}

// gcSettings returns the GC percent and soft memory limit to set (0: leave
// as is) given the environment and the container's memory limit in bytes
// (0 when there is none).
func gcSettings(getenv func(string) string, containerLimit int64) (percent int, limit int64) {
	if getenv("GOGC") == "" {
		percent = GCPercent
	}
	if getenv("GOMEMLIMIT") == "" && containerLimit > 0 {
		limit = int64(float64(containerLimit) * memoryLimitShare)
	}
	return percent, limit
}

// readCgroupLimit returns the container's memory limit in bytes, or 0.
func readCgroupLimit() int64 {
	for _, f := range cgroupMemoryFiles {
		raw, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		return parseCgroupLimit(string(raw))
	}
	return 0
}

// parseCgroupLimit reads memory.max ("max" when unlimited) or
// memory.limit_in_bytes (a huge number when unlimited).
func parseCgroupLimit(s string) int64 {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n <= 0 || n >= 1<<60 {
		return 0
	}
	return n
}
