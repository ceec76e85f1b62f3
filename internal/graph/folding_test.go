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
		// ı (U+0131) is in no fold orbit with i: another name to every reader.
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
