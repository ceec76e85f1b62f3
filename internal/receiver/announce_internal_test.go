package receiver

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/graph"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

const (
	testPolicy = "telephony/hotline"
	testCall   = "e71f0300-9c1f-4d99-b5f4-2722e877d497"
)

func answeredToken(at time.Time) *announceToken {
	return &announceToken{Step: stepAnswered, Policy: testPolicy, CallID: testCall,
		PromptSHA256: strings.Repeat("ab", 32), MaxSeconds: 30, AnsweredAt: at.UnixMilli()}
}

func TestTokenRoundTrip(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name string
		tok  *announceToken
	}{
		{"answered", answeredToken(now)},
		{"answered url", &announceToken{Step: stepAnswered, Policy: testPolicy, CallID: testCall,
			PromptURL: "https://prompts.example.com/a%20b.wav?x=1", MaxSeconds: 120, AnsweredAt: now.UnixMilli()}},
		{"played", &announceToken{Step: stepPlayed, Policy: policyDigest(testPolicy), CallID: testCall,
			MaxSeconds: 120, AnsweredAt: now.UnixMilli()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := signToken(testKey, tt.tok)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(s, "v1.") {
				t.Errorf("token %q lacks its version", s)
			}
			if tt.tok.Step == stepPlayed && len(s) > graph.MaxClientContext {
				t.Errorf("played token of %d characters, over Graph's %d", len(s), graph.MaxClientContext)
			}
			got, err := verifyToken(testKey, s, tt.tok.Step, testPolicy, testCall, now.Add(10*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			if *got != *tt.tok {
				t.Errorf("verified %+v, signed %+v", got, tt.tok)
			}
		})
	}
}

func TestTokenRefused(t *testing.T) {
	now := time.Now()
	good, err := signToken(testKey, answeredToken(now))
	if err != nil {
		t.Fatal(err)
	}
	played, err := signToken(testKey, &announceToken{Step: stepPlayed, Policy: policyDigest(testPolicy),
		CallID: testCall, MaxSeconds: 30, AnsweredAt: now.UnixMilli()})
	if err != nil {
		t.Fatal(err)
	}
	other, err := signToken([]byte("another policy's key............"), answeredToken(now))
	if err != nil {
		t.Fatal(err)
	}
	otherPolicy := answeredToken(now)
	otherPolicy.Policy = "telephony/other"
	otherPolicyTok, _ := signToken(testKey, otherPolicy)
	future, _ := signToken(testKey, answeredToken(now.Add(time.Hour)))
	zeroMax := answeredToken(now)
	zeroMax.MaxSeconds = 0
	zeroMaxTok, _ := signToken(testKey, zeroMax)
	// A payload that flips a byte keeps its old signature.
	tampered := good[:5] + string(good[5]^1) + good[6:]

	tests := []struct {
		name   string
		token  string
		step   string
		callID string
		at     time.Time
		reason string
	}{
		{"empty", "", stepAnswered, testCall, now, "malformed"},
		{"no version", strings.TrimPrefix(good, "v1."), stepAnswered, testCall, now, "malformed"},
		{"other version", "v2." + strings.TrimPrefix(good, "v1."), stepAnswered, testCall, now, "malformed"},
		{"no signature", good[:strings.LastIndexByte(good, '.')], stepAnswered, testCall, now, "malformed"},
		{"short signature", good[:len(good)-2], stepAnswered, testCall, now, "malformed"},
		{"tampered", tampered, stepAnswered, testCall, now, "signature"},
		{"other key", other, stepAnswered, testCall, now, "signature"},
		{"too long", good + strings.Repeat("A", maxTokenLen), stepAnswered, testCall, now, "malformed"},
		{"other step", played, stepAnswered, testCall, now, "mismatch"},
		{"other call", good, stepAnswered, "another-call", now, "mismatch"},
		{"other policy", otherPolicyTok, stepAnswered, testCall, now, "mismatch"},
		{"expired", good, stepAnswered, testCall, now.Add(30*time.Second + tokenSlack + time.Second), "expired"},
		{"from the future", future, stepAnswered, testCall, now, "expired"},
		{"no maxSeconds", zeroMaxTok, stepAnswered, testCall, now, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := verifyToken(testKey, tt.token, tt.step, testPolicy, tt.callID, tt.at)
			if err == nil {
				t.Fatalf("accepted %+v", tok)
			}
			if got := tokenRefusal(err); got != tt.reason {
				t.Errorf("refused for %q (%v), want %q", got, err, tt.reason)
			}
		})
	}
}

