package controllers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
)

// invalidSpec is a change that makes testPolicy's spec invalid, and the field
// path at which both the API server's admission and policy.Compile refuse it.
type invalidSpec struct {
	name   string
	mutate func(*callsv1alpha1.CallPolicySpec)
	path   string
}

// admissionElsewhere is where the API server reports the invalid specs it
// cannot report at the compiler's path: a CEL rule's fieldPath is static, so
// a rule on a list cannot name the element. The CRD checks rule names'
// uniqueness that way (listType=map would name the element, but would also
// make server-side apply merge rules by name, losing their order).
var admissionElsewhere = map[string]string{
	"duplicate rule names":        "spec.rules",
	"httpRoute wildcard hostname": "spec.receiver.expose.httpRoute.hostnames",
}

// invalidSpecs is the one table of specs that the CRD (schema and CEL) and
// the compiler must both refuse at the same field path.
func invalidSpecs() []invalidSpec {
	redirect := func() *callsv1alpha1.RedirectSpec {
		return &callsv1alpha1.RedirectSpec{Targets: []callsv1alpha1.RedirectTarget{{Phone: "+14255550199"}}}
	}
	toRedirect := func(s *callsv1alpha1.CallPolicySpec) {
		s.Rules[0].Action, s.Rules[0].Reason = callsv1alpha1.ActionRedirect, ""
	}
	ingress := func() *callsv1alpha1.IngressExpose { return &callsv1alpha1.IngressExpose{Host: "calls.example.com"} }
	route := func() *callsv1alpha1.HTTPRouteExpose {
		return &callsv1alpha1.HTTPRouteExpose{
			ParentRefs: []gatewayv1.ParentReference{{Name: "public"}},
			Hostnames:  []gatewayv1.Hostname{"calls.example.com"},
		}
	}
	expose := func(s *callsv1alpha1.CallPolicySpec, e callsv1alpha1.ExposeSpec) { s.Receiver.Expose = &e }
	urlPrompt := callsv1alpha1.PromptSource{URL: "https://prompts.example.com/closed.wav"}
	announce := func(p callsv1alpha1.PromptSource) *callsv1alpha1.AnnounceSpec {
		return &callsv1alpha1.AnnounceSpec{Prompt: p}
	}
	toAnnounce := func(s *callsv1alpha1.CallPolicySpec, p callsv1alpha1.PromptSource) {
		s.Rules[0].Action, s.Rules[0].Reason, s.Rules[0].Announce = callsv1alpha1.ActionAnnounce, "", announce(p)
	}
	return []invalidSpec{
		{"duplicate rule names", func(s *callsv1alpha1.CallPolicySpec) { s.Rules[1].Name = s.Rules[0].Name }, "spec.rules[1].name"},
		{"rule name not a DNS label", func(s *callsv1alpha1.CallPolicySpec) { s.Rules[0].Name = "Premium Rate" }, "spec.rules[0].name"},
		{"rule name missing", func(s *callsv1alpha1.CallPolicySpec) { s.Rules[0].Name = "" }, "spec.rules[0].name"},
		{"unknown action", func(s *callsv1alpha1.CallPolicySpec) { s.Rules[0].Action = "Drop" }, "spec.rules[0].action"},
		{"unknown reason", func(s *callsv1alpha1.CallPolicySpec) { s.Rules[0].Reason = "later" }, "spec.rules[0].reason"},
		{"reason without Reject", func(s *callsv1alpha1.CallPolicySpec) { s.Rules[0].Action = callsv1alpha1.ActionAllow }, "spec.rules[0].reason"},
		{"Redirect without redirect", toRedirect, "spec.rules[0].redirect"},
		{"redirect on a Reject rule", func(s *callsv1alpha1.CallPolicySpec) { s.Rules[0].Redirect = redirect() }, "spec.rules[0].redirect"},
		{"zero redirect targets", func(s *callsv1alpha1.CallPolicySpec) {
			toRedirect(s)
			s.Rules[0].Redirect = &callsv1alpha1.RedirectSpec{Targets: []callsv1alpha1.RedirectTarget{}}
		}, "spec.rules[0].redirect.targets"},
		{"26 redirect targets", func(s *callsv1alpha1.CallPolicySpec) {
			toRedirect(s)
			s.Rules[0].Redirect = &callsv1alpha1.RedirectSpec{Targets: make([]callsv1alpha1.RedirectTarget, 26)}
			for i := range s.Rules[0].Redirect.Targets {
				s.Rules[0].Redirect.Targets[i].User = "u"
			}
		}, "spec.rules[0].redirect.targets"},
		{"target with two kinds", func(s *callsv1alpha1.CallPolicySpec) {
			toRedirect(s)
			s.Rules[0].Redirect = &callsv1alpha1.RedirectSpec{Targets: []callsv1alpha1.RedirectTarget{{Phone: "+14255550199", User: "u"}}}
		}, "spec.rules[0].redirect.targets[0]"},
		{"target phone not E.164", func(s *callsv1alpha1.CallPolicySpec) {
			toRedirect(s)
			s.Rules[0].Redirect = &callsv1alpha1.RedirectSpec{Targets: []callsv1alpha1.RedirectTarget{{Phone: "555-0199"}}}
		}, "spec.rules[0].redirect.targets[0].phone"},
		{"redirect timeout out of range", func(s *callsv1alpha1.CallPolicySpec) {
			toRedirect(s)
			s.Rules[0].Redirect = redirect()
			s.Rules[0].Redirect.TimeoutSeconds = 5
		}, "spec.rules[0].redirect.timeoutSeconds"},
		{"no credential source", func(s *callsv1alpha1.CallPolicySpec) { s.Bot.Credentials = callsv1alpha1.Credentials{} }, "spec.bot.credentials"},
		{"two credential sources", func(s *callsv1alpha1.CallPolicySpec) {
			s.Bot.Credentials.WorkloadIdentity = &callsv1alpha1.WorkloadIdentity{}
		}, "spec.bot.credentials"},
		{"appId not a uuid", func(s *callsv1alpha1.CallPolicySpec) { s.Bot.AppID = "hotline-bot" }, "spec.bot.appId"},
		{"tenantId not a uuid", func(s *callsv1alpha1.CallPolicySpec) { s.Bot.TenantID = "contoso" }, "spec.bot.tenantId"},
		{"additional tenant not a uuid", func(s *callsv1alpha1.CallPolicySpec) {
			s.Bot.AdditionalTenants = []string{"3c1f8a2e-5b7d-4e9a-8f60-1d2c3b4a5e6f", "fabrikam"}
		}, "spec.bot.additionalTenants[1]"},
		{"additional tenants * with others", func(s *callsv1alpha1.CallPolicySpec) {
			s.Bot.AdditionalTenants = []string{"3c1f8a2e-5b7d-4e9a-8f60-1d2c3b4a5e6f", "*"}
		}, "spec.bot.additionalTenants"},
		{"1,001 additional tenants", func(s *callsv1alpha1.CallPolicySpec) {
			s.Bot.AdditionalTenants = slices.Repeat([]string{"3c1f8a2e-5b7d-4e9a-8f60-1d2c3b4a5e6f"}, 1001)
		}, "spec.bot.additionalTenants"},
		{"match tenant not a uuid", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Match.Tenants = []string{"*"}
		}, "spec.rules[0].match.tenants[0]"},
		{"unknown mode", func(s *callsv1alpha1.CallPolicySpec) { s.Mode = "Audit" }, "spec.mode"},
		{"unknown defaultAction", func(s *callsv1alpha1.CallPolicySpec) { s.DefaultAction = "Drop" }, "spec.defaultAction"},
		{"defaultAction Redirect without defaultRedirect", func(s *callsv1alpha1.CallPolicySpec) {
			s.DefaultAction = callsv1alpha1.ActionRedirect
		}, "spec.defaultRedirect"},
		{"defaultRedirect without Redirect", func(s *callsv1alpha1.CallPolicySpec) { s.DefaultRedirect = redirect() }, "spec.defaultRedirect"},
		{"defaultReason without Reject", func(s *callsv1alpha1.CallPolicySpec) { s.DefaultReason = callsv1alpha1.ReasonBusy }, "spec.defaultReason"},
		{"unknown graph apiVersion", func(s *callsv1alpha1.CallPolicySpec) { s.Graph.APIVersion = "v2" }, "spec.graph.apiVersion"},
		{"graph endpoint over plain http", func(s *callsv1alpha1.CallPolicySpec) { s.Graph.Endpoint = "http://graph.microsoft.com" }, "spec.graph.endpoint"},
		{"authority over plain http", func(s *callsv1alpha1.CallPolicySpec) {
			s.Graph.AuthorityHost = "http://login.microsoftonline.com/"
		}, "spec.graph.authorityHost"},
		{"signing keys over plain http", func(s *callsv1alpha1.CallPolicySpec) {
			s.Graph.OpenIDConfigURL = "http://api.aps.skype.com/v1/.well-known/OpenIdConfiguration"
		}, "spec.graph.openIDConfigURL"},
		{"negative replicas", func(s *callsv1alpha1.CallPolicySpec) { s.Receiver.Replicas = ptr.To[int32](-1) }, "spec.receiver.replicas"},
		{"callbackPath not a path", func(s *callsv1alpha1.CallPolicySpec) { s.Receiver.CallbackPath = "api/calls" }, "spec.receiver.callbackPath"},
		{"expose with ingress and httpRoute", func(s *callsv1alpha1.CallPolicySpec) {
			expose(s, callsv1alpha1.ExposeSpec{Ingress: ingress(), HTTPRoute: route()})
		}, "spec.receiver.expose"},
		{"expose with neither", func(s *callsv1alpha1.CallPolicySpec) { expose(s, callsv1alpha1.ExposeSpec{}) }, "spec.receiver.expose"},
		{"expose with url and ingress", func(s *callsv1alpha1.CallPolicySpec) {
			expose(s, callsv1alpha1.ExposeSpec{URL: "https://calls.example.com/api/calls", Ingress: ingress()})
		}, "spec.receiver.expose"},
		{"expose url not https", func(s *callsv1alpha1.CallPolicySpec) {
			expose(s, callsv1alpha1.ExposeSpec{URL: "http://calls.example.com/api/calls"})
		}, "spec.receiver.expose.url"},
		{"Announce rule without announce", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Action, s.Rules[0].Reason = callsv1alpha1.ActionAnnounce, ""
		}, "spec.rules[0].announce"},
		{"announce on a Reject rule", func(s *callsv1alpha1.CallPolicySpec) { s.Rules[0].Announce = announce(urlPrompt) }, "spec.rules[0].announce"},
		{"prompt with configMapKeyRef and url", func(s *callsv1alpha1.CallPolicySpec) {
			toAnnounce(s, callsv1alpha1.PromptSource{URL: urlPrompt.URL, ConfigMapKeyRef: &callsv1alpha1.ConfigMapKeyReference{Name: "prompts", Key: "closed.wav"}})
		}, "spec.rules[0].announce.prompt"},
		{"prompt with neither", func(s *callsv1alpha1.CallPolicySpec) { toAnnounce(s, callsv1alpha1.PromptSource{}) }, "spec.rules[0].announce.prompt"},
		{"prompt url not https", func(s *callsv1alpha1.CallPolicySpec) {
			toAnnounce(s, callsv1alpha1.PromptSource{URL: "http://prompts.example.com/closed.wav"})
		}, "spec.rules[0].announce.prompt.url"},
		{"defaultAction Announce", func(s *callsv1alpha1.CallPolicySpec) { s.DefaultAction = callsv1alpha1.ActionAnnounce }, "spec.defaultAction"},
		{"blockFor on an Allow rule", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Action, s.Rules[0].Reason = callsv1alpha1.ActionAllow, ""
			s.Rules[0].BlockFor = &metav1.Duration{Duration: time.Hour}
		}, "spec.rules[0].blockFor"},
		{"blockFor under 1m", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].BlockFor = &metav1.Duration{Duration: 30 * time.Second}
		}, "spec.rules[0].blockFor"},
		{"blockFor over 720h", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].BlockFor = &metav1.Duration{Duration: 721 * time.Hour}
		}, "spec.rules[0].blockFor"},
		{"repeat within under 1m", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Match.Callers.Repeat = &callsv1alpha1.RepeatMatch{Calls: 3, Within: metav1.Duration{Duration: 59 * time.Second}}
		}, "spec.rules[0].match.callers.repeat.within"},
		{"repeat within over 24h", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Match.Callers.Repeat = &callsv1alpha1.RepeatMatch{Calls: 3, Within: metav1.Duration{Duration: 25 * time.Hour}}
		}, "spec.rules[0].match.callers.repeat.within"},
		{"ingress without host", func(s *callsv1alpha1.CallPolicySpec) {
			expose(s, callsv1alpha1.ExposeSpec{Ingress: &callsv1alpha1.IngressExpose{ClassName: "nginx"}})
		}, "spec.receiver.expose.ingress.host"},
		{"ingress host not a DNS name", func(s *callsv1alpha1.CallPolicySpec) {
			expose(s, callsv1alpha1.ExposeSpec{Ingress: &callsv1alpha1.IngressExpose{Host: "https://Calls.example.com/api"}})
		}, "spec.receiver.expose.ingress.host"},
		{"httpRoute without parentRefs", func(s *callsv1alpha1.CallPolicySpec) {
			r := route()
			r.ParentRefs = []gatewayv1.ParentReference{}
			expose(s, callsv1alpha1.ExposeSpec{HTTPRoute: r})
		}, "spec.receiver.expose.httpRoute.parentRefs"},
		{"httpRoute without hostnames", func(s *callsv1alpha1.CallPolicySpec) {
			r := route()
			r.Hostnames = []gatewayv1.Hostname{}
			expose(s, callsv1alpha1.ExposeSpec{HTTPRoute: r})
		}, "spec.receiver.expose.httpRoute.hostnames"},
		{"httpRoute wildcard hostname", func(s *callsv1alpha1.CallPolicySpec) {
			r := route()
			r.Hostnames = append(r.Hostnames, "*.example.com")
			expose(s, callsv1alpha1.ExposeSpec{HTTPRoute: r})
		}, "spec.receiver.expose.httpRoute.hostnames[1]"},
		{"autoscaling maxReplicas below minReplicas", func(s *callsv1alpha1.CallPolicySpec) {
			s.Receiver.Autoscaling = &callsv1alpha1.AutoscalingSpec{MinReplicas: ptr.To[int32](4), MaxReplicas: 3}
		}, "spec.receiver.autoscaling.maxReplicas"},
		{"autoscaling maxReplicas below the default minReplicas", func(s *callsv1alpha1.CallPolicySpec) {
			s.Receiver.Autoscaling = &callsv1alpha1.AutoscalingSpec{MaxReplicas: 1}
		}, "spec.receiver.autoscaling.maxReplicas"},
		{"autoscaling without maxReplicas", func(s *callsv1alpha1.CallPolicySpec) {
			s.Receiver.Autoscaling = &callsv1alpha1.AutoscalingSpec{MinReplicas: ptr.To[int32](1)}
		}, "spec.receiver.autoscaling.maxReplicas"},
		{"autoscaling minReplicas 0", func(s *callsv1alpha1.CallPolicySpec) {
			s.Receiver.Autoscaling = &callsv1alpha1.AutoscalingSpec{MinReplicas: ptr.To[int32](0), MaxReplicas: 3}
		}, "spec.receiver.autoscaling.minReplicas"},
		{"autoscaling CPU target over 100%", func(s *callsv1alpha1.CallPolicySpec) {
			s.Receiver.Autoscaling = &callsv1alpha1.AutoscalingSpec{MaxReplicas: 3, TargetCPUUtilizationPercentage: ptr.To[int32](150)}
		}, "spec.receiver.autoscaling.targetCPUUtilizationPercentage"},
		{"identity type not in the API", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Match.Callers = &callsv1alpha1.CallerMatch{IdentityTypes: []callsv1alpha1.IdentityType{"device"}}
		}, "spec.rules[0].match.callers.identityTypes[0]"},
		{"modality not in the API", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Match.Modalities = []callsv1alpha1.Modality{"fax"}
		}, "spec.rules[0].match.modalities[0]"},
		{"window end not HH:MM", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Match.Schedule = &callsv1alpha1.Schedule{Windows: []callsv1alpha1.Window{{Days: []callsv1alpha1.Weekday{"Mon"}, Start: "18:00", End: "25:00"}}}
		}, "spec.rules[0].match.schedule.windows[0].end"},
		{"window day not in the API", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Match.Schedule = &callsv1alpha1.Schedule{Windows: []callsv1alpha1.Window{{Days: []callsv1alpha1.Weekday{"Monday"}, Start: "18:00", End: "20:00"}}}
		}, "spec.rules[0].match.schedule.windows[0].days[0]"},
		{"upstream not a URL", func(s *callsv1alpha1.CallPolicySpec) {
			s.Upstream = &callsv1alpha1.UpstreamSpec{URL: "ftp://bot"}
		}, "spec.upstream.url"},
		// The upstream gets Graph's bearer token with every notification:
		// plain http only inside the cluster.
		{"upstream plain http to the internet", func(s *callsv1alpha1.CallPolicySpec) {
			s.Upstream = &callsv1alpha1.UpstreamSpec{URL: "http://bot.example.com/api/calls"}
		}, "spec.upstream.url"},
		{"upstream plain http to an address", func(s *callsv1alpha1.CallPolicySpec) {
			s.Upstream = &callsv1alpha1.UpstreamSpec{URL: "http://10.0.0.7:8080/api/calls"}
		}, "spec.upstream.url"},
		{"upstream plain http to a name ending in svc", func(s *callsv1alpha1.CallPolicySpec) {
			s.Upstream = &callsv1alpha1.UpstreamSpec{URL: "http://evilsvc/api/calls"}
		}, "spec.upstream.url"},
		{"upstream plain http to a svc host outside the cluster", func(s *callsv1alpha1.CallPolicySpec) {
			s.Upstream = &callsv1alpha1.UpstreamSpec{URL: "http://bot.telephony.svc.example.com/api/calls"}
		}, "spec.upstream.url"},
		{"list reference without a key", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[1].Match.Callers.NumberLists[0].ConfigMapKeyRef.Key = ""
		}, "spec.rules[1].match.callers.numberLists[0].configMapKeyRef.key"},
	}
}

