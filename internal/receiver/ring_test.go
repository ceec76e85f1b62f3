package receiver

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestDecisionRingKeepsTheLastThousandInOrder(t *testing.T) {
	var r decisionRing
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for i := range 1500 {
		r.add(t0.Add(time.Duration(i)*time.Millisecond), func(b []byte) []byte { return fmt.Appendf(b, "%d", i) })
	}
	for _, tt := range []struct {
		since       time.Time
		first, last string
		n           int
	}{
		{time.Time{}, "500", "1499", 1000},
		{t0.Add(1400 * time.Millisecond), "1401", "1499", 99},
		{t0.Add(time.Hour), "", "", 0},
		// Past 2262 and before 1678 a time has no int64 nanosecond count:
		// compared as times, the far future keeps nothing, the far past all.
		{time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC), "", "", 0},
		{time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), "", "", 0},
		{time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC), "500", "1499", 1000},
		{time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC), "500", "1499", 1000},
	} {
		var buf bytes.Buffer
		if err := r.writeSince(&buf, tt.since); err != nil {
			t.Fatal(err)
		}
		lines := strings.Fields(buf.String())
		if len(lines) != tt.n || (tt.n > 0 && (lines[0] != tt.first || lines[len(lines)-1] != tt.last)) {
			t.Errorf("since %v: %d lines from %v to %v, want %d from %s to %s", tt.since, len(lines),
				first(lines), last(lines), tt.n, tt.first, tt.last)
		}
	}
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

func last(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[len(s)-1]
}
