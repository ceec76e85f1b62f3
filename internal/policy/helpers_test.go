package policy

import (
	"testing"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
)

const (
	testAppID    = "6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10"
	testTenantID = "0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55"
)

// wed is a Wednesday noon, UTC.
var wed = time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC)

func testSpec(rules ...v1alpha1.Rule) v1alpha1.CallPolicySpec {
	return v1alpha1.CallPolicySpec{
		Bot: v1alpha1.BotSpec{
			AppID:       testAppID,
			TenantID:    testTenantID,
			Credentials: v1alpha1.Credentials{WorkloadIdentity: &v1alpha1.WorkloadIdentity{}},
		},
		Rules: rules,
	}
}

func testSource(rules ...v1alpha1.Rule) *Source {
	return &Source{Namespace: "telephony", Name: "hotline", Spec: testSpec(rules...)}
}

func mustCompile(t testing.TB, src *Source) *Policy {
	t.Helper()
	p, err := Compile(src)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return p
}

// reject is a Reject rule with the given match.
func reject(name string, m v1alpha1.Match) v1alpha1.Rule {
	return v1alpha1.Rule{Name: name, Action: v1alpha1.ActionReject, Reason: v1alpha1.ReasonBusy, Match: m}
}

func callers(cm v1alpha1.CallerMatch) v1alpha1.Match { return v1alpha1.Match{Callers: &cm} }

func callFrom(set *graph.IdentitySet, modalities ...string) *graph.Call {
	if len(modalities) == 0 {
		modalities = []string{"audio"}
	}
	return &graph.Call{
		ID:                  "call-1",
		State:               graph.StateIncoming,
		Direction:           "incoming",
		Source:              &graph.ParticipantInfo{Identity: set},
		RequestedModalities: modalities,
	}
}

func phoneCall(number string, modalities ...string) *graph.Call {
	return callFrom(&graph.IdentitySet{Phone: &graph.Identity{ID: number}}, modalities...)
}
