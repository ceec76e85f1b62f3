package policy

import (
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/cel-go/cel"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
)

// Decision is what a policy does with one call.
type Decision struct {
	CallID string          `json:"callId"`
	Action v1alpha1.Action `json:"action"`
	// Reason is "" unless Action is Reject, and "none" for a Reject without one.
	Reason v1alpha1.RejectReason `json:"reason"`
	// Rule is the deciding rule's name, "" when the default applied.
	Rule string        `json:"rule"`
	Mode v1alpha1.Mode `json:"mode"`
	// Tenant is the tenant the call arrived in, as DecideIn was given it.
	Tenant string `json:"tenant,omitempty"`
	// Redirect is shared with the policy: callers must not modify it.
	Redirect *v1alpha1.RedirectSpec `json:"redirect,omitempty"`
	// Announce is what an Announce decision plays; shared with the policy.
	Announce *Announcement `json:"announce,omitempty"`
	// Blocked reports that the rule decided because the caller is under
	// its temporary block (blockFor).
	Blocked bool `json:"blocked,omitempty"`
}

// Announcement is the compiled announce of an Announce rule.
type Announcement struct {
	// PromptSHA256 is the hex sha256 of a prompt kept in a ConfigMap, which
	// the receivers serve (Policy.Prompt); "" for a URL prompt.
	PromptSHA256 string `json:"promptSha256,omitempty"`
	// PromptURL is the https URL of a prompt Graph fetches itself.
	PromptURL  string `json:"promptUrl,omitempty"`
	MaxSeconds int32  `json:"maxSeconds"`
}

// Policy is a compiled CallPolicy. It is immutable and safe for concurrent use.
type Policy struct {
	spec     *v1alpha1.CallPolicySpec
	rules    []rule
	dflt     rule
	index    numberIndex
	warnings []FieldError
	hash     string
	// celErrors is shared with WithCELErrorHandler copies: the count belongs
	// to the policy version, not to one handler.
	celErrors  *atomic.Uint64
	celHandler func(rule string, err error)

	// What Prepare needs of a stateful policy (stateful is false
	// otherwise): the rules by name for Resolve, and what every query of
	// the policy carries.
	stateful  bool
	ruleIndex map[string]int
	record    bool
	keep      time.Duration
	keepCalls int

	// prompts are the bytes of the ConfigMap prompts by their hex sha256.
	prompts map[string][]byte
}

// rule is a compiled rule. A nil or zero field was not given, unless its
// comment says otherwise.
type rule struct {
	name     string
	action   v1alpha1.Action
	reason   v1alpha1.RejectReason
	redirect *v1alpha1.RedirectSpec
	announce *Announcement

	// types has a bit per identity type the caller may have: all of them
	// when identityTypes is not given.
	types uint16
	// needsNumber is set when a number field is given: only callers with a
	// valid number can match.
	needsNumber bool
	modalities  uint8 // bit per modality
	// numberSet is the id of the number set holding the entries of numbers,
	// numberPrefixes and numberLists together, -1 when none of them is
	// given. The four number fields are one condition (docs/matching.md): it holds
	// when the number is in numberSet or matches one of numberRes.
	numberSet int32
	// more is set when a field that holds checks is given.
	more         bool
	numberRes    []*regexp.Regexp
	ids, tenants map[string]struct{} // lower-cased
	// callTenants are match.tenants, lower-cased: the call's tenant, not
	// the caller's.
	callTenants map[string]struct{}
	nameRes     []*regexp.Regexp
	sched       *schedule
	expr        cel.Program

	// repeatCalls and repeatWithin are callers.repeat (repeatCalls is 0
	// without one); a rule with one has more set, so that DecideIn, which
	// has no store, skips it after holds.
	repeatCalls  int
	repeatWithin time.Duration
	blockFor     time.Duration
}

// stateful reports whether the store has a say in the rule.
func (r *rule) stateful() bool { return r.repeatCalls > 0 || r.blockFor > 0 }

// Decide decides one call arriving at the given time, in a tenant not
// known (offline tests): no match.tenants holds, not even for the home
// tenant. Receivers use DecideIn with the tenant the call arrived in.
func (p *Policy) Decide(call *graph.Call, at time.Time) Decision {
	return p.DecideIn(call, at, "")
}

// DecideIn decides one call arriving at the given time in the given tenant
// (the notification token's tenant claim; "" when unknown), which
// match.tenants is compared with. It does not allocate unless a rule needs a
// CEL expression, or a regex on a number that was not already normalized,
// or the number is longer than 31 digits. It knows no state: no
// callers.repeat condition holds and no caller is under a block, as for a
// caller's first call (Prepare and Resolve decide with the store).
func (p *Policy) DecideIn(call *graph.Call, at time.Time, tenant string) Decision {
	ev := evalState{p: p, call: call, at: at, callTenant: tenant}
	ev.read()
	for i := range p.rules {
		r := &p.rules[i]
		// The cheap fields inline, since a call per rule costs more than they
		// do; holds checks the rest.
		if r.types&ev.typeBit == 0 || r.needsNumber && !ev.numOK ||
			r.modalities != 0 && r.modalities&ev.modalities() == 0 ||
			r.numberSet >= 0 && r.numberRes == nil && !ev.inSet(r.numberSet) {
			continue
		}
		if !r.more || r.holds(&ev) && r.repeatCalls == 0 {
			return p.decision(call, r, tenant)
		}
	}
	return p.decision(call, &p.dflt, tenant)
}

