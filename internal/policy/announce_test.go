package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/wav"
)

func announceRule(name string, prompt v1alpha1.PromptSource, m v1alpha1.Match) v1alpha1.Rule {
	return v1alpha1.Rule{Name: name, Action: v1alpha1.ActionAnnounce, Announce: &v1alpha1.AnnounceSpec{Prompt: prompt}, Match: m}
}

func cmPrompt(name, key string) v1alpha1.PromptSource {
	return v1alpha1.PromptSource{ConfigMapKeyRef: &v1alpha1.ConfigMapKeyReference{Name: name, Key: key}}
}

func hexSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// announceSource: anonymous callers hear a ConfigMap prompt, guests one at
// a URL.
func announceSource(prompt []byte) *Source {
	src := testSource(
		announceRule("withheld", cmPrompt("prompts", "withheld.wav"), callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"anonymous"}})),
		announceRule("guests", v1alpha1.PromptSource{URL: "https://media.example.com/guests.wav"},
			callers(v1alpha1.CallerMatch{IdentityTypes: []v1alpha1.IdentityType{"guest"}})),
		// A second rule naming the same prompt keeps one copy.
		announceRule("again", cmPrompt("prompts", "withheld.wav"), callers(v1alpha1.CallerMatch{NumberPrefixes: []string{"+1900"}})),
	)
	src.Spec.Rules[1].Announce.MaxSeconds = 60
	src.Prompts = map[ListRef][]byte{{"prompts", "withheld.wav"}: prompt}
	return src
}

func TestAnnounceDecision(t *testing.T) {
	prompt := wav.Tone(2 * time.Second)
	p := mustCompile(t, announceSource(prompt))
	sum := hexSHA256(prompt)
	d := p.Decide(phoneCall("anonymous"), wed)
	if d.Action != v1alpha1.ActionAnnounce || d.Rule != "withheld" || d.Reason != "" ||
		*d.Announce != (Announcement{PromptSHA256: sum, MaxSeconds: v1alpha1.DefaultAnnounceMaxSeconds}) {
		t.Errorf("anonymous: %+v %+v", d, d.Announce)
	}
	d = p.Decide(guestCall("g"), wed)
	if d.Action != v1alpha1.ActionAnnounce || *d.Announce != (Announcement{PromptURL: "https://media.example.com/guests.wav", MaxSeconds: 60}) {
		t.Errorf("guest: %+v %+v", d, d.Announce)
	}
	if d := p.Decide(phoneCall("+14255550100"), wed); d.Announce != nil {
		t.Errorf("allowed call has an announcement: %+v", d.Announce)
	}
	if b, ok := p.Prompt(sum); !ok || !bytes.Equal(b, prompt) {
		t.Errorf("Prompt(%s) = %d bytes, %v", sum, len(b), ok)
	}
	for _, other := range []string{"", strings.ToUpper(sum), hexSHA256(nil)} {
		if _, ok := p.Prompt(other); ok {
			t.Errorf("Prompt(%q) found something", other)
		}
	}
	if len(p.prompts) != 1 {
		t.Errorf("%d prompts kept, want 1", len(p.prompts))
	}
	if w := p.Warnings(); len(w) != 0 {
		t.Errorf("warnings: %v", w)
	}
	if got, want := PromptRefs(p.Spec()), []ListRef{{"prompts", "withheld.wav"}}; !slices.Equal(got, want) {
		t.Errorf("PromptRefs = %v, want %v", got, want)
	}
}

