package graph

import (
	"net/http"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"3", 3 * time.Second, true},
		{" 0 ", 0, true},
		{now.Add(2 * time.Second).Format(http.TimeFormat), 2 * time.Second, true},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0, true},
		{"-1", 0, false},
		{"soon", 0, false},
		{"", 0, false},
	} {
		got, ok := parseRetryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestBackoffDelayGrowsWithJitterAndCap(t *testing.T) {
	c := &Client{backoff: 100 * time.Millisecond, backoffMax: time.Second}
	for n, hi := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		hi *= time.Millisecond
		for range 50 {
			d := c.backoffDelay(n)
			if d < hi/2 || d > hi {
				t.Fatalf("backoffDelay(%d) = %v, want in [%v, %v]", n, d, hi/2, hi)
			}
		}
	}
	if d := c.backoffDelay(100); d > time.Second {
		t.Fatalf("backoffDelay(100) = %v beyond the cap", d)
	}
}

// TestLastSegment: the operation id PlayPrompt falls back on, from the
// Location of Graph's answer.
func TestLastSegment(t *testing.T) {
	for in, want := range map[string]string{
		"https://graph.microsoft.com/v1.0/communications/calls/c1/operations/0fe0623f": "0fe0623f",
		"https://graph.microsoft.com/v1.0/communications/calls/c1/operations/op/":      "op",
		"": "", "https://graph.microsoft.com": "", "%zz": "",
	} {
		if got := lastSegment(in); got != want {
			t.Errorf("lastSegment(%q) = %q, want %q", in, got, want)
		}
	}
}
