package graph

import (
	"errors"
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