// staticMatch reports whether the rule's match holds apart from its repeat
// condition: DecideIn's test, for Prepare.
func (r *rule) staticMatch(ev *evalState) bool {
	if r.types&ev.typeBit == 0 || r.needsNumber && !ev.numOK ||
		r.modalities != 0 && r.modalities&ev.modalities() == 0 ||
		r.numberSet >= 0 && r.numberRes == nil && !ev.inSet(r.numberSet) {
		return false
	}
	return !r.more || r.holds(ev)
}

func (p *Policy) decision(call *graph.Call, r *rule, tenant string) Decision {
	return Decision{
		CallID:   callID(call),
		Action:   r.action,
		Reason:   r.reason,
		Rule:     r.name,
		Mode:     p.spec.Mode,
		Tenant:   tenant,
		Redirect: r.redirect,
		Announce: r.announce,
	}
}

// callID is the call's id, else the last segment of its @odata.id.
func callID(call *graph.Call) string {
	if call == nil {
		return ""
	}
	if call.ID != "" {
		return call.ID
	}
	s := strings.TrimRight(call.ODataID, "/")
	return s[strings.LastIndexByte(s, '/')+1:]
}

// Warnings are problems that do not stop the policy from working, such as
// rules that can never match.
func (p *Policy) Warnings() []FieldError { return slices.Clone(p.warnings) }

// Spec is the defaulted spec the policy was compiled from; callers must not
// modify it.
func (p *Policy) Spec() *v1alpha1.CallPolicySpec { return p.spec }

// Rules is the number of rules.
func (p *Policy) Rules() int { return len(p.rules) }

// Hash is "sha256:<hex>", the same hash EncodeConfigMap returns for the Source
// the policy was compiled from.
func (p *Policy) Hash() string { return p.hash }

// ShortHash is a policy hash as events, logs and the plugin show it: the
// first 12 hex digits, without "sha256:".
func ShortHash(h string) string {
	h = strings.TrimPrefix(h, "sha256:")
	if len(h) > 12 {
		h = h[:12]
	}
	return h
}

// CELErrors counts CEL evaluations that failed (and so did not match) since
// the policy was compiled, across its WithCELErrorHandler copies.
func (p *Policy) CELErrors() uint64 { return p.celErrors.Load() }

// WithCELErrorHandler returns a copy of the policy that calls h, synchronously
// from Decide, for every failed CEL evaluation, so that the caller can log it.
// The copy shares everything else, including the CELErrors counter.
func (p *Policy) WithCELErrorHandler(h func(rule string, err error)) *Policy {
	cp := *p
	cp.celHandler = h
	return &cp
}

// evalState is what Decide learns about a call, computed at most once and
// only when a rule needs it. It lives on Decide's stack.
type evalState struct {
	p    *Policy
	call *graph.Call
	at   time.Time
	// callTenant is the tenant the call arrived in.
	callTenant string

	set     *graph.IdentitySet
	typ     v1alpha1.IdentityType
	typeBit uint16
	who     *graph.Identity

	// The normalized number ('+' and digits) of a phone caller, in num[:numLen].
	num    numberBuf
	numLen int
	numOK  bool
	// numStr is the normalized number as a string, made on first use.
	numStr     string
	numStrDone bool

	// sets has the bits of the number sets that hold the caller's number.
	sets setBits

	modal     uint8
	modalDone bool

	// The wall clock of the last time zone a schedule asked for.
	zone    *zone
	weekday time.Weekday
	minute  int

	// The caller's tenant id and display name, read on first use.
	tenant, displayName         string
	tenantDone, displayNameDone bool

	vars map[string]any
}

func (ev *evalState) read() {
	ev.set = sourceIdentity(ev.call)
	ev.typ, ev.who = callerIdentity(ev.set)
	ev.typeBit = typeBit(ev.typ)
	if ev.typ != v1alpha1.IdentityPhone {
		return
	}
	n, ok := appendNormalized(ev.num[:0], ev.who.ID)
	if ok && len(n) <= len(ev.num) {
		ev.numLen, ev.numOK = len(n), true
	} else if ok {
		// Too long for the buffer: keep the heap copy as the string form.
		ev.numStr, ev.numStrDone, ev.numOK = string(n), true, true
	}
	if ev.numOK {
		// Eagerly: nearly every policy has a number rule, and a lookup that
		// Decide's loop would trigger keeps inSet from being inlined.
		ev.p.index.lookup(ev.digits(), ev.at, &ev.sets)
	}
}

// digits returns the caller number's digits (without '+').
func (ev *evalState) digits() []byte {
	if ev.numStrDone && ev.numLen == 0 {
		return []byte(ev.numStr[1:])
	}
	return ev.num[1:ev.numLen]
}