func TestAnnounceCompileErrors(t *testing.T) {
	good := wav.Tone(time.Second)
	set := func(off int, v uint32, size int) []byte {
		b := slices.Clone(good)
		if size == 2 {
			binary.LittleEndian.PutUint16(b[off:], uint16(v))
		} else {
			binary.LittleEndian.PutUint32(b[off:], v)
		}
		return b
	}
	const at = "spec.rules[0].announce.prompt.configMapKeyRef"
	type want struct{ path, msg string }
	tests := []struct {
		name   string
		modify func(*Source)
		want   []want
	}{
		{"stereo", func(s *Source) { s.Prompts[ListRef{"prompts", "withheld.wav"}] = set(22, 2, 2) },
			[]want{{at, "configmap prompts key withheld.wav: 2 channels at byte 22, want 1 (mono)"}}},
		{"8 kHz", func(s *Source) { s.Prompts[ListRef{"prompts", "withheld.wav"}] = set(24, 8000, 4) },
			[]want{{at, "configmap prompts key withheld.wav: sample rate 8000 Hz at byte 24, want 16000"}}},
		{"not RIFF", func(s *Source) { s.Prompts[ListRef{"prompts", "withheld.wav"}] = []byte("ID3\x03 an mp3 file") },
			[]want{{at, "configmap prompts key withheld.wav: not a RIFF/WAVE file (bytes 0-11)"}}},
		{"over 2 MiB", func(s *Source) {
			s.Prompts[ListRef{"prompts", "withheld.wav"}] = append(slices.Clone(good), make([]byte, wav.MaxSize)...)
		}, []want{{at, fmt.Sprintf("configmap prompts key withheld.wav: %d bytes, over the 2097152-byte (2 MiB) limit", len(good)+wav.MaxSize)}}},
		{"missing", func(s *Source) { s.Prompts = nil },
			[]want{{at, "configmap prompts key withheld.wav: not found (a prompt is a binaryData key holding a WAV file)"}}},
		{"both, neither, http, maxSeconds", func(s *Source) {
			s.Spec.Rules[0].Announce.Prompt.URL = "https://media.example.com/a.wav"
			s.Spec.Rules[1].Announce.Prompt.URL = ""
			s.Spec.Rules[2].Announce.Prompt = v1alpha1.PromptSource{URL: "http://media.example.com/a.wav"}
			s.Spec.Rules[0].Announce.MaxSeconds = 4
			s.Spec.Rules[2].Announce.MaxSeconds = 121
		}, []want{
			{"spec.rules[0].announce.maxSeconds", "must be 5 to 120, got 4"},
			{"spec.rules[0].announce.prompt", "exactly one of configMapKeyRef or url must be set"},
			{"spec.rules[1].announce.prompt", "exactly one of configMapKeyRef or url must be set"},
			{"spec.rules[2].announce.maxSeconds", "must be 5 to 120, got 121"},
			{"spec.rules[2].announce.prompt.url", "must be an https:// URL"},
		}},
		{"announce only with Announce", func(s *Source) {
			s.Spec.Rules[0].Action = v1alpha1.ActionReject
			s.Spec.Rules[1].Announce = nil
		}, []want{
			{"spec.rules[0].announce", "announce is required when action is Announce and not allowed otherwise"},
			{"spec.rules[1].announce", "announce is required when action is Announce and not allowed otherwise"},
		}},
		{"not the default", func(s *Source) { s.Spec.DefaultAction = v1alpha1.ActionAnnounce },
			[]want{{"spec.defaultAction", "defaultAction must be Allow, Reject or Redirect: Announce is for rules"}}},
		{"expose", func(s *Source) {
			s.Spec.Receiver.Expose = &v1alpha1.ExposeSpec{URL: "http://calls.example.com/api/calls", Ingress: &v1alpha1.IngressExpose{Host: "calls.example.com"}}
		}, []want{
			{"spec.receiver.expose", "exactly one of ingress, httpRoute or url must be set"},
			{"spec.receiver.expose.url", "must be an https:// URL"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := announceSource(good)
			tt.modify(src)
			_, err := Compile(src)
			var ce *CompileError
			if !errors.As(err, &ce) {
				t.Fatalf("Compile = %v, want a *CompileError", err)
			}
			var got []want
			for _, fe := range ce.Errors {
				got = append(got, want{fe.Path, fe.Message})
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("errors:\n%s\nwant\n%v", strings.ReplaceAll(err.Error(), "; ", "\n"), tt.want)
			}
		})
	}
}

func TestAnnounceExposeURL(t *testing.T) {
	src := announceSource(wav.Tone(time.Second))
	src.Spec.Receiver.Expose = &v1alpha1.ExposeSpec{URL: "https://calls.example.com/api/calls"}
	mustCompile(t, src)
}

func TestAnnouncePromptLongerThanMaxSeconds(t *testing.T) {
	src := announceSource(wav.Tone(6 * time.Second))
	src.Spec.Rules[0].Announce.MaxSeconds = 5
	p := mustCompile(t, src)
	w := p.Warnings()
	if len(w) != 1 || w[0].Path != "spec.rules[0].announce.prompt.configMapKeyRef" || !strings.Contains(w[0].Message, "plays for 6s, longer than maxSeconds (5)") {
		t.Errorf("warnings = %v", w)
	}
}

func TestAnnounceHash(t *testing.T) {
	p1 := mustCompile(t, announceSource(wav.Tone(time.Second)))
	p2 := mustCompile(t, announceSource(wav.Tone(time.Second)))
	if p1.Hash() != p2.Hash() {
		t.Error("equal prompts hash differently")
	}
	other := wav.Tone(time.Second)
	other[len(other)-1] ^= 1
	if p3 := mustCompile(t, announceSource(other)); p3.Hash() == p1.Hash() {
		t.Error("changing a prompt's bytes kept the policy's hash")
	}
	// A prompt not named by the policy does not count.
	src := announceSource(wav.Tone(time.Second))
	src.Prompts[ListRef{"prompts", "unused.wav"}] = wav.Tone(2 * time.Second)
	if mustCompile(t, src).Hash() != p1.Hash() {
		t.Error("an unreferenced prompt changes the hash")
	}
}

// biggestPrompt is a valid prompt of exactly 2 MiB.
func biggestPrompt(t testing.TB) []byte {
	b := wav.Tone(time.Duration((wav.MaxSize-44)/2) * time.Second / wav.SampleRate)
	if len(b) != wav.MaxSize {
		t.Fatalf("prompt of %d bytes, want %d", len(b), wav.MaxSize)
	}
	return b
}

func TestAnnounceConfigMapRoundTrip(t *testing.T) {
	src := announceSource(biggestPrompt(t))
	src.Spec.Rules = append(src.Spec.Rules, reject("listed", callers(v1alpha1.CallerMatch{NumberLists: []v1alpha1.NumberList{
		{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "l", Key: "k"}}}})))
	src.Lists = map[ListRef]string{{"l", "k"}: "+15550100001\n"}
	p := mustCompile(t, src)
	data, shards, hash, err := EncodeConfigMaps(src, "hotline-callguard-policy")
	if err != nil {
		t.Fatal(err)
	}
	if hash != p.Hash() {
		t.Errorf("EncodeConfigMaps hash %s, Compile %s", hash, p.Hash())
	}
	// One list shard and three of the prompt's.
	if len(shards) != 4 {
		t.Errorf("%d shards, want 4", len(shards))
	}
	for _, s := range shards {
		if len(s.Data) > MaxShardBytes {
			t.Errorf("shard %s holds %d bytes", s.Name, len(s.Data))
		}
	}
	names, err := ShardNames(data)
	if err != nil || len(names) != len(shards) {
		t.Errorf("ShardNames = %v, %v; want the %d shards", names, err, len(shards))
	}
	back, err := DecodeConfigMaps(data, storeOf(shards).get)
	if err != nil {
		t.Fatal(err)
	}
	if b := back.Prompts[ListRef{"prompts", "withheld.wav"}]; !bytes.Equal(b, src.Prompts[ListRef{"prompts", "withheld.wav"}]) || len(back.Prompts) != 1 {
		t.Fatalf("decoded %d prompts, the one of %d bytes, want it equal", len(back.Prompts), len(b))
	}
	q := mustCompile(t, back)
	if q.Hash() != hash {
		t.Errorf("decoded policy hash %s, want %s", q.Hash(), hash)
	}
	d := q.Decide(phoneCall("anonymous"), wed)
	if b, ok := q.Prompt(d.Announce.PromptSHA256); !ok || len(b) != wav.MaxSize {
		t.Errorf("decoded policy serves %d bytes, %v", len(b), ok)
	}

	// Tampering is refused.
	store := storeOf(shards)
	var prompts []storedList
	if err := json.Unmarshal([]byte(data[ConfigMapKeyPrompts]), &prompts); err != nil || len(prompts) != 1 || len(prompts[0].Shards) != 3 {
		t.Fatalf("prompts.json = %s (%v)", data[ConfigMapKeyPrompts], err)
	}
	last := prompts[0].Shards[2].ConfigMap
	tampered := shardStore{}
	for k, v := range store {
		tampered[k] = v
	}
	tampered[last] = append(slices.Clone(store[last]), 0)
	if _, err := DecodeConfigMaps(data, tampered.get); err == nil || !strings.Contains(err.Error(), "prompt prompts key withheld.wav: shard") {
		t.Errorf("tampered shard: err = %v", err)
	}
	wrongSum := map[string]string{}
	for k, v := range data {
		wrongSum[k] = v
	}
	wrongSum[ConfigMapKeyPrompts] = strings.Replace(data[ConfigMapKeyPrompts], prompts[0].SHA256, hexSHA256(nil), 1)
	if _, err := DecodeConfigMaps(wrongSum, store.get); err == nil || !strings.Contains(err.Error(), "its bytes do not match") {
		t.Errorf("wrong sha256: err = %v", err)
	}
	// A manifest of the format before prompts (no prompts.json) decodes.
	old := map[string]string{ConfigMapKeyPolicy: data[ConfigMapKeyPolicy], ConfigMapKeyLists: data[ConfigMapKeyLists]}
	if back, err := DecodeConfigMaps(old, store.get); err != nil || back.Prompts != nil || len(back.Lists) != 1 {
		t.Errorf("manifest without prompts: %v, %+v", err, back)
	}
}

