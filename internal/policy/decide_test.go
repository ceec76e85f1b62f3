package policy

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
)

func TestCallerOf(t *testing.T) {
	tests := []struct {
		name string
		call *graph.Call
		want Caller
	}{
		{"nil call", nil, Caller{Type: v1alpha1.IdentityAnonymous}},
		{"no source", &graph.Call{}, Caller{Type: v1alpha1.IdentityAnonymous}},
		{"empty identity set", callFrom(&graph.IdentitySet{}), Caller{Type: v1alpha1.IdentityAnonymous}},
		{"only a device", callFrom(&graph.IdentitySet{Device: &graph.Identity{ID: "d", DisplayName: "Room 4"}}),
			Caller{Type: v1alpha1.IdentityUnknown, ID: "d", DisplayName: "Room 4"}},
		{"only an asserted identity", callFrom(&graph.IdentitySet{AssertedIdentity: &graph.Identity{ID: "a"}}), Caller{Type: v1alpha1.IdentityUnknown, ID: "a"}},
		{"endpointType only", callFrom(&graph.IdentitySet{EndpointType: "default"}), Caller{Type: v1alpha1.IdentityAnonymous}},
		{"anonymous phone with a device", callFrom(&graph.IdentitySet{Phone: &graph.Identity{ID: "anonymous"}, Device: &graph.Identity{ID: "d"}}),
			Caller{Type: v1alpha1.IdentityAnonymous}},
		{"phone", phoneCall("+1 (425) 555-0100"), Caller{Type: v1alpha1.IdentityPhone, Number: "+14255550100", ID: "+1 (425) 555-0100"}},
		{"phone invalid number", phoneCall("+1 425 CALL"), Caller{Type: v1alpha1.IdentityPhone, ID: "+1 425 CALL"}},
		{"phone empty id", phoneCall(""), Caller{Type: v1alpha1.IdentityAnonymous}},
		{"phone anonymous", callFrom(&graph.IdentitySet{Phone: &graph.Identity{ID: "Anonymous", DisplayName: "Withheld"}}),
			Caller{Type: v1alpha1.IdentityAnonymous, DisplayName: "Withheld"}},
		{"phone wins over user", callFrom(&graph.IdentitySet{User: &graph.Identity{ID: "u", DisplayName: "Ann", TenantID: "t"}, Phone: &graph.Identity{ID: "+1425"}}),
			Caller{Type: v1alpha1.IdentityPhone, Number: "+1425", ID: "+1425", DisplayName: "Ann", TenantID: "t"}},
		{"user", callFrom(&graph.IdentitySet{User: &graph.Identity{ID: "u1", DisplayName: "Ann", TenantID: "t1"}}),
			Caller{Type: v1alpha1.IdentityUser, ID: "u1", DisplayName: "Ann", TenantID: "t1"}},
		{"guest", callFrom(&graph.IdentitySet{Guest: &graph.Identity{ID: "g1"}}), Caller{Type: v1alpha1.IdentityGuest, ID: "g1"}},
		{"applicationInstance before application", callFrom(&graph.IdentitySet{Application: &graph.Identity{ID: "a"}, ApplicationInstance: &graph.Identity{ID: "ai"}}),
			Caller{Type: v1alpha1.IdentityApplicationInstance, ID: "ai"}},
		{"application", callFrom(&graph.IdentitySet{Application: &graph.Identity{ID: "a"}}), Caller{Type: v1alpha1.IdentityApplication, ID: "a"}},
		{"acs user", callFrom(&graph.IdentitySet{AzureCommunicationServicesUser: &graph.Identity{ID: "8:acs:1"}}), Caller{Type: v1alpha1.IdentityACSUser, ID: "8:acs:1"}},
		{"on-premises", callFrom(&graph.IdentitySet{OnPremises: &graph.Identity{ID: "sfb-1", DisplayName: "Kim", TenantID: "t"}}),
			Caller{Type: v1alpha1.IdentityOnPremises, ID: "sfb-1", DisplayName: "Kim", TenantID: "t"}},
		{"acs user before on-premises", callFrom(&graph.IdentitySet{OnPremises: &graph.Identity{ID: "sfb"}, AzureCommunicationServicesUser: &graph.Identity{ID: "8:acs:1"}}),
			Caller{Type: v1alpha1.IdentityACSUser, ID: "8:acs:1"}},
		{"on-premises before encrypted and device", callFrom(&graph.IdentitySet{Encrypted: &graph.Identity{ID: "e"}, OnPremises: &graph.Identity{ID: "sfb"}, Device: &graph.Identity{ID: "d"}}),
			Caller{Type: v1alpha1.IdentityOnPremises, ID: "sfb"}},
		{"encrypted", callFrom(&graph.IdentitySet{Encrypted: &graph.Identity{ID: "e"}}), Caller{Type: v1alpha1.IdentityEncrypted, ID: "e"}},
		{"encrypted before device", callFrom(&graph.IdentitySet{Device: &graph.Identity{ID: "d"}, Encrypted: &graph.Identity{ID: "e"}}),
			Caller{Type: v1alpha1.IdentityEncrypted, ID: "e"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CallerOf(tt.call); got != tt.want {
				t.Errorf("CallerOf = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestMatchFields decides one call against a policy with one rule "r" and
// checks whether the rule matched.
func TestMatchFields(t *testing.T) {
	user := func(id, tenant, name string) *graph.Call {
		return callFrom(&graph.IdentitySet{User: &graph.Identity{ID: id, TenantID: tenant, DisplayName: name}})
	}
	lists := map[ListRef]string{
		{"robocallers", "numbers.txt"}: "# spam\n+1 (206) 555-0123\n\n0044 20 7946 0958 # reported\n+1809555*\n",
		{"more", "list"}:               "+15550001\n",
		{"empty", "list"}:              "# nothing yet\n",
	}
	list := func(refs ...ListRef) v1alpha1.Match {
		cm := v1alpha1.CallerMatch{}
		for _, r := range refs {
			cm.NumberLists = append(cm.NumberLists, v1alpha1.NumberList{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: r.Name, Key: r.Key}})
		}
		return callers(cm)
	}
	mixed := v1alpha1.CallerMatch{
		Numbers:        []string{"+14255550100"},
		NumberPrefixes: []string{"+1900"},
		NumberPatterns: []string{`^\+4420`},
		NumberLists:    list(ListRef{"robocallers", "numbers.txt"}).Callers.NumberLists,
	}
	tests := []struct {
		name  string
		match v1alpha1.Match
		call  *graph.Call
		want  bool
	}{
		{"empty match", v1alpha1.Match{}, phoneCall("+1"), true},
		{"empty callers", callers(v1alpha1.CallerMatch{}), user("u", "", ""), true},

		{"numbers exact", callers(v1alpha1.CallerMatch{Numbers: []string{"+14255550100"}}), phoneCall("+14255550100"), true},
		{"numbers caller formatted", callers(v1alpha1.CallerMatch{Numbers: []string{"+14255550100"}}), phoneCall("001 (425) 555-0100"), true},
		{"numbers entry formatted", callers(v1alpha1.CallerMatch{Numbers: []string{"+1 425.555.0100"}}), phoneCall("14255550100"), true},
		{"numbers other", callers(v1alpha1.CallerMatch{Numbers: []string{"+14255550100"}}), phoneCall("+14255550101"), false},
		{"numbers is not a prefix", callers(v1alpha1.CallerMatch{Numbers: []string{"+1425555010"}}), phoneCall("+14255550100"), false},
		{"numbers invalid caller", callers(v1alpha1.CallerMatch{Numbers: []string{"+14255550100"}}), phoneCall("+1425555010O"), false},
		{"numbers need a phone caller", callers(v1alpha1.CallerMatch{Numbers: []string{"+14255550100"}}), user("+14255550100", "", ""), false},

		{"prefix", callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"+1900", "+44909"}}), phoneCall("+19005550100"), true},
		{"prefix second", callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"+1900", "+44909"}}), phoneCall("0044 909 1234"), true},
		{"prefix normalized", callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"1 (900)"}}), phoneCall("+19005550100"), true},
		{"prefix with star", callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"+1900*"}}), phoneCall("+19005550100"), true},
		{"prefix equal to number", callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"+1900"}}), phoneCall("+1900"), true},
		{"prefix miss", callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"+1900"}}), phoneCall("+19015550100"), false},
		{"prefix longer than number", callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"+19005"}}), phoneCall("+1900"), false},

		{"long number: prefix", callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"+4420"}}), phoneCall("+44 20 " + strings.Repeat("1", 40)), true},
		{"long number: exact cannot match", callers(v1alpha1.CallerMatch{Numbers: []string{"+4420"}}), phoneCall("+4420" + strings.Repeat("1", 40)), false},
		{"long number: pattern", callers(v1alpha1.CallerMatch{NumberPatterns: []string{`^\+4420(1{40})$`}}), phoneCall("+44 20 " + strings.Repeat("1", 40)), true},
		{"long number: expression", v1alpha1.Match{Expression: `size(caller.number) == 45`}, phoneCall("+44 20 " + strings.Repeat("1", 40)), true},
		{"pattern", callers(v1alpha1.CallerMatch{NumberPatterns: []string{`^\+1312555\d{4}$`}}), phoneCall("+1 312 555 0000"), true},
		{"pattern searched unanchored", callers(v1alpha1.CallerMatch{NumberPatterns: []string{`555`}}), phoneCall("+13125550000"), true},
		{"pattern sees the plus", callers(v1alpha1.CallerMatch{NumberPatterns: []string{`^\+44`}}), phoneCall("0044 1"), true},
		{"pattern miss", callers(v1alpha1.CallerMatch{NumberPatterns: []string{`^\+44`}}), phoneCall("+1312"), false},
		{"pattern invalid number", callers(v1alpha1.CallerMatch{NumberPatterns: []string{`.*`}}), phoneCall("withheld"), false},

		{"list exact", list(ListRef{"robocallers", "numbers.txt"}), phoneCall("+12065550123"), true},
		{"list 00 entry", list(ListRef{"robocallers", "numbers.txt"}), phoneCall("+442079460958"), true},
		{"list prefix entry", list(ListRef{"robocallers", "numbers.txt"}), phoneCall("+18095551234"), true},
		{"list miss", list(ListRef{"robocallers", "numbers.txt"}), phoneCall("+12065550124"), false},
		{"second list", list(ListRef{"robocallers", "numbers.txt"}, ListRef{"more", "list"}), phoneCall("+15550001"), true},
		{"empty list", list(ListRef{"empty", "list"}), phoneCall("+15550001"), false},

		{"type phone", callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"phone"}}), phoneCall("+1"), true},
		{"type phone with invalid number", callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"phone"}}), phoneCall("+1 CALL"), true},
		{"type anonymous", callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"anonymous", "guest"}}), phoneCall("anonymous"), true},
		{"type anonymous without identity", callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"anonymous"}}), &graph.Call{ID: "x"}, true},
		{"type guest", callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"anonymous", "guest"}}), callFrom(&graph.IdentitySet{Guest: &graph.Identity{ID: "g"}}), true},
		{"type miss", callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"anonymous", "guest"}}), user("u", "", ""), false},
		{"type acsUser", callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"acsUser"}}),
			callFrom(&graph.IdentitySet{AzureCommunicationServicesUser: &graph.Identity{ID: "8:acs:x"}}), true},

		{"ids user", callers(v1alpha1.CallerMatch{IDs: []string{"8a34a46b-3d17-4adc-8dce-dc4e7d572698"}}), user("8A34A46B-3D17-4ADC-8DCE-DC4E7D572698", "", ""), true},
		{"ids upper in policy", callers(v1alpha1.CallerMatch{IDs: []string{"ABC"}}), user("abc", "", ""), true},
		{"ids application instance", callers(v1alpha1.CallerMatch{IDs: []string{"ai"}}),
			callFrom(&graph.IdentitySet{ApplicationInstance: &graph.Identity{ID: "ai"}}), true},
		{"ids any member", callers(v1alpha1.CallerMatch{IDs: []string{"u"}}),
			callFrom(&graph.IdentitySet{Phone: &graph.Identity{ID: "+1"}, User: &graph.Identity{ID: "u"}}), true},
		{"ids not the phone number", callers(v1alpha1.CallerMatch{IDs: []string{"+1425"}}), phoneCall("+1425"), false},
		{"ids miss", callers(v1alpha1.CallerMatch{IDs: []string{"u2"}}), user("u1", "", ""), false},

		{"tenant", callers(v1alpha1.CallerMatch{TenantIDs: []string{"t1"}}), user("u", "T1", ""), true},
		{"tenant miss", callers(v1alpha1.CallerMatch{TenantIDs: []string{"t1"}}), user("u", "t2", ""), false},
		{"tenant absent", callers(v1alpha1.CallerMatch{TenantIDs: []string{"t1"}}), user("u", "", ""), false},

		{"display name", callers(v1alpha1.CallerMatch{DisplayNamePatterns: []string{`(?i)^test`}}), user("u", "", "Test User"), true},
		{"display name miss", callers(v1alpha1.CallerMatch{DisplayNamePatterns: []string{`^Test$`}}), user("u", "", "Test User"), false},

		{"modality any", v1alpha1.Match{Modalities: []v1alpha1.Modality{"video", "data"}}, phoneCall("+1", "audio", "video"), true},
		{"modality miss", v1alpha1.Match{Modalities: []v1alpha1.Modality{"video"}}, phoneCall("+1", "audio"), false},
		{"modality none requested", v1alpha1.Match{Modalities: []v1alpha1.Modality{"audio"}}, &graph.Call{}, false},

		{"schedule", v1alpha1.Match{Schedule: &v1alpha1.Schedule{Windows: []v1alpha1.Window{{Days: []v1alpha1.Weekday{"Wed"}, Start: "11:00", End: "13:00"}}}}, phoneCall("+1"), true},
		{"schedule miss", v1alpha1.Match{Schedule: &v1alpha1.Schedule{Windows: []v1alpha1.Window{{Days: []v1alpha1.Weekday{"Thu"}, Start: "11:00", End: "13:00"}}}}, phoneCall("+1"), false},

		{"expression", v1alpha1.Match{Expression: `caller.type == "phone" && caller.number.startsWith("+1312555") && size(call.requestedModalities) > 1`},
			phoneCall("+1 312 555 0000", "audio", "video"), true},
		{"expression false", v1alpha1.Match{Expression: `caller.type == "phone" && caller.number.startsWith("+1312555") && size(call.requestedModalities) > 1`},
			phoneCall("+1 312 555 0000", "audio"), false},
		{"expression on invalid number", v1alpha1.Match{Expression: `caller.type == "phone" && caller.number == "" && caller.id == "+1 CALL"`}, phoneCall("+1 CALL"), true},
		{"expression now", v1alpha1.Match{Expression: `now.getDayOfWeek("UTC") == 3 && now.getHours() == 12`}, phoneCall("+1"), true},
		{"expression call fields", v1alpha1.Match{Expression: `call.direction == "incoming" && call.state == "incoming" && call.tenantId == "" && call.id == "call-1"`}, phoneCall("+1"), true},

		{"AND of fields", v1alpha1.Match{Callers: &v1alpha1.CallerMatch{NumberPrefixes: []string{"+1"}}, Modalities: []v1alpha1.Modality{"video"}}, phoneCall("+1425", "audio"), false},
		// The four number fields are one condition (docs/matching.md): any of them may hold.
		{"numbers OR prefixes: the number", callers(v1alpha1.CallerMatch{Numbers: []string{"+14255550100"}, NumberPrefixes: []string{"+1900"}}), phoneCall("+14255550100"), true},
		{"numbers OR prefixes: the prefix", callers(v1alpha1.CallerMatch{Numbers: []string{"+14255550100"}, NumberPrefixes: []string{"+1900"}}), phoneCall("+19005550100"), true},
		{"numbers OR prefixes: neither", callers(v1alpha1.CallerMatch{Numbers: []string{"+14255550100"}, NumberPrefixes: []string{"+1900"}}), phoneCall("+14255550101"), false},
		{"numbers OR prefixes both hold", callers(v1alpha1.CallerMatch{Numbers: []string{"+19005550100"}, NumberPrefixes: []string{"+1900"}}), phoneCall("+19005550100"), true},
		{"all four: numbers", callers(mixed), phoneCall("+14255550100"), true},
		{"all four: prefix", callers(mixed), phoneCall("+19005550199"), true},
		{"all four: pattern", callers(mixed), phoneCall("+442071234567"), true},
		{"all four: list number", callers(mixed), phoneCall("+12065550123"), true},
		{"all four: list prefix", callers(mixed), phoneCall("+18095550000"), true},
		{"all four: none", callers(mixed), phoneCall("+33123456789"), false},
		{"all four: invalid number", callers(mixed), phoneCall("+1900 CALL"), false},
		{"all four: not a phone caller", callers(mixed), user("+14255550100", "", ""), false},
		{"pattern OR empty list", callers(v1alpha1.CallerMatch{NumberPatterns: []string{`^\+44`}, NumberLists: list(ListRef{"empty", "list"}).Callers.NumberLists}), phoneCall("+4420"), true},
		{"number condition AND modality", v1alpha1.Match{Callers: &mixed, Modalities: []v1alpha1.Modality{"video"}}, phoneCall("+14255550100", "audio"), false},
		{"number condition AND modality hold", v1alpha1.Match{Callers: &mixed, Modalities: []v1alpha1.Modality{"video"}}, phoneCall("+442071234567", "video"), true},
		{"number condition AND display name", v1alpha1.Match{Callers: &v1alpha1.CallerMatch{NumberPatterns: []string{`^\+44`}, Numbers: []string{"+14255550100"}, DisplayNamePatterns: []string{"^Bob"}}}, phoneCall("+14255550100"), false},
		{"type AND id", callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"guest"}, IDs: []string{"u"}}), user("u", "", ""), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := testSource(reject("r", tt.match))
			src.Lists = lists
			p := mustCompile(t, src)
			d := p.Decide(tt.call, wed)
			if got := d.Rule == "r"; got != tt.want {
				t.Errorf("matched = %v, want %v (decision %+v)", got, tt.want, d)
			}
			if p.CELErrors() != 0 {
				t.Errorf("CELErrors = %d, want 0", p.CELErrors())
			}
		})
	}
}

