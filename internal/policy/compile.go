package policy

import (
	"cmp"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/callguard/callguard/api/v1alpha1"
)

// maxRules matches the CRD's MaxItems for spec.rules.
const maxRules = 512

// ListRef names a ConfigMap key that callers.numberLists or an
// announce.prompt refers to.
type ListRef struct{ Name, Key string }

// Source is everything a policy compiles from.
type Source struct {
	Namespace, Name string
	Spec            v1alpha1.CallPolicySpec
	// Lists holds the text of each referenced ConfigMap key.
	Lists map[ListRef]string
	// Prompts holds the bytes of each ConfigMap key that an announce.prompt
	// names (PromptRefs): the binaryData value, a WAV file. A compiled
	// policy keeps these slices: they must not be modified.
	Prompts map[ListRef][]byte
}

// PromptRefs returns every ConfigMap key the spec's announce prompts name,
// deduplicated and sorted.
func PromptRefs(spec *v1alpha1.CallPolicySpec) []ListRef {
	var refs []ListRef
	for _, r := range spec.Rules {
		if r.Announce != nil && r.Announce.Prompt.ConfigMapKeyRef != nil {
			ref := r.Announce.Prompt.ConfigMapKeyRef
			refs = append(refs, ListRef{Name: ref.Name, Key: ref.Key})
		}
	}
	slices.SortFunc(refs, compareRefs)
	return slices.Compact(refs)
}

// ListRefs returns every list the spec refers to, deduplicated and sorted.
func ListRefs(spec *v1alpha1.CallPolicySpec) []ListRef {
	var refs []ListRef
	for _, r := range spec.Rules {
		if r.Match.Callers == nil {
			continue
		}
		for _, l := range r.Match.Callers.NumberLists {
			refs = append(refs, ListRef{Name: l.ConfigMapKeyRef.Name, Key: l.ConfigMapKeyRef.Key})
		}
	}
	slices.SortFunc(refs, compareRefs)
	return slices.Compact(refs)
}

func compareRefs(a, b ListRef) int {
	return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.Key, b.Key))
}

// FieldError is one problem with a policy, at a field path such as
// spec.rules[2].match.callers.numberPatterns[0].
type FieldError struct{ Path, Message string }

func (e FieldError) Error() string { return e.Path + ": " + e.Message }

// CompileError lists every problem that kept a policy from compiling.
type CompileError struct{ Errors []FieldError }

func (e *CompileError) Error() string {
	msgs := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		msgs[i] = fe.Error()
	}
	return strings.Join(msgs, "; ")
}

// Compile validates and compiles a policy. Policy problems come back as a
// *CompileError holding all of them. The CRD's defaults are applied first,
// because YAML given to the plugin never went through an API server, and its
// validations are repeated so that offline users get the same messages.
func Compile(src *Source) (*Policy, error) {
	if src == nil {
		return nil, errors.New("compile policy: no source")
	}
	spec := src.Spec.DeepCopy()
	applyDefaults(spec)
	c := &compiler{src: src, spec: spec, lists: map[ListRef]*parsedList{}, emptyMatch: -1}
	c.validateSpec()
	rules := make([]rule, len(spec.Rules))
	names := map[string]int{}
	for i := range spec.Rules {
		rules[i] = c.compileRule(i, names)
	}
	c.warnUnreachable()
	if len(c.errs) > 0 {
		return nil, &CompileError{Errors: c.errs}
	}
	hash, err := sourceHash(src.Namespace, src.Name, spec, src.Lists, src.Prompts)
	if err != nil {
		return nil, fmt.Errorf("compile policy: %w", err)
	}
	p := &Policy{
		spec:      spec,
		rules:     rules,
		dflt:      rule{action: spec.DefaultAction, reason: reasonFor(spec.DefaultAction, spec.DefaultReason), redirect: spec.DefaultRedirect},
		index:     c.ix.build(),
		warnings:  c.warns,
		hash:      hash,
		celErrors: new(atomic.Uint64),
		prompts:   c.prompts,
	}
	p.compileState()
	return p, nil
}

