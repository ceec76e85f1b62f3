package policy

import (
	"reflect"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/state"
	"github.com/callguard/callguard/internal/telemetry"
)

func repeat(calls int32, within time.Duration) *v1alpha1.RepeatMatch {
	return &v1alpha1.RepeatMatch{Calls: calls, Within: metav1.Duration{Duration: within}}
}

func blockFor(r v1alpha1.Rule, d time.Duration) v1alpha1.Rule {
	r.BlockFor = &metav1.Duration{Duration: d}
	return r
}

func allow(name string, m v1alpha1.Match) v1alpha1.Rule {
	return v1alpha1.Rule{Name: name, Action: v1alpha1.ActionAllow, Match: m}
}

func guestCall(id string) *graph.Call {
	return callFrom(&graph.IdentitySet{Guest: &graph.Identity{ID: id}})
}

// statefulPolicy: an allowed number first, a repeat rule with a block, a
// blocking prefix rule, a stateless guest rule, and a repeat rule last.
func statefulPolicy(t testing.TB) *Policy {
	return mustCompile(t, testSource(
		allow("vip", callers(v1alpha1.CallerMatch{Numbers: []string{"+15550100001"}})),
		blockFor(reject("flood", callers(v1alpha1.CallerMatch{Repeat: repeat(3, 10*time.Minute)})), time.Hour),
		blockFor(reject("premium", callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"+1900"}})), 30*time.Minute),
		reject("guests", callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"guest"}})),
		reject("late", callers(v1alpha1.CallerMatch{Repeat: repeat(5, time.Hour), IdentityTypes: []v1alpha1.IdentityType{"phone", "guest"}})),
	))
}

func TestPrepareQuery(t *testing.T) {
	p := statefulPolicy(t)
	if !p.Stateful() {
		t.Fatal("Stateful() = false for a policy with repeat and blockFor")
	}
	flood := state.Step{Rule: "flood", Static: true, Calls: 3, Within: 10 * time.Minute, BlockFor: time.Hour}
	late := state.Step{Rule: "late", Static: true, Calls: 5, Within: time.Hour}
	tests := []struct {
		name           string
		call           *graph.Call
		caller, masked string
		steps          []state.Step
	}{
		// An earlier stateless rule that holds ends the steps: it decides
		// unless an earlier step holds, and the call is still counted.
		{"earlier rule holds", phoneCall("+15550100001"), "+15550100001", "****0001",
			[]state.Step{{Rule: "vip", Static: true}}},
		{"only stateful rules", phoneCall("+15550100000"), "+15550100000", "****0000",
			[]state.Step{flood, {Rule: "premium", BlockFor: 30 * time.Minute}, late}},
		{"the key is the normalized number", phoneCall("tel:+1 (555) 010-0000;ext=9"), "+15550100000", "****0000",
			[]state.Step{flood, {Rule: "premium", BlockFor: 30 * time.Minute}, late}},
		{"a blocking rule that holds decides", phoneCall("+19005550100"), "+19005550100", "****0100",
			[]state.Step{flood, {Rule: "premium", Static: true, BlockFor: 30 * time.Minute}}},
		{"identity id, lower-cased", guestCall("8A34A46B-3D17-4ADC-8DCE-000000000001"), "8a34a46b-3d17-4adc-8dce-000000000001", "8a34a46b-3d17-4adc-8dce-000000000001",
			[]state.Step{flood, {Rule: "premium", BlockFor: 30 * time.Minute}, {Rule: "guests", Static: true}}},
		{"a number that does not normalize keeps its id", phoneCall(" +1 425 CALL "), "+1 425 CALL", "****1 425 CALL",
			[]state.Step{flood, {Rule: "premium", BlockFor: 30 * time.Minute}, late}},
		{"static match is apart from repeat", callFrom(&graph.IdentitySet{User: &graph.Identity{ID: "u1"}}), "u1", "u1",
			[]state.Step{flood, {Rule: "premium", BlockFor: 30 * time.Minute}, {Rule: "late", Calls: 5, Within: time.Hour}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := state.Query{Steps: make([]state.Step, 0, 8)}
			backing := q.Steps[:1]
			d, ask := p.Prepare(tt.call, wed, "tenant-1", &q)
			if !ask {
				t.Fatalf("Prepare = %+v, false; want a query", d)
			}
			want := state.Query{Caller: tt.caller, Masked: tt.masked, CallID: "call-1", At: wed, Record: true,
				Keep: time.Hour, KeepCalls: 5, Steps: tt.steps}
			if !reflect.DeepEqual(q, want) {
				t.Errorf("query =\n%+v\nwant\n%+v", q, want)
			}
			if &q.Steps[0] != &backing[0] {
				t.Error("Prepare did not reuse the steps' backing array")
			}
		})
	}
}

