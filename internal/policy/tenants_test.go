package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
)

const (
	customerA = "a1b2c3d4-0000-4000-8000-00000000000a"
	customerB = "b1b2c3d4-0000-4000-8000-00000000000b"
)

// match.tenants holds for the tenant the call arrived in (DecideIn's),
// in any case, and not for the caller's tenant.
func TestMatchTenantsDecidesByTheCallsTenant(t *testing.T) {
	p := mustCompile(t, testSource(
		reject("customer-a", v1alpha1.Match{Tenants: []string{strings.ToUpper(customerA)}}),
		reject("customer-b-video", v1alpha1.Match{Tenants: []string{customerB}, Modalities: []v1alpha1.Modality{"video"}}),
	))
	call := phoneCall("+14255550100", "audio")
	for _, tt := range []struct{ tenant, rule string }{
		{customerA, "customer-a"},
		{strings.ToUpper(customerA), "customer-a"},
		{customerB, ""}, // audio only
		{testTenantID, ""},
		{"", ""},
	} {
		d := p.DecideIn(call, wed, tt.tenant)
		if d.Rule != tt.rule || d.Tenant != tt.tenant {
			t.Errorf("DecideIn in %q: rule %q tenant %q, want rule %q", tt.tenant, d.Rule, d.Tenant, tt.rule)
		}
	}
	if d := p.DecideIn(phoneCall("+14255550100", "video"), wed, customerB); d.Rule != "customer-b-video" {
		t.Errorf("video call in customer B: rule %q", d.Rule)
	}
	// Decide knows no tenant: no match.tenants holds.
	if d := p.Decide(call, wed); d.Rule != "" {
		t.Errorf("Decide: rule %q, want the default", d.Rule)
	}
	// The caller's tenant is callers.tenantIds, not match.tenants.
	caller := userCallInTenant(customerA)
	if d := p.DecideIn(caller, wed, customerB); d.Rule != "" {
		t.Errorf("a caller of tenant A calling in tenant B: rule %q, want the default", d.Rule)
	}
	upper := strings.ToUpper(customerA)
	if allocs := testing.AllocsPerRun(100, func() { p.DecideIn(call, wed, upper) }); allocs != 0 {
		t.Errorf("DecideIn allocates %v times", allocs)
	}
}

func userCallInTenant(tenant string) *graph.Call {
	c := phoneCall("+14255550100", "audio")
	c.Source.Identity.Phone = nil
	c.Source.Identity.User = &graph.Identity{ID: "u1", TenantID: tenant}
	return c
}

func TestCompileChecksTenants(t *testing.T) {
	for _, tt := range []struct {
		name  string
		spec  func(*v1alpha1.CallPolicySpec)
		paths []string
	}{
		{"additional tenant not a uuid", func(s *v1alpha1.CallPolicySpec) {
			s.Bot.AdditionalTenants = []string{customerA, "fabrikam"}
		}, []string{"spec.bot.additionalTenants[1]"}},
		{"* with others", func(s *v1alpha1.CallPolicySpec) {
			s.Bot.AdditionalTenants = []string{customerA, "*"}
		}, []string{"spec.bot.additionalTenants"}},
		{"too many additional tenants", func(s *v1alpha1.CallPolicySpec) {
			s.Bot.AdditionalTenants = make([]string, 1001)
			for i := range s.Bot.AdditionalTenants {
				s.Bot.AdditionalTenants[i] = customerA
			}
		}, []string{"spec.bot.additionalTenants"}},
		{"match tenant not a uuid", func(s *v1alpha1.CallPolicySpec) {
			s.Rules = []v1alpha1.Rule{reject("r", v1alpha1.Match{Tenants: []string{"*"}})}
		}, []string{"spec.rules[0].match.tenants[0]"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := testSource()
			tt.spec(&src.Spec)
			_, err := Compile(src)
			var ce *CompileError
			if !errors.As(err, &ce) {
				t.Fatalf("Compile = %v, want a CompileError", err)
			}
			var got []string
			for _, fe := range ce.Errors {
				got = append(got, fe.Path)
			}
			if strings.Join(got, ",") != strings.Join(tt.paths, ",") {
				t.Errorf("errors at %v, want %v (%v)", got, tt.paths, err)
			}
		})
	}
	src := testSource()
	src.Spec.Bot.AdditionalTenants = []string{"*"}
	if _, err := Compile(src); err != nil {
		t.Errorf(`"*" alone: %v`, err)
	}
}
