// Package state keeps what a policy remembers about callers between calls:
// their recent calls (callers.repeat) and their temporary blocks (blockFor).
// A Store holds it in a Redis-protocol server shared by every receiver
// replica, or in process memory for one replica. Callers are known to a
// store only by a keyed hash: it never holds a phone number.
package state

import (
	"context"
	"time"
)

// Step is one rule whose outcome for a call may depend on what the store
// remembers, in policy order.
type Step struct {
	// Rule is the rule's name: a block belongs to a caller and a rule.
	Rule string
	// Static reports whether the rule's match holds apart from its repeat
	// condition.
	Static bool
	// Calls and Within are the rule's callers.repeat; Calls is 0 when the
	// rule has none.
	Calls  int
	Within time.Duration
	// BlockFor is the rule's blockFor, 0 when it has none.
	BlockFor time.Duration
}

// holds reports whether the step decides given the caller's count of calls
// within its window and whether the caller is under its block.
func (s *Step) holds(count int, blocked bool) bool {
	return blocked || s.Static && (s.Calls == 0 || count >= s.Calls)
}

// Query asks about one incoming call of one caller.
type Query struct {
	// Caller is the caller's key: its normalized number, or its identity
	// id. The store keeps only its keyed hash.
	Caller string
	// Masked is what block listings show of the caller (the number masked
	// to its last digits).
	Masked string
	// CallID identifies the call: a call is counted once however often its
	// notification is delivered.
	CallID string
	// At is the call's arrival.
	At time.Time
	// Record counts the call (the policy has a repeat condition).
	Record bool
	// Keep is the longest repeat window of the policy, and KeepCalls the
	// most calls any of its repeat conditions asks for: older or surplus
	// arrivals are dropped.
	Keep      time.Duration
	KeepCalls int
	// Steps are the rules the store decides between, in order. The first
	// that holds decides; a step that holds without the store (Static, no
	// repeat, no block) ends the list.
	Steps []Step
}

// Answer is the store's answer to a Query.
type Answer struct {
	// Step is the index of the deciding step, -1 when none holds.
	Step int
	// Blocked reports that the step decided because the caller is under its
	// block.
	Blocked bool
	// Until is when the deciding step's block ends (the block it started or
	// extended), zero when it has none.
	Until time.Time
	// Started reports that the deciding step's block began with this call:
	// the caller was not under it (false when the block held and was
	// extended). Receivers count the blocks started.
	Started bool
}

// Offline is the answer when the store cannot answer in time. With
// repeatHolds (state.onError Match) every repeat condition holds; without
// it (Ignore) none does. No block holds and none starts.
func Offline(q *Query, repeatHolds bool) Answer {
	for i := range q.Steps {
		s := &q.Steps[i]
		if s.Static && (s.Calls == 0 || repeatHolds) {
			return Answer{Step: i}
		}
	}
	return Answer{Step: -1}
}

// Block is a caller under a temporary block.
type Block struct {
	Masked string    `json:"number"`
	Rule   string    `json:"rule"`
	Since  time.Time `json:"since"`
	Until  time.Time `json:"until"`
}

// Store remembers callers for one policy.
type Store interface {
	// Eval records and answers qs in at most one round trip (Evals made
	// at once may share it): ans[i] answers qs[i].
	// A step holds when the caller is under its block, or when it is
	// Static and its repeat condition (if any) holds, counting this call
	// once. The deciding step's BlockFor (re)starts the caller's block
	// under it until At+BlockFor. An error means nothing was answered.
	Eval(ctx context.Context, qs []Query, ans []Answer) error
	// Claim reports whether id was not claimed within ttl before, and
	// claims it: a step acted on once across every replica.
	Claim(ctx context.Context, id string, ttl time.Duration) (bool, error)
	// Blocks lists the callers under a block at now.
	Blocks(ctx context.Context, now time.Time) ([]Block, error)
	// Unblock lifts the blocks of the caller with this key ("" lifts
	// every block) and reports how many it lifted.
	Unblock(ctx context.Context, caller string) (int, error)
	Close() error
}
