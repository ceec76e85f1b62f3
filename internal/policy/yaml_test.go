package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/internal/graph"
)

const samplePath = "testdata/sample-policy.yaml"

func TestLoadSample(t *testing.T) {
	b, err := LoadFiles(samplePath)
	if err != nil {
		t.Fatal(err)
	}
	src := b.Source
	if src.Namespace != "telephony" || src.Name != "hotline" || len(src.Spec.Rules) != 6 {
		t.Fatalf("loaded %s/%s with %d rules", src.Namespace, src.Name, len(src.Spec.Rules))
	}
	if got := string(b.Secrets["hotline-bot"]["client-secret"]); got != "not-a-real-secret" {
		t.Errorf("secret = %q", got)
	}
	if len(src.Lists) != 1 || !strings.Contains(src.Lists[ListRef{"robocallers", "numbers.txt"}], "+1809555*") {
		t.Errorf("lists = %v", src.Lists)
	}
	p := mustCompile(t, src)
	if len(p.Warnings()) != 0 {
		t.Errorf("warnings: %v", p.Warnings())
	}
	la, _ := time.LoadLocation("America/Los_Angeles")
	wedEvening := time.Date(2026, 3, 4, 19, 0, 0, 0, la)
	wedNoon := time.Date(2026, 3, 4, 12, 0, 0, 0, la)
	tests := []struct {
		name string
		call *graph.Call
		at   time.Time
		rule string
	}{
		{"vip", phoneCall("+1 425 555 0100", "audio", "video"), wedEvening, "vip-always"},
		{"premium", phoneCall("+44 909 123456"), wedNoon, "premium-rate"},
		{"robocaller", phoneCall("1 (206) 555-0123"), wedNoon, "robocallers"},
		{"robocaller from the UK", phoneCall("+442079460958"), wedNoon, "robocallers"},
		{"robocaller prefix", phoneCall("+18095550000"), wedNoon, "robocallers"},
		{"video after hours", phoneCall("+14255550111", "audio", "video"), wedEvening, "after-hours-video"},
		{"video on Sunday", phoneCall("+14255550111", "audio", "video"), wedNoon.AddDate(0, 0, 4), "after-hours-video"},
		{"video in hours", phoneCall("+14255550111", "audio", "video"), wedNoon, ""},
		{"anonymous", phoneCall("anonymous"), wedNoon, "anonymous-guests"},
		{"guest", callFrom(&graph.IdentitySet{Guest: &graph.Identity{ID: "g"}}), wedNoon, "anonymous-guests"},
		{"cel", phoneCall("+13125551234", "audio", "video"), wedNoon, "cel-escape-hatch"},
		{"audio only", phoneCall("+13125551234"), wedNoon, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d := p.Decide(tt.call, tt.at); d.Rule != tt.rule {
				t.Errorf("Decide = %+v, want rule %q", d, tt.rule)
			}
		})
	}
}

