package receiver

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
)

// decidePolicy rejects +14255550001 and allows everyone else.
func decidePolicy(t *testing.T, mode v1alpha1.Mode) *policy.Policy {
	t.Helper()
	p, err := policy.Compile(&policy.Source{Namespace: "telephony", Name: "hotline", Spec: v1alpha1.CallPolicySpec{
		Mode: mode,
		Bot: v1alpha1.BotSpec{
			AppID:       "6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10",
			TenantID:    "0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55",
			Credentials: v1alpha1.Credentials{WorkloadIdentity: &v1alpha1.WorkloadIdentity{}},
		},
		Rules: []v1alpha1.Rule{{
			Name:   "robocaller",
			Action: v1alpha1.ActionReject,
			Reason: v1alpha1.ReasonBusy,
			Match:  v1alpha1.Match{Callers: &v1alpha1.CallerMatch{Numbers: []string{"+14255550001"}}},
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func incoming(id, number string) string {
	return `{"changeType":"created","resourceUrl":"/communications/calls/` + id + `","resourceData":{"@odata.type":"#microsoft.graph.call","id":"` + id +
		`","state":"incoming","source":{"identity":{"phone":{"id":"` + number + `"}}}}}`
}

func TestDecideBatch(t *testing.T) {
	participants := `{"changeType":"updated","resourceUrl":"/communications/calls/%s/participants","resourceData":[{"@odata.type":"#microsoft.graph.participant","id":"p1"}]}`
	sprintf := func(f, id string) string { return strings.ReplaceAll(f, "%s", id) }
	tests := []struct {
		name string
		// before are batches decided first, on the same call log.
		before  []string
		values  []string
		dryRun  bool
		actions []v1alpha1.Action // of the calls decided, in order
		forward []bool
	}{{
		name:    "participant list beside an incoming call",
		values:  []string{sprintf(participants, "other"), incoming("c1", "+14255550001")},
		actions: []v1alpha1.Action{v1alpha1.ActionReject},
		forward: []bool{true, false},
	}, {
		name:    "news of a rejected call stays here, of an allowed one passes",
		before:  []string{incoming("bad", "+14255550001"), incoming("good", "+14255550100")},
		values:  []string{sprintf(participants, "bad"), sprintf(participants, "good")},
		forward: []bool{false, true},
	}, {
		name:    "a call delivered again is decided once",
		before:  []string{incoming("c2", "+14255550001")},
		values:  []string{incoming("c2", "+14255550001"), incoming("c3", "+14255550100")},
		actions: []v1alpha1.Action{v1alpha1.ActionAllow},
		forward: []bool{false, true},
	}, {
		name:    "dry run passes everything on",
		values:  []string{incoming("c4", "+14255550001"), sprintf(participants, "c4")},
		dryRun:  true,
		actions: []v1alpha1.Action{v1alpha1.ActionReject},
		forward: []bool{true, true},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := decidePolicy(t, v1alpha1.ModeEnforce)
			calls := newCallLog(DedupeWindow, 100)
			now := time.Now()
			for _, b := range tt.before {
				decideBatch(mustDecode(t, b), p, false, calls, now, "", nil)
			}
			pl := decideBatch(mustDecode(t, tt.values...), p, tt.dryRun, calls, now, "", nil)
			var got []v1alpha1.Action
			for _, d := range pl.decided {
				got = append(got, d.d.Action)
			}
			if !slices.Equal(got, tt.actions) {
				t.Errorf("decided %v, want %v", got, tt.actions)
			}
			if !slices.Equal(pl.forward, tt.forward) {
				t.Errorf("forward %v, want %v", pl.forward, tt.forward)
			}
		})
	}
}

func mustDecode(t *testing.T, values ...string) *graph.Notifications {
	t.Helper()
	body := `{"value":[`
	for i, v := range values {
		if i > 0 {
			body += ","
		}
		body += v
	}
	n, err := graph.DecodeNotifications([]byte(body + `]}`))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestUpstreamBodyKeepsWhatWasRead: the upstream bot gets the kept
// notifications byte for byte as read, and everything around them.
func TestUpstreamBodyKeepsWhatWasRead(t *testing.T) {
	body := []byte(`{"@odata.type":"#microsoft.graph.commsNotifications", "value" : [ {"changeType":"created","x":{"b":1,"a":2}} ,
 {"changeType":"deleted","resourceUrl":"/communications/calls/z"}, {"changeType":"updated","resourceData":[1, 2]} ], "extra": true}`)
	batch, err := graph.DecodeNotifications(body)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		keep []bool
		want string
	}{
		{[]bool{true, true, true}, string(body)},
		{[]bool{true, false, true}, `{"@odata.type":"#microsoft.graph.commsNotifications", "value" : [{"changeType":"created","x":{"b":1,"a":2}},{"changeType":"updated","resourceData":[1, 2]}], "extra": true}`},
		{[]bool{false, true, false}, `{"@odata.type":"#microsoft.graph.commsNotifications", "value" : [{"changeType":"deleted","resourceUrl":"/communications/calls/z"}], "extra": true}`},
	} {
		if got := upstreamBody(body, batch, tt.keep); string(got) != tt.want {
			t.Errorf("keep %v:\n got %s\nwant %s", tt.keep, got, tt.want)
		}
	}
}