func TestAnnounceLoadYAML(t *testing.T) {
	prompt := wav.Tone(time.Second)
	doc := fmt.Sprintf(`apiVersion: calls.callguard.dev/v1alpha1
kind: CallPolicy
metadata: {name: hotline, namespace: telephony}
spec:
  bot:
    appId: %s
    tenantId: %s
    credentials: {workloadIdentity: {}}
  rules:
    - name: withheld
      action: Announce
      announce:
        prompt:
          configMapKeyRef: {name: prompts, key: withheld.wav}
      match:
        callers: {identityTypes: [anonymous]}
    - name: text
      action: Announce
      announce:
        prompt:
          configMapKeyRef: {name: prompts, key: text.wav}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: prompts, namespace: telephony}
data:
  text.wav: not binary
binaryData:
  withheld.wav: %s
`, testAppID, testTenantID, base64.StdEncoding.EncodeToString(prompt))
	b, err := LoadYAML("policy.yaml", strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Source.Prompts[ListRef{"prompts", "withheld.wav"}]; !bytes.Equal(got, prompt) || len(b.Source.Prompts) != 1 {
		t.Fatalf("loaded prompts %v", b.Source.Prompts)
	}
	_, err = Compile(b.Source)
	var ce *CompileError
	if !errors.As(err, &ce) || len(ce.Errors) != 1 || ce.Errors[0].Path != "spec.rules[1].announce.prompt.configMapKeyRef" ||
		!strings.Contains(ce.Errors[0].Message, "not found") {
		t.Fatalf("Compile = %v, want the prompt in data not found", err)
	}
	if where := b.Locate(ce.Errors[0]); where != "policy.yaml:21" {
		t.Errorf("Locate = %s, want policy.yaml:24", where)
	}
}

// FuzzDecodePrompts: prompts.json and a shard as anyone who may write
// ConfigMaps in the namespace could make them. Decoding never panics, and a
// prompt it returns is what the manifest's hash vouches for, within the
// size limit.
func FuzzDecodePrompts(f *testing.F) {
	src := announceSource(wav.Tone(100 * time.Millisecond))
	data, shards, _, err := EncodeConfigMaps(src, "p")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data[ConfigMapKeyPrompts], shards[0].Data)
	f.Add(`[{"name":"a","key":"b","sha256":"00","shards":[{"configMap":"p-x","sha256":"00"}]}]`, []byte("RIFF"))
	f.Add(`[{"name":"a","key":"b","sha256":"`+hexSHA256(nil)+`","shards":[]}]`, []byte(nil))
	f.Fuzz(func(t *testing.T, prompts string, shard []byte) {
		in := map[string]string{ConfigMapKeyPolicy: data[ConfigMapKeyPolicy], ConfigMapKeyPrompts: prompts}
		back, err := DecodeConfigMaps(in, func(string) ([]byte, error) { return shard, nil })
		if err != nil {
			return
		}
		var stored []storedList
		if err := json.Unmarshal([]byte(prompts), &stored); err != nil {
			t.Fatalf("decoded a manifest encoding/json refuses: %v", err)
		}
		for _, l := range stored {
			b, ok := back.Prompts[ListRef{Name: l.Name, Key: l.Key}]
			if !ok || hexSHA256(b) != l.SHA256 || len(b) > wav.MaxSize {
				t.Fatalf("prompt %s/%s decoded without matching the manifest's hash", l.Name, l.Key)
			}
		}
	})
}
