package receiver

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseUnblock(t *testing.T) {
	tests := []struct {
		body       string
		wantCaller string
		wantErr    string
	}{
		{body: `{"number":"+14255550143"}`, wantCaller: "+14255550143"},
		{body: `{"number":"+1 (425) 555-0143"}`, wantCaller: "+14255550143"},
		{body: `{"id":"8c1b2a7e-teams-user"}`, wantCaller: "8c1b2a7e-teams-user"},
		{body: `{"id":" 8C1B2A7E-0C1F-4A51-9A43-2F0F4C3B9E10 "}`, wantCaller: "8c1b2a7e-0c1f-4a51-9a43-2f0f4c3b9e10"},
		{body: `{"all":true}`, wantCaller: ""},
		{body: `{"all":false}`, wantErr: "exactly one"},
		{body: `{}`, wantErr: "exactly one"},
		{body: `{"number":"+14255550143","all":true}`, wantErr: "exactly one"},
		{body: `{"number":"+14255550143","id":"x"}`, wantErr: "exactly one"},
		{body: `{"number":"call me"}`, wantErr: `number "call me" is not a phone number`},
		{body: `{"Number":"+14255550143"}`, wantErr: "unknown"},
		{body: `{"number":"+14255550143","number":"+14255550144"}`, wantErr: "duplicate"},
		{body: `{"all":"yes"}`, wantErr: "want"},
		{body: `not json`, wantErr: "want"},
		{body: ``, wantErr: "want"},
		{body: `{"number":"+14255550143"} {}`, wantErr: "want"},
	}
	for _, tt := range tests {
		caller, err := parseUnblock([]byte(tt.body))
		switch {
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("parseUnblock(%s) = %q, %v; want an error containing %q", tt.body, caller, err, tt.wantErr)
		case tt.wantErr == "" && (err != nil || caller != tt.wantCaller):
			t.Errorf("parseUnblock(%s) = %q, %v; want %q", tt.body, caller, err, tt.wantCaller)
		}
	}
}

// FuzzParseUnblock: any body is a caller key or an error, never a crash,
// and an accepted one names one caller or all.
func FuzzParseUnblock(f *testing.F) {
	for _, s := range []string{`{"number":"+14255550143"}`, `{"id":"x"}`, `{"all":true}`, `{"all":false}`, `{`, `[]`, `{"number":"\u0000"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		caller, err := parseUnblock(body)
		if err != nil {
			if caller != "" {
				t.Fatalf("error %v with caller %q", err, caller)
			}
			return
		}
		if !utf8.ValidString(caller) {
			t.Fatalf("caller %q is not UTF-8", caller)
		}
	})
}
