package receiver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	azpolicy "github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/state"
)

// The work after acknowledging: batch workers decide each batch and hand
// its Graph actions to action workers, so the calls of a big batch are
// acted on concurrently; every Graph action holds one of Workers slots, so
// no more than Workers are in flight whatever the batches.

func (s *Server) work() {
	defer s.workers.Done()
	for {
		select {
		case j := <-s.queue:
			s.process(j)
		case <-s.stop:
			// Finish what was acknowledged before stopping.
			for {
				select {
				case j := <-s.queue:
					s.process(j)
				default:
					return
				}
			}
		}
	}
}

// outcome is what became of a decision: its result label (Graph's answer
// to an action, the upstream bot's to an allowed call) and any error.
type outcome struct {
	result string
	err    error
}

// Results of a decision, as logged and served at /decisions.
const (
	resultSuccess       = "success"
	resultAlreadyDone   = "already_done"
	resultFailed        = "failed"
	resultDeadline      = "deadline"
	resultForwarded     = "forwarded"
	resultForwardFailed = "forward_failed"
	resultNone          = "none"
	resultDryRun        = "dry_run"
)

// actTask is one Graph action of a batch handed to an action worker.
type actTask struct {
	ctx    context.Context
	rt     *policyVersion
	tenant string
	c      *decided
	out    *outcome
	done   *sync.WaitGroup
}

func (s *Server) actWork() {
	defer s.actWorkers.Done()
	for t := range s.actions {
		*t.out = s.act(t.ctx, t.rt, t.tenant, t.c)
		t.done.Done()
	}
}

// process decides the batch's incoming calls, acts on them, and forwards
// what the upstream bot may see.
func (s *Server) process(j *job) {
	// The deadline is Graph's, not ours: it does not move for shutdown.
	ctx, cancel := context.WithDeadline(context.Background(), j.arrival.Add(s.cfg.Deadline))
	defer cancel()
	dryRun := j.rt.spec.Mode == v1alpha1.ModeDryRun
	tenant := j.tenant

	// Only a policy that keeps state asks the store: the others decide as
	// fast as ever, with nothing allocated for it. DryRun asks too: it
	// decides as Enforce would, so its counts and blocks are Enforce's.
	var st stateEval
	if j.rt.stateful {
		st = func(qs []state.Query, ans []state.Answer) { s.evalState(ctx, j.rt, qs, ans) }
	}
	pl := decideBatch(j.batch, j.rt.policy, dryRun, s.calls, j.arrival, tenant, st)
	// Notifications of announced calls: never upstream; some ask for the
	// next step (announce.go).
	var steps []followUp
	if !dryRun {
		steps = s.announceFollowUps(j, &pl)
	}
	for _, id := range pl.duplicates {
		s.metrics.duplicates.Inc()
		s.log.Info("duplicate notification ignored", "callId", id)
	}
	s.metrics.withheld.Add(float64(pl.withheld))
	for i := range pl.decided {
		d := &pl.decided[i].d
		s.metrics.decisionsBy.with(d.Rule, string(d.Action), string(d.Mode)).Inc()
		if pl.decided[i].blockStarted {
			s.metrics.blocksStarted.WithLabelValues(d.Rule).Inc()
		}
	}

	var fwdErr error
	var wg sync.WaitGroup
	if pl.anyForward && j.rt.upstream != "" {
		wg.Go(func() { fwdErr = s.forward(ctx, j, pl.forward) })
	}
	results := make([]outcome, len(pl.decided))
	// The first action is carried out here, the others by action workers.
	first := -1
	for i := range pl.decided {
		c := &pl.decided[i]
		if !c.acts(dryRun) {
			continue
		}
		if first < 0 {
			first = i
			continue
		}
		wg.Add(1)
		s.actions <- actTask{ctx: ctx, rt: j.rt, tenant: tenant, c: c, out: &results[i], done: &wg}
	}
	if first >= 0 {
		results[first] = s.act(ctx, j.rt, tenant, &pl.decided[first])
	}
	wg.Wait()
	s.followUps(ctx, j, steps)
	for i := range pl.decided {
		c := &pl.decided[i]
		if !c.acts(dryRun) {
			results[i] = forwardOutcome(dryRun, j.rt.upstream != "", fwdErr)
		}
		s.logDecision(c, j, tenant, results[i])
	}
}

// forwardOutcome is the outcome of a decision not carried out on Graph.
func forwardOutcome(dryRun, upstream bool, err error) outcome {
	switch {
	case dryRun:
		return outcome{resultDryRun, err}
	case !upstream:
		return outcome{resultNone, nil}
	case err != nil:
		return outcome{resultForwardFailed, err}
	}
	return outcome{resultForwarded, nil}
}

