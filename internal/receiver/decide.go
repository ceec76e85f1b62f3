package receiver

import (
	"slices"
	"sync"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
	"github.com/callguard/callguard/internal/state"
)

// plan is what to do with one notification batch: the calls decided, and
// which notifications the upstream bot may see.
type plan struct {
	decided []decided
	// forward[i] tells whether batch.Value[i] goes upstream.
	forward    []bool
	anyForward bool
	// duplicates are the ids of calls already decided (delivered again).
	duplicates []string
	// withheld counts the notifications kept from upstream because their
	// call was rejected or redirected here.
	withheld int
}

// decided is an incoming call and its decision.
type decided struct {
	n *graph.Notification
	d policy.Decision
	// at is when it was decided, for the decision-to-Graph latency.
	at time.Time
	// blockStarted reports that the decision put the caller under a
	// temporary block it was not under.
	blockStarted bool
}

// acts reports whether the decision is carried out on Graph.
func (c *decided) acts(dryRun bool) bool {
	return !dryRun && c.d.Action != v1alpha1.ActionAllow
}

// stateEval answers the store queries of a batch's calls in at most one
// round trip.
// It always answers: when the store cannot, it answers as state.onError
// says (state.Offline).
type stateEval func(qs []state.Query, ans []state.Answer)

// decideBatch decides the batch's incoming calls by p and marks what may go
// upstream; calls remembers the calls decided (duplicate deliveries are
// decided once). It sends nothing: acting and forwarding follow from the
// plan, so what is decided and what is forwarded come from one reading.
// tenant is the tenant the batch arrived in (match.tenants). st, set when
// the policy keeps state, answers for the calls the store has a say in.
func decideBatch(batch *graph.Notifications, p *policy.Policy, dryRun bool, calls *callLog, arrival time.Time, tenant string, st stateEval) plan {
	pl := plan{forward: make([]bool, len(batch.Value))}
	var pre []prepared
	if st != nil {
		sc := stateScratches.Get().(*stateScratch)
		defer sc.release()
		prepareBatch(batch, p, calls, arrival, tenant, st, sc)
		pre = sc.pre
	}
	for i := range batch.Value {
		n := &batch.Value[i]
		id := n.CallID()
		if !n.IsIncomingCall() {
			// Follow-ups of a call decided here (and anything that is not a
			// call, such as participant lists) go upstream only when it was
			// allowed. A call unknown here (decided over 10 minutes ago, by
			// another replica, or placed by the upstream bot itself) was
			// never refused by this receiver, so its news passes.
			action, known := calls.action(id, time.Now())
			pl.forward[i] = dryRun || !known || action == v1alpha1.ActionAllow
			pl.anyForward = pl.anyForward || pl.forward[i]
			if !pl.forward[i] {
				pl.withheld++
			}
			continue
		}
		var c decided
		if pre != nil {
			if pre[i].duplicate {
				pl.duplicates = append(pl.duplicates, id)
				continue
			}
			c = decided{n: n, d: pre[i].d, blockStarted: pre[i].blockStarted}
		} else {
			if !calls.claim(id, arrival) {
				pl.duplicates = append(pl.duplicates, id)
				continue
			}
			c = decided{n: n, d: p.DecideIn(n.ResourceData, arrival, tenant)}
		}
		calls.decided(id, c.d.Action)
		if c.d.Action == v1alpha1.ActionAllow || dryRun {
			pl.forward[i] = true
			pl.anyForward = true
		}
		c.at = time.Now()
		pl.decided = append(pl.decided, c)
	}
	return pl
}

// prepared is an incoming call decided with the store's answer.
type prepared struct {
	d            policy.Decision
	duplicate    bool
	blockStarted bool
}

// stateScratch is what deciding a batch with the store uses, reused from
// batch to batch (the queries' steps included).
type stateScratch struct {
	pre []prepared
	qs  []state.Query
	at  []int // batch indexes of qs
	ans []state.Answer
}

var stateScratches = sync.Pool{New: func() any { return new(stateScratch) }}

// release gives sc back; what it held of the batch (decisions share the
// policy's redirect and announce specs, queries name callers) is dropped.
func (sc *stateScratch) release() {
	clear(sc.pre)
	clear(sc.ans)
	for i := range sc.qs {
		sc.qs[i] = state.Query{Steps: sc.qs[i].Steps[:0]}
	}
	stateScratches.Put(sc)
}

// prepareBatch claims and decides the batch's incoming calls ahead of the
// rest of decideBatch, so that the calls the store has a say in are asked
// about together; sc.pre[i] is batch.Value[i]'s. A duplicate is not asked
// about: it is not counted again.
func prepareBatch(batch *graph.Notifications, p *policy.Policy, calls *callLog, arrival time.Time, tenant string, st stateEval, sc *stateScratch) {
	sc.pre = slices.Grow(sc.pre[:0], len(batch.Value))[:len(batch.Value)]
	pre := sc.pre
	qs, at := sc.qs[:0], sc.at[:0]
	for i := range batch.Value {
		n := &batch.Value[i]
		if !n.IsIncomingCall() {
			continue
		}
		if !calls.claim(n.CallID(), arrival) {
			pre[i].duplicate = true
			continue
		}
		// A query given back (the store had no say), or left by an
		// earlier batch, lends its steps' array to the next.
		if len(qs) < cap(qs) {
			qs = qs[:len(qs)+1]
		} else {
			qs = append(qs, state.Query{})
		}
		q := &qs[len(qs)-1]
		*q = state.Query{Steps: q.Steps[:0]}
		d, ask := p.Prepare(n.ResourceData, arrival, tenant, q)
		if !ask {
			pre[i].d = d
			qs = qs[:len(qs)-1]
			continue
		}
		at = append(at, i)
	}
	sc.qs, sc.at = qs, at
	if len(qs) == 0 {
		return
	}
	sc.ans = slices.Grow(sc.ans[:0], len(qs))[:len(qs)]
	ans := sc.ans
	st(qs, ans)
	for k, i := range at {
		pre[i].d = p.Resolve(batch.Value[i].ResourceData, tenant, &qs[k], ans[k])
		pre[i].blockStarted = ans[k].Started
	}
}
