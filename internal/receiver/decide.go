package receiver

import (
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
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
}

// acts reports whether the decision is carried out on Graph.
func (c *decided) acts(dryRun bool) bool {
	return !dryRun && c.d.Action != v1alpha1.ActionAllow
}

// decideBatch decides the batch's incoming calls by p and marks what may go
// upstream; calls remembers the calls decided (duplicate deliveries are
// decided once). It sends nothing: acting and forwarding follow from the
// plan, so what is decided and what is forwarded come from one reading.
// tenant is the tenant the batch arrived in (match.tenants).
func decideBatch(batch *graph.Notifications, p *policy.Policy, dryRun bool, calls *callLog, arrival time.Time, tenant string) plan {
	pl := plan{forward: make([]bool, len(batch.Value))}
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
		if !calls.claim(id, arrival) {
			pl.duplicates = append(pl.duplicates, id)
			continue
		}
		d := p.DecideIn(n.ResourceData, arrival, tenant)
		calls.decided(id, d.Action)
		if d.Action == v1alpha1.ActionAllow || dryRun {
			pl.forward[i] = true
			pl.anyForward = true
		}
		pl.decided = append(pl.decided, decided{n: n, d: d, at: time.Now()})
	}
	return pl
}
