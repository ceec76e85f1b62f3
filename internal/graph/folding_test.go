package graph

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// Bodies that Go's encoding/json and the case-insensitive modes of .NET
// serializers read with a member the strict reading does not see: ſ
// (U+017F) folds to s, K (U+212A, Kelvin) to k.
const (
	// foldedStateBody: the receiver would read an established call and
	// forward it; the upstream reads "ſtate" as state, incoming.
	foldedStateBody = `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/f1","resourceData":{"@odata.type":"#microsoft.graph.call","state":"established","ſtate":"incoming","source":{"identity":{"phone":{"id":"+15550009999"}}}}}]}`
	// foldedSourceBody: the receiver would allow the VIP; the upstream
	// reads the blocked caller.
	foldedSourceBody = `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/f2","resourceData":{"@odata.type":"#microsoft.graph.call","state":"incoming","source":{"identity":{"phone":{"id":"+15550000001"}}},"\u017fource":{"identity":{"phone":{"id":"+15550009999"}}}}}]}`
)

// TestFoldedNames: a member name equal under Unicode simple case folding to
// another member's name, or to a name the reader knows, is refused in any
// object of the body, whether written plainly or with escapes.
func TestFoldedNames(t *testing.T) {
	call := func(members string) string {
		return `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/x","resourceData":{"@odata.type":"#microsoft.graph.call","state":"incoming",` + members + `}}]}`
	}
	var many strings.Builder
	for i := range 40 {
		fmt.Fprintf(&many, `"m%d":%d,`, i, i)
	}
	bad := map[string]string{
		"ſtate beside state":                 foldedStateBody,
		"ſource beside source":               foldedSourceBody,
		"ſtate alone":                        `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/x","resourceData":{"ſtate":"incoming"}}]}`,
		"escaped ſtate alone":                `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/x","resourceData":{"\u017ftate":"incoming"}}]}`,
		"ſtate before state":                 `{"value":[{"changeType":"created","resourceData":{"ſtate":"incoming","state":"established"}}]}`,
		"Kelvin callbacK":                    call(`"callbac\u212aUri":"https://evil.example"`),
		"Kelvin beside k in unknown names":   call(`"kind":"a","\u212aind":"b"`),
		"ASCII case variants, both unknown":  `{"value":[{"changeType":"updated","resourceUrl":"/communications/calls/x","foo":1,"FOO":2}]}`,
		"folded duplicate in a participant":  `{"value":[{"changeType":"updated","resourceUrl":"/communications/calls/x/participants","resourceData":[{"id":"p","ID":"q"}]}]}`,
		"folded duplicate in an operation":   `{"value":[{"changeType":"deleted","resourceUrl":"/communications/calls/x/operations/o","resourceData":{"@odata.type":"#microsoft.graph.inviteParticipantsOperation","ſtatus":"a","status":"b"}}]}`,
		"folded duplicate top level":         `{"value":[],"extra":1,"EXTRA":2}`,
		"escaped exact duplicate":            call(`"st\u0061te":"established"`),
		"ſourceUrl-like name of resourceUrl": `{"value":[{"changeType":"created","reſourceUrl":"/communications/calls/x"}]}`,
		"folded duplicate among many":        call(many.String() + `"m7x":0,"M7X":1`),
		"exact duplicate among many":         call(many.String() + `"m39":1`),
		"changeType in capitals":             `{"value":[{"CHANGETYPE":"created"}]}`,
	}
	for name, body := range bad {
		t.Run(name, func(t *testing.T) {
			n, err := DecodeNotifications([]byte(body))
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("read as %+v, %v; want a SyntaxError", n, err)
			}
			if se.Offset <= 0 || se.Offset >= int64(len(body)) {
				t.Errorf("offset %d outside the body", se.Offset)
			}
		})
	}
	good := map[string]string{
		"many distinct names": call(many.String() + `"m40":1`),
		// Folding is per object: the same name in sibling and nested objects is fine.
		"same names in other objects": `{"value":[{"changeType":"updated","resourceUrl":"/communications/calls/x/participants","resourceData":[{"id":"p","info":{"id":"q"}},{"id":"r"}]}]}`,
		// ı (U+0131) is in no simple-folding orbit with i (only Turkic
		// folding joins them): another name to encoding/json too.
		"dotless i is another name": call(`"dırection":"x"`),
	}
	for name, body := range good {
		t.Run(name, func(t *testing.T) {
			if _, err := DecodeNotifications([]byte(body)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestFoldedNamesAreReadByOthers shows why the folded bodies are refused:
// encoding/json reads the folded member as the field.
func TestFoldedNamesAreReadByOthers(t *testing.T) {
	var n Notifications
	if err := json.Unmarshal([]byte(foldedStateBody), &n); err != nil {
		t.Fatal(err)
	}
	if !n.Value[0].IsIncomingCall() {
		t.Fatalf("encoding/json reads state %q: the body is not ambiguous", n.Value[0].ResourceData.State)
	}
	n = Notifications{}
	if err := json.Unmarshal([]byte(foldedSourceBody), &n); err != nil {
		t.Fatal(err)
	}
	if got := n.Value[0].ResourceData.Source.Identity.Phone.ID; got != "+15550009999" {
		t.Fatalf("encoding/json reads the caller as %s: the body is not ambiguous", got)
	}
}

// participantCarryingCall is a resourceData whose @odata.type (written
// with an escape, as a reader matching raw bytes would miss it) names a
// participant but which carries an incoming call's members.
const participantCarryingCall = `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/p1","resourceData":{"@odata.typ\u0065":"#microsoft.graph.participant","id":"p1","state":"incoming","source":{"identity":{"phone":{"id":"+15550009999"}}}}}]}`

// TestTypedResourceCarryingACall: an object of another @odata.type that
// carries an incoming call's state is decided as that call (a reader going
// by members answers it), or refused when it cannot be read as one.
func TestTypedResourceCarryingACall(t *testing.T) {
	decided := map[string]string{
		"escaped type, participant":   participantCarryingCall,
		"plain type, operation":       `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/p1","resourceData":{"@odata.type":"#microsoft.graph.inviteParticipantsOperation","state":"incoming","source":{"identity":{"phone":{"id":"+15550009999"}}}}}]}`,
		"older callState, Pascal":     `{"value":[{"changeType":"Created","resource":"/app/calls/p1","resourceData":{"@odata.type":"#microsoft.graph.participant","callState":"Incoming","source":{"identity":{"phone":{"id":"+15550009999"}}}}}]}`,
		"a type in another case":      `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/p1","resourceData":{"@odata.type":"#Microsoft.Graph.Call","state":"incoming","source":{"identity":{"phone":{"id":"+15550009999"}}}}}]}`,
		"state and callState, agreed": `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/p1","resourceData":{"state":"incoming","callState":"INCOMING","source":{"identity":{"phone":{"id":"+15550009999"}}}}}]}`,
	}
	for name, body := range decided {
		t.Run(name, func(t *testing.T) {
			n, err := DecodeNotifications([]byte(body))
			if err != nil {
				t.Fatal(err)
			}
			v := &n.Value[0]
			if !v.IsIncomingCall() || v.CallID() != "p1" {
				t.Fatalf("incoming %v, call id %q; want an incoming call p1", v.IsIncomingCall(), v.CallID())
			}
			if got := v.ResourceData.Source.Identity.Phone.ID; got != "+15550009999" {
				t.Fatalf("caller %s", got)
			}
		})
	}
	refused := map[string]string{
		"participant type, call member of another type": `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/p1","resourceData":{"@odata.type":"#microsoft.graph.participant","state":"incoming","source":"+15550009999"}}]}`,
		"state and callState disagree":                  `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/p1","resourceData":{"@odata.type":"#microsoft.graph.call","state":"established","callState":"incoming"}}]}`,
		"disagreeing, in a participant":                 `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/p1","resourceData":{"@odata.type":"#microsoft.graph.participant","state":"terminated","callState":"incoming"}}]}`,
	}
	for name, body := range refused {
		t.Run(name, func(t *testing.T) {
			n, err := DecodeNotifications([]byte(body))
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("read as %+v, %v; want a SyntaxError", n, err)
			}
		})
	}
	// Other resources not carrying an incoming call stay undecided and are
	// no error, whatever their members.
	n, err := DecodeNotifications([]byte(`{"value":[{"changeType":"updated","resourceUrl":"/communications/calls/p1/participants/q","resourceData":{"@odata.type":"#microsoft.graph.participant","state":"established","source":5}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if n.Value[0].ResourceData != nil || n.Value[0].IsIncomingCall() {
		t.Fatalf("a participant read as a call: %+v", n.Value[0].ResourceData)
	}
}

// TestGraphSpellingOfValues: enum values in any case; resource without
// resourceUrl names the call; keys stay case-sensitive.
func TestGraphSpellingOfValues(t *testing.T) {
	tests := []struct {
		name, body string
		id         string
		incoming   bool
	}{
		{"PascalCase changeType and state", `{"value":[{"changeType":"Created","resourceUrl":"/communications/calls/a1","resourceData":{"@odata.type":"#microsoft.graph.call","state":"Incoming","direction":"Incoming","requestedModalities":["Audio"]}}]}`, "a1", true},
		{"capitals", `{"value":[{"changeType":"CREATED","resourceUrl":"/communications/calls/a1","resourceData":{"state":"INCOMING"}}]}`, "a1", true},
		{"older callState, PascalCase", `{"value":[{"changeType":"Created","resource":"/app/calls/B2","resourceData":{"@odata.type":"#microsoft.graph.call","callState":"Incoming"}}]}`, "B2", true},
		{"Updated is not created", `{"value":[{"changeType":"Updated","resourceUrl":"/communications/calls/a1","resourceData":{"state":"Incoming"}}]}`, "a1", false},
		{"Established is not incoming", `{"value":[{"changeType":"Created","resourceUrl":"/communications/calls/a1","resourceData":{"state":"Established"}}]}`, "a1", false},
		// resource alone (older payloads) names the call, before a
		// resourceData.id that names another (as a Graph documentation
		// example does): the upstream bot routes by the URL.
		{"resource only", `{"value":[{"changeType":"created","resource":"/app/calls/C3","resourceData":{"@odata.type":"#microsoft.graph.call","id":"C3","callState":"incoming"}}]}`, "C3", true},
		{"resource before resourceData.id", `{"value":[{"changeType":"created","resource":"/app/calls/C3","resourceData":{"@odata.type":"#microsoft.graph.call","id":"other","callState":"incoming"}}]}`, "C3", true},
		{"resourceUrl before resourceData.id", `{"value":[{"changeType":"deleted","resourceUrl":"/communications/calls/491f0b00","resourceData":{"@odata.type":"#microsoft.graph.call","id":"481f0b00","state":"terminated"}}]}`, "491f0b00", false},
		{"resourceUrl before resource", `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/D4","resource":"/app/calls/other","resourceData":{"state":"incoming"}}]}`, "D4", true},
		{"resource of a participant list", `{"value":[{"changeType":"updated","resource":"/app/calls/E5/participants","resourceData":[]}]}`, "E5", false},
		{"no URL: resourceData.id", `{"value":[{"changeType":"created","resourceData":{"id":"F6","state":"incoming"}}]}`, "F6", true},
		{"no URL: @odata.id", `{"value":[{"changeType":"created","resourceData":{"@odata.id":"/app/calls/G7","state":"incoming"}}]}`, "G7", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := DecodeNotifications([]byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			v := &n.Value[0]
			if v.CallID() != tt.id || v.IsIncomingCall() != tt.incoming {
				t.Fatalf("call id %q, incoming %v; want %q, %v", v.CallID(), v.IsIncomingCall(), tt.id, tt.incoming)
			}
		})
	}
	// Values are Graph's to spell; keys are not.
	for name, body := range map[string]string{
		"ChangeType":   `{"value":[{"ChangeType":"created","resourceUrl":"/communications/calls/a1","resourceData":{"state":"incoming"}}]}`,
		"ResourceUrl":  `{"value":[{"changeType":"created","ResourceUrl":"/communications/calls/a1","resourceData":{"state":"incoming"}}]}`,
		"Resource":     `{"value":[{"changeType":"created","Resource":"/app/calls/a1","resourceData":{"callState":"incoming"}}]}`,
		"State":        `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/a1","resourceData":{"State":"incoming"}}]}`,
		"CallState":    `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/a1","resourceData":{"CallState":"incoming"}}]}`,
		"EndpointType": `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/a1","resourceData":{"state":"incoming","source":{"EndpointType":"default"}}}]}`,
	} {
		t.Run("key "+name, func(t *testing.T) {
			n, err := DecodeNotifications([]byte(body))
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("read as %+v, %v; want a SyntaxError", n, err)
			}
		})
	}
}

func TestEnumEqual(t *testing.T) {
	for _, tt := range []struct {
		value, want string
		equal       bool
	}{
		{"Created", ChangeCreated, true},
		{"INCOMING", StateIncoming, true},
		{"videoBasedScreenSharing", "VideoBasedScreenSharing", true},
		{"eſtabliſhed", StateEstablished, true}, // simple folding, as names are compared
		{"incoming ", StateIncoming, false},
		{"", StateIncoming, false},
	} {
		if got := EnumEqual(tt.value, tt.want); got != tt.equal {
			t.Errorf("EnumEqual(%q, %q) = %v", tt.value, tt.want, got)
		}
	}
}
