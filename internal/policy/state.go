package policy

import (
	"strings"
	"sync"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/state"
	"github.com/callguard/callguard/internal/telemetry"
)

// Stateful reports whether the policy's decisions may need a state store:
// it has a callers.repeat condition or a blockFor.
func (p *Policy) Stateful() bool { return p.stateful }

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
//
// The steps are every rule with a repeat condition or a blockFor, in order,
// up to and including the first rule whose match holds without a repeat
// condition (which decides when no earlier step does); rules after it are
// not asked about. The store has no say when the caller has no key
// (anonymous and encrypted callers, and unknown ones without an id: their
// repeat conditions never hold and they are never blocked), or when the
// policy counts no calls and no step can block.
//
// Prepare allocates nothing but q.Steps' growth, unless a rule needs what
// DecideIn allocates for, the caller's number is not in E.164 form or its
// id has upper-case letters (the key is made), or the number has fewer
// than four digits (the masked form is made).
func (p *Policy) Prepare(call *graph.Call, at time.Time, tenant string, q *state.Query) (Decision, bool) {
	if !p.stateful {
		return p.DecideIn(call, at, tenant), false
	}
	ev := evalState{p: p, call: call, at: at, callTenant: tenant}
	ev.read()
	key := ev.callerKey()
	steps := q.Steps[:0]
	final := &p.dflt
	ask := p.record
	for i := range p.rules {
		r := &p.rules[i]
		static := r.staticMatch(&ev)
		decides := static && r.repeatCalls == 0
		if key != "" && (r.stateful() || decides) {
			steps = append(steps, state.Step{Rule: r.name, Static: static, Calls: r.repeatCalls, Within: r.repeatWithin, BlockFor: r.blockFor})
			ask = ask || r.blockFor > 0
		}
		if decides {
			final = r
			break
		}
	}
	q.Steps = steps
	if key == "" || !ask {
		q.Steps = steps[:0]
		return p.decision(call, final, tenant), false
	}
	q.Caller = key
	q.Masked = ev.maskedKey(key)
	q.CallID = callID(call)
	q.At = at
	q.Record = p.record
	q.Keep, q.KeepCalls = p.keep, p.keepCalls
	return Decision{}, true
}

// Resolve decides the call q was prepared for from the store's answer to
// it (or state.Offline's). A step that names no rule of this policy (q
// was prepared by another version) is decided again by DecideIn.
func (p *Policy) Resolve(call *graph.Call, tenant string, q *state.Query, a state.Answer) Decision {
	if a.Step < 0 || a.Step >= len(q.Steps) {
		return p.decision(call, &p.dflt, tenant)
	}
	i, ok := p.ruleIndex[q.Steps[a.Step].Rule]
	if !ok {
		return p.DecideIn(call, q.At, tenant)
	}
	d := p.decision(call, &p.rules[i], tenant)
	d.Blocked = a.Blocked
	return d
}

// callerKey is what the store knows the caller by: the normalized number of
// a phone caller (the id as given, trimmed, when it does not normalize),
// the lower-cased id of other callers, "" for callers without one.
func (ev *evalState) callerKey() string {
	switch {
	case ev.typ == v1alpha1.IdentityAnonymous || ev.typ == v1alpha1.IdentityEncrypted || ev.who == nil:
		return ""
	case ev.typ == v1alpha1.IdentityPhone && ev.numOK:
		return ev.number()
	case ev.typ == v1alpha1.IdentityPhone:
		return strings.TrimSpace(ev.who.ID)
	}
	// Object ids are GUIDs, which Graph sends in either case.
	return strings.ToLower(strings.TrimSpace(ev.who.ID))
}

// maskedKey is what block listings show of the caller: a phone number
// masked to its last four digits as telemetry.MaskNumber does, an id as it
// is (an object id is no phone number).
func (ev *evalState) maskedKey(key string) string {
	if ev.typ != v1alpha1.IdentityPhone {
		return key
	}
	if ev.numOK && len(key) >= 5 {
		// The normalized number ends in four digits: the masked form is cut
		// out of the table rather than made.
		n := int(key[len(key)-4]-'0')*1000 + int(key[len(key)-3]-'0')*100 + int(key[len(key)-2]-'0')*10 + int(key[len(key)-1]-'0')
		const w = len(maskStars) + 4
		return maskTable()[n*w : (n+1)*w]
	}
	return telemetry.MaskNumber(key)
}

const maskStars = "****"

// maskTable holds "****0000****0001…****9999": every masked form, made on
// the first masked call (80 kB).
var maskTable = sync.OnceValue(func() string {
	var b strings.Builder
	b.Grow(10000 * (len(maskStars) + 4))
	for n := range 10000 {
		b.WriteString(maskStars)
		b.WriteByte(byte('0' + n/1000))
		b.WriteByte(byte('0' + n/100%10))
		b.WriteByte(byte('0' + n/10%10))
		b.WriteByte(byte('0' + n%10))
	}
	return b.String()
})
