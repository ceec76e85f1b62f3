package graph

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
)

// seedIncoming is the incoming-call notification of the Graph reject document
// the project started from, which still uses the older "resource" and
// "callState".
const seedIncoming = `{
    "value": [
        {
            "changeType": "created",
            "resource": "/app/calls/57DAB8B1894C409AB240BD8BEAE78896",
            "resourceData": {
                "@odata.type" : "#microsoft.graph.call",
                "@odata.id": "/app/calls/57DAB8B1894C409AB240BD8BEAE78896",
                "@odata.etag": "W/\"5445\"",
                "callState": "incoming",
                "direction": "incoming",
                "correlationId": "2F3556DB-B502-4A69-8C0E-38AF3A6A9D94",
                "source": {
                    "@odata.type": "#microsoft.graph.participantInfo",
                    "identity" : {
                        "@odata.type": "#microsoft.graph.identitySet",
                        "user" : {
                            "@odata.type": "#microsoft.graph.endpointIdentity",
                            "displayName": "Test User",
                            "language": "en-US",
                            "id": "8A34A46B-3D17-4ADC-8DCE-DC4E7D572698"
                        }
                    }
                },
                "requestedModalities": [ "audio", "video" ]
            }
        }
    ]
}`

func TestDecodeNotifications(t *testing.T) {
	tests := []struct {
		name       string
		body       string
		wantErr    error
		wantOffset int64
		wantID     string
		incoming   bool
	}{
		{name: "seed incoming (older field names)", body: seedIncoming, wantID: "57DAB8B1894C409AB240BD8BEAE78896", incoming: true},
		{name: "v1.0 shape", body: `{"@odata.type":"#microsoft.graph.commsNotifications","value":[{"changeType":"created","resourceUrl":"/communications/calls/abc","resourceData":{"@odata.type":"#microsoft.graph.call","state":"incoming"}}]}`, wantID: "abc", incoming: true},
		{name: "deleted", body: `{"value":[{"changeType":"deleted","resourceUrl":"/communications/calls/x1","resourceData":{"@odata.id":"/communications/calls/x1"}}]}`, wantID: "x1"},
		{name: "established is not incoming", body: `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/y","resourceData":{"id":"y","state":"established"}}]}`, wantID: "y"},
		{name: "legacy skype body", body: `{"id":"abc","conversationResult":{}}`, wantErr: ErrLegacyFormat},
		{name: "value null is legacy", body: `{"value":null}`, wantErr: ErrLegacyFormat},
		{name: "truncated", body: `{"value":[{"changeType":`, wantOffset: 24},
		{name: "wrong type", body: `{"value":[{"changeType":5}]}`, wantOffset: 24},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := DecodeNotifications([]byte(tt.body))
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if tt.wantOffset != 0 {
				var se *SyntaxError
				if !errors.As(err, &se) || se.Offset != tt.wantOffset {
					t.Fatalf("err = %v, want SyntaxError at offset %d", err, tt.wantOffset)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := n.Value[0].CallID(); got != tt.wantID {
				t.Errorf("CallID = %q, want %q", got, tt.wantID)
			}
			if got := n.Value[0].IsIncomingCall(); got != tt.incoming {
				t.Errorf("IsIncomingCall = %v, want %v", got, tt.incoming)
			}
		})
	}
}

// participantsBody is a batch as Graph sends it while a call is
// transferred: a participant list (resourceData is an array), an operation
// (an object of another type, with members shaped unlike a call's), a
// content-sharing session (no resourceData) and an incoming call.
const participantsBody = `{"@odata.type":"#microsoft.graph.commsNotifications","value":[
 {"@odata.type":"#microsoft.graph.commsNotification","changeType":"updated","resourceUrl":"/communications/calls/a7eb/participants","resourceData":[{"@odata.type":"#microsoft.graph.participant","id":"p1","info":{"identity":{"user":{"id":"u1"}}},"mediaStreams":[],"isMuted":false}]},
 {"changeType":"deleted","resourceUrl":"/communications/calls/ab62/operations/eec3","resourceData":{"@odata.type":"#microsoft.graph.inviteParticipantsOperation","id":"eec3","status":"completed","source":5,"participants":[{"endpointType":"default"}]}},
 {"changeType":"created","resourceUrl":"/communications/calls/421f/contentsharingsessions/2765"},
 {"changeType":"created","resourceUrl":"/communications/calls/c0ffee","resourceData":{"@odata.type":"#microsoft.graph.call","state":"incoming","source":{"identity":{"phone":{"id":"+15550001234"}}}}}
]}`

