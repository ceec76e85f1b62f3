package policy

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/callguard/callguard/api/v1alpha1"
)

func TestCompileErrors(t *testing.T) {
	list := func(name, key string) []v1alpha1.NumberList {
		return []v1alpha1.NumberList{{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: name, Key: key}}}
	}
	type want struct{ path, msg string }
	tests := []struct {
		name   string
		modify func(*Source)
		want   []want
	}{
		{"bot", func(s *Source) {
			s.Spec.Bot.AppID = "not-a-uuid"
			s.Spec.Bot.TenantID = ""
			s.Spec.Bot.Credentials.SecretRef = &v1alpha1.SecretReference{Name: "bot"}
		}, []want{
			{"spec.bot.appId", `must be a UUID such as 6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10, got "not-a-uuid"`},
			{"spec.bot.tenantId", "required"},
			{"spec.bot.credentials", "exactly one of secretRef or workloadIdentity must be set"},
		}},
		{"no credentials", func(s *Source) { s.Spec.Bot.Credentials = v1alpha1.Credentials{} },
			[]want{{"spec.bot.credentials", "exactly one of secretRef or workloadIdentity must be set"}}},
		{"top-level enums and urls", func(s *Source) {
			s.Spec.Mode = "Audit"
			s.Spec.DefaultAction = "Drop"
			s.Spec.Graph.Endpoint = "graph.microsoft.com"
			s.Spec.Graph.APIVersion = "v2"
			s.Spec.Upstream = &v1alpha1.UpstreamSpec{URL: "ftp://bot"}
			s.Spec.Receiver.CallbackPath = "api/calls"
			s.Spec.Graph.CABundle = &v1alpha1.ConfigMapKeyReference{Name: "emulator-ca"}
		}, []want{
			{"spec.graph.endpoint", "must be an https:// URL: the bot's Graph access tokens are sent there"},
			{"spec.graph.apiVersion", `must be one of v1.0, beta, got "v2"`},
			{"spec.graph.caBundle.key", "required"},
			{"spec.upstream.url", "must be an https:// URL, or http:// only to a cluster-local Service host (*.svc or *.svc.cluster.local): every forwarded notification carries Graph's bearer token"},
			{"spec.mode", `must be one of Enforce, DryRun, got "Audit"`},
			{"spec.defaultAction", `must be one of Allow, Reject, Redirect, got "Drop"`},
			{"spec.receiver.callbackPath", `must be a URL path such as /api/calls, got "api/calls"`},
		}},
		{"plain http for keys, tokens and credentials", func(s *Source) {
			s.Spec.Graph.Endpoint = "http://graph.microsoft.com"
			s.Spec.Graph.AuthorityHost = "http://login.microsoftonline.com/"
			s.Spec.Graph.OpenIDConfigURL = "http://api.aps.skype.com/v1/.well-known/OpenIdConfiguration"
		}, []want{
			{"spec.graph.endpoint", "must be an https:// URL: the bot's Graph access tokens are sent there"},
			{"spec.graph.authorityHost", "must be an https:// URL: the bot's credentials are sent there"},
			{"spec.graph.openIDConfigURL", "must be an https:// URL: whoever serves the signing keys can forge every notification"},
		}},
		{"default redirect and reason", func(s *Source) {
			s.Spec.DefaultReason = "busy"
			s.Spec.DefaultRedirect = &v1alpha1.RedirectSpec{}
		}, []want{
			{"spec.defaultReason", "defaultReason is only allowed when defaultAction is Reject"},
			{"spec.defaultRedirect", "defaultRedirect is only allowed when defaultAction is Redirect"},
		}},
		{"default redirect missing", func(s *Source) { s.Spec.DefaultAction = "Redirect" },
			[]want{{"spec.defaultRedirect", "defaultRedirect is required when defaultAction is Redirect"}}},
		{"rules", func(s *Source) {
			s.Spec.Rules = []v1alpha1.Rule{
				{Name: "Bad_Name", Action: "Allow", Reason: "busy"},
				{Name: "dup", Action: "Redirect"},
				{Name: "dup", Action: "Reject", Reason: "rude", Redirect: &v1alpha1.RedirectSpec{Targets: []v1alpha1.RedirectTarget{{Phone: "+1"}}}},
				{Name: "targets", Action: "Redirect", Redirect: &v1alpha1.RedirectSpec{TimeoutSeconds: 5, Targets: []v1alpha1.RedirectTarget{
					{Phone: "+14255550100", User: "u"}, {}, {Phone: "4255550100"},
				}}},
				{Action: "Allow"},
			}
		}, []want{
			{"spec.rules[0].name", `must be a DNS label (at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit), got "Bad_Name"`},
			{"spec.rules[0].reason", "reason is only allowed when action is Reject"},
			{"spec.rules[1].redirect", "redirect is required when action is Redirect and not allowed otherwise"},
			{"spec.rules[2].name", `rule names must be unique: "dup" is also the name of spec.rules[1]`},
			{"spec.rules[2].reason", `must be one of none, busy, forbidden, got "rude"`},
			{"spec.rules[2].redirect", "redirect is required when action is Redirect and not allowed otherwise"},
			{"spec.rules[3].redirect.targets[0]", "a redirect target needs exactly one of phone, user or applicationInstance"},
			{"spec.rules[3].redirect.targets[1]", "a redirect target needs exactly one of phone, user or applicationInstance"},
			{"spec.rules[3].redirect.targets[2].phone", `must be an E.164 number such as +14255550100, got "4255550100"`},
			{"spec.rules[3].redirect.timeoutSeconds", "must be 15 to 90, got 5"},
			{"spec.rules[4].name", "required"},
		}},
		{"too many targets", func(s *Source) {
			targets := make([]v1alpha1.RedirectTarget, 26)
			for i := range targets {
				targets[i].User = fmt.Sprint(i)
			}
			s.Spec.Rules = []v1alpha1.Rule{{Name: "r", Action: "Redirect", Redirect: &v1alpha1.RedirectSpec{Targets: targets}}}
		}, []want{{"spec.rules[0].redirect.targets", "redirect needs 1 to 25 targets, got 26"}}},
		{"match fields", func(s *Source) {
			s.Spec.Rules = []v1alpha1.Rule{reject("m", v1alpha1.Match{
				Callers: &v1alpha1.CallerMatch{
					Numbers:             []string{"+1 425 CALL", "+1900*"},
					NumberPrefixes:      []string{"+1900", "x*"},
					NumberPatterns:      []string{`^\+1`, `(`},
					IdentityTypes:       []v1alpha1.IdentityType{"phone", "robot"},
					IDs:                 []string{""},
					DisplayNamePatterns: []string{`[a-`},
				},
				Modalities: []v1alpha1.Modality{"Video"},
				Schedule: &v1alpha1.Schedule{TimeZone: "Mars/Olympus", Windows: []v1alpha1.Window{
					{Days: []v1alpha1.Weekday{"Monday"}, Start: "8:00", End: "24:01"},
					{Start: "24:00", End: "24:00"},
				}},
				Expression: `caller.number + 1`,
			})}
		}, []want{
			{"spec.rules[0].match.callers.numbers[0]", `"+1 425 CALL": not a phone number: only digits may follow the leading + or 00 (spaces, -, ., ( and ) are ignored)`},
			{"spec.rules[0].match.callers.numbers[1]", `"+1900*": a number cannot end in *; prefixes go in numberPrefixes`},
			{"spec.rules[0].match.callers.numberPrefixes[1]", `"x*": not a phone number: only digits may follow the leading + or 00 (spaces, -, ., ( and ) are ignored)`},
			{"spec.rules[0].match.callers.numberPatterns[1]", "error parsing regexp: missing closing ): `(`"},
			{"spec.rules[0].match.callers.identityTypes[1]", `must be one of phone, user, guest, application, applicationInstance, acsUser, onPremises, encrypted, anonymous, unknown, got "robot"`},
			{"spec.rules[0].match.callers.ids[0]", "must not be empty"},
			{"spec.rules[0].match.callers.displayNamePatterns[0]", "error parsing regexp: missing closing ]: `[a-`"},
			{"spec.rules[0].match.modalities[0]", `must be one of audio, video, videoBasedScreenSharing, data, got "Video"`},
			{"spec.rules[0].match.schedule.timeZone", `unknown IANA time zone "Mars/Olympus"`},
			{"spec.rules[0].match.schedule.windows[0].start", `must be HH:MM from 00:00 to 23:59, got "8:00"`},
			{"spec.rules[0].match.schedule.windows[0].end", `must be HH:MM from 00:00 to 24:00, got "24:01"`},
			{"spec.rules[0].match.schedule.windows[0].days[0]", `must be one of Mon, Tue, Wed, Thu, Fri, Sat, Sun, got "Monday"`},
			{"spec.rules[0].match.schedule.windows[1].start", `must be HH:MM from 00:00 to 23:59, got "24:00"`},
			{"spec.rules[0].match.schedule.windows[1].days", "at least one day is required"},
			{"spec.rules[0].match.expression", "ERROR: <input>:1:15: found no matching overload for '_+_' applied to '(string, int)'"},
		}},
		{"limits", func(s *Source) {
			s.Spec.Graph.Issuers = make([]string, 17)
			s.Spec.Rules = make([]v1alpha1.Rule, 513)
			for i := range s.Spec.Rules {
				s.Spec.Rules[i] = reject(fmt.Sprintf("r%d", i), v1alpha1.Match{})
			}
			s.Spec.Rules[0].Action = ""
			s.Spec.Rules[1].Match.Expression = "true || " + strings.Repeat("true || ", 512) + "true"
		}, []want{
			{"spec.graph.issuers", "at most 16 items are allowed, got 17"},
			{"spec.rules", "at most 512 items are allowed, got 513"},
			{"spec.rules[0].action", "required: one of Allow, Reject, Redirect"},
			{"spec.rules[0].reason", "reason is only allowed when action is Reject"},
			{"spec.rules[1].match.expression", "at most 4096 characters are allowed, got 4108"},
		}},
		{"expression not bool", func(s *Source) {
			s.Spec.Rules = []v1alpha1.Rule{reject("e", v1alpha1.Match{Expression: `caller.number`})}
		}, []want{{"spec.rules[0].match.expression", "must evaluate to bool, got string"}}},
		{"expression syntax", func(s *Source) {
			s.Spec.Rules = []v1alpha1.Rule{reject("e", v1alpha1.Match{Expression: `caller.type ==`})}
		}, []want{{"spec.rules[0].match.expression", "ERROR: <input>:1:15: Syntax error: mismatched input '<EOF>'"}}},
		{"time zone Local", func(s *Source) {
			s.Spec.Rules = []v1alpha1.Rule{reject("e", v1alpha1.Match{Schedule: &v1alpha1.Schedule{TimeZone: "Local"}})}
		}, []want{
			{"spec.rules[0].match.schedule.timeZone", "must be an IANA time zone such as Europe/Berlin, not Local"},
			{"spec.rules[0].match.schedule.windows", "at least one window is required"},
		}},
		{"lists", func(s *Source) {
			s.Spec.Rules = []v1alpha1.Rule{
				reject("missing", callers(v1alpha1.CallerMatch{NumberLists: list("robocallers", "nope.txt")})),
				reject("broken", callers(v1alpha1.CallerMatch{NumberLists: list("robocallers", "numbers.txt")})),
				reject("again", callers(v1alpha1.CallerMatch{NumberLists: list("robocallers", "numbers.txt")})),
				reject("noname", callers(v1alpha1.CallerMatch{NumberLists: list("", "")})),
			}
			s.Lists = map[ListRef]string{{"robocallers", "numbers.txt"}: "# header\n+12065550123\n+1 206 CALL\n\n+1809*5\n*\n+1234567890123456789\n"}
		}, []want{
			{"spec.rules[0].match.callers.numberLists[0]", "configmap robocallers key nope.txt: not found"},
			{"spec.rules[1].match.callers.numberLists[0] (configmap robocallers key numbers.txt) line 3", `"+1 206 CALL": not a phone number: only digits may follow the leading + or 00 (spaces, -, ., ( and ) are ignored)`},
			{"spec.rules[1].match.callers.numberLists[0] (configmap robocallers key numbers.txt) line 5", `"+1809*5": not a phone number: only digits may follow the leading + or 00 (spaces, -, ., ( and ) are ignored)`},
			{"spec.rules[1].match.callers.numberLists[0] (configmap robocallers key numbers.txt) line 6", `"*": not a phone number: only digits may follow the leading + or 00 (spaces, -, ., ( and ) are ignored)`},
			{"spec.rules[1].match.callers.numberLists[0] (configmap robocallers key numbers.txt) line 7", `"+1234567890123456789": has 19 digits, more than 18`},
			{"spec.rules[3].match.callers.numberLists[0].configMapKeyRef.name", "required"},
			{"spec.rules[3].match.callers.numberLists[0].configMapKeyRef.key", "required"},
			{"spec.rules[3].match.callers.numberLists[0]", "configmap  key : not found"},
		}},
		{"repeat and blockFor", func(s *Source) {
			rep := func(calls int32, within time.Duration) v1alpha1.Match {
				return callers(v1alpha1.CallerMatch{Repeat: &v1alpha1.RepeatMatch{Calls: calls, Within: metav1.Duration{Duration: within}}})
			}
			block := func(r v1alpha1.Rule, d time.Duration) v1alpha1.Rule {
				r.BlockFor = &metav1.Duration{Duration: d}
				return r
			}
			s.Spec.Rules = []v1alpha1.Rule{
				reject("few", rep(1, 30*time.Second)),
				reject("many", rep(1001, 25*time.Hour)),
				reject("ok", rep(2, time.Minute)),
				block(reject("short", v1alpha1.Match{}), 30*time.Second),
				block(reject("long", v1alpha1.Match{}), 721*time.Hour),
				block(v1alpha1.Rule{Name: "allow", Action: v1alpha1.ActionAllow}, time.Hour),
			}
		}, []want{
			{"spec.rules[0].match.callers.repeat.calls", "must be 2 to 1000, got 1"},
			{"spec.rules[0].match.callers.repeat.within", "within must be between 1m and 24h, got 30s"},
			{"spec.rules[1].match.callers.repeat.calls", "must be 2 to 1000, got 1001"},
			{"spec.rules[1].match.callers.repeat.within", "within must be between 1m and 24h, got 25h0m0s"},
			{"spec.rules[3].blockFor", "blockFor must be between 1m and 720h, got 30s"},
			{"spec.rules[4].blockFor", "blockFor must be between 1m and 720h, got 721h0m0s"},
			{"spec.rules[5].blockFor", "blockFor is only allowed on Reject, Redirect and Announce rules"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := testSource()
			tt.modify(src)
			_, err := Compile(src)
			var ce *CompileError
			if !errors.As(err, &ce) {
				t.Fatalf("Compile error = %v, want a *CompileError", err)
			}
			var got []want
			for _, fe := range ce.Errors {
				got = append(got, want{fe.Path, fe.Message})
			}
			if len(got) != len(tt.want) {
				t.Errorf("got %d errors, want %d:\n%s", len(got), len(tt.want), strings.ReplaceAll(err.Error(), "; ", "\n"))
			}
			for i := range min(len(got), len(tt.want)) {
				// CEL's messages go on with a caret diagram; the first line is ours to check.
				if got[i].path != tt.want[i].path || !strings.HasPrefix(got[i].msg, tt.want[i].msg) {
					t.Errorf("error %d = %s: %s\n             want %s: %s", i, got[i].path, got[i].msg, tt.want[i].path, tt.want[i].msg)
				}
			}
		})
	}
}

