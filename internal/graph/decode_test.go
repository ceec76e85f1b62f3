package graph

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

// seedIncoming is the incoming-call notification of the Graph reject document
// (../shared/seeds), which still uses the older "resource" and "callState".
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
		{name: "wrong type", body: `{"value":[{"changeType":5}]}`, wantOffset: 25},
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

func FuzzDecodeNotifications(f *testing.F) {
	f.Add([]byte(seedIncoming))
	f.Add([]byte(`{"value":[{"changeType":"created","resourceData":{"state":"incoming","source":{"identity":{"phone":{"id":"+1"}}}}}]}`))
	f.Add([]byte(`{"value":[]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		n, err := DecodeNotifications(body)
		if err != nil {
			return
		}
		for i := range n.Value {
			_ = n.Value[i].CallID()
			_ = n.Value[i].IsIncomingCall()
		}
	})
}

// FuzzDecodeNotificationsOnePass checks that the one-pass decode answers
// every body as the format check followed by the full decode does.
func FuzzDecodeNotificationsOnePass(f *testing.F) {
	f.Add([]byte(seedIncoming))
	f.Add([]byte(benchBody))
	f.Add([]byte(`{"value":null}`))
	f.Add([]byte(`{"value":[],"value":null}`))
	f.Add([]byte(`{"VALUE":[{"changeType":"created"}]}`))
	f.Add([]byte(`{"@odata.type":5}`))
	f.Add([]byte(`{"@odata.type":5,"value":[]}`))
	f.Add([]byte(`{"value":5}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, body []byte) {
		got, gotErr := DecodeNotifications(body)
		want, wantErr := decodeNotificationsSlow(body)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("DecodeNotifications(%q) = %+v, want %+v", body, got, want)
		}
		if (gotErr == nil) != (wantErr == nil) || (gotErr != nil && gotErr.Error() != wantErr.Error()) {
			t.Fatalf("DecodeNotifications(%q) error = %v, want %v", body, gotErr, wantErr)
		}
	})
}

// FuzzFastDecode checks that the fast decoder, when it answers, answers as
// json.Unmarshal does.
func FuzzFastDecode(f *testing.F) {
	for _, s := range fastDecodeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		checkFastDecode(t, body)
	})
}

// fastDecodeSeeds are bodies the fast decoder takes or must give up on.
var fastDecodeSeeds = []string{
	seedIncoming, benchBody,
	`{"value":[]}`, `{"value":null}`, `{}`, ` {"value" : [ null , {} ] } `,
	`{"value":[{"resourceData":{"requestedModalities":[],"targets":[null,{"hidden":true}]}}]}`,
	`{"value":[{"resourceData":{"requestedModalities":["audio",null],"targets":[{"hidden":false,"identity":null}]}}]}`,
	`{"value":[{"changeType":"cr\u00e9ated","resource":"café","resourceData":{"id":"a\"b","subject":"\ud83d\ude00 \ud800"}}]}`,
	"{\"value\":[{\"changeType\":\"\xff\xfe\"}]}",
	`{"value":[{"changeType":"x","changeType":"y"}]}`,
	`{"value":[{"ChangeType":"x"}]}`,
	`{"value":[{"changeType":5}]}`,
	`{"value":[{"changeType":"x"}],"extra":{"a":[1,-2.5e+3,true,false,null,"s\n",{"b":{}}]}}`,
	`{"value":[{"changeType":"x"}],"extra":01}`, `{"value":[]} x`, `{"value":[],}`, `{"value":[1]}`,
	`{"value":[{"resourceData":{"targets":[{"hidden":"yes"}]}}]}`,
	`{"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`,
	`{"\u0076alue":[]}`, "{\"\u212aey\":1}", "{\"value\":[{\"changeType\":\"\x01\"}]}", `{"value":[{"changeType":"\x"}]}`,
	`[]`, `null`, `"value"`, ``,
}

func TestFastDecode(t *testing.T) {
	for _, s := range fastDecodeSeeds {
		checkFastDecode(t, []byte(s))
	}
	if _, ok := fastDecodeNotifications([]byte(benchBody)); !ok {
		t.Error("the fast decoder gave up on a plain Graph body")
	}
	if _, ok := fastDecodeNotifications([]byte(seedIncoming)); !ok {
		t.Error("the fast decoder gave up on the seed body")
	}
}

func checkFastDecode(t *testing.T, body []byte) {
	t.Helper()
	got, ok := fastDecodeNotifications(body)
	if !ok {
		return
	}
	var want Notifications
	if err := json.Unmarshal(body, &want); err != nil {
		t.Fatalf("fast decode took %q, which json.Unmarshal refuses: %v", body, err)
	}
	if !reflect.DeepEqual(got, &want) {
		t.Fatalf("fast decode of %q = %+v, json.Unmarshal = %+v", body, got, &want)
	}
	// DeepEqual does not tell nil from empty slices apart everywhere it
	// matters here: compare the encodings too.
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(&want)
	if string(g) != string(w) {
		t.Fatalf("fast decode of %q encodes as %s, json.Unmarshal's as %s", body, g, w)
	}
	if (got.Value == nil) != (want.Value == nil) {
		t.Fatalf("fast decode of %q: Value nil = %v, json.Unmarshal: %v", body, got.Value == nil, want.Value == nil)
	}
}

// TestFastDecodeKnowsEveryField guards against a type the fast decoder
// cannot mirror: it must build its tables for Notifications.
func TestFastDecodeKnowsEveryField(t *testing.T) {
	if fastNotifications == nil {
		t.Fatal("the fast decoder is disabled: Notifications holds a field it cannot mirror")
	}
	var walk func(s *fastStruct)
	seen := map[*fastStruct]bool{}
	walk = func(s *fastStruct) {
		if seen[s] {
			return
		}
		seen[s] = true
		for _, f := range s.fields {
			if f.kind == fastUnsupported {
				t.Errorf("%s.%s: the fast decoder gives up whenever it is present", s.typ.Name(), f.name)
			}
			if f.elem != nil {
				walk(f.elem)
			}
		}
	}
	walk(fastNotifications)
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