// act carries a Reject or Redirect out on Graph, with an app token of the
// tenant the call arrived in.
func (s *Server) act(ctx context.Context, rt *policyVersion, tenant string, c *decided) outcome {
	select {
	case s.graphSlots <- struct{}{}:
	case <-ctx.Done():
		s.metrics.actionsBy.with(opOf(c.d.Action), resultDeadline).Inc()
		return outcome{resultDeadline, fmt.Errorf("waiting for a Graph slot: %w", ctx.Err())}
	}
	defer func() { <-s.graphSlots }()
	callID, d := c.n.CallID(), c.d
	tc, err := rt.clients.get(tenant)
	if err == nil {
		// A token request the tenant's authority refused (no consent
		// there) fails this call at once; one that may succeed later is
		// retried by the Graph client within the deadline. The request is
		// bounded as one of the client's attempts is, so that an authority
		// that hangs once leaves time for another try.
		tctx, cancel := context.WithTimeout(ctx, graph.DefaultAttemptTimeout)
		if _, terr := tc.cred.GetToken(tctx, azpolicy.TokenRequestOptions{Scopes: tc.scopes}); terr != nil && refusedByAuthority(terr) {
			err = terr
		}
		cancel()
	}
	if err != nil {
		op := opOf(d.Action)
		s.metrics.tenantTokenFailures.Inc()
		s.metrics.actionsBy.with(op, resultFailed).Inc()
		s.log.Warn("no Graph token in the call's tenant; the call is not acted on", "tenant", tenant,
			"operation", op, "callId", callID, "error", err)
		return outcome{resultFailed, fmt.Errorf("tenant %s: get token: %w", tenant, err)}
	}
	var op string
	switch d.Action {
	case v1alpha1.ActionReject:
		op = graph.OpReject
		reason := string(d.Reason)
		if reason == "" {
			reason = string(v1alpha1.ReasonNone)
		}
		err = tc.graph.Reject(ctx, callID, reason)
	case v1alpha1.ActionRedirect:
		op = graph.OpRedirect
		err = tc.graph.Redirect(ctx, callID, redirectRequest(d.Redirect))
	case v1alpha1.ActionAnnounce:
		op, err = s.answer(ctx, rt, tc, callID, d.Announce)
	default:
		return outcome{resultFailed, fmt.Errorf("unknown action %q", d.Action)}
	}
	out := outcome{resultFailed, err}
	switch {
	case err == nil:
		out.result = resultSuccess
	case errors.Is(err, graph.ErrAlreadyDone):
		// An earlier attempt got no answer but Graph carried it out.
		out = outcome{resultAlreadyDone, nil}
	case errors.Is(err, context.DeadlineExceeded):
		out.result = resultDeadline
	}
	s.metrics.actionsBy.with(op, out.result).Inc()
	if out.err == nil {
		s.metrics.decisionToGraphOf(op).Observe(time.Since(c.at).Seconds())
	}
	return out
}

func opOf(a v1alpha1.Action) string {
	switch a {
	case v1alpha1.ActionRedirect:
		return graph.OpRedirect
	case v1alpha1.ActionAnnounce:
		return graph.OpAnswer
	}
	return graph.OpReject
}

// redirectRequest is the Graph body of a Redirect decision; the compiler
// has applied the timeout default, which stays here for a nil spec.
func redirectRequest(r *v1alpha1.RedirectSpec) graph.RedirectRequest {
	req := graph.RedirectRequest{Timeout: v1alpha1.DefaultRedirectTimeoutSeconds}
	if r == nil {
		return req
	}
	if r.TimeoutSeconds > 0 {
		req.Timeout = r.TimeoutSeconds
	}
	for _, t := range r.Targets {
		id := &graph.IdentitySet{ODataType: graph.ODataIdentitySet}
		switch {
		case t.Phone != "":
			id.Phone = &graph.Identity{ODataType: graph.ODataIdentity, ID: t.Phone}
		case t.User != "":
			id.User = &graph.Identity{ODataType: graph.ODataIdentity, ID: t.User}
		case t.ApplicationInstance != "":
			id.ApplicationInstance = &graph.Identity{ODataType: graph.ODataIdentity, ID: t.ApplicationInstance}
		default:
			continue
		}
		req.Targets = append(req.Targets, graph.InvitationParticipantInfo{ODataType: graph.ODataInvitationInfo, Identity: id})
	}
	return req
}
