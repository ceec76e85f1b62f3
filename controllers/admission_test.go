package controllers

import (
	"context"
	"testing"

	"k8s.io/apimachinery/pkg/api/equality"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
)

// The invalid specs the API server's admission refuses are in one table with
// the compiler's: validation_test.go.

// TestAdmissionDefaultsAreTheCompilers: the valid base policy is accepted
// with every caller identity type the API names, and the API server's
// defaults (the CRD's markers) are what policy.Compile fills in for a spec
// that never went through an API server (v1alpha1's Default* constants).
func TestAdmissionDefaultsAreTheCompilers(t *testing.T) {
	ns := newNamespace(t)
	cp := testPolicy(ns, "valid")
	cp.Spec.Rules[0].Match.Callers = &callsv1alpha1.CallerMatch{IdentityTypes: []callsv1alpha1.IdentityType{
		callsv1alpha1.IdentityPhone, callsv1alpha1.IdentityUser, callsv1alpha1.IdentityGuest, callsv1alpha1.IdentityApplication,
		callsv1alpha1.IdentityApplicationInstance, callsv1alpha1.IdentityACSUser, callsv1alpha1.IdentityOnPremises,
		callsv1alpha1.IdentityEncrypted, callsv1alpha1.IdentityAnonymous, callsv1alpha1.IdentityUnknown,
	}}
	// Every defaulted field present: a redirect and a schedule.
	cp.Spec.Rules = append(cp.Spec.Rules, callsv1alpha1.Rule{
		Name: "after-hours", Action: callsv1alpha1.ActionRedirect,
		Redirect: &callsv1alpha1.RedirectSpec{Targets: []callsv1alpha1.RedirectTarget{{Phone: "+14255550199"}}},
		Match: callsv1alpha1.Match{Schedule: &callsv1alpha1.Schedule{Windows: []callsv1alpha1.Window{
			{Days: []callsv1alpha1.Weekday{"Mon"}, Start: "18:00", End: "08:00"},
		}}},
	})
	offline := cp.Spec.DeepCopy()
	must(t, k8s.Create(context.Background(), cp))

	p, err := policy.Compile(&policy.Source{Namespace: ns, Name: cp.Name, Spec: *offline,
		Lists: map[policy.ListRef]string{{Name: "robocallers", Key: "numbers.txt"}: "+12125550143\n"}})
	must(t, err)
	if got := p.Spec(); !equality.Semantic.DeepEqual(*got, cp.Spec) {
		t.Errorf("defaults differ:\ncompiler:   %+v\nAPI server: %+v", *got, cp.Spec)
	}
	if cp.Spec.Mode != callsv1alpha1.DefaultMode || cp.Spec.Graph.Endpoint != callsv1alpha1.DefaultGraphEndpoint ||
		*cp.Spec.Receiver.Replicas != callsv1alpha1.DefaultReceiverReplicas || cp.Spec.Rules[2].Redirect.TimeoutSeconds != callsv1alpha1.DefaultRedirectTimeoutSeconds ||
		cp.Spec.Rules[2].Match.Schedule.TimeZone != callsv1alpha1.DefaultTimeZone {
		t.Errorf("defaults not applied: %+v", cp.Spec)
	}
}
