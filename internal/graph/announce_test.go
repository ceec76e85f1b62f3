package graph_test

import (
	"strings"
	"testing"

	"github.com/callguard/callguard/internal/graph"
)

// promptCompleted is shaped like the playPrompt completion Microsoft's
// call: playPrompt page records (ids in upper case without dashes, numeric
// resultInfo, status last).
const promptCompleted = `{
  "@odata.type": "#microsoft.graph.commsNotifications",
  "value": [
    {
      "@odata.type": "#microsoft.graph.commsNotification",
      "changeType": "deleted",
      "resourceUrl": "/communications/calls/57DAB8B1894C409AB240BD8BEAE78896/operations/0FE0623FD62842EDB4BD8AC290072CC5",
      "resourceData": {
        "@odata.type": "#microsoft.graph.playPromptOperation",
        "@odata.id": "/communications/calls/57DAB8B1894C409AB240BD8BEAE78896/operations/0FE0623FD62842EDB4BD8AC290072CC5",
        "@odata.etag": "W/\"54451\"",
        "resultInfo": {
          "@odata.type": "#microsoft.graph.resultInfo",
          "code": 200,
          "subcode": 0,
          "message": "Action completed successfully."
        },
        "clientContext": "d45324c1-fcb5-430a-902c-f20af696537c",
        "status": "completed"
      }
    }
  ]
}`

// promptNotification wraps one operation resourceData in a notification.
func promptNotification(resource, data string) string {
	return `{"value":[{"changeType":"deleted","resourceUrl":"` + resource + `","resourceData":` + data + `}]}`
}

const opURL = "/communications/calls/c1/operations/op1"

func decodeOne(t *testing.T, body string) *graph.Notification {
	t.Helper()
	n, err := graph.DecodeNotifications([]byte(body))
	if err != nil {
		t.Fatalf("DecodeNotifications: %v", err)
	}
	if len(n.Value) != 1 {
		t.Fatalf("%d notifications, want 1", len(n.Value))
	}
	return &n.Value[0]
}

func TestPromptOperation(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		want      *graph.PromptOperation
		done, ok  bool
		wantError string
	}{
		{
			name: "recorded completion",
			body: promptCompleted,
			want: &graph.PromptOperation{CallID: "57DAB8B1894C409AB240BD8BEAE78896", ID: "0FE0623FD62842EDB4BD8AC290072CC5",
				Status: "completed", ClientContext: "d45324c1-fcb5-430a-902c-f20af696537c",
				ResultInfo: graph.ResultInfo{ODataType: graph.ODataResultInfo, Code: 200, Message: "Action completed successfully."}},
			done: true, ok: true,
		},
		{
			name: "strings, PascalCase and a completion reason",
			body: promptNotification(opURL, `{"@odata.type":"#microsoft.graph.playPromptOperation","status":"Failed","completionReason":"MediaOperationCanceled","clientContext":"ctx","resultInfo":{"code":"500","subcode":" 8510 ","message":"x"}}`),
			want: &graph.PromptOperation{CallID: "c1", ID: "op1", Status: "Failed", CompletionReason: "MediaOperationCanceled", ClientContext: "ctx",
				ResultInfo: graph.ResultInfo{Code: 500, Subcode: 8510, Message: "x"}},
			done: true,
		},
		{
			name: "nulls everywhere",
			body: promptNotification(opURL, `{"@odata.type":"#microsoft.graph.playPromptOperation","status":"running","clientContext":null,"completionReason":null,"resultInfo":{"code":null,"subcode":""}}`),
			want: &graph.PromptOperation{CallID: "c1", ID: "op1", Status: "running"},
		},
		{
			name: "resultInfo null, id in the body wins",
			body: promptNotification(opURL, `{"@odata.type":"microsoft.graph.PlayPromptOperation","id":"op-body","status":"completed","resultInfo":null}`),
			want: &graph.PromptOperation{CallID: "c1", ID: "op-body", Status: "completed"},
			done: true, ok: true,
		},
		{
			name: "another operation type",
			body: promptNotification(opURL, `{"@odata.type":"#microsoft.graph.recordOperation","status":"completed"}`),
		},
		{
			name: "a call",
			body: promptNotification("/communications/calls/c1", `{"@odata.type":"#microsoft.graph.call","state":"terminated"}`),
		},
		{
			name: "playPromptOperation data on a call resource",
			body: promptNotification("/communications/calls/c1", `{"@odata.type":"#microsoft.graph.playPromptOperation","status":"completed"}`),
		},
		{
			name: "participants array",
			body: promptNotification("/communications/calls/c1/participants", `[{"id":"p"}]`),
		},
		{
			name:      "code not a number",
			body:      promptNotification(opURL, `{"@odata.type":"#microsoft.graph.playPromptOperation","status":"completed","resultInfo":{"code":"two hundred"}}`),
			wantError: "resultInfo.code",
		},
		{
			name:      "code a fraction",
			body:      promptNotification(opURL, `{"@odata.type":"#microsoft.graph.playPromptOperation","status":"completed","resultInfo":{"code":200.5}}`),
			wantError: "resultInfo.code",
		},
		{
			name:      "subcode an object",
			body:      promptNotification(opURL, `{"@odata.type":"#microsoft.graph.playPromptOperation","status":"completed","resultInfo":{"subcode":{}}}`),
			wantError: "resultInfo.subcode",
		},
		{
			name:      "status a number",
			body:      promptNotification(opURL, `{"@odata.type":"#microsoft.graph.playPromptOperation","status":3}`),
			wantError: "status",
		},
		{
			// DecodeNotifications takes it (not a call member); an exact
			// reading must not take it for clientContext.
			name: "case-variant member is not read",
			body: promptNotification(opURL, `{"@odata.type":"#microsoft.graph.playPromptOperation","status":"completed","ClientContext":"forged"}`),
			want: &graph.PromptOperation{CallID: "c1", ID: "op1", Status: "completed"},
			done: true, ok: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := decodeOne(t, tt.body)
			op, err := n.PromptOperation()
			if tt.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantError) {
					t.Fatalf("err = %v, want one naming %s", err, tt.wantError)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == nil {
				if op != nil {
					t.Fatalf("op = %+v, want none", op)
				}
				return
			}
			if op == nil || *op != *tt.want {
				t.Fatalf("op = %+v, want %+v", op, tt.want)
			}
			if op.Done() != tt.done || op.Succeeded() != tt.ok {
				t.Errorf("Done, Succeeded = %v, %v; want %v, %v", op.Done(), op.Succeeded(), tt.done, tt.ok)
			}
			if n.CallState() != "" {
				t.Errorf("an operation's notification reports call state %q", n.CallState())
			}
		})
	}
	if op, err := (&graph.Notification{ResourceURL: opURL}).PromptOperation(); op != nil || err != nil {
		t.Errorf("notification without Raw: %+v, %v", op, err)
	}
}