func TestCompileErrorString(t *testing.T) {
	err := &CompileError{Errors: []FieldError{{"spec.a", "bad"}, {"spec.b", "worse"}}}
	if got, want := err.Error(), "spec.a: bad; spec.b: worse"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestListLimit(t *testing.T) {
	var a, b strings.Builder
	for i := range maxListEntries / 2 {
		fmt.Fprintf(&a, "+1%010d\n", i)
		fmt.Fprintf(&b, "+2%010d\n", i)
	}
	b.WriteString("+3\n")
	ref := func(name string) []v1alpha1.NumberList {
		return []v1alpha1.NumberList{{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: name, Key: "k"}}}
	}
	src := testSource(
		reject("a", callers(v1alpha1.CallerMatch{NumberLists: ref("a")})),
		// The same list again does not count twice.
		reject("a-again", callers(v1alpha1.CallerMatch{NumberLists: ref("a")})),
	)
	src.Lists = map[ListRef]string{{"a", "k"}: a.String(), {"b", "k"}: b.String()}
	if _, err := Compile(src); err != nil {
		t.Fatalf("half the limit twice over one list: %v", err)
	}
	src.Spec.Rules = append(src.Spec.Rules, reject("b", callers(v1alpha1.CallerMatch{NumberLists: ref("b")})))
	_, err := Compile(src)
	want := "spec.rules[2].match.callers.numberLists[0] (configmap b key k): number lists hold more than 1000000 entries across the policy"
	if err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
}

