package controllers

import (
	"context"
	"strings"
	"testing"

	"k8s.io/utils/ptr"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

// TestAdmissionRejectsInvalidPolicies runs the CRD's schema and CEL rules on
// the real API server.
func TestAdmissionRejectsInvalidPolicies(t *testing.T) {
	ns := newNamespace(t)
	redirect := &callsv1alpha1.RedirectSpec{Targets: []callsv1alpha1.RedirectTarget{{Phone: "+14255550199"}}}
	tests := []struct {
		name   string
		mutate func(*callsv1alpha1.CallPolicySpec)
		want   string
	}{
		{"duplicate rule names", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[1].Name = s.Rules[0].Name
		}, "rule names must be unique"},
		{"reason without Reject", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Action = callsv1alpha1.ActionAllow
		}, "reason is only allowed when action is Reject"},
		{"Redirect without redirect", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Action, s.Rules[0].Reason = callsv1alpha1.ActionRedirect, ""
		}, "redirect is required when action is Redirect and not allowed otherwise"},
		{"redirect on a Reject rule", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Redirect = redirect
		}, "redirect is required when action is Redirect and not allowed otherwise"},
		{"no credential source", func(s *callsv1alpha1.CallPolicySpec) {
			s.Bot.Credentials = callsv1alpha1.Credentials{}
		}, "exactly one of secretRef or workloadIdentity must be set"},
		{"two credential sources", func(s *callsv1alpha1.CallPolicySpec) {
			s.Bot.Credentials.WorkloadIdentity = &callsv1alpha1.WorkloadIdentity{}
		}, "exactly one of secretRef or workloadIdentity must be set"},
		{"zero redirect targets", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Action, s.Rules[0].Reason = callsv1alpha1.ActionRedirect, ""
			s.Rules[0].Redirect = &callsv1alpha1.RedirectSpec{Targets: []callsv1alpha1.RedirectTarget{}}
		}, "redirect needs 1 to 25 targets"},
		{"26 redirect targets", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Action, s.Rules[0].Reason = callsv1alpha1.ActionRedirect, ""
			s.Rules[0].Redirect = &callsv1alpha1.RedirectSpec{Targets: make([]callsv1alpha1.RedirectTarget, 26)}
			for i := range s.Rules[0].Redirect.Targets {
				s.Rules[0].Redirect.Targets[i].User = "u"
			}
		}, "must have at most 25 items"},
		{"target with two kinds", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Action, s.Rules[0].Reason = callsv1alpha1.ActionRedirect, ""
			s.Rules[0].Redirect = &callsv1alpha1.RedirectSpec{Targets: []callsv1alpha1.RedirectTarget{{Phone: "+14255550199", User: "u"}}}
		}, "a redirect target needs exactly one of phone, user or applicationInstance"},
		{"defaultAction Redirect without defaultRedirect", func(s *callsv1alpha1.CallPolicySpec) {
			s.DefaultAction = callsv1alpha1.ActionRedirect
		}, "defaultRedirect is required when defaultAction is Redirect"},
		{"defaultRedirect without Redirect", func(s *callsv1alpha1.CallPolicySpec) {
			s.DefaultRedirect = redirect
		}, "defaultRedirect is only allowed when defaultAction is Redirect"},
		{"defaultReason without Reject", func(s *callsv1alpha1.CallPolicySpec) {
			s.DefaultReason = callsv1alpha1.ReasonBusy
		}, "defaultReason is only allowed when defaultAction is Reject"},
		{"appId not a uuid", func(s *callsv1alpha1.CallPolicySpec) {
			s.Bot.AppID = "hotline-bot"
		}, "spec.bot.appId"},
		{"unknown action", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Action = "Drop"
		}, `Unsupported value: "Drop"`},
		{"rule name not a DNS label", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Name = "Premium Rate"
		}, "spec.rules[0].name"},
		{"redirect timeout out of range", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Action, s.Rules[0].Reason = callsv1alpha1.ActionRedirect, ""
			s.Rules[0].Redirect = &callsv1alpha1.RedirectSpec{Targets: redirect.Targets, TimeoutSeconds: 5}
		}, "should be greater than or equal to 15"},
		{"negative replicas", func(s *callsv1alpha1.CallPolicySpec) {
			s.Receiver.Replicas = ptr.To[int32](-1)
		}, "spec.receiver.replicas"},
		{"graph endpoint over plain http", func(s *callsv1alpha1.CallPolicySpec) {
			s.Graph.Endpoint = "http://graph.microsoft.com"
		}, "must be an https:// URL: the bot's Graph access tokens are sent there"},
		{"authority over plain http", func(s *callsv1alpha1.CallPolicySpec) {
			s.Graph.AuthorityHost = "http://login.microsoftonline.com/"
		}, "must be an https:// URL: the bot's credentials are sent there"},
		{"signing keys over plain http", func(s *callsv1alpha1.CallPolicySpec) {
			s.Graph.OpenIDConfigURL = "http://api.aps.skype.com/v1/.well-known/OpenIdConfiguration"
		}, "must be an https:// URL: whoever serves the signing keys can forge every notification"},
		{"identity type not in the API", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Match.Callers = &callsv1alpha1.CallerMatch{IdentityTypes: []callsv1alpha1.IdentityType{"device"}}
		}, `Unsupported value: "device"`},
		{"window end not HH:MM", func(s *callsv1alpha1.CallPolicySpec) {
			s.Rules[0].Match.Schedule = &callsv1alpha1.Schedule{Windows: []callsv1alpha1.Window{{Days: []callsv1alpha1.Weekday{"Mon"}, Start: "18:00", End: "25:00"}}}
		}, "spec.rules[0].match.schedule.windows[0].end"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cp := testPolicy(ns, "invalid-"+strings.Repeat("x", i%3)+string(rune('a'+i)))
			tt.mutate(&cp.Spec)
			err := k8s.Create(context.Background(), cp)
			if err == nil {
				t.Fatalf("created an invalid CallPolicy; want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v\nwant it to contain %q", err, tt.want)
			}
		})
	}

	// And the valid base policy is accepted, defaults applied, with every
	// caller identity type the API names.
	cp := testPolicy(ns, "valid")
	cp.Spec.Rules[0].Match.Callers = &callsv1alpha1.CallerMatch{IdentityTypes: []callsv1alpha1.IdentityType{
		callsv1alpha1.IdentityPhone, callsv1alpha1.IdentityUser, callsv1alpha1.IdentityGuest, callsv1alpha1.IdentityApplication,
		callsv1alpha1.IdentityApplicationInstance, callsv1alpha1.IdentityACSUser, callsv1alpha1.IdentityOnPremises,
		callsv1alpha1.IdentityEncrypted, callsv1alpha1.IdentityAnonymous, callsv1alpha1.IdentityUnknown,
	}}
	must(t, k8s.Create(context.Background(), cp))
	if cp.Spec.Mode != callsv1alpha1.ModeEnforce || cp.Spec.DefaultAction != callsv1alpha1.ActionAllow ||
		cp.Spec.Graph.Endpoint != "https://graph.microsoft.com" || cp.Spec.Receiver.CallbackPath != "/api/calls" ||
		ptr.Deref(cp.Spec.Receiver.Replicas, 0) != 2 || len(cp.Spec.Graph.Issuers) != 2 {
		t.Errorf("defaults not applied: %+v", cp.Spec)
	}
}