// number returns the normalized number, "" when there is none.
func (ev *evalState) number() string {
	if !ev.numOK {
		return ""
	}
	if !ev.numStrDone {
		if id := ev.who.ID; len(id) == ev.numLen && isNormalized(id) {
			ev.numStr = id
		} else {
			ev.numStr = string(ev.num[:ev.numLen])
		}
		ev.numStrDone = true
	}
	return ev.numStr
}

// inSet reports whether the caller's number is in a number set; Decide has
// checked that the caller has a valid number, and read looked it up.
func (ev *evalState) inSet(set int32) bool { return ev.sets.has(set) }

func (ev *evalState) modalities() uint8 {
	if !ev.modalDone {
		ev.readModalities()
	}
	return ev.modal
}

func (ev *evalState) readModalities() {
	if ev.call != nil {
		for _, m := range ev.call.RequestedModalities {
			ev.modal |= modalityBit(m)
		}
	}
	ev.modalDone = true
}

// clock returns the weekday and minute of the day of the arrival time on the
// wall clock of z.
func (ev *evalState) clock(z *zone) (time.Weekday, int) {
	if ev.zone != z {
		ev.weekday, ev.minute = z.wallClock(ev.at)
		ev.zone = z
	}
	return ev.weekday, ev.minute
}

func (ev *evalState) tenantID() string {
	if !ev.tenantDone {
		ev.tenant, ev.tenantDone = memberField(ev.set, ev.who, tenantIDOf), true
	}
	return ev.tenant
}

func (ev *evalState) callerName() string {
	if !ev.displayNameDone {
		ev.displayName, ev.displayNameDone = memberField(ev.set, ev.who, displayNameOf), true
	}
	return ev.displayName
}

// holds reports whether the fields that Decide does not check inline hold,
// cheapest first.
func (r *rule) holds(ev *evalState) bool {
	if r.callTenants != nil && !containsFold(r.callTenants, ev.callTenant) {
		return false
	}
	if r.ids != nil && !ev.idIn(r.ids) {
		return false
	}
	if r.tenants != nil && !containsFold(r.tenants, ev.tenantID()) {
		return false
	}
	if r.sched != nil && !r.sched.holds(ev) {
		return false
	}
	// The number condition: in the set, or else matched by a pattern.
	if r.numberRes != nil && !(r.numberSet >= 0 && ev.inSet(r.numberSet)) && !anyMatch(r.numberRes, ev.number()) {
		return false
	}
	if r.nameRes != nil && !anyMatch(r.nameRes, ev.callerName()) {
		return false
	}
	if r.expr != nil && !ev.eval(r) {
		return false
	}
	return true
}

// idIn reports whether the id of any of the caller's user, guest,
// applicationInstance or application identities is in ids.
func (ev *evalState) idIn(ids map[string]struct{}) bool {
	if ev.set == nil || ev.set.User == nil && ev.set.Guest == nil && ev.set.ApplicationInstance == nil && ev.set.Application == nil {
		return false
	}
	for _, m := range [...]*graph.Identity{ev.set.User, ev.set.Guest, ev.set.ApplicationInstance, ev.set.Application} {
		if m != nil && m.ID != "" && containsFold(ids, m.ID) {
			return true
		}
	}
	return false
}

func anyMatch(res []*regexp.Regexp, s string) bool {
	for _, re := range res {
		if re.MatchString(s) {
			return true
		}
	}
	return false
}

// containsFold looks s up in a set of lower-cased strings, ignoring ASCII
// case (object and tenant ids are GUIDs, which Graph sends in either case)
// without allocating for ids of usual length.
func containsFold(set map[string]struct{}, s string) bool {
	if s == "" {
		// Sets never hold "" (Compile refuses it): skip hashing.
		return false
	}
	upper := false
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			upper = true
			break
		}
	}
	if !upper {
		_, ok := set[s]
		return ok
	}
	var buf [64]byte
	b := buf[:0]
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	_, ok := set[string(b)]
	return ok
}

// allTypes has the bit of every identity type.
const allTypes = 1<<len(identityTypes) - 1

var identityTypes = [...]v1alpha1.IdentityType{
	v1alpha1.IdentityPhone, v1alpha1.IdentityUser, v1alpha1.IdentityGuest, v1alpha1.IdentityApplication,
	v1alpha1.IdentityApplicationInstance, v1alpha1.IdentityACSUser, v1alpha1.IdentityOnPremises,
	v1alpha1.IdentityEncrypted, v1alpha1.IdentityAnonymous, v1alpha1.IdentityUnknown,
}

func typeBit(t v1alpha1.IdentityType) uint16 {
	for i, it := range identityTypes {
		if it == t {
			return 1 << i
		}
	}
	return 0
}

var modalityNames = [...]v1alpha1.Modality{"audio", "video", "videoBasedScreenSharing", "data"}

// modalityBit maps a modality to its bit, ignoring case as Graph's enums do.
func modalityBit(m string) uint8 {
	for i, name := range modalityNames {
		if graph.EnumEqual(m, string(name)) {
			return 1 << i
		}
	}
	return 0
}
