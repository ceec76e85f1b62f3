package policy

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
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

// shardStore serves shards the way the API server does to a receiver: by
// name, or not found.
type shardStore map[string][]byte

func storeOf(shards []Shard) shardStore {
	s := shardStore{}
	for _, sh := range shards {
		s[sh.Name] = sh.Data
	}
	return s
}

var errShardNotFound = errors.New("not found")

func (s shardStore) get(name string) ([]byte, error) {
	b, ok := s[name]
	if !ok {
		return nil, errShardNotFound
	}
	return b, nil
}

func TestConfigMapRoundTrip(t *testing.T) {
	src := listSource()
	data, shards, hash, err := EncodeConfigMaps(src, "hotline-callguard-policy")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(hash, "sha256:") || len(hash) != len("sha256:")+64 {
		t.Errorf("hash = %q", hash)
	}
	if len(shards) != 2 {
		t.Errorf("%d shards, want one for each of the 2 referenced small lists", len(shards))
	}
	names, err := ShardNames(data)
	if err != nil || len(names) != len(shards) {
		t.Errorf("ShardNames = %v, %v; want the %d shards", names, err, len(shards))
	}
	for i, sh := range shards {
		if !strings.HasPrefix(sh.Name, "hotline-callguard-policy-") || len(sh.Name) > 63 || names[i] != sh.Name {
			t.Errorf("shard %d named %q (manifest: %v)", i, sh.Name, names)
		}
	}
	p := mustCompile(t, src)
	if p.Hash() != hash {
		t.Errorf("Policy.Hash = %s, EncodeConfigMaps hash = %s", p.Hash(), hash)
	}

	back, err := DecodeConfigMaps(data, storeOf(shards).get)
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
	// Encoding what was decoded gives the same objects.
	data2, shards2, hash2, err := EncodeConfigMaps(back, "hotline-callguard-policy")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(data, data2) || !reflect.DeepEqual(shards, shards2) || hash != hash2 {
		t.Error("re-encoding the decoded source changed the ConfigMaps")
	}
}

// randomNumbers returns n distinct-looking random E.164 numbers, a line each.
func randomNumbers(n int, seed uint64) string {
	r := rand.New(rand.NewPCG(seed, seed))
	var b strings.Builder
	for range n {
		fmt.Fprintf(&b, "+1%010d\n", r.Uint64N(1e10))
	}
	return b.String()
}

func TestConfigMapShardsABigList(t *testing.T) {
	src := testSource(reject("robocallers", callers(v1alpha1.CallerMatch{NumberLists: []v1alpha1.NumberList{
		{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "big", Key: "numbers.txt.gz"}},
		{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "small", Key: "numbers.txt"}},
	}})))
	src.Lists = map[ListRef]string{
		{"big", "numbers.txt.gz"}: randomNumbers(400_000, 1),
		{"small", "numbers.txt"}:  "+15550001\n",
	}
	data, shards, hash, err := EncodeConfigMaps(src, "p")
	if err != nil {
		t.Fatal(err)
	}
	if len(shards) < 3 {
		t.Fatalf("%d shards for 400,000 random numbers; want the list split over several", len(shards))
	}
	for _, sh := range shards {
		if len(sh.Data) > MaxShardBytes {
			t.Errorf("shard %s holds %d bytes, more than %d", sh.Name, len(sh.Data), MaxShardBytes)
		}
	}
	store := storeOf(shards)
	back, err := DecodeConfigMaps(data, store.get)
	if err != nil {
		t.Fatal(err)
	}
	if mustCompile(t, back).Hash() != hash {
		t.Error("the decoded policy hashes differently")
	}

	// A change to the small list leaves the big list's shards as they were:
	// nothing of them is written or fetched again.
	src.Lists[ListRef{"small", "numbers.txt"}] = "+15550002\n"
	_, shards2, hash2, err := EncodeConfigMaps(src, "p")
	if err != nil {
		t.Fatal(err)
	}
	if hash2 == hash {
		t.Error("changing a list kept the hash")
	}
	kept := 0
	for _, sh := range shards2 {
		if _, ok := store[sh.Name]; ok {
			kept++
		}
	}
	if kept != len(shards2)-1 {
		t.Errorf("%d of %d shards kept after changing the small list, want all but one", kept, len(shards2))
	}

	// A version with a shard missing, or with a shard's bytes changed, is
	// refused as a whole.
	for name, mutate := range map[string]func(shardStore){
		"missing":    func(s shardStore) { delete(s, shards[1].Name) },
		"mismatched": func(s shardStore) { b := bytes.Clone(s[shards[1].Name]); b[100] ^= 1; s[shards[1].Name] = b },
		"truncated":  func(s shardStore) { s[shards[1].Name] = s[shards[1].Name][:1000] },
	} {
		t.Run(name, func(t *testing.T) {
			s := storeOf(shards)
			mutate(s)
			if got, err := DecodeConfigMaps(data, s.get); err == nil || !strings.Contains(err.Error(), shards[1].Name) {
				t.Errorf("decoded %v, err %v; want an error naming shard %s", got != nil, err, shards[1].Name)
			}
		})
	}
}