func TestLoadYAMLErrors(t *testing.T) {
	const policy = `apiVersion: calls.callguard.dev/v1alpha1
kind: CallPolicy
metadata: {name: p}
spec:
  bot: {appId: 6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10, tenantId: 0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55, credentials: {workloadIdentity: {}}}
`
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"no policy", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", []string{"load policy: no CallPolicy in in.yaml"}},
		{"empty", "", []string{"no CallPolicy in in.yaml"}},
		{"two policies", policy + "---\n" + policy, []string{"exactly one CallPolicy is needed, found 2: in.yaml:1 (p), in.yaml:7 (p)"}},
		{"syntax", "a: [\n", []string{"in.yaml: document 1: yaml: line 1: did not find expected node content"}},
		{"not a mapping", "- a\n- b\n", []string{"in.yaml:1: document 1: not a Kubernetes object: want a mapping with apiVersion and kind, got a list"}},
		{"unknown field and wrong types", policy + `  rules:
    - name: r
      action: Reject
      match:
        callers:
          numbers: [+14255550100]
          numberlists: []
  receiver: {replicas: two}
`, []string{
			"in.yaml:12: document 1 (CallPolicy p): spec.rules[0].match.callers.numberlists: unknown field",
			"in.yaml:11: document 1 (CallPolicy p): spec.rules[0].match.callers.numbers[0]: want a string, got number 14255550100 (quote it)",
			"in.yaml:13: document 1 (CallPolicy p): spec.receiver.replicas: want a number, got string \"two\"",
		}},
		{"wrong apiVersion", strings.Replace(policy, "v1alpha1", "v1", 1), []string{`in.yaml:1: document 1 (CallPolicy p): apiVersion: want calls.callguard.dev/v1alpha1, got "calls.callguard.dev/v1"`}},
		{"configmap without apiVersion", "kind: ConfigMap\nmetadata: {name: c}\n", []string{`in.yaml:1: document 1 (ConfigMap c): apiVersion: want v1, got ""`}},
		{"duplicate key", policy + "  mode: Enforce\n  mode: DryRun\n", []string{"in.yaml: document 1: line 7: spec.mode: key given twice"}},
		{"merge key", "base: &b {x: 1}\nother:\n  <<: *b\n", []string{"in.yaml: document 1: line 3: other: merge keys (<<) are not supported"}},
		{"alias bomb", `a: &a ["x","x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
`, []string{"document too large (aliases expand too far)"}},
		{"configmap data not a string", policy + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  n: 5\n", []string{
			"in.yaml:11: document 2 (ConfigMap c): data.n: want a string, got number 5 (quote it)"}},
		{"infinity", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {n: .inf}\n", []string{"in.yaml: document 1: line 4: .inf is not a number JSON can hold"}},
		{"configmap twice", policy + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
			[]string{"load policy: ConfigMap c is given twice: in.yaml:7 and in.yaml:11"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadYAML("in.yaml", strings.NewReader(tt.yaml))
			if err == nil {
				t.Fatal("LoadYAML succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\ndoes not contain\n%s", err, w)
				}
			}
		})
	}
}

func TestLoadYAMLKinds(t *testing.T) {
	const in = `apiVersion: v1
kind: List
items:
  - apiVersion: calls.callguard.dev/v1alpha1
    kind: CallPolicy
    metadata: {name: p, namespace: a}
    spec:
      bot: {appId: 6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10, tenantId: 0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55, credentials: {secretRef: {name: s}}}
      rules:
        - name: listed
          action: Reject
          match: {callers: {numberLists: [{configMapKeyRef: {name: l, key: k}}]}}
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: l, namespace: b}
    data: {k: "+2\n"}
---
# Other kinds are ignored.
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec: {replicas: 1}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: l}
data:
  k: |
    +1
---
apiVersion: v1
kind: Secret
metadata: {name: s, namespace: a}
data:
  client-secret: c2VjcmV0
  other: b2xk
stringData:
  other: new
---
`
	b, err := LoadYAML("in.yaml", strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	// The ConfigMap in namespace b is not the policy's; the one without a
	// namespace is.
	if got := b.Source.Lists[ListRef{"l", "k"}]; got != "+1\n" {
		t.Errorf("list = %q", got)
	}
	s := b.Secrets["s"]
	if string(s["client-secret"]) != "secret" || string(s["other"]) != "new" {
		t.Errorf("secret = %q", s)
	}
	if got := b.Locate(FieldError{Path: "spec.rules[0].match.callers.numberLists[0].configMapKeyRef.name"}); got != "in.yaml:12" {
		t.Errorf("Locate in a List = %q", got)
	}
}

func TestLocate(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	lists := filepath.Join(dir, "lists.yaml")
	writeFile(t, pol, `apiVersion: calls.callguard.dev/v1alpha1
kind: CallPolicy
metadata: {name: p}
spec:
  bot: {appId: 6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10, tenantId: 0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55, credentials: {workloadIdentity: {}}}
  rules:
    - name: ok
      action: Allow
      match:
        callers:
          numberPatterns:
            - '^\+1'
            - '('
    - name: listed
      action: Reject
      match:
        callers:
          numberLists:
            - configMapKeyRef: {name: robocallers, key: numbers.txt}
            - configMapKeyRef: {name: robocallers, key: inline}
`)
	writeFile(t, lists, `apiVersion: v1
kind: ConfigMap
metadata: {name: robocallers}
data:
  inline: "+1 CALL"
  numbers.txt: |
    +12065550123
    +1 206 CALL
`)
	b, err := LoadFilesFrom(strings.NewReader(""), pol, lists)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Compile(b.Source)
	var ce *CompileError
	if !errors.As(err, &ce) || len(ce.Errors) != 3 {
		t.Fatalf("Compile: %v", err)
	}
	want := []string{pol + ":13", lists + ":8", lists + ":5"}
	for i, fe := range ce.Errors {
		if got := b.Locate(fe); got != want[i] {
			t.Errorf("Locate(%v) = %q, want %q", fe, got, want[i])
		}
	}
	if got := b.Locate(FieldError{Path: "spec.nothing[3].here"}); got != pol+":4" {
		t.Errorf("Locate(unknown path) = %q", got)
	}
}

func TestLoadFilesStdin(t *testing.T) {
	sample, err := os.ReadFile(samplePath)
	if err != nil {
		t.Fatal(err)
	}
	cut := strings.Index(string(sample), "---\napiVersion: v1\nkind: ConfigMap")
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "lists.yaml"), string(sample[cut:]))
	b, err := LoadFilesFrom(strings.NewReader(string(sample[:cut])), "-", filepath.Join(dir, "lists.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Source.Lists) != 1 {
		t.Errorf("lists across files: %v", b.Source.Lists)
	}
	if _, err := LoadFiles(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: err = %v", err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func fuzzSeeds(f *testing.F) {
	sample, err := os.ReadFile(samplePath)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sample)
	f.Add([]byte("apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: ConfigMap, metadata: {name: a}, data: {k: '+1'}}]\n"))
	f.Add([]byte("a: &a [1]\nb: [*a, *a]\n---\n- x\n"))
	f.Add([]byte("apiVersion: calls.callguard.dev/v1alpha1\nkind: CallPolicy\nmetadata: {name: p}\nspec: {rules: [{name: r, action: Reject, match: {expression: 'caller.number == \"+1\"', schedule: {windows: [{days: [Mon], start: '22:00', end: '06:00'}]}}}]}\n"))
}