// TestInvalidSpecsRefusedByAdmissionAndCompiler runs invalidSpecs against the
// real API server's admission (the CRD's schema and CEL rules) and against
// policy.Compile, and asserts that both refuse each at the same field path.
func TestInvalidSpecsRefusedByAdmissionAndCompiler(t *testing.T) {
	ns := newNamespace(t)
	lists := map[policy.ListRef]string{{Name: "robocallers", Key: "numbers.txt"}: "+12125550143\n"}
	for i, tt := range invalidSpecs() {
		t.Run(tt.name, func(t *testing.T) {
			cp := testPolicy(ns, fmt.Sprintf("invalid-%d", i))
			tt.mutate(&cp.Spec)
			ce := compileRefuses(t, cp, lists, tt.path)

			err := k8s.Create(context.Background(), cp)
			if err == nil {
				t.Fatalf("the API server admitted it; want a refusal at %s", tt.path)
			}
			want := cmp.Or(admissionElsewhere[tt.name], tt.path)
			// Where the CRD refuses with a CEL rule's message, the compiler
			// says the same (the API server words schema errors itself).
			for _, m := range celMessages {
				if strings.Contains(err.Error(), m) && ce != nil && !hasMessage(ce, tt.path, m) {
					t.Errorf("the API server says %q; the compiler at %s does not: %v", m, tt.path, ce)
				}
			}
			if paths := admissionPaths(err); !contains(paths, want) {
				t.Errorf("the API server refused at %v, want %s (%v)", paths, want, err)
			}
		})
	}
}