// TestListStreamsReuse: a version that keeps a list reuses its compressed
// stream (the same bytes, not compressed again) and encodes exactly as
// EncodeConfigMaps does; streams of lists no longer named are dropped.
func TestListStreamsReuse(t *testing.T) {
	src := listSource()
	var ls ListStreams
	encode := func(src *Source) (map[string]string, []Shard, string) {
		t.Helper()
		data, shards, hash, err := ls.Encode(src, "p")
		if err != nil {
			t.Fatal(err)
		}
		wantData, wantShards, wantHash, err := EncodeConfigMaps(src, "p")
		if err != nil {
			t.Fatal(err)
		}
		if hash != wantHash || !reflect.DeepEqual(data, wantData) || !reflect.DeepEqual(shards, wantShards) {
			t.Fatalf("ListStreams.Encode differs from EncodeConfigMaps: %v %v %s, want %v %v %s", data, shards, hash, wantData, wantShards, wantHash)
		}
		return data, shards, hash
	}
	byName := func(shards []Shard) map[string][]byte {
		m := map[string][]byte{}
		for _, sh := range shards {
			m[sh.Name] = sh.Data
		}
		return m
	}
	_, first, hash := encode(src)
	if len(first) != 2 {
		t.Fatalf("%d shards, want one per list", len(first))
	}

	// A rules-only change: both streams are the ones kept.
	src.Spec.Rules[1].Name = "late-night"
	_, second, hash2 := encode(src)
	if hash2 == hash {
		t.Fatal("changing a rule kept the hash")
	}
	was := byName(first)
	for _, sh := range second {
		if old, ok := was[sh.Name]; !ok || &old[0] != &sh.Data[0] {
			t.Errorf("shard %s was compressed again", sh.Name)
		}
	}

	// One list changed: only its stream is new, and the old one is dropped.
	src.Lists[ListRef{"extra", "more.txt"}] = "+15550002\n"
	_, third, _ := encode(src)
	reused := 0
	for _, sh := range third {
		if old, ok := was[sh.Name]; ok && &old[0] == &sh.Data[0] {
			reused++
		}
	}
	if reused != 1 || len(ls.byText) != 2 {
		t.Errorf("%d of %d streams reused, %d kept; want 1 reused and 2 kept", reused, len(third), len(ls.byText))
	}
}

func TestConfigMapHashStability(t *testing.T) {
	_, sh1, h1, err := EncodeConfigMaps(listSource(), "p")
	if err != nil {
		t.Fatal(err)
	}
	_, sh2, h2, _ := EncodeConfigMaps(listSource(), "p")
	if h1 != h2 || !reflect.DeepEqual(sh1, sh2) {
		t.Error("equal sources encode differently")
	}
	zr, err := gzip.NewReader(bytes.NewReader(sh1[0].Data))
	if err != nil {
		t.Fatal(err)
	}
	if !zr.ModTime.IsZero() {
		t.Errorf("gzip header has mtime %v", zr.ModTime)
	}
	// The hash is that of the content, not of where it is stored.
	if _, _, h, _ := EncodeConfigMaps(listSource(), "elsewhere"); h != h1 {
		t.Error("the shard prefix changes the hash")
	}
	// Defaults are applied before hashing: spelling them out changes nothing.
	explicit := listSource()
	explicit.Spec.Mode, explicit.Spec.DefaultAction = v1alpha1.ModeEnforce, v1alpha1.ActionAllow
	explicit.Spec.Rules[1].Match.Schedule.TimeZone = "UTC"
	if _, _, h, _ := EncodeConfigMaps(explicit, "p"); h != h1 {
		t.Error("explicit defaults change the hash")
	}
	// A list not referenced does not count.
	unused := listSource()
	unused.Lists[ListRef{"unused", "x"}] = "+2\n"
	if _, _, h, _ := EncodeConfigMaps(unused, "p"); h != h1 {
		t.Error("an unreferenced list changes the hash")
	}
	changes := map[string]func(*Source){
		"list text": func(s *Source) { s.Lists[ListRef{"robocallers", "numbers.txt"}] += "+3\n" },
		"list key": func(s *Source) {
			s.Spec.Rules[0].Match.Callers.NumberLists[1].ConfigMapKeyRef.Key = "other.txt"
			s.Lists[ListRef{"extra", "other.txt"}] = s.Lists[ListRef{"extra", "more.txt"}]
		},
		"rule": func(s *Source) { s.Spec.Rules[0].Reason = v1alpha1.ReasonForbidden },
		"mode": func(s *Source) { s.Spec.Mode = v1alpha1.ModeDryRun },
		"name": func(s *Source) { s.Name = "other" },
	}
	for name, change := range changes {
		s := listSource()
		change(s)
		if _, _, h, err := EncodeConfigMaps(s, "p"); err != nil || h == h1 {
			t.Errorf("changing the %s keeps the hash (err %v)", name, err)
		}
	}
}