// compileState fills in what Prepare needs when some rule is stateful.
func (p *Policy) compileState() {
	for i := range p.rules {
		r := &p.rules[i]
		if !r.stateful() {
			continue
		}
		p.stateful = true
		if r.repeatCalls > 0 {
			p.record = true
			p.keep = max(p.keep, r.repeatWithin)
			p.keepCalls = max(p.keepCalls, r.repeatCalls)
		}
	}
	if !p.stateful {
		return
	}
	p.ruleIndex = make(map[string]int, len(p.rules))
	for i := range p.rules {
		p.ruleIndex[p.rules[i].name] = i
	}
}

// reasonFor is the decision's reason: "" unless Reject, "none" by default.
func reasonFor(a v1alpha1.Action, r v1alpha1.RejectReason) v1alpha1.RejectReason {
	if a != v1alpha1.ActionReject {
		return ""
	}
	if r == "" {
		return v1alpha1.ReasonNone
	}
	return r
}

// applyDefaults fills empty fields with the CRD's defaults (v1alpha1.Default*). It is idempotent,
// so a spec read back from the policy ConfigMap hashes the same.
func applyDefaults(s *v1alpha1.CallPolicySpec) {
	g := &s.Graph
	g.Endpoint = cmp.Or(g.Endpoint, v1alpha1.DefaultGraphEndpoint)
	g.APIVersion = cmp.Or(g.APIVersion, v1alpha1.DefaultGraphAPIVersion)
	g.AuthorityHost = cmp.Or(g.AuthorityHost, v1alpha1.DefaultAuthorityHost)
	g.OpenIDConfigURL = cmp.Or(g.OpenIDConfigURL, v1alpha1.DefaultOpenIDConfigURL)
	if len(g.Issuers) == 0 {
		g.Issuers = v1alpha1.DefaultIssuers()
	}
	s.Mode = cmp.Or(s.Mode, v1alpha1.DefaultMode)
	s.DefaultAction = cmp.Or(s.DefaultAction, v1alpha1.DefaultDefaultAction)
	defaultRedirect(s.DefaultRedirect)
	for i := range s.Rules {
		r := &s.Rules[i]
		defaultRedirect(r.Redirect)
		if r.Announce != nil && r.Announce.MaxSeconds == 0 {
			r.Announce.MaxSeconds = v1alpha1.DefaultAnnounceMaxSeconds
		}
		if r.Match.Schedule != nil {
			r.Match.Schedule.TimeZone = cmp.Or(r.Match.Schedule.TimeZone, v1alpha1.DefaultTimeZone)
		}
	}
	if st := s.State; st != nil {
		st.OnError = cmp.Or(st.OnError, v1alpha1.DefaultStateOnError)
		if st.Redis != nil {
			st.Redis.KeyPrefix = cmp.Or(st.Redis.KeyPrefix, v1alpha1.DefaultRedisKeyPrefix)
		}
	}
	s.Receiver.CallbackPath = cmp.Or(s.Receiver.CallbackPath, v1alpha1.DefaultCallbackPath)
	if s.Receiver.Replicas == nil {
		s.Receiver.Replicas = ptr.To(v1alpha1.DefaultReceiverReplicas)
	}
	// The API server's defaults inside optional objects, so that a policy
	// read offline hashes as the one in the cluster.
	if a := s.Receiver.Autoscaling; a != nil {
		a.MinReplicas = cmp.Or(a.MinReplicas, ptr.To(v1alpha1.DefaultAutoscalingMinReplicas))
		a.TargetCPUUtilizationPercentage = cmp.Or(a.TargetCPUUtilizationPercentage, ptr.To(v1alpha1.DefaultTargetCPUUtilizationPercentage))
	}
	if np := s.Receiver.NetworkPolicy; np != nil && np.Enabled == nil {
		np.Enabled = ptr.To(v1alpha1.DefaultNetworkPolicyEnabled)
	}
	if e := s.Receiver.Expose; e != nil && e.HTTPRoute != nil {
		for i := range e.HTTPRoute.ParentRefs {
			ref := &e.HTTPRoute.ParentRefs[i]
			ref.Group = cmp.Or(ref.Group, ptr.To(gatewayv1.Group(v1alpha1.DefaultParentRefGroup)))
			ref.Kind = cmp.Or(ref.Kind, ptr.To(gatewayv1.Kind(v1alpha1.DefaultParentRefKind)))
		}
	}
}

