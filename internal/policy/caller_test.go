package policy

import (
	"strings"
	"testing"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
)

// incomingCallBody is an incoming-call notification shaped as in Graph's
// call reject/redirect documentation, with the caller's identity set
// replaced by IDENTITY.
const incomingCallBody = `{
  "@odata.type": "#microsoft.graph.commsNotifications",
  "value": [
    {
      "@odata.type": "#microsoft.graph.commsNotification",
      "changeType": "created",
      "resourceUrl": "/communications/calls/57dab8b1-894c-409a-b240-bd8beae78896",
      "resourceData": {
        "@odata.type": "#microsoft.graph.call",
        "@odata.id": "/communications/calls/57dab8b1-894c-409a-b240-bd8beae78896",
        "state": "incoming",
        "direction": "incoming",
        "source": {
          "@odata.type": "#microsoft.graph.participantInfo",
          "identity": IDENTITY,
          "region": "westus",
          "languageId": "en-US"
        },
        "targets": [
          {
            "@odata.type": "#microsoft.graph.invitationParticipantInfo",
            "identity": {
              "@odata.type": "#microsoft.graph.identitySet",
              "application": {
                "@odata.type": "#microsoft.graph.identity",
                "displayName": "Calling Bot",
                "id": "2891555a-92ff-42e6-80fa-6e1300c6b5c6"
              }
            }
          }
        ],
        "requestedModalities": [ "audio" ]
      }
    }
  ]
}`

// TestCallerKindsInGraphPayloads reads callers from notification bodies as
// Graph sends them and decides them with a policy that rejects anonymous
// callers: only callers with no identity, or a withheld number, are
// anonymous; on-premises users have a type of their own, and identities of
// other kinds (a device) are unknown, so the anonymous rule spares them.
func TestCallerKindsInGraphPayloads(t *testing.T) {
	typed := func(name string, reason v1alpha1.RejectReason, types ...v1alpha1.IdentityType) v1alpha1.Rule {
		r := reject(name, callers(v1alpha1.CallerMatch{IdentityTypes: types}))
		r.Reason = reason
		return r
	}
	p := mustCompile(t, testSource(
		typed("no-anonymous", v1alpha1.ReasonForbidden, v1alpha1.IdentityAnonymous),
		typed("skype-for-business", v1alpha1.ReasonBusy, v1alpha1.IdentityOnPremises),
	))
	tests := []struct {
		name     string
		identity string
		wantType v1alpha1.IdentityType
		wantRule string
	}{
		{"teams user", `{"@odata.type": "#microsoft.graph.identitySet",
			"user": {"@odata.type": "#microsoft.graph.identity", "displayName": "John", "id": "112f7296-5fa4-42ca-bae8-6a692b15d4b8"}}`,
			v1alpha1.IdentityUser, ""},
		{"skype for business server user", `{"@odata.type": "#microsoft.graph.communicationsIdentitySet",
			"onPremises": {"@odata.type": "#microsoft.graph.identity", "displayName": "Kim Akers", "id": "sip:kim@contoso.com"},
			"endpointType": "default"}`,
			v1alpha1.IdentityOnPremises, "skype-for-business"},
		{"device only", `{"@odata.type": "#microsoft.graph.identitySet",
			"device": {"@odata.type": "#microsoft.graph.identity", "displayName": "Conference Room 4", "id": "0e1f31b4-70f4-4cbb-9bd6-0c1a2d3e4f50"}}`,
			v1alpha1.IdentityUnknown, ""},
		{"a kind callguard does not model", `{"@odata.type": "#microsoft.graph.communicationsIdentitySet",
			"spoolIdentity": {"@odata.type": "#microsoft.graph.identity", "id": "5b9b1e3a"}}`,
			v1alpha1.IdentityUnknown, ""},
		{"withheld number", `{"@odata.type": "#microsoft.graph.communicationsIdentitySet",
			"phone": {"@odata.type": "#microsoft.graph.identity", "id": "anonymous"}}`,
			v1alpha1.IdentityAnonymous, "no-anonymous"},
		{"phone number", `{"@odata.type": "#microsoft.graph.communicationsIdentitySet",
			"phone": {"@odata.type": "#microsoft.graph.identity", "id": "+14258828080"}}`,
			v1alpha1.IdentityPhone, ""},
		{"no identity member", `{"@odata.type": "#microsoft.graph.communicationsIdentitySet", "endpointType": "default"}`,
			v1alpha1.IdentityAnonymous, "no-anonymous"},
		{"null identity", `null`, v1alpha1.IdentityAnonymous, "no-anonymous"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := graph.DecodeNotifications([]byte(strings.Replace(incomingCallBody, "IDENTITY", tt.identity, 1)))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			call := n.Value[0].ResourceData
			if got := CallerOf(call).Type; got != tt.wantType {
				t.Errorf("caller type = %q, want %q", got, tt.wantType)
			}
			if got := p.Decide(call, wed).Rule; got != tt.wantRule {
				t.Errorf("deciding rule = %q, want %q", got, tt.wantRule)
			}
		})
	}
}