func TestListErrorsAreCapped(t *testing.T) {
	src := testSource(reject("r", callers(v1alpha1.CallerMatch{NumberLists: []v1alpha1.NumberList{{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "l", Key: "k"}}}})))
	src.Lists = map[ListRef]string{{"l", "k"}: strings.Repeat("name,number\n", 25)}
	_, err := Compile(src)
	var ce *CompileError
	if !errors.As(err, &ce) || len(ce.Errors) != maxListErrors+1 {
		t.Fatalf("err = %v, want %d errors", err, maxListErrors+1)
	}
	if last := ce.Errors[maxListErrors]; last.Message != "15 more lines are not numbers" {
		t.Errorf("last error = %v", last)
	}
}

func TestDefaultsApplied(t *testing.T) {
	src := testSource(v1alpha1.Rule{Name: "s", Action: "Redirect",
		Redirect: &v1alpha1.RedirectSpec{Targets: []v1alpha1.RedirectTarget{{User: "u"}}},
		Match:    v1alpha1.Match{Schedule: &v1alpha1.Schedule{Windows: []v1alpha1.Window{{Days: []v1alpha1.Weekday{"Mon"}, Start: "00:00", End: "01:00"}}}}})
	src.Spec.Receiver.Autoscaling = &v1alpha1.AutoscalingSpec{MaxReplicas: 4}
	src.Spec.Receiver.NetworkPolicy = &v1alpha1.NetworkPolicySpec{}
	src.Spec.Receiver.Expose = &v1alpha1.ExposeSpec{HTTPRoute: &v1alpha1.HTTPRouteExpose{
		ParentRefs: []gatewayv1.ParentReference{{Name: "public"}}, Hostnames: []gatewayv1.Hostname{"calls.example.com"}}}
	p := mustCompile(t, src)
	s := p.Spec()
	two, seventy, yes := int32(2), int32(70), true
	group, kind := gatewayv1.Group("gateway.networking.k8s.io"), gatewayv1.Kind("Gateway")
	checks := []struct {
		name      string
		got, want any
	}{
		{"mode", s.Mode, v1alpha1.ModeEnforce},
		{"defaultAction", s.DefaultAction, v1alpha1.ActionAllow},
		{"graph.endpoint", s.Graph.Endpoint, "https://graph.microsoft.com"},
		{"graph.apiVersion", s.Graph.APIVersion, v1alpha1.APIVersion("v1.0")},
		{"graph.authorityHost", s.Graph.AuthorityHost, "https://login.microsoftonline.com/"},
		{"graph.openIDConfigURL", s.Graph.OpenIDConfigURL, "https://api.aps.skype.com/v1/.well-known/OpenIdConfiguration"},
		{"graph.issuers", s.Graph.Issuers, []string{"https://api.botframework.com", "https://graph.microsoft.com"}},
		{"redirect.timeoutSeconds", s.Rules[0].Redirect.TimeoutSeconds, int32(30)},
		{"schedule.timeZone", s.Rules[0].Match.Schedule.TimeZone, "UTC"},
		{"receiver.callbackPath", s.Receiver.CallbackPath, "/api/calls"},
		{"receiver.replicas", s.Receiver.Replicas, &two},
		{"receiver.autoscaling.minReplicas", s.Receiver.Autoscaling.MinReplicas, &two},
		{"receiver.autoscaling.targetCPUUtilizationPercentage", s.Receiver.Autoscaling.TargetCPUUtilizationPercentage, &seventy},
		{"receiver.networkPolicy.enabled", s.Receiver.NetworkPolicy.Enabled, &yes},
		{"receiver.expose.httpRoute.parentRefs[0].group", s.Receiver.Expose.HTTPRoute.ParentRefs[0].Group, &group},
		{"receiver.expose.httpRoute.parentRefs[0].kind", s.Receiver.Expose.HTTPRoute.ParentRefs[0].Kind, &kind},
		{"rules", p.Rules(), 1},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	// Explicit values stay.
	src.Spec.Mode, src.Spec.Graph.APIVersion = v1alpha1.ModeDryRun, "beta"
	zero := int32(0)
	src.Spec.Receiver.Replicas = &zero
	s = mustCompile(t, src).Spec()
	if s.Mode != v1alpha1.ModeDryRun || s.Graph.APIVersion != "beta" || *s.Receiver.Replicas != 0 {
		t.Errorf("explicit values overridden: %+v", s)
	}
}

func TestWarnings(t *testing.T) {
	src := testSource(
		reject("no-phone", callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"user"}, Numbers: []string{"+1"}})),
		reject("empty-list", callers(v1alpha1.CallerMatch{NumberLists: []v1alpha1.NumberList{{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "l", Key: "k"}}}})),
		reject("empty-list-or-number", callers(v1alpha1.CallerMatch{Numbers: []string{"+1"}, NumberLists: []v1alpha1.NumberList{{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "l", Key: "k"}}}})),
		reject("everyone", v1alpha1.Match{}),
		reject("late", callers(v1alpha1.CallerMatch{Numbers: []string{"+1"}})),
		reject("later", v1alpha1.Match{}),
	)
	src.Lists = map[ListRef]string{{"l", "k"}: "# nothing\n"}
	p := mustCompile(t, src)
	want := []FieldError{
		{"spec.rules[0].match.callers", "number fields only hold for phone callers and identityTypes leaves out phone, so this rule never matches"},
		{"spec.rules[1].match.callers.numberLists", "the lists have no entries, so this rule never matches"},
		{"spec.rules[2].match.callers.numberLists", "the lists have no entries, so only the other number fields can match"},
		{"spec.rules[4]", `rule "late" never matches: rule "everyone" (spec.rules[3]) has an empty match and decides every call first`},
		{"spec.rules[5]", `rule "later" never matches: rule "everyone" (spec.rules[3]) has an empty match and decides every call first`},
	}
	if got := p.Warnings(); !reflect.DeepEqual(got, want) {
		t.Errorf("Warnings =\n%v\nwant\n%v", got, want)
	}
}

func TestListRefs(t *testing.T) {
	l := func(name, key string) v1alpha1.NumberList {
		return v1alpha1.NumberList{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: name, Key: key}}
	}
	spec := testSpec(
		reject("a", callers(v1alpha1.CallerMatch{NumberLists: []v1alpha1.NumberList{l("b", "2"), l("a", "1")}})),
		reject("b", v1alpha1.Match{}),
		reject("c", callers(v1alpha1.CallerMatch{NumberLists: []v1alpha1.NumberList{l("b", "1"), l("a", "1")}})),
	)
	want := []ListRef{{"a", "1"}, {"b", "1"}, {"b", "2"}}
	if got := ListRefs(&spec); !reflect.DeepEqual(got, want) {
		t.Errorf("ListRefs = %v, want %v", got, want)
	}
	if got := ListRefs(&v1alpha1.CallPolicySpec{}); len(got) != 0 {
		t.Errorf("ListRefs(empty) = %v", got)
	}
}

func TestCompileNil(t *testing.T) {
	if _, err := Compile(nil); err == nil {
		t.Error("Compile(nil) succeeded")
	}
}