// TestUpstreamURLsAdmitted: https anywhere, and plain http to a Service in
// the cluster, pass both admission and the compiler.
func TestUpstreamURLsAdmitted(t *testing.T) {
	ns := newNamespace(t)
	lists := map[policy.ListRef]string{{Name: "robocallers", Key: "numbers.txt"}: "+12125550143\n"}
	for i, u := range []string{
		"https://bot.example.com/api/calls",
		"https://10.0.0.7:8443/api/calls",
		"http://bot.telephony.svc/api/calls",
		"http://bot.telephony.svc:8080/api/calls",
		"http://bot.telephony.svc.cluster.local/api/calls",
		"http://Bot.Telephony.SVC.Cluster.Local:8080/api/calls",
	} {
		t.Run(u, func(t *testing.T) {
			cp := testPolicy(ns, fmt.Sprintf("upstream-%d", i))
			cp.Spec.Upstream = &callsv1alpha1.UpstreamSpec{URL: u}
			src := &policy.Source{Namespace: cp.Namespace, Name: cp.Name, Spec: *cp.Spec.DeepCopy(), Lists: lists}
			if _, err := policy.Compile(src); err != nil {
				t.Errorf("the compiler refused it: %v", err)
			}
			if err := k8s.Create(context.Background(), cp); err != nil {
				t.Errorf("the API server refused it: %v", err)
			}
		})
	}
}