func defaultRedirect(r *v1alpha1.RedirectSpec) {
	if r != nil && r.TimeoutSeconds == 0 {
		r.TimeoutSeconds = v1alpha1.DefaultRedirectTimeoutSeconds
	}
}

type compiler struct {
	src   *Source
	spec  *v1alpha1.CallPolicySpec
	errs  []FieldError
	warns []FieldError
	ix    indexBuilder
	// lists are parsed once however many rules refer to them.
	lists        map[ListRef]*parsedList
	listEntries  int
	limitReached bool
	// emptyMatch is the index of the first rule whose match is empty, or -1.
	emptyMatch int
	// prompts are the checked ConfigMap prompts by their hex sha256, and
	// promptBytes their total.
	prompts     map[string][]byte
	promptsSeen map[ListRef]checkedPrompt
	promptBytes int
}

func (c *compiler) errorf(path, format string, args ...any) {
	c.errs = append(c.errs, FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
}

func (c *compiler) warnf(path, format string, args ...any) {
	c.warns = append(c.warns, FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
}

var (
	uuidRE     = regexp.MustCompile(`(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$`)
	dnsLabelRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	// upstreamHTTPRE is a plain http URL to a cluster-local Service (the
	// CRD's rule has the same expression).
	upstreamHTTPRE = regexp.MustCompile(`^http://([^/?#@]*@)?[A-Za-z0-9-]+([.][A-Za-z0-9-]+)*[.](?i:svc([.]cluster[.]local)?)(:[0-9]+)?([/?#].*)?$`)
	e164RE         = regexp.MustCompile(`^\+[1-9][0-9]{1,14}$`)
	pathRE         = regexp.MustCompile(`^/[A-Za-z0-9/_.-]*$`)
	hostRE         = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

func (c *compiler) validateSpec() {
	s := c.spec
	c.uuid("spec.bot.appId", s.Bot.AppID)
	c.uuid("spec.bot.tenantId", s.Bot.TenantID)
	c.additionalTenants("spec.bot.additionalTenants", s.Bot.AdditionalTenants)
	cr := s.Bot.Credentials
	if (cr.SecretRef != nil) == (cr.WorkloadIdentity != nil) {
		c.errorf("spec.bot.credentials", "exactly one of secretRef or workloadIdentity must be set")
	}
	if cr.SecretRef != nil {
		c.length("spec.bot.credentials.secretRef.name", cr.SecretRef.Name, 1, 253)
	}
	// The same rules and messages as the CRD's: these three URLs carry the
	// bot's credentials, its access tokens and the keys every inbound
	// token is checked against, so plain http is refused.
	c.httpsURL("spec.graph.endpoint", s.Graph.Endpoint, "the bot's Graph access tokens are sent there")
	c.httpsURL("spec.graph.authorityHost", s.Graph.AuthorityHost, "the bot's credentials are sent there")
	c.httpsURL("spec.graph.openIDConfigURL", s.Graph.OpenIDConfigURL, "whoever serves the signing keys can forge every notification")
	c.enum("spec.graph.apiVersion", string(s.Graph.APIVersion), "v1.0", "beta")
	c.maxItems("spec.graph.issuers", len(s.Graph.Issuers), 16)
	if ca := s.Graph.CABundle; ca != nil {
		c.length("spec.graph.caBundle.name", ca.Name, 1, 253)
		c.length("spec.graph.caBundle.key", ca.Key, 1, 253)
	}
	if s.Upstream != nil {
		c.upstreamURL("spec.upstream.url", s.Upstream.URL)
	}
	c.enum("spec.mode", string(s.Mode), string(v1alpha1.ModeEnforce), string(v1alpha1.ModeDryRun))
	if s.DefaultAction == v1alpha1.ActionAnnounce {
		c.errorf("spec.defaultAction", "defaultAction must be Allow, Reject or Redirect: Announce is for rules")
	} else {
		c.action("spec.defaultAction", s.DefaultAction)
	}
	if s.DefaultReason != "" {
		c.reason("spec.defaultReason", s.DefaultReason)
		if s.DefaultReason != v1alpha1.ReasonNone && s.DefaultAction != v1alpha1.ActionReject {
			c.errorf("spec.defaultReason", "defaultReason is only allowed when defaultAction is Reject")
		}
	}
	switch {
	case s.DefaultAction == v1alpha1.ActionRedirect && s.DefaultRedirect == nil:
		c.errorf("spec.defaultRedirect", "defaultRedirect is required when defaultAction is Redirect")
	case s.DefaultAction != v1alpha1.ActionRedirect && s.DefaultRedirect != nil:
		c.errorf("spec.defaultRedirect", "defaultRedirect is only allowed when defaultAction is Redirect")
	case s.DefaultRedirect != nil:
		c.redirect("spec.defaultRedirect", s.DefaultRedirect)
	}
	c.maxItems("spec.rules", len(s.Rules), maxRules)
	if r := s.Receiver.Replicas; r != nil && *r < 0 {
		c.errorf("spec.receiver.replicas", "must be 0 or more, got %d", *r)
	}
	if !pathRE.MatchString(s.Receiver.CallbackPath) {
		c.errorf("spec.receiver.callbackPath", "must be a URL path such as /api/calls, got %q", s.Receiver.CallbackPath)
	}
	// The CRD's rules for expose and autoscaling, with its messages.
	if e := s.Receiver.Expose; e != nil {
		if n := btoi(e.Ingress != nil) + btoi(e.HTTPRoute != nil) + btoi(e.URL != ""); n != 1 {
			c.errorf("spec.receiver.expose", "exactly one of ingress, httpRoute or url must be set")
		}
		if e.URL != "" {
			c.publicURL("spec.receiver.expose.url", e.URL)
		}
		if in := e.Ingress; in != nil {
			c.length("spec.receiver.expose.ingress.host", in.Host, 1, 253)
			if in.Host != "" && !hostRE.MatchString(in.Host) {
				c.errorf("spec.receiver.expose.ingress.host", "must be a lower-case DNS name such as calls.example.com, got %q", in.Host)
			}
		}
		if hr := e.HTTPRoute; hr != nil {
			if len(hr.ParentRefs) == 0 {
				c.errorf("spec.receiver.expose.httpRoute.parentRefs", "required: at least one Gateway")
			}
			if len(hr.Hostnames) == 0 {
				c.errorf("spec.receiver.expose.httpRoute.hostnames", "required: at least one hostname")
			}
			for i, h := range hr.Hostnames {
				if strings.HasPrefix(string(h), "*") {
					c.errorf(fmt.Sprintf("spec.receiver.expose.httpRoute.hostnames[%d]", i), "hostnames must be exact names, not wildcards: Graph calls one URL")
				}
			}
		}
	}
	if a := s.Receiver.Autoscaling; a != nil {
		lo := v1alpha1.DefaultAutoscalingMinReplicas
		if a.MinReplicas != nil {
			lo = *a.MinReplicas
			if lo < 1 {
				c.errorf("spec.receiver.autoscaling.minReplicas", "must be 1 or more, got %d", lo)
			}
		}
		if a.MaxReplicas < 1 {
			c.errorf("spec.receiver.autoscaling.maxReplicas", "must be 1 or more, got %d", a.MaxReplicas)
		}
		if a.MaxReplicas < lo {
			c.errorf("spec.receiver.autoscaling.maxReplicas", "maxReplicas must be at least minReplicas (%d), got %d", lo, a.MaxReplicas)
		}
		if t := a.TargetCPUUtilizationPercentage; t != nil && (*t < 1 || *t > 100) {
			c.errorf("spec.receiver.autoscaling.targetCPUUtilizationPercentage", "must be 1 to 100, got %d", *t)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// publicURL checks an https URL with a host, as the CRD's rule does, with
// its message.
func (c *compiler) publicURL(path, v string) {
	u, err := url.Parse(v)
	switch {
	case len(v) > 2048:
		c.errorf(path, "must be at most 2048 characters long, got %d", len(v))
	case !strings.HasPrefix(v, "https://") || err != nil || u.Hostname() == "":
		c.errorf(path, "must be an https:// URL")
	}
}

func (c *compiler) uuid(path, v string) {
	switch {
	case v == "":
		c.errorf(path, "required")
	case !uuidRE.MatchString(v):
		c.errorf(path, "must be a UUID such as 6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10, got %q", v)
	}
}

// maxTenants bounds bot.additionalTenants and match.tenants, as the CRD does.
const maxTenants = 1000

// additionalTenants checks bot.additionalTenants as the CRD does: uuids, or
// "*" alone.
func (c *compiler) additionalTenants(path string, tenants []string) {
	c.maxItems(path, len(tenants), maxTenants)
	for i, t := range tenants {
		if t == v1alpha1.AnyTenant {
			if len(tenants) != 1 {
				c.errorf(path, "* (any tenant) must be the only entry of additionalTenants")
			}
			continue
		}
		c.uuid(fmt.Sprintf("%s[%d]", path, i), t)
	}
}

// upstreamURL: the upstream gets every allowed notification with Graph's
// bearer token, so plain http only to a Service in the cluster (the CRD's
// rule and message).
func (c *compiler) upstreamURL(path, v string) {
	ok := upstreamHTTPRE.MatchString(v)
	if strings.HasPrefix(v, "https://") {
		u, err := url.Parse(v)
		ok = err == nil && u.Hostname() != ""
	}
	if !ok {
		c.errorf(path, "must be an https:// URL, or http:// only to a cluster-local Service host (*.svc or *.svc.cluster.local): every forwarded notification carries Graph's bearer token")
	}
}

func (c *compiler) httpsURL(path, v, why string) {
	if !strings.HasPrefix(v, "https://") {
		c.errorf(path, "must be an https:// URL: %s", why)
	}
}

func (c *compiler) length(path, v string, lo, hi int) {
	switch {
	case v == "" && lo > 0:
		c.errorf(path, "required")
	case len(v) < lo || len(v) > hi:
		c.errorf(path, "must be %d to %d characters long, got %d", lo, hi, len(v))
	}
}

func (c *compiler) maxItems(path string, n, limit int) {
	if n > limit {
		c.errorf(path, "at most %d items are allowed, got %d", limit, n)
	}
}

func (c *compiler) enum(path, v string, allowed ...string) {
	switch {
	case slices.Contains(allowed, v):
	case v == "":
		c.errorf(path, "required: one of %s", strings.Join(allowed, ", "))
	default:
		c.errorf(path, "must be one of %s, got %q", strings.Join(allowed, ", "), v)
	}
}

func (c *compiler) action(path string, a v1alpha1.Action) {
	c.enum(path, string(a), string(v1alpha1.ActionAllow), string(v1alpha1.ActionReject), string(v1alpha1.ActionRedirect))
}

func (c *compiler) reason(path string, r v1alpha1.RejectReason) {
	c.enum(path, string(r), string(v1alpha1.ReasonNone), string(v1alpha1.ReasonBusy), string(v1alpha1.ReasonForbidden))
}

func (c *compiler) redirect(path string, r *v1alpha1.RedirectSpec) {
	if n := len(r.Targets); n < 1 || n > 25 {
		c.errorf(path+".targets", "redirect needs 1 to 25 targets, got %d", n)
	}
	for i, t := range r.Targets {
		tp := fmt.Sprintf("%s.targets[%d]", path, i)
		set := 0
		for _, v := range [...]string{t.Phone, t.User, t.ApplicationInstance} {
			if v != "" {
				set++
			}
		}
		if set != 1 {
			c.errorf(tp, "a redirect target needs exactly one of phone, user or applicationInstance")
		}
		if t.Phone != "" && !e164RE.MatchString(t.Phone) {
			c.errorf(tp+".phone", "must be an E.164 number such as +14255550100, got %q", t.Phone)
		}
		if len(t.User) > 64 {
			c.errorf(tp+".user", "must be at most 64 characters long, got %d", len(t.User))
		}
		if len(t.ApplicationInstance) > 64 {
			c.errorf(tp+".applicationInstance", "must be at most 64 characters long, got %d", len(t.ApplicationInstance))
		}
	}
	if r.TimeoutSeconds < 15 || r.TimeoutSeconds > 90 {
		c.errorf(path+".timeoutSeconds", "must be 15 to 90, got %d", r.TimeoutSeconds)
	}
}

func (c *compiler) compileRule(i int, names map[string]int) rule {
	sr := &c.spec.Rules[i]
	path := fmt.Sprintf("spec.rules[%d]", i)
	switch {
	case sr.Name == "":
		c.errorf(path+".name", "required")
	case len(sr.Name) > 63 || !dnsLabelRE.MatchString(sr.Name):
		c.errorf(path+".name", "must be a DNS label (at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit), got %q", sr.Name)
	}
	if j, dup := names[sr.Name]; dup && sr.Name != "" {
		c.errorf(path+".name", "rule names must be unique: %q is also the name of spec.rules[%d]", sr.Name, j)
	} else {
		names[sr.Name] = i
	}
	c.enum(path+".action", string(sr.Action), string(v1alpha1.ActionAllow), string(v1alpha1.ActionReject), string(v1alpha1.ActionRedirect),
		string(v1alpha1.ActionAnnounce))
	if sr.Reason != "" {
		c.reason(path+".reason", sr.Reason)
		if sr.Action != v1alpha1.ActionReject {
			c.errorf(path+".reason", "reason is only allowed when action is Reject")
		}
	}
	if (sr.Action == v1alpha1.ActionRedirect) != (sr.Redirect != nil) {
		c.errorf(path+".redirect", "redirect is required when action is Redirect and not allowed otherwise")
	} else if sr.Redirect != nil {
		c.redirect(path+".redirect", sr.Redirect)
	}
	r := rule{
		name:      sr.Name,
		action:    sr.Action,
		reason:    reasonFor(sr.Action, sr.Reason),
		redirect:  sr.Redirect,
		types:     allTypes,
		numberSet: -1,
	}
	if (sr.Action == v1alpha1.ActionAnnounce) != (sr.Announce != nil) {
		c.errorf(path+".announce", "announce is required when action is Announce and not allowed otherwise")
	} else if sr.Announce != nil {
		r.announce = c.announce(path+".announce", sr.Announce)
	}
	if sr.BlockFor != nil {
		if d := sr.BlockFor.Duration; d < time.Minute || d > 720*time.Hour {
			c.errorf(path+".blockFor", "blockFor must be between 1m and 720h, got %s", d)
		}
		if sr.Action == v1alpha1.ActionAllow {
			c.errorf(path+".blockFor", "blockFor is only allowed on Reject, Redirect and Announce rules")
		}
		r.blockFor = sr.BlockFor.Duration
	}
	c.compileMatch(path+".match", &sr.Match, &r)
	r.more = r.ids != nil || r.tenants != nil || r.callTenants != nil || r.sched != nil || r.numberRes != nil || r.nameRes != nil || r.expr != nil ||
		r.repeatCalls > 0
	if isEmptyMatch(&sr.Match) && c.emptyMatch < 0 {
		c.emptyMatch = i
	}
	return r
}

func isEmptyMatch(m *v1alpha1.Match) bool {
	if len(m.Modalities) > 0 || len(m.Tenants) > 0 || m.Schedule != nil || m.Expression != "" {
		return false
	}
	cm := m.Callers
	return cm == nil || cm.Repeat == nil && len(cm.Numbers)+len(cm.NumberPrefixes)+len(cm.NumberPatterns)+len(cm.NumberLists)+
		len(cm.IdentityTypes)+len(cm.IDs)+len(cm.TenantIDs)+len(cm.DisplayNamePatterns) == 0
}

func (c *compiler) compileMatch(path string, m *v1alpha1.Match, r *rule) {
	if m.Callers != nil {
		c.compileCallers(path+".callers", m.Callers, r)
	}
	c.maxItems(path+".modalities", len(m.Modalities), 4)
	for i, mod := range m.Modalities {
		if !slices.Contains(modalityNames[:], mod) {
			c.errorf(fmt.Sprintf("%s.modalities[%d]", path, i), "must be one of audio, video, videoBasedScreenSharing, data, got %q", mod)
			continue
		}
		r.modalities |= modalityBit(string(mod))
	}
	if len(m.Tenants) > 0 {
		c.maxItems(path+".tenants", len(m.Tenants), maxTenants)
		for i, t := range m.Tenants {
			c.uuid(fmt.Sprintf("%s.tenants[%d]", path, i), t)
		}
		r.callTenants = make(map[string]struct{}, len(m.Tenants))
		for _, t := range m.Tenants {
			if t != "" {
				r.callTenants[strings.ToLower(t)] = struct{}{}
			}
		}
	}
	if m.Schedule != nil {
		r.sched = c.compileSchedule(path+".schedule", m.Schedule)
	}
	if m.Expression != "" {
		prg, err := compileExpression(m.Expression)
		if err != nil {
			c.errorf(path+".expression", "%v", err)
		}
		r.expr = prg
	}
}

func (c *compiler) compileCallers(path string, cm *v1alpha1.CallerMatch, r *rule) {
	if len(cm.Numbers) > 0 {
		c.maxItems(path+".numbers", len(cm.Numbers), 10000)
		keys := make([]uint64, 0, len(cm.Numbers))
		for i, n := range cm.Numbers {
			key, prefix, msg := entryKey(strings.TrimSpace(n))
			switch {
			case msg != "":
				c.errorf(fmt.Sprintf("%s.numbers[%d]", path, i), "%q: %s", n, msg)
			case prefix:
				c.errorf(fmt.Sprintf("%s.numbers[%d]", path, i), "%q: a number cannot end in *; prefixes go in numberPrefixes", n)
			default:
				keys = append(keys, key)
			}
		}
		c.ix.add(c.numberSet(r), keys, nil)
	}
	if len(cm.NumberPrefixes) > 0 {
		c.maxItems(path+".numberPrefixes", len(cm.NumberPrefixes), 10000)
		keys := make([]uint64, 0, len(cm.NumberPrefixes))
		for i, n := range cm.NumberPrefixes {
			// A trailing '*' is accepted: it is how prefixes are written in lists.
			key, _, msg := entryKey(strings.TrimSpace(n))
			if msg != "" {
				c.errorf(fmt.Sprintf("%s.numberPrefixes[%d]", path, i), "%q: %s", n, msg)
				continue
			}
			keys = append(keys, key)
		}
		c.ix.add(c.numberSet(r), nil, keys)
	}
	r.numberRes = c.regexps(path+".numberPatterns", cm.NumberPatterns)
	if len(cm.NumberLists) > 0 {
		c.maxItems(path+".numberLists", len(cm.NumberLists), 64)
		set := c.numberSet(r)
		entries := 0
		for i, nl := range cm.NumberLists {
			l := c.list(fmt.Sprintf("%s.numberLists[%d]", path, i), nl.ConfigMapKeyRef)
			if l != nil {
				c.ix.add(set, l.exact, l.prefix)
				c.ix.addTimed(set, l.exactTimed, l.prefixTimed)
				entries += l.entries()
			}
		}
		switch {
		case entries > 0:
		case len(cm.Numbers)+len(cm.NumberPrefixes)+len(cm.NumberPatterns) == 0:
			c.warnf(path+".numberLists", "the lists have no entries, so this rule never matches")
		default:
			c.warnf(path+".numberLists", "the lists have no entries, so only the other number fields can match")
		}
	}
	c.maxItems(path+".identityTypes", len(cm.IdentityTypes), len(identityTypes))
	if len(cm.IdentityTypes) > 0 {
		r.types = 0
	}
	for i, t := range cm.IdentityTypes {
		bit := typeBit(t)
		if bit == 0 {
			c.errorf(fmt.Sprintf("%s.identityTypes[%d]", path, i),
				"must be one of phone, user, guest, application, applicationInstance, acsUser, onPremises, encrypted, anonymous, unknown, got %q", t)
		}
		r.types |= bit
	}
	r.needsNumber = r.numberSet >= 0 || r.numberRes != nil
	if r.types&typeBit(v1alpha1.IdentityPhone) == 0 && r.needsNumber {
		c.warnf(path, "number fields only hold for phone callers and identityTypes leaves out phone, so this rule never matches")
	}
	r.ids = c.idSet(path+".ids", cm.IDs, 10000)
	r.tenants = c.idSet(path+".tenantIds", cm.TenantIDs, 1000)
	r.nameRes = c.regexps(path+".displayNamePatterns", cm.DisplayNamePatterns)
	if rp := cm.Repeat; rp != nil {
		if rp.Calls < 2 || rp.Calls > 1000 {
			c.errorf(path+".repeat.calls", "must be 2 to 1000, got %d", rp.Calls)
		}
		if w := rp.Within.Duration; w < time.Minute || w > 24*time.Hour {
			c.errorf(path+".repeat.within", "within must be between 1m and 24h, got %s", w)
		}
		r.repeatCalls, r.repeatWithin = int(rp.Calls), rp.Within.Duration
		if r.types&^(typeBit(v1alpha1.IdentityAnonymous)|typeBit(v1alpha1.IdentityEncrypted)) == 0 {
			c.warnf(path+".repeat", "anonymous and encrypted callers have no key to count calls by, so this rule never matches")
		}
	}
}

// numberSet returns the rule's number set, making it on first use.
func (c *compiler) numberSet(r *rule) int32 {
	if r.numberSet < 0 {
		r.numberSet = c.ix.newSet()
	}
	return r.numberSet
}

func (c *compiler) regexps(path string, patterns []string) []*regexp.Regexp {
	if len(patterns) == 0 {
		return nil
	}
	c.maxItems(path, len(patterns), 256)
	res := make([]*regexp.Regexp, 0, len(patterns))
	for i, p := range patterns {
		re, err := regexp.Compile(p)
		if err != nil {
			c.errorf(fmt.Sprintf("%s[%d]", path, i), "%v", err)
			continue
		}
		res = append(res, re)
	}
	return res
}

func (c *compiler) idSet(path string, ids []string, limit int) map[string]struct{} {
	if len(ids) == 0 {
		return nil
	}
	c.maxItems(path, len(ids), limit)
	set := make(map[string]struct{}, len(ids))
	for i, id := range ids {
		if id == "" {
			c.errorf(fmt.Sprintf("%s[%d]", path, i), "must not be empty")
			continue
		}
		set[strings.ToLower(id)] = struct{}{}
	}
	return set
}

// list returns the parsed list a reference names, parsing it on first use
// and reporting its problems at the first path that refers to it.
func (c *compiler) list(path string, ref v1alpha1.ConfigMapKeyReference) *parsedList {
	c.length(path+".configMapKeyRef.name", ref.Name, 1, 253)
	c.length(path+".configMapKeyRef.key", ref.Key, 1, 253)
	lr := ListRef{Name: ref.Name, Key: ref.Key}
	if l, ok := c.lists[lr]; ok {
		return l
	}
	text, ok := c.src.Lists[lr]
	if !ok {
		c.errorf(path, "configmap %s key %s: not found", ref.Name, ref.Key)
		c.lists[lr] = nil
		return nil
	}
	l := parseList(text)
	c.lists[lr] = l
	where := listPath(path, lr)
	for _, e := range l.errs {
		c.errorf(fmt.Sprintf("%s line %d", where, e.line), "%s", e.msg)
	}
	if l.more > 0 {
		c.errorf(where, "%d more lines are not numbers", l.more)
	}
	c.listEntries += l.entries()
	if c.listEntries > maxListEntries && !c.limitReached {
		c.limitReached = true
		c.errorf(where, "number lists hold more than %d entries across the policy", maxListEntries)
	}
	return l
}

// listPath names a list in messages: the referring field, then the ConfigMap.
func listPath(path string, ref ListRef) string {
	return fmt.Sprintf("%s (configmap %s key %s)", path, ref.Name, ref.Key)
}

// warnUnreachable warns about rules after the first rule with an empty match:
// that rule decides every call.
func (c *compiler) warnUnreachable() {
	if c.emptyMatch < 0 {
		return
	}
	first := c.spec.Rules[c.emptyMatch].Name
	for i := c.emptyMatch + 1; i < len(c.spec.Rules); i++ {
		c.warnf(fmt.Sprintf("spec.rules[%d]", i), "rule %q never matches: rule %q (spec.rules[%d]) has an empty match and decides every call first",
			c.spec.Rules[i].Name, first, c.emptyMatch)
	}
}