func TestResourceDataOfAnyShape(t *testing.T) {
	n, err := DecodeNotifications([]byte(participantsBody))
	if err != nil {
		t.Fatalf("a batch Graph sends was refused: %v", err)
	}
	want := []struct {
		id       string
		call     bool
		incoming bool
	}{{"a7eb", false, false}, {"ab62", false, false}, {"421f", false, false}, {"c0ffee", true, true}}
	if len(n.Value) != len(want) {
		t.Fatalf("read %d notifications, want %d", len(n.Value), len(want))
	}
	for i, w := range want {
		v := &n.Value[i]
		if v.CallID() != w.id || (v.ResourceData != nil) != w.call || v.IsIncomingCall() != w.incoming {
			t.Errorf("value[%d]: call id %q, call %v, incoming %v; want %q, %v, %v",
				i, v.CallID(), v.ResourceData != nil, v.IsIncomingCall(), w.id, w.call, w.incoming)
		}
	}
}

// TestStrictReading: a body another JSON reader would read differently
// (case-insensitive names, last duplicate wins) is refused, wherever the
// name is; so is a call member of the wrong type.
func TestStrictReading(t *testing.T) {
	call := `{"changeType":"created","resourceUrl":"/communications/calls/x","resourceData":{"state":"incoming"}}`
	bad := map[string]string{
		"value twice":                  `{"value":[` + call + `],"value":[]}`,
		"Value beside value":           `{"value":[],"Value":[` + call + `]}`,
		"Value alone":                  `{"Value":[` + call + `]}`,
		"changeType twice":             `{"value":[{"changeType":"created","changeType":"updated"}]}`,
		"ResourceData":                 `{"value":[{"changeType":"created","resourceUrl":"/communications/calls/x","ResourceData":{"state":"incoming"}}]}`,
		"State in a call":              `{"value":[{"changeType":"created","resourceData":{"state":"established","State":"incoming"}}]}`,
		"phone twice in an identity":   `{"value":[{"changeType":"created","resourceData":{"source":{"identity":{"phone":{"id":"+1"},"phone":{"id":"+2"}}}}}]}`,
		"Phone in an identity":         `{"value":[{"changeType":"created","resourceData":{"source":{"identity":{"Phone":{"id":"+1"}}}}}]}`,
		"duplicate in an unknown part": `{"value":[` + call + `],"extra":{"a":1,"a":2}}`,
		"duplicate in a participant":   `{"value":[{"changeType":"updated","resourceData":[{"id":"p","id":"q"}]}]}`,
		"call member of another type":  `{"value":[{"changeType":"created","resourceData":{"@odata.type":"#microsoft.graph.call","state":["incoming"]}}]}`,
		"untyped call, member wrong":   `{"value":[{"changeType":"created","resourceData":{"state":"incoming","source":"+1"}}]}`,
		"invalid UTF-8":                "{\"value\":[{\"changeType\":\"\xff\"}]}",
		"a second value after":         `{"value":[]} {}`,
		"trailing comma":               `{"value":[],}`,
		"a notification not an object": `{"value":[1]}`,
		"value not an array":           `{"value":5}`,
		"an array":                     `[]`,
	}
	for name, body := range bad {
		t.Run(name, func(t *testing.T) {
			n, err := DecodeNotifications([]byte(body))
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("read as %+v, %v; want a SyntaxError", n, err)
			}
		})
	}
}