// compilerOnlySpecs are invalid specs the CRD cannot check (regexes, CEL,
// time zones, numbers, number lists): the API server admits them and the
// controller's compile refuses them, setting Stalled (callpolicy_controller_test).
func compilerOnlySpecs() []invalidSpec {
	callers := func(s *callsv1alpha1.CallPolicySpec) *callsv1alpha1.CallerMatch { return s.Rules[0].Match.Callers }
	return []invalidSpec{
		{"number pattern not RE2", func(s *callsv1alpha1.CallPolicySpec) { callers(s).NumberPatterns = []string{"^+1(900"} }, "spec.rules[0].match.callers.numberPatterns[0]"},
		{"display name pattern not RE2", func(s *callsv1alpha1.CallPolicySpec) { callers(s).DisplayNamePatterns = []string{"Bob(?=by)"} }, "spec.rules[0].match.callers.displayNamePatterns[0]"},
		{"number not a phone number", func(s *callsv1alpha1.CallPolicySpec) { callers(s).Numbers = []string{"+1 425 CALL"} }, "spec.rules[0].match.callers.numbers[0]"},
		{"prefix not a phone number", func(s *callsv1alpha1.CallPolicySpec) { callers(s).NumberPrefixes = []string{"x*"} }, "spec.rules[0].match.callers.numberPrefixes[0]"},
		{"CEL that does not compile", func(s *callsv1alpha1.CallPolicySpec) { s.Rules[0].Match.Expression = "caller.number.startsWith(" }, "spec.rules[0].match.expression"},
		{"CEL not bool", func(s *callsv1alpha1.CallPolicySpec) { s.Rules[0].Match.Expression = "caller.number" }, "spec.rules[0].match.expression"},
		{"unknown time zone", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Match.Schedule = &callsv1alpha1.Schedule{TimeZone: "Mars/Olympus", Windows: []callsv1alpha1.Window{{Days: []callsv1alpha1.Weekday{"Mon"}, Start: "18:00", End: "20:00"}}}
		}, "spec.rules[0].match.schedule.timeZone"},
		{"list line not a number", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[1].Match.Callers.NumberLists[0].ConfigMapKeyRef.Key = "broken.txt"
		}, "spec.rules[1].match.callers.numberLists[0] (configmap robocallers key broken.txt) line 1"},
	}
}

