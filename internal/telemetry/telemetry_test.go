package telemetry

import (
	"encoding/json"
	"testing"
	"time"
)

// TestDecisionRoundTrip: what AppendJSON writes, encoding/json reads back
// into the same Decision, so the receiver's lines and the plugin's reading
// of them cannot drift apart.
func TestDecisionRoundTrip(t *testing.T) {
	at := time.Date(2026, 12, 4, 10, 11, 12, 130000000, time.UTC)
	for _, d := range []Decision{
		{Time: at, CallID: "c1", CallChainID: "cc", CallerType: "phone", CallerNumber: "****0143",
			Rule: "robocallers", Action: "Reject", Reason: "busy", Blocked: true, Mode: "Enforce", Tenant: "3c1f8a2e-5b7d-4e9a-8f60-1d2c3b4a5e6f", Result: "success",
			Policy: "sha256:04e3", LatencyMs: 4.625},
		{Time: at, CallID: "c2", CallerType: "anonymous", Action: "Allow", Mode: "DryRun", Result: "forwarded",
			Error: "upstream: 502", LatencyMs: 0},
		// Network strings: quotes, control characters, HTML, U+2028.
		{Time: at, CallID: "\"\\\n\x01<tag>&\u2028", CallChainID: "é", Rule: "r", Action: "Redirect", LatencyMs: 15000},
	} {
		line := d.AppendJSON(nil)
		var got Decision
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		if !got.Time.Equal(d.Time) {
			t.Errorf("time %v, want %v", got.Time, d.Time)
		}
		got.Time = d.Time
		if got != d {
			t.Errorf("read back %+v\nwant %+v\nfrom %s", got, d, line)
		}
		// The same members as encoding/json writes, so readers of either
		// see one shape.
		want, _ := json.Marshal(d)
		var a, b map[string]any
		_ = json.Unmarshal(line, &a)
		_ = json.Unmarshal(want, &b)
		if len(a) != len(b) {
			t.Errorf("members %v, encoding/json writes %v", a, b)
		}
	}
}

func TestDecisionAppendJSONAllocs(t *testing.T) {
	d := Decision{Time: time.Now(), CallID: "0a1b", CallerType: "phone", Rule: "r", Action: "Reject", Mode: "Enforce", LatencyMs: 1.5}
	buf := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(100, func() { buf = d.AppendJSON(buf[:0]) }); n != 0 {
		t.Errorf("AppendJSON allocates %v times, want 0", n)
	}
}

func TestMaskNumber(t *testing.T) {
	for in, want := range map[string]string{
		"+14255550100": "****0100",
		"+12":          "****12",
		"":             "",
		"anonymous":    "****",
	} {
		if got := MaskNumber(in); got != want {
			t.Errorf("MaskNumber(%q) = %q, want %q", in, got, want)
		}
	}
}