func TestCallState(t *testing.T) {
	tests := []struct {
		name                    string
		body                    string
		state                   string
		established, terminated bool
	}{
		{"establishing", `{"value":[{"changeType":"updated","resourceUrl":"/communications/calls/C1","resourceData":{"@odata.type":"#microsoft.graph.call","state":"establishing"}}]}`, "establishing", false, false},
		{"established", `{"value":[{"changeType":"updated","resourceUrl":"/communications/calls/C1","resourceData":{"@odata.type":"#microsoft.graph.call","@odata.id":"/communications/calls/C1","state":"established"}}]}`, "established", true, false},
		{"Established PascalCase", `{"value":[{"changeType":"Updated","resourceUrl":"/communications/calls/C1/","resourceData":{"state":"Established"}}]}`, "Established", true, false},
		{"older callState", `{"value":[{"changeType":"updated","resource":"/app/calls/C1","resourceData":{"callState":"established"}}]}`, "established", true, false},
		{"terminated with string resultInfo", `{"value":[{"changeType":"deleted","resourceUrl":"/communications/calls/C1","resourceData":{"@odata.type":"#microsoft.graph.call","state":"terminated","resultInfo":{"code":"200","subcode":"5001"}}}]}`, "terminated", false, true},
		{"deleted without state", `{"value":[{"changeType":"deleted","resource":"/app/calls/C1","resourceData":{"@odata.type":"#microsoft.graph.call"}}]}`, "terminated", false, true},
		{"participants", `{"value":[{"changeType":"updated","resourceUrl":"/communications/calls/C1/participants","resourceData":[{"id":"p"}]}]}`, "", false, false},
		{"operation deleted", promptCompleted, "", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := decodeOne(t, tt.body)
			if got := n.CallState(); got != tt.state {
				t.Errorf("CallState = %q, want %q", got, tt.state)
			}
			if n.IsCallEstablished() != tt.established || n.IsCallTerminated() != tt.terminated {
				t.Errorf("established, terminated = %v, %v", n.IsCallEstablished(), n.IsCallTerminated())
			}
		})
	}
}

// FuzzPromptOperation: any body DecodeNotifications takes is read by
// PromptOperation without a panic, and an operation it reports names its
// call and itself.
func FuzzPromptOperation(f *testing.F) {
	f.Add([]byte(promptCompleted))
	f.Add([]byte(promptNotification(opURL, `{"@odata.type":"#microsoft.graph.playPromptOperation","status":"Failed","resultInfo":{"code":"500","subcode":-1e3}}`)))
	f.Add([]byte(promptNotification(opURL+"/", `{"@odata.type":"#microsoft.graph.playPromptOperation","resultInfo":{"code":1e99}}`)))
	f.Add([]byte(promptNotification("/calls//operations/x", `{"@odata.type":"#microsoft.graph.playPromptOperation"}`)))
	f.Fuzz(func(t *testing.T, body []byte) {
		n, err := graph.DecodeNotifications(body)
		if err != nil {
			return
		}
		for i := range n.Value {
			op, err := n.Value[i].PromptOperation()
			if err != nil {
				if op != nil {
					t.Fatalf("both an operation and an error: %+v, %v", op, err)
				}
				continue
			}
			if op != nil && (op.CallID == "" || op.ID == "") {
				t.Fatalf("%q: operation %+v without its ids", body, op)
			}
			_ = n.Value[i].CallState()
		}
	})
}