func FuzzLoadYAML(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		b, err := LoadYAML("fuzz.yaml", strings.NewReader(string(in)))
		if err != nil {
			return
		}
		if b.Source == nil {
			t.Fatal("no error and no source")
		}
		_ = b.Locate(FieldError{Path: "spec.rules[0].match"})
	})
}

func FuzzCompileYAML(f *testing.F) {
	fuzzSeeds(f)
	calls := []*graph.Call{phoneCall("+13125551234", "audio", "video"), phoneCall("anonymous"), nil,
		callFrom(&graph.IdentitySet{User: &graph.Identity{ID: "u", TenantID: "t", DisplayName: "n"}})}
	f.Fuzz(func(t *testing.T, in []byte) {
		b, err := LoadYAML("fuzz.yaml", strings.NewReader(string(in)))
		if err != nil {
			return
		}
		p, err := Compile(b.Source)
		if err != nil {
			var ce *CompileError
			if !errors.As(err, &ce) || len(ce.Errors) == 0 {
				t.Fatalf("Compile error %v is not a non-empty *CompileError", err)
			}
			for _, fe := range ce.Errors {
				_ = b.Locate(fe)
			}
			return
		}
		for _, c := range calls {
			_ = p.Decide(c, wed)
		}
		data, shards, hash, err := EncodeConfigMaps(b.Source, "p")
		if err != nil {
			t.Fatalf("EncodeConfigMaps of a compiled policy: %v", err)
		}
		if hash != p.Hash() {
			t.Fatalf("hash %s != %s", hash, p.Hash())
		}
		back, err := DecodeConfigMaps(data, storeOf(shards).get)
		if err != nil {
			t.Fatalf("DecodeConfigMaps: %v", err)
		}
		if rp, err := Compile(back); err != nil || rp.Hash() != hash {
			t.Fatalf("recompiling the decoded policy: %v", err)
		}
	})
}
