package policy

import (
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/state"
)

// Stateful reports whether the policy's decisions may need a state store:
// it has a callers.repeat condition or a blockFor.
func (p *Policy) Stateful() bool { return false }

// OnError is the policy's state.onError.
func (p *Policy) OnError() v1alpha1.StateOnError {
	if p.spec.State == nil {
		return v1alpha1.DefaultStateOnError
	}
	return p.spec.State.OnError
}

// Prepare decides a call as DecideIn does when the store has no say in it,
// and reports false. Otherwise it fills q (its Steps reuse q's backing
// array) and reports true: Resolve then decides from the store's answer.
func (p *Policy) Prepare(call *graph.Call, at time.Time, tenant string, q *state.Query) (Decision, bool) {
	return p.DecideIn(call, at, tenant), false
}

// Resolve decides the call q was prepared for from the store's answer to
// it (or state.Offline's).
func (p *Policy) Resolve(call *graph.Call, tenant string, q *state.Query, a state.Answer) Decision {
	return p.DecideIn(call, q.At, tenant)
}