func TestFirstMatchAndDefaults(t *testing.T) {
	redirect := &v1alpha1.RedirectSpec{Targets: []v1alpha1.RedirectTarget{{Phone: "+14255550199"}}}
	src := testSource(
		v1alpha1.Rule{Name: "vip", Action: v1alpha1.ActionAllow, Match: callers(v1alpha1.CallerMatch{Numbers: []string{"+19005550100"}})},
		v1alpha1.Rule{Name: "premium", Action: v1alpha1.ActionReject, Reason: v1alpha1.ReasonForbidden, Match: callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"+1900"}})},
		v1alpha1.Rule{Name: "no-reason", Action: v1alpha1.ActionReject, Match: callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"+1901"}})},
		v1alpha1.Rule{Name: "video", Action: v1alpha1.ActionRedirect, Redirect: redirect, Match: v1alpha1.Match{Modalities: []v1alpha1.Modality{"video"}}},
	)
	p := mustCompile(t, src)
	tests := []struct {
		name string
		call *graph.Call
		want Decision
	}{
		{"first rule wins over a later one", phoneCall("+19005550100", "video"), Decision{CallID: "call-1", Action: "Allow", Rule: "vip", Mode: "Enforce"}},
		{"second rule", phoneCall("+19005550101", "video"), Decision{CallID: "call-1", Action: "Reject", Reason: "forbidden", Rule: "premium", Mode: "Enforce"}},
		{"reject without reason says none", phoneCall("+19015550101"), Decision{CallID: "call-1", Action: "Reject", Reason: "none", Rule: "no-reason", Mode: "Enforce"}},
		{"redirect", phoneCall("+1425", "audio", "video"), Decision{CallID: "call-1", Action: "Redirect", Rule: "video", Mode: "Enforce", Redirect: p.Spec().Rules[3].Redirect}},
		{"default allow", phoneCall("+1425"), Decision{CallID: "call-1", Action: "Allow", Mode: "Enforce"}},
		{"call id from @odata.id", &graph.Call{ODataID: "/app/calls/57DAB8B1"}, Decision{CallID: "57DAB8B1", Action: "Allow", Mode: "Enforce"}},
		{"nil call", nil, Decision{Action: "Allow", Mode: "Enforce"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Decide(tt.call, wed); got != tt.want {
				t.Errorf("Decide = %+v, want %+v", got, tt.want)
			}
		})
	}
	if got := p.Spec().Rules[3].Redirect.TimeoutSeconds; got != 30 {
		t.Errorf("redirect timeoutSeconds defaulted to %d, want 30", got)
	}
	if src.Spec.Rules[3].Redirect.TimeoutSeconds != 0 {
		t.Error("Compile modified the source spec")
	}
}

