package policy

import (
	"bytes"
	"compress/gzip"
	"reflect"
	"strings"
	"testing"

	"github.com/callguard/callguard/api/v1alpha1"
)

func listSource() *Source {
	src := testSource(
		reject("robocallers", callers(v1alpha1.CallerMatch{NumberLists: []v1alpha1.NumberList{
			{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "robocallers", Key: "numbers.txt"}},
			{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "extra", Key: "more.txt"}},
		}})),
		reject("night", v1alpha1.Match{Schedule: &v1alpha1.Schedule{Windows: []v1alpha1.Window{{Days: []v1alpha1.Weekday{"Mon"}, Start: "22:00", End: "06:00"}}}}),
	)
	src.Lists = map[ListRef]string{
		{"robocallers", "numbers.txt"}: "+12065550123\n+1809*\n",
		{"extra", "more.txt"}:          "# <none> & more\n+15550001\n",
		{"unused", "x"}:                "+1\n",
	}
	return src
}

func TestConfigMapRoundTrip(t *testing.T) {
	src := listSource()
	data, bin, hash, err := EncodeConfigMap(src)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(hash, "sha256:") || len(hash) != len("sha256:")+64 {
		t.Errorf("hash = %q", hash)
	}
	p := mustCompile(t, src)
	if p.Hash() != hash {
		t.Errorf("Policy.Hash = %s, EncodeConfigMap hash = %s", p.Hash(), hash)
	}

	back, err := DecodeConfigMap(data, bin)
	if err != nil {
		t.Fatal(err)
	}
	if back.Namespace != "telephony" || back.Name != "hotline" {
		t.Errorf("decoded %s/%s", back.Namespace, back.Name)
	}
	wantLists := map[ListRef]string{
		{"robocallers", "numbers.txt"}: src.Lists[ListRef{"robocallers", "numbers.txt"}],
		{"extra", "more.txt"}:          src.Lists[ListRef{"extra", "more.txt"}],
	}
	if !reflect.DeepEqual(back.Lists, wantLists) {
		t.Errorf("decoded lists %v, want the referenced ones %v", back.Lists, wantLists)
	}
	if !reflect.DeepEqual(&back.Spec, p.Spec()) {
		t.Errorf("decoded spec is not the defaulted spec:\n%+v\n%+v", back.Spec, *p.Spec())
	}
	// The receiver compiles what it decoded: same hash, same decisions.
	rp := mustCompile(t, back)
	if rp.Hash() != hash {
		t.Errorf("hash after decode = %s, want %s", rp.Hash(), hash)
	}
	if d := rp.Decide(phoneCall("+18095551234"), wed); d.Rule != "robocallers" {
		t.Errorf("decoded policy decided %+v", d)
	}
	// Encoding what was decoded gives the same bytes.
	data2, bin2, hash2, err := EncodeConfigMap(back)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(data, data2) || !reflect.DeepEqual(bin, bin2) || hash != hash2 {
		t.Error("re-encoding the decoded source changed the ConfigMap")
	}
}

func TestConfigMapHashStability(t *testing.T) {
	_, bin1, h1, err := EncodeConfigMap(listSource())
	if err != nil {
		t.Fatal(err)
	}
	_, bin2, h2, _ := EncodeConfigMap(listSource())
	if h1 != h2 || !bytes.Equal(bin1[ConfigMapKeyLists], bin2[ConfigMapKeyLists]) {
		t.Error("equal sources encode differently")
	}
	zr, err := gzip.NewReader(bytes.NewReader(bin1[ConfigMapKeyLists]))
	if err != nil {
		t.Fatal(err)
	}
	if !zr.ModTime.IsZero() {
		t.Errorf("gzip header has mtime %v", zr.ModTime)
	}
	// Defaults are applied before hashing: spelling them out changes nothing.
	explicit := listSource()
	explicit.Spec.Mode, explicit.Spec.DefaultAction = v1alpha1.ModeEnforce, v1alpha1.ActionAllow
	explicit.Spec.Rules[1].Match.Schedule.TimeZone = "UTC"
	if _, _, h, _ := EncodeConfigMap(explicit); h != h1 {
		t.Error("explicit defaults change the hash")
	}
	// A list not referenced does not count.
	unused := listSource()
	unused.Lists[ListRef{"unused", "x"}] = "+2\n"
	if _, _, h, _ := EncodeConfigMap(unused); h != h1 {
		t.Error("an unreferenced list changes the hash")
	}
	changes := map[string]func(*Source){
		"list text": func(s *Source) { s.Lists[ListRef{"robocallers", "numbers.txt"}] += "+3\n" },
		"rule":      func(s *Source) { s.Spec.Rules[0].Reason = v1alpha1.ReasonForbidden },
		"mode":      func(s *Source) { s.Spec.Mode = v1alpha1.ModeDryRun },
		"name":      func(s *Source) { s.Name = "other" },
	}
	for name, change := range changes {
		s := listSource()
		change(s)
		if _, _, h, _ := EncodeConfigMap(s); h == h1 {
			t.Errorf("changing the %s keeps the hash", name)
		}
	}
}

func TestConfigMapWithoutLists(t *testing.T) {
	src := testSource(reject("r", v1alpha1.Match{}))
	data, bin, hash, err := EncodeConfigMap(src)
	if err != nil {
		t.Fatal(err)
	}
	if bin != nil {
		t.Errorf("binaryData = %v, want none without lists", bin)
	}
	back, err := DecodeConfigMap(data, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p := mustCompile(t, back); p.Hash() != hash {
		t.Errorf("hash %s != %s", p.Hash(), hash)
	}
}

func TestConfigMapErrors(t *testing.T) {
	src := listSource()
	delete(src.Lists, ListRef{"extra", "more.txt"})
	if _, _, _, err := EncodeConfigMap(src); err == nil || !strings.Contains(err.Error(), "configmap extra key more.txt") {
		t.Errorf("missing list: err = %v", err)
	}
	data, bin, _, err := EncodeConfigMap(listSource())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		data map[string]string
		bin  map[string][]byte
		want string
	}{
		{"no policy", map[string]string{}, nil, "no key policy.json"},
		{"bad policy json", map[string]string{ConfigMapKeyPolicy: "{"}, nil, "policy.json"},
		{"lists not gzip", data, map[string][]byte{ConfigMapKeyLists: []byte("[]")}, "lists.json.gz"},
		{"truncated gzip", data, map[string][]byte{ConfigMapKeyLists: bin[ConfigMapKeyLists][:10]}, "lists.json.gz"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeConfigMap(tt.data, tt.bin); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}
