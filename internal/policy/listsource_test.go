package policy

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestListText(t *testing.T) {
	list := "# spam\n+12065550123\n+1809555*\n"
	gz := Gzip([]byte(list))
	multi := append(Gzip([]byte("+12065550123\n")), Gzip([]byte("+1809555*\n"))...)
	bomb := Gzip([]byte(strings.Repeat("\n", MaxListBytes+1)))
	tests := []struct {
		name    string
		key     string
		data    map[string]string
		binary  map[string][]byte
		want    string
		found   bool
		wantErr string
	}{
		{name: "data", key: "numbers.txt", data: map[string]string{"numbers.txt": list}, want: list, found: true},
		{name: "data key ending in .gz is text", key: "n.gz", data: map[string]string{"n.gz": list}, want: list, found: true},
		{name: "data before binaryData", key: "k", data: map[string]string{"k": "a"}, binary: map[string][]byte{"k": []byte("b")}, want: "a", found: true},
		{name: "binaryData text", key: "numbers.txt", binary: map[string][]byte{"numbers.txt": []byte(list)}, want: list, found: true},
		{name: "binaryData gzip", key: "numbers.txt.gz", binary: map[string][]byte{"numbers.txt.gz": gz}, want: list, found: true},
		{name: "binaryData gzip, several members", key: "n.gz", binary: map[string][]byte{"n.gz": multi}, want: "+12065550123\n+1809555*\n", found: true},
		{name: "empty gzip", key: "n.gz", binary: map[string][]byte{"n.gz": Gzip([]byte(""))}, want: "", found: true},
		{name: "missing", key: "n.gz", data: map[string]string{"other": "x"}},
		{name: "not gzip", key: "n.gz", binary: map[string][]byte{"n.gz": []byte(list)}, found: true,
			wantErr: `ConfigMap "robocallers" key "n.gz": a key ending in .gz must hold gzip-compressed text: gzip: invalid header`},
		{name: "truncated", key: "n.gz", binary: map[string][]byte{"n.gz": gz[:len(gz)-6]}, found: true,
			wantErr: `ConfigMap "robocallers" key "n.gz": corrupt gzip data: unexpected EOF`},
		{name: "gzip bomb", key: "n.gz", binary: map[string][]byte{"n.gz": bomb}, found: true,
			wantErr: `ConfigMap "robocallers" key "n.gz": decompresses to more than 64 MiB, the limit for one number list`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, found, err := ListText("robocallers", tt.key, tt.data, tt.binary)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %s", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || found != tt.found {
				t.Errorf("ListText = %q, %v; want %q, %v", got, found, tt.want, tt.found)
			}
		})
	}
}

// TestLoadGzipList loads a bundle whose ConfigMap holds a list under a
// binaryData key ending in .gz, as the receiver's --policy-file does.
func TestLoadGzipList(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, gz []byte) string {
		t.Helper()
		b64 := base64.StdEncoding.EncodeToString(gz)
		doc := fmt.Sprintf(`apiVersion: calls.callguard.dev/v1alpha1
kind: CallPolicy
metadata: {name: p, namespace: ns}
spec:
  bot: {appId: 6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10, tenantId: 0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55, credentials: {secretRef: {name: s}}}
  rules:
    - name: listed
      action: Reject
      match:
        callers:
          numbers: ["+14255550100"]
          numberLists:
            - configMapKeyRef: {name: feed, key: numbers.txt.gz}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: feed, namespace: ns}
binaryData:
  numbers.txt.gz: %s
`, b64)
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}

	b, err := LoadFiles(write("good.yaml", Gzip([]byte("+12065550123\n+1809555*\n"))))
	if err != nil {
		t.Fatal(err)
	}
	p := mustCompile(t, b.Source)
	at := time.Now()
	for num, want := range map[string]string{"+12065550123": "listed", "+18095550000": "listed", "+14255550100": "listed", "+12065550124": ""} {
		if d := p.Decide(phoneCall(num), at); d.Rule != want {
			t.Errorf("%s: rule %q, want %q", num, d.Rule, want)
		}
	}

	// A list problem points at the ConfigMap's key in the file.
	b, err = LoadFiles(write("bad-entry.yaml", Gzip([]byte("+1206555012x\n"))))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Compile(b.Source)
	var ce *CompileError
	if !errors.As(err, &ce) || len(ce.Errors) != 1 || !strings.HasPrefix(b.Locate(ce.Errors[0]), filepath.Join(dir, "bad-entry.yaml")+":") {
		t.Fatalf("Compile = %v", err)
	}

	path := write("bomb.yaml", Gzip([]byte(strings.Repeat("#", MaxListBytes+1))))
	_, err = LoadFiles(path)
	if err == nil || !strings.Contains(err.Error(), `bomb.yaml:19: ConfigMap "feed" key "numbers.txt.gz": decompresses to more than 64 MiB`) {
		t.Fatalf("LoadFiles = %v", err)
	}
}