// TestResolve maps the store's answers back to rules.
func TestResolve(t *testing.T) {
	p := statefulPolicy(t)
	tests := []struct {
		name    string
		call    *graph.Call
		ans     state.Answer
		rule    string
		action  v1alpha1.Action
		blocked bool
	}{
		{"no step holds: the default", phoneCall("+15550100000"), state.Answer{Step: -1}, "", v1alpha1.ActionAllow, false},
		{"repeat in an earlier rule", phoneCall("+15550100000"), state.Answer{Step: 0}, "flood", v1alpha1.ActionReject, false},
		{"repeat in a later rule", phoneCall("+15550100000"), state.Answer{Step: 2}, "late", v1alpha1.ActionReject, false},
		{"the block overrides the match", phoneCall("+15550100000"), state.Answer{Step: 1, Blocked: true, Until: wed.Add(30 * time.Minute)},
			"premium", v1alpha1.ActionReject, true},
		{"an earlier rule still comes first", phoneCall("+15550100001"), state.Answer{Step: 0}, "vip", v1alpha1.ActionAllow, false},
		{"the deciding rule", phoneCall("+19005550100"), state.Answer{Step: 1, Started: true}, "premium", v1alpha1.ActionReject, false},
		{"a guest", guestCall("g1"), state.Answer{Step: 2}, "guests", v1alpha1.ActionReject, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var q state.Query
			if _, ask := p.Prepare(tt.call, wed, "tenant-1", &q); !ask {
				t.Fatal("Prepare asked nothing")
			}
			d := p.Resolve(tt.call, "tenant-1", &q, tt.ans)
			if d.Rule != tt.rule || d.Action != tt.action || d.Blocked != tt.blocked || d.CallID != "call-1" || d.Tenant != "tenant-1" {
				t.Errorf("Resolve = %+v, want rule %q action %s blocked %v", d, tt.rule, tt.action, tt.blocked)
			}
		})
	}
}

// TestPrepareWithoutTheStore: callers without a key, and calls the store
// has no say in, are decided at once.
func TestPrepareWithoutTheStore(t *testing.T) {
	anon := callFrom(&graph.IdentitySet{Phone: &graph.Identity{ID: "anonymous"}})
	encrypted := callFrom(&graph.IdentitySet{Encrypted: &graph.Identity{ID: "e1"}})
	// Only blocks, no repeat: calls are not counted.
	blocks := mustCompile(t, testSource(
		allow("vip", callers(v1alpha1.CallerMatch{Numbers: []string{"+15550100001"}})),
		blockFor(reject("premium", callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"+1900"}})), time.Hour),
		reject("guests", callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"guest"}})),
	))
	anonBlock := mustCompile(t, testSource(
		reject("flood", callers(v1alpha1.CallerMatch{Repeat: repeat(2, time.Hour)})),
		blockFor(reject("no-anonymous", callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"anonymous", "encrypted"}})), time.Hour),
	))
	stateless := mustCompile(t, testSource(reject("premium", callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"+1900"}}))))
	tests := []struct {
		name string
		p    *Policy
		call *graph.Call
		rule string
	}{
		{"anonymous: repeat never holds", statefulPolicy(t), anon, ""},
		{"encrypted: repeat never holds", statefulPolicy(t), encrypted, ""},
		{"anonymous: never blocked, decided by its rule", anonBlock, anon, "no-anonymous"},
		{"encrypted: decided by its rule", anonBlock, encrypted, "no-anonymous"},
		{"unknown without an id", statefulPolicy(t), callFrom(&graph.IdentitySet{OtherMembers: 1}), ""},
		{"a stateless rule decides before any block", blocks, phoneCall("+15550100001"), "vip"},
		{"stateless policy", stateless, phoneCall("+19005550100"), "premium"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := state.Query{Steps: make([]state.Step, 0, 4)}
			d, ask := tt.p.Prepare(tt.call, wed, "", &q)
			if ask {
				t.Fatalf("Prepare asked %+v, want a decision", q)
			}
			if d.Rule != tt.rule {
				t.Errorf("Prepare = %+v, want rule %q", d, tt.rule)
			}
			if want := tt.p.DecideIn(tt.call, wed, ""); d != want {
				t.Errorf("Prepare = %+v, DecideIn = %+v", d, want)
			}
			if len(q.Steps) != 0 || cap(q.Steps) != 4 {
				t.Errorf("steps = %d of %d, want the array back empty", len(q.Steps), cap(q.Steps))
			}
		})
	}
	if stateless.Stateful() {
		t.Error("Stateful() = true for a policy without repeat or blockFor")
	}
	// The blocking rule asks when it may hold through a block.
	var q state.Query
	if _, ask := blocks.Prepare(phoneCall("+15550100000"), wed, "", &q); !ask || q.Record || q.Keep != 0 ||
		!reflect.DeepEqual(q.Steps, []state.Step{{Rule: "premium", BlockFor: time.Hour}}) {
		t.Errorf("Prepare = %v, %+v; want the blocking step, not recorded", ask, q)
	}
}

