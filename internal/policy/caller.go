package policy

import (
	"strings"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
)

// Caller is how a policy sees call.source.identity.
type Caller struct {
	Type v1alpha1.IdentityType
	// Number is the normalized number of a phone caller; "" for other types
	// and for numbers that do not normalize.
	Number      string
	ID          string
	DisplayName string
	TenantID    string
}

// CallerOf reads the caller of a call as docs/matching.md "How a call is read" says.
func CallerOf(call *graph.Call) Caller {
	set := sourceIdentity(call)
	typ, who := callerIdentity(set)
	c := Caller{Type: typ, DisplayName: memberField(set, who, displayNameOf), TenantID: memberField(set, who, tenantIDOf)}
	if typ == v1alpha1.IdentityAnonymous || who == nil { // who is nil for kinds not modelled
		return c
	}
	c.ID = who.ID
	if typ == v1alpha1.IdentityPhone {
		c.Number, _ = NormalizeNumber(who.ID)
	}
	return c
}

func sourceIdentity(call *graph.Call) *graph.IdentitySet {
	if call == nil || call.Source == nil {
		return nil
	}
	return call.Source.Identity
}

// callerIdentity returns the caller's type and the identity that determined
// it (the phone identity of an anonymous phone caller; nil without one, or
// when only kinds of identity not modelled here are present).
func callerIdentity(set *graph.IdentitySet) (v1alpha1.IdentityType, *graph.Identity) {
	if set == nil {
		return v1alpha1.IdentityAnonymous, nil
	}
	switch {
	case set.Phone != nil:
		id := strings.TrimSpace(set.Phone.ID)
		if id == "" || strings.EqualFold(id, "anonymous") {
			return v1alpha1.IdentityAnonymous, set.Phone
		}
		return v1alpha1.IdentityPhone, set.Phone
	case set.User != nil:
		return v1alpha1.IdentityUser, set.User
	case set.Guest != nil:
		return v1alpha1.IdentityGuest, set.Guest
	case set.ApplicationInstance != nil:
		return v1alpha1.IdentityApplicationInstance, set.ApplicationInstance
	case set.Application != nil:
		return v1alpha1.IdentityApplication, set.Application
	case set.AzureCommunicationServicesUser != nil:
		return v1alpha1.IdentityACSUser, set.AzureCommunicationServicesUser
	case set.OnPremises != nil:
		return v1alpha1.IdentityOnPremises, set.OnPremises
	case set.Encrypted != nil:
		return v1alpha1.IdentityEncrypted, set.Encrypted
	// Someone identified by a kind no rule can name is "unknown", never
	// "anonymous": a "no anonymous callers" rule must not catch them.
	case set.Device != nil:
		return v1alpha1.IdentityUnknown, set.Device
	case set.AssertedIdentity != nil:
		return v1alpha1.IdentityUnknown, set.AssertedIdentity
	case set.OtherMembers > 0:
		return v1alpha1.IdentityUnknown, nil
	}
	return v1alpha1.IdentityAnonymous, nil
}

func displayNameOf(id *graph.Identity) string { return id.DisplayName }
func tenantIDOf(id *graph.Identity) string    { return id.TenantID }

// memberField returns a field of the identity that determined the caller's
// type or, when that is empty, of the first other member that has it: Graph
// often puts the display name or tenant on a sibling member.
func memberField(set *graph.IdentitySet, who *graph.Identity, get func(*graph.Identity) string) string {
	if who != nil {
		if v := get(who); v != "" {
			return v
		}
	}
	if set == nil {
		return ""
	}
	for _, m := range [...]*graph.Identity{set.Phone, set.User, set.Guest, set.ApplicationInstance,
		set.Application, set.AzureCommunicationServicesUser, set.OnPremises, set.Encrypted} {
		if m != nil && m != who {
			if v := get(m); v != "" {
				return v
			}
		}
	}
	return ""
}