// TestRawIsWhatWasRead: each notification's Raw and the value array's span
// are the body's own bytes, so forwarding passes on what was decided.
func TestRawIsWhatWasRead(t *testing.T) {
	body := []byte(participantsBody)
	n, err := DecodeNotifications(body)
	if err != nil {
		t.Fatal(err)
	}
	var top struct {
		Value []json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(body, &top); err != nil {
		t.Fatal(err)
	}
	for i := range n.Value {
		if string(n.Value[i].Raw) != string(top.Value[i]) {
			t.Errorf("value[%d].Raw = %s, want %s", i, n.Value[i].Raw, top.Value[i])
		}
	}
	arr := body[n.ValueStart:n.ValueEnd]
	if arr[0] != '[' || arr[len(arr)-1] != ']' || !json.Valid(arr) {
		t.Errorf("value span = %q, want the array", arr)
	}
}

// TestDecodeReadsEveryField fills every field of a call, encodes it with
// encoding/json and reads it back: a field added to the types that the
// reader's tables miss fails here.
func TestDecodeReadsEveryField(t *testing.T) {
	var c Call
	fill(reflect.ValueOf(&c).Elem(), 0)
	c.ODataType = ODataCall
	body, err := json.Marshal(Notifications{Value: []Notification{{ChangeType: "created", ResourceURL: "/communications/calls/x", ResourceData: &c}}})
	if err != nil {
		t.Fatal(err)
	}
	n, err := DecodeNotifications(body)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(n.Value[0].ResourceData, &c) {
		t.Fatalf("read back\n%+v\nwant\n%+v", n.Value[0].ResourceData, &c)
	}
}

func fill(v reflect.Value, depth int) {
	switch v.Kind() {
	case reflect.String:
		v.SetString(fmt.Sprintf("s%d", depth))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Pointer:
		if depth < 4 {
			v.Set(reflect.New(v.Type().Elem()))
			fill(v.Elem(), depth+1)
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fill(v.Index(0), depth+1)
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), depth+1)
			}
		}
	}
}