// FuzzVerifyToken: a token read from a notification is untrusted bytes;
// whatever they are, verification refuses them or returns a token of the
// step, policy and call asked for, never panics.
func FuzzVerifyToken(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	good, _ := signToken(testKey, answeredToken(now))
	f.Add(good)
	f.Add("v1.")
	f.Add("v1..")
	f.Add("v1.e30.AAAAAAAAAAAAAAAAAAAAAA")
	f.Add(good[:len(good)-4] + "AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := verifyToken(testKey, s, stepAnswered, testPolicy, testCall, now)
		if err != nil {
			if tok != nil {
				t.Fatal("a refused token was returned")
			}
			return
		}
		if tok.Step != stepAnswered || tok.Policy != testPolicy || tok.CallID != testCall {
			t.Fatalf("accepted %+v", tok)
		}
	})
}

func TestCheckCallbackURL(t *testing.T) {
	for _, s := range []string{"", "https://calls.example.com/api/calls", "http://127.0.0.1:8080/api/calls"} {
		if err := CheckCallbackURL(s); err != nil {
			t.Errorf("%q refused: %v", s, err)
		}
	}
	for _, s := range []string{"calls.example.com/api/calls", "ftp://x/y", "https:///api/calls",
		"https://x/api/calls?a=b", "https://x/api/calls#f", "https://u:p@x/api/calls", "https://x/%zz"} {
		if err := CheckCallbackURL(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestBackstops(t *testing.T) {
	a := newAnnouncer(newMetrics(func() float64 { return 0 }), func(d time.Duration) time.Duration { return d / 1000 })
	fired := make(chan string, 10)
	// Fires after 5 ms (5 s scaled).
	a.arm("fires", 5*time.Second, func() { fired <- "fires" })
	// Disarmed before it fires: the caller hung up, or this replica did.
	a.arm("ended", time.Hour, func() { fired <- "ended" })
	// Armed twice (an answer retried): fires once.
	a.arm("twice", 5*time.Second, func() { fired <- "twice" })
	a.arm("twice", 5*time.Second, func() { fired <- "twice" })
	if got := a.inProgress(); got != 3 {
		t.Fatalf("%d calls in progress, want 3", got)
	}
	if !a.disarm("ended") {
		t.Error("disarm of an armed call reported none")
	}
	if a.disarm("unknown") {
		t.Error("disarm of a call never armed here reported one")
	}
	got := map[string]int{}
	timeout := time.After(5 * time.Second)
	for len(got) < 2 {
		select {
		case id := <-fired:
			got[id]++
		case <-timeout:
			t.Fatalf("fired %v, want fires and twice", got)
		}
	}
	select {
	case id := <-fired:
		got[id]++
	case <-time.After(50 * time.Millisecond):
	}
	if got["fires"] != 1 || got["twice"] != 1 || got["ended"] != 0 {
		t.Errorf("fired %v, want fires and twice once each", got)
	}
	// Nothing is kept of a call once it fired or ended.
	if n := a.inProgress(); n != 0 {
		t.Errorf("%d calls still held after they ended", n)
	}
	a.arm("left", time.Hour, func() { fired <- "left" })
	a.stopAll()
	if n := a.inProgress(); n != 0 {
		t.Errorf("%d calls held after stopAll", n)
	}
}

// BenchmarkBackstopMemory: what a replica keeps for each call it answered
// until the call ends (its backstop timer and map entry), measured as live
// heap after a collection with 200 calls armed.
func BenchmarkBackstopMemory(b *testing.B) {
	const calls = 200
	ids := make([]string, calls)
	for i := range ids {
		ids[i] = fmt.Sprintf("%08x-9c1f-4d99-b5f4-2722e877d497", i)
	}
	var perCall float64
	for range b.N {
		// A fresh announcer each time: its map starts empty.
		a := &announcer{timers: map[string]*time.Timer{}}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for _, id := range ids {
			a.arm(id, time.Hour, func() {})
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perCall = (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / calls
		a.stopAll()
		// Stopped timers leave the runtime's timer heap lazily, and keep
		// their announcer alive until then: let them go before the next
		// measurement.
		time.Sleep(20 * time.Millisecond)
	}
	b.ReportMetric(perCall, "live-bytes/call")
}