func TestConfigMapWithoutLists(t *testing.T) {
	src := testSource(reject("r", v1alpha1.Match{}))
	data, shards, hash, err := EncodeConfigMaps(src, "p")
	if err != nil {
		t.Fatal(err)
	}
	if shards != nil || len(data) != 1 {
		t.Errorf("shards = %v, data keys %d; want no shards and no list manifest without lists", shards, len(data))
	}
	back, err := DecodeConfigMaps(data, shardStore{}.get)
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
	if _, _, _, err := EncodeConfigMaps(src, "p"); err == nil || !strings.Contains(err.Error(), "configmap extra key more.txt") {
		t.Errorf("missing list: err = %v", err)
	}
	data, shards, _, err := EncodeConfigMaps(listSource(), "p")
	if err != nil {
		t.Fatal(err)
	}
	store := storeOf(shards)
	withLists := func(lists string) map[string]string {
		return map[string]string{ConfigMapKeyPolicy: data[ConfigMapKeyPolicy], ConfigMapKeyLists: lists}
	}
	notGzip := shardStore{"p-x": []byte("+1555\n")}
	tests := []struct {
		name  string
		data  map[string]string
		store shardStore
		want  string
	}{
		{"no policy", map[string]string{}, store, "no key policy.json"},
		{"bad policy json", map[string]string{ConfigMapKeyPolicy: "{"}, store, "policy.json"},
		{"bad manifest", withLists("[{"), store, "lists.json"},
		{"shard not gzip", withLists(`[{"name":"robocallers","key":"numbers.txt","sha256":"00","shards":[{"configMap":"p-x","sha256":"` + sha256Hex([]byte("+1555\n")) + `"}]}]`), notGzip, "gzip"},
		{"text mismatch", withLists(strings.Replace(data[ConfigMapKeyLists], `"sha256":"`, `"sha256":"00`, 1)), store, "its text does not match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeConfigMaps(tt.data, tt.store.get); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// FuzzDecodeConfigMaps: a manifest and a shard as anyone who may write
// ConfigMaps in the namespace could make them. Decoding never panics, and
// what it returns is what the manifest's hashes vouch for.
func FuzzDecodeConfigMaps(f *testing.F) {
	data, shards, _, err := EncodeConfigMaps(listSource(), "p")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data[ConfigMapKeyLists], shards[0].Data)
	f.Add(`[{"name":"a","key":"b","sha256":"00","shards":[{"configMap":"p-x","sha256":"00"}]}]`, []byte{0x1f, 0x8b})
	f.Add(`[]`, []byte(nil))
	f.Fuzz(func(t *testing.T, lists string, shard []byte) {
		in := map[string]string{ConfigMapKeyPolicy: data[ConfigMapKeyPolicy], ConfigMapKeyLists: lists}
		src, err := DecodeConfigMaps(in, func(string) ([]byte, error) { return shard, nil })
		if err != nil {
			return
		}
		var stored []storedList
		if err := json.Unmarshal([]byte(lists), &stored); err != nil {
			t.Fatalf("decoded a manifest encoding/json refuses: %v", err)
		}
		for _, l := range stored {
			text, ok := src.Lists[ListRef{Name: l.Name, Key: l.Key}]
			if !ok || sha256Hex([]byte(text)) != l.SHA256 {
				t.Fatalf("list %s/%s decoded without matching the manifest's hash", l.Name, l.Key)
			}
		}
	})
}