// FuzzDecodeNotifications checks the one reading: whatever body it takes,
// encoding/json (case-insensitive under Unicode folding, last duplicate
// wins: how an upstream bot may read the forwarded body) reads the same
// notifications, an upstream that reads resourceData as a call whatever
// its @odata.type finds an incoming call exactly where this reader does,
// each Raw reads back alone as the same notification, and the value span
// holds exactly the notifications.
func FuzzDecodeNotifications(f *testing.F) {
	for _, s := range []string{seedIncoming, benchBody, participantsBody, `{"value":[]}`, `[]`,
		`{"value":null}`, `{"Value":[{"changeType":"created"}]}`, `{"value":[{"changeType":"x","changeType":"y"}]}`,
		foldedStateBody, foldedSourceBody, participantCarryingCall,
		`{"value":[{"changeType":"Created","resource":"/app/calls/B2","resourceData":{"callState":"Incoming"}}]}`,
		`{"value":[{"changeType":"created","resourceUrl":"/communications/calls/k","resourceData":{"callbacKUri":"x","state":"incoming"}}]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		n, err := DecodeNotifications(body)
		if err != nil {
			return
		}
		var other struct {
			Value []struct {
				ChangeType   string          `json:"changeType"`
				ResourceURL  string          `json:"resourceUrl"`
				Resource     string          `json:"resource"`
				ResourceData json.RawMessage `json:"resourceData"`
			} `json:"value"`
		}
		if err := json.Unmarshal(body, &other); err != nil {
			t.Fatalf("taken %q, which encoding/json refuses: %v", body, err)
		}
		if len(other.Value) != len(n.Value) {
			t.Fatalf("%q: %d notifications, encoding/json reads %d", body, len(n.Value), len(other.Value))
		}
		var span []json.RawMessage
		if err := json.Unmarshal(body[n.ValueStart:n.ValueEnd], &span); err != nil || len(span) != len(n.Value) {
			t.Fatalf("%q: value span %q does not hold the %d notifications (%v)", body, body[n.ValueStart:n.ValueEnd], len(n.Value), err)
		}
		for i := range n.Value {
			v, o := &n.Value[i], &other.Value[i]
			if v.ChangeType != o.ChangeType || v.ResourceURL != o.ResourceURL || v.Resource != o.Resource {
				t.Fatalf("%q: value[%d] read as %q %q %q, encoding/json reads %q %q %q", body, i,
					v.ChangeType, v.ResourceURL, v.Resource, o.ChangeType, o.ResourceURL, o.Resource)
			}
			if v.ResourceData != nil {
				// Compared as encoded: what the reader adds beyond the wire
				// (IdentitySet.OtherMembers) is not encoded.
				var c Call
				err := json.Unmarshal(o.ResourceData, &c)
				mine, _ := json.Marshal(v.ResourceData)
				theirs, _ := json.Marshal(&c)
				if err != nil || string(mine) != string(theirs) {
					t.Fatalf("%q: value[%d] call read as %s, encoding/json reads %s (%v)", body, i, mine, theirs, err)
				}
			}
			// An upstream that goes by the members, not @odata.type: a
			// member of another type leaves the rest read.
			up := Notification{ChangeType: o.ChangeType, ResourceURL: o.ResourceURL, Resource: o.Resource}
			var c Call
			if len(o.ResourceData) > 0 && o.ResourceData[0] == '{' {
				_ = json.Unmarshal(o.ResourceData, &c)
				up.ResourceData = &c
			}
			if up.IsIncomingCall() != v.IsIncomingCall() {
				t.Fatalf("%q: value[%d] incoming %v, an upstream reading the members finds %v", body, i, v.IsIncomingCall(), up.IsIncomingCall())
			}
			if v.IsIncomingCall() && up.CallID() != v.CallID() {
				t.Fatalf("%q: value[%d] call %q, an upstream reading the members finds %q", body, i, v.CallID(), up.CallID())
			}
			alone, err := DecodeNotifications([]byte(`{"value":[` + string(v.Raw) + `]}`))
			if err != nil {
				t.Fatalf("%q: value[%d].Raw %q does not read alone: %v", body, i, v.Raw, err)
			}
			a := alone.Value[0]
			v2 := *v
			a.Raw, v2.Raw = nil, nil
			if !reflect.DeepEqual(a, v2) {
				t.Fatalf("%q: value[%d].Raw reads alone as %+v, want %+v", body, i, a, v2)
			}
		}
	})
}

// benchBody is a v1.0 incoming-call notification as Graph sends it.
const benchBody = `{"@odata.type":"#microsoft.graph.commsNotifications","value":[{"@odata.type":"#microsoft.graph.commsNotification","changeType":"created","resourceUrl":"/communications/calls/491f0b00-ffff-4bc9-a43e-b226498ec22a","resourceData":{"@odata.type":"#microsoft.graph.call","@odata.id":"/communications/calls/491f0b00-ffff-4bc9-a43e-b226498ec22a","@odata.etag":"W/\"5445\"","id":"491f0b00-ffff-4bc9-a43e-b226498ec22a","state":"incoming","direction":"incoming","callChainId":"b3c1a7e0-6a4b-4c8e-9e55-1f2d3c4b5a69","tenantId":"0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55","source":{"@odata.type":"#microsoft.graph.participantInfo","identity":{"@odata.type":"#microsoft.graph.identitySet","phone":{"@odata.type":"#microsoft.graph.identity","id":"+15550001234"}},"endpointType":"default","region":"amer","languageId":"en-US"},"targets":[{"@odata.type":"#microsoft.graph.invitationParticipantInfo","identity":{"@odata.type":"#microsoft.graph.identitySet","application":{"@odata.type":"#microsoft.graph.identity","id":"6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10","displayName":"Hotline"}}}],"requestedModalities":["audio"]}}]}`

func BenchmarkDecodeNotifications(b *testing.B) {
	body := []byte(benchBody)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeNotifications(body); err != nil {
			b.Fatal(err)
		}
	}
}