// TestOffline decides when the store fails, both ways.
func TestOffline(t *testing.T) {
	p := statefulPolicy(t)
	tests := []struct {
		name      string
		call      *graph.Call
		onError   v1alpha1.StateOnError
		rule      string
		blockedOK bool
	}{
		{"Ignore: repeat does not hold", phoneCall("+15550100000"), v1alpha1.StateOnErrorIgnore, "", false},
		{"Match: the first repeat holds", phoneCall("+15550100000"), v1alpha1.StateOnErrorMatch, "flood", false},
		{"Ignore: the static rule decides", phoneCall("+19005550100"), v1alpha1.StateOnErrorIgnore, "premium", false},
		{"Match: an earlier repeat comes first", phoneCall("+19005550100"), v1alpha1.StateOnErrorMatch, "flood", false},
		{"Ignore: earlier stateless rule", phoneCall("+15550100001"), v1alpha1.StateOnErrorIgnore, "vip", false},
		{"Match: earlier stateless rule", phoneCall("+15550100001"), v1alpha1.StateOnErrorMatch, "vip", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := testSource()
			src.Spec = *p.Spec().DeepCopy()
			src.Spec.State = &v1alpha1.StateSpec{OnError: tt.onError}
			p := mustCompile(t, src)
			var q state.Query
			if _, ask := p.Prepare(tt.call, wed, "", &q); !ask {
				t.Fatal("Prepare asked nothing")
			}
			d := p.Resolve(tt.call, "", &q, state.Offline(&q, p.OnError() == v1alpha1.StateOnErrorMatch))
			if d.Rule != tt.rule || d.Blocked {
				t.Errorf("Resolve(Offline) = %+v, want rule %q, not blocked", d, tt.rule)
			}
		})
	}
	if got := p.OnError(); got != v1alpha1.StateOnErrorIgnore {
		t.Errorf("OnError() without state = %q, want Ignore", got)
	}
}

// TestDecideInIgnoresState: without a store, a repeat rule never holds.
func TestDecideInIgnoresState(t *testing.T) {
	p := statefulPolicy(t)
	for _, c := range []struct {
		call *graph.Call
		rule string
	}{{phoneCall("+15550100000"), ""}, {phoneCall("+19005550100"), "premium"}, {guestCall("g"), "guests"}} {
		if d := p.DecideIn(c.call, wed, ""); d.Rule != c.rule || d.Blocked {
			t.Errorf("DecideIn(%s) = %+v, want rule %q", c.call.Source.Identity.Phone, d, c.rule)
		}
	}
}

// TestResolveOtherVersion: a query of another version of the policy is
// decided again.
func TestResolveOtherVersion(t *testing.T) {
	p := statefulPolicy(t)
	q := state.Query{At: wed, Steps: []state.Step{{Rule: "gone"}}}
	if d := p.Resolve(phoneCall("+19005550100"), "", &q, state.Answer{Step: 0}); d.Rule != "premium" {
		t.Errorf("Resolve = %+v, want DecideIn's premium", d)
	}
}

func TestPrepareDoesNotAllocate(t *testing.T) {
	p := statefulPolicy(t)
	q := state.Query{Steps: make([]state.Step, 0, 8)}
	for _, call := range []*graph.Call{phoneCall("+15550100000"), phoneCall("+19005550100"), guestCall("8a34a46b-3d17-4adc-8dce-000000000001")} {
		if n := testing.AllocsPerRun(100, func() { p.Prepare(call, wed, "", &q) }); n != 0 {
			t.Errorf("Prepare(%+v) allocates %v times", call.Source.Identity, n)
		}
	}
}

func TestMaskedIsMaskNumber(t *testing.T) {
	p := statefulPolicy(t)
	for _, n := range []string{"+15550100000", "+15550109999", "+1555010", "+15550104321", "+123", "+1"} {
		var q state.Query
		if _, ask := p.Prepare(phoneCall(n), wed, "", &q); !ask {
			t.Fatalf("Prepare(%s) asked nothing", n)
		}
		if want := telemetry.MaskNumber(n); q.Masked != want {
			t.Errorf("Masked(%s) = %q, want %q", n, q.Masked, want)
		}
	}
}

func TestStateWarnings(t *testing.T) {
	p := mustCompile(t, testSource(
		reject("flood", callers(v1alpha1.CallerMatch{Repeat: repeat(3, time.Hour)})),
		reject("anonymous-flood", callers(v1alpha1.CallerMatch{Repeat: repeat(3, time.Hour), IdentityTypes: []v1alpha1.IdentityType{"anonymous", "encrypted"}})),
	))
	// A repeat condition alone is not an empty match: the rule after it is
	// reachable.
	want := []FieldError{{"spec.rules[1].match.callers.repeat",
		"anonymous and encrypted callers have no key to count calls by, so this rule never matches"}}
	if got := p.Warnings(); !reflect.DeepEqual(got, want) {
		t.Errorf("warnings = %v, want %v", got, want)
	}
}