// TestCompilerOnlyRulesAreAdmitted: the specs only the compiler can check
// pass admission and are refused by policy.Compile at their field path.
func TestCompilerOnlyRulesAreAdmitted(t *testing.T) {
	ns := newNamespace(t)
	lists := map[policy.ListRef]string{
		{Name: "robocallers", Key: "numbers.txt"}: "+12125550143\n",
		{Name: "robocallers", Key: "broken.txt"}:  "+1212555014x\n",
	}
	for i, tt := range compilerOnlySpecs() {
		t.Run(tt.name, func(t *testing.T) {
			cp := testPolicy(ns, fmt.Sprintf("compiler-only-%d", i))
			tt.mutate(&cp.Spec)
			compileRefuses(t, cp, lists, tt.path)
			if err := k8s.Create(context.Background(), cp); err != nil {
				t.Errorf("the API server refused what only the compiler checks: %v", err)
			}
		})
	}
}

// celMessages are the messages of the CRD's x-kubernetes-validations rules.
var celMessages = func() []string {
	b, err := os.ReadFile("../config/crd/bases/calls.callguard.dev_callpolicies.yaml")
	if err != nil {
		panic(err)
	}
	var crd any
	if err := yaml.Unmarshal(b, &crd); err != nil {
		panic(err)
	}
	var msgs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if rules, ok := v["x-kubernetes-validations"].([]any); ok {
				for _, r := range rules {
					if m, ok := r.(map[string]any)["message"].(string); ok && !slices.Contains(msgs, m) {
						msgs = append(msgs, m)
					}
				}
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(crd)
	return msgs
}()

func hasMessage(ce *policy.CompileError, path, msg string) bool {
	for _, fe := range ce.Errors {
		if fe.Path == path && strings.HasPrefix(fe.Message, msg) {
			return true
		}
	}
	return false
}

// compileRefuses asserts that policy.Compile refuses the policy's spec with
// an error at path, and returns the CompileError (nil when there is none).
func compileRefuses(t *testing.T, cp *callsv1alpha1.CallPolicy, lists map[policy.ListRef]string, path string) *policy.CompileError {
	t.Helper()
	_, err := policy.Compile(&policy.Source{Namespace: cp.Namespace, Name: cp.Name, Spec: *cp.Spec.DeepCopy(), Lists: lists})
	var ce *policy.CompileError
	if !errors.As(err, &ce) {
		t.Errorf("Compile = %v, want a CompileError at %s", err, path)
		return nil
	}
	if paths := compilePaths(ce); !contains(paths, path) {
		t.Errorf("Compile refused at %v, want %s (%v)", paths, path, err)
	}
	return ce
}

func compilePaths(ce *policy.CompileError) []string {
	paths := make([]string, len(ce.Errors))
	for i, fe := range ce.Errors {
		paths[i] = fe.Path
	}
	return paths
}

// admissionPaths returns the field paths of an API server refusal.
func admissionPaths(err error) []string {
	var se *apierrors.StatusError
	if !errors.As(err, &se) || se.ErrStatus.Details == nil {
		return nil
	}
	var paths []string
	for _, c := range se.ErrStatus.Details.Causes {
		paths = append(paths, c.Field)
	}
	return paths
}

func contains(ss []string, s string) bool {
	for _, v := range ss {
		if v == s || strings.HasPrefix(v, s+" ") {
			return true
		}
	}
	return false
}