func TestDefaultActionsAndDryRun(t *testing.T) {
	redirect := &v1alpha1.RedirectSpec{Targets: []v1alpha1.RedirectTarget{{User: "u-operator"}}, TimeoutSeconds: 45}
	tests := []struct {
		name   string
		modify func(*v1alpha1.CallPolicySpec)
		want   Decision
	}{
		{"default reject", func(s *v1alpha1.CallPolicySpec) { s.DefaultAction = "Reject" }, Decision{CallID: "call-1", Action: "Reject", Reason: "none", Mode: "Enforce"}},
		{"default reject with reason", func(s *v1alpha1.CallPolicySpec) { s.DefaultAction, s.DefaultReason = "Reject", "busy" },
			Decision{CallID: "call-1", Action: "Reject", Reason: "busy", Mode: "Enforce"}},
		{"default redirect", func(s *v1alpha1.CallPolicySpec) { s.DefaultAction, s.DefaultRedirect = "Redirect", redirect },
			Decision{CallID: "call-1", Action: "Redirect", Mode: "Enforce"}},
		{"dry run says what would happen", func(s *v1alpha1.CallPolicySpec) {
			s.Mode = "DryRun"
			s.Rules = []v1alpha1.Rule{reject("block", callers(v1alpha1.CallerMatch{Numbers: []string{"+1425"}}))}
		}, Decision{CallID: "call-1", Action: "Reject", Reason: "busy", Rule: "block", Mode: "DryRun"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := testSource()
			tt.modify(&src.Spec)
			p := mustCompile(t, src)
			got := p.Decide(phoneCall("+1425"), wed)
			if (got.Redirect != nil) != (src.Spec.DefaultRedirect != nil) {
				t.Errorf("Redirect = %+v, want %+v", got.Redirect, src.Spec.DefaultRedirect)
			}
			got.Redirect = nil
			if got != tt.want {
				t.Errorf("Decide = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSchedules(t *testing.T) {
	la, err := time.LoadLocation("America/Los_Angeles")
	if err != nil {
		t.Fatal(err)
	}
	at := func(s string) time.Time {
		t.Helper()
		tm, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	w := func(start, end string, days ...v1alpha1.Weekday) v1alpha1.Window {
		return v1alpha1.Window{Days: days, Start: start, End: end}
	}
	weekdayNights := w("18:00", "08:00", "Mon", "Tue", "Wed", "Thu", "Fri")
	tests := []struct {
		name    string
		zone    string
		windows []v1alpha1.Window
		at      time.Time
		want    bool
	}{
		{"inside, UTC default", "", []v1alpha1.Window{w("09:00", "17:00", "Wed")}, at("2026-03-04T16:59:59Z"), true},
		{"end is exclusive", "", []v1alpha1.Window{w("09:00", "17:00", "Wed")}, at("2026-03-04T17:00:00Z"), false},
		{"start is inclusive", "", []v1alpha1.Window{w("09:00", "17:00", "Wed")}, at("2026-03-04T09:00:00Z"), true},
		{"other day", "", []v1alpha1.Window{w("09:00", "17:00", "Thu")}, at("2026-03-04T12:00:00Z"), false},

		{"past midnight: evening of the start day", "America/Los_Angeles", []v1alpha1.Window{weekdayNights}, time.Date(2026, 3, 4, 19, 0, 0, 0, la), true},
		{"past midnight: morning after the start day", "America/Los_Angeles", []v1alpha1.Window{weekdayNights}, time.Date(2026, 3, 5, 7, 59, 0, 0, la), true},
		{"past midnight: Saturday morning belongs to Friday", "America/Los_Angeles", []v1alpha1.Window{weekdayNights}, time.Date(2026, 3, 7, 7, 0, 0, 0, la), true},
		{"past midnight: Monday morning belongs to Sunday", "America/Los_Angeles", []v1alpha1.Window{weekdayNights}, time.Date(2026, 3, 2, 7, 0, 0, 0, la), false},
		{"past midnight: ends at end", "America/Los_Angeles", []v1alpha1.Window{weekdayNights}, time.Date(2026, 3, 5, 8, 0, 0, 0, la), false},
		{"past midnight: Saturday evening", "America/Los_Angeles", []v1alpha1.Window{weekdayNights}, time.Date(2026, 3, 7, 19, 0, 0, 0, la), false},
		{"in the zone, not in UTC", "America/Los_Angeles", []v1alpha1.Window{weekdayNights}, at("2026-03-04T19:00:00Z"), false},
		{"end equal to start is a full day", "", []v1alpha1.Window{w("06:00", "06:00", "Wed")}, at("2026-03-05T05:59:00Z"), true},

		{"24:00 end: last minute", "", []v1alpha1.Window{w("00:00", "24:00", "Sat")}, at("2026-03-07T23:59:59Z"), true},
		{"24:00 end: next day", "", []v1alpha1.Window{w("00:00", "24:00", "Sat")}, at("2026-03-08T00:00:00Z"), false},
		{"24:00 end: first minute", "", []v1alpha1.Window{w("00:00", "24:00", "Sat")}, at("2026-03-07T00:00:00Z"), true},

		// 2026-03-08 02:00 PST becomes 03:00 PDT in Los Angeles.
		{"spring forward: before", "America/Los_Angeles", []v1alpha1.Window{w("02:30", "04:00", "Sun")}, at("2026-03-08T09:59:00Z"), false},
		{"spring forward: skipped hour starts at 03:00", "America/Los_Angeles", []v1alpha1.Window{w("02:30", "04:00", "Sun")}, at("2026-03-08T10:00:00Z"), true},
		{"spring forward: window in the skipped hour never holds", "America/Los_Angeles", []v1alpha1.Window{w("02:00", "03:00", "Sun")}, at("2026-03-08T10:00:00Z"), false},
		{"spring forward: night window until 06:00 PDT", "America/Los_Angeles", []v1alpha1.Window{w("22:00", "06:00", "Sat")}, at("2026-03-08T12:59:00Z"), true},
		{"spring forward: night window over at 06:00 PDT", "America/Los_Angeles", []v1alpha1.Window{w("22:00", "06:00", "Sat")}, at("2026-03-08T13:00:00Z"), false},
		{"spring forward: night window is not 8 hours long", "America/Los_Angeles", []v1alpha1.Window{w("22:00", "06:00", "Sat")}, at("2026-03-08T13:30:00Z"), false},

		// 2026-11-01 02:00 PDT becomes 01:00 PST: 01:00 to 02:00 happens twice.
		{"fall back: first 01:30", "America/Los_Angeles", []v1alpha1.Window{w("01:00", "02:00", "Sun")}, at("2026-11-01T08:30:00Z"), true},
		{"fall back: second 01:30", "America/Los_Angeles", []v1alpha1.Window{w("01:00", "02:00", "Sun")}, at("2026-11-01T09:30:00Z"), true},
		{"fall back: 02:00 PST", "America/Los_Angeles", []v1alpha1.Window{w("01:00", "02:00", "Sun")}, at("2026-11-01T10:00:00Z"), false},
		{"fall back: night window is not 8 hours long", "America/Los_Angeles", []v1alpha1.Window{w("22:00", "06:00", "Sat")}, at("2026-11-01T13:59:00Z"), true},
		{"fall back: night window over at 06:00 PST", "America/Los_Angeles", []v1alpha1.Window{w("22:00", "06:00", "Sat")}, at("2026-11-01T14:00:00Z"), false},

		{"any window", "Europe/Berlin", []v1alpha1.Window{w("08:00", "09:00", "Mon"), w("12:00", "14:00", "Wed")}, at("2026-03-04T12:30:00Z"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustCompile(t, testSource(reject("r", v1alpha1.Match{Schedule: &v1alpha1.Schedule{TimeZone: tt.zone, Windows: tt.windows}})))
			if got := p.Decide(phoneCall("+1"), tt.at).Rule == "r"; got != tt.want {
				t.Errorf("at %s (%s): holds = %v, want %v", tt.at.UTC().Format(time.RFC3339), tt.at.In(p.rules[0].sched.zone.loc).Format("Mon 15:04 MST"), got, tt.want)
			}
		})
	}
}

func TestCELErrors(t *testing.T) {
	src := testSource(
		reject("needs-phone", v1alpha1.Match{Expression: `call.source.identity.phone.id == "+1"`}),
		reject("dyn-not-bool", v1alpha1.Match{Expression: `call.direction`}),
		v1alpha1.Rule{Name: "fine", Action: v1alpha1.ActionAllow, Match: v1alpha1.Match{Expression: `caller.type == "user"`}},
	)
	p := mustCompile(t, src)
	var mu sync.Mutex
	var got []string
	hp := p.WithCELErrorHandler(func(rule string, err error) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, rule+": "+err.Error())
	})
	d := hp.Decide(callFrom(&graph.IdentitySet{User: &graph.Identity{ID: "u"}}), wed)
	if d.Rule != "fine" {
		t.Errorf("Decide = %+v, want rule fine: failed expressions do not match", d)
	}
	if p.CELErrors() != 2 || hp.CELErrors() != 2 {
		t.Errorf("CELErrors = %d, %d; want 2 on both copies", p.CELErrors(), hp.CELErrors())
	}
	if len(got) != 2 || !strings.HasPrefix(got[0], "needs-phone: ") || !strings.Contains(got[1], "not bool") {
		t.Errorf("handler got %q", got)
	}
}

func TestCELCostLimit(t *testing.T) {
	p := mustCompile(t, testSource(reject("heavy", v1alpha1.Match{
		Expression: `[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, [1,2,3,4,5,6,7,8,9,10].all(c, [1,2,3,4,5,6,7,8,9,10].all(d, [1,2,3,4,5,6,7,8,9,10].all(e, a+b+c+d+e > 0)))))`,
	})))
	var gotErr error
	hp := p.WithCELErrorHandler(func(_ string, err error) { gotErr = err })
	if d := hp.Decide(phoneCall("+1"), wed); d.Rule != "" {
		t.Errorf("Decide = %+v: an expression over its cost limit must not match", d)
	}
	if gotErr == nil || !strings.Contains(gotErr.Error(), "cost") {
		t.Errorf("error = %v, want a cost limit error", gotErr)
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	src := testSource(
		reject("types", callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"user", "guest"}})),
		reject("ids", callers(v1alpha1.CallerMatch{IDs: []string{"abc"}})),
		reject("video", v1alpha1.Match{Modalities: []v1alpha1.Modality{"video"}}),
		reject("night", v1alpha1.Match{Schedule: &v1alpha1.Schedule{TimeZone: "Europe/Berlin", Windows: []v1alpha1.Window{{Days: []v1alpha1.Weekday{"Wed"}, Start: "22:00", End: "06:00"}}}}),
		reject("prefix", callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"+1900"}})),
		reject("list", callers(v1alpha1.CallerMatch{NumberLists: []v1alpha1.NumberList{{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "l", Key: "k"}}}})),
	)
	src.Lists = map[ListRef]string{{"l", "k"}: "+14255550100\n+1206*\n"}
	p := mustCompile(t, src)
	for _, num := range []string{"+14255550100", "1 (425) 555-0100", "+13125550000"} {
		call := phoneCall(num)
		if n := testing.AllocsPerRun(100, func() { p.Decide(call, wed) }); n != 0 {
			t.Errorf("Decide(%q) allocates %v times", num, n)
		}
	}
	guest := callFrom(&graph.IdentitySet{User: &graph.Identity{ID: "ABC"}})
	if n := testing.AllocsPerRun(100, func() { p.Decide(guest, wed) }); n != 0 {
		t.Errorf("Decide(user) allocates %v times", n)
	}
}

func TestConcurrentDecide(t *testing.T) {
	p := mustCompile(t, testSource(
		reject("night", v1alpha1.Match{
			Callers:  &v1alpha1.CallerMatch{NumberPrefixes: []string{"+1555"}},
			Schedule: &v1alpha1.Schedule{TimeZone: "America/Los_Angeles", Windows: []v1alpha1.Window{{Days: []v1alpha1.Weekday{"Sat"}, Start: "22:00", End: "06:00"}}},
		}),
		reject("expr", v1alpha1.Match{Expression: `caller.number.startsWith("+1900")`}),
		reject("pattern", callers(v1alpha1.CallerMatch{NumberPatterns: []string{`^\+44`}})),
	))
	// The two arrival times lie on either side of a DST change, so that the
	// zone's period cache is replaced while other goroutines read it.
	inWindow := time.Date(2026, 3, 8, 12, 59, 0, 0, time.UTC)
	outside := time.Date(2026, 3, 7, 10, 0, 0, 0, time.UTC)
	cases := []struct {
		number string
		at     time.Time
		rule   string
	}{
		{"+19005550100", wed, "expr"},
		{"+442079460958", wed, "pattern"},
		{"+15550000", inWindow, "night"},
		{"+15550000", outside, ""},
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			for j := range 400 {
				c := cases[(i+j)%len(cases)]
				if d := p.Decide(phoneCall(c.number), c.at); d.Rule != c.rule {
					errs <- errors.New("rule " + d.Rule + " for " + c.number + ", want " + c.rule)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestWallClock checks the zone period cache against time.In, across DST
// changes, odd offsets and times before 1970.
func TestWallClock(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, name := range []string{"UTC", "America/Los_Angeles", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Chatham", "America/St_Johns"} {
		z, err := loadZone(name)
		if err != nil {
			t.Fatal(err)
		}
		base := time.Date(2026, 3, 8, 0, 0, 0, 0, time.UTC).Unix()
		for i := range 5000 {
			sec := base + r.Int64N(2*86400) - 86400 // around a DST change: the cache is hit and missed
			if i%5 == 0 {
				sec = r.Int64N(200*365*86400) - 70*365*86400
			}
			at := time.Unix(sec, 0)
			lt := at.In(z.loc)
			d, m := z.wallClock(at)
			if d != lt.Weekday() || m != lt.Hour()*60+lt.Minute() {
				t.Fatalf("%s at %s: wallClock = %s %d, want %s", name, lt, d, m, lt.Format("Mon 15:04"))
			}
		}
	}
}
