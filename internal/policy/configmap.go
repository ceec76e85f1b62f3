package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/wav"
)

// The resolved policy travels to the receivers in ConfigMaps: one manifest
// (policy.json, lists.json and prompts.json), plus the number lists,
// gzipped, and the announce prompts in shard ConfigMaps of at most
// MaxShardBytes each. A shard is named after the hash
// of its bytes and never changes, so a receiver that has the manifest either
// finds exactly the bytes it names or nothing: it can switch to a version
// only once every shard of it is there and matches.
const (
	// ConfigMapKeyPolicy (in the manifest's data) holds {"namespace",
	// "name", "spec"}, the spec with its defaults applied.
	ConfigMapKeyPolicy = "policy.json"
	// ConfigMapKeyLists (in the manifest's data) lists the referenced number
	// lists, [{"name", "key", "sha256", "shards": [{"configMap", "sha256"}]}]
	// sorted by name and key; sha256 is that of the list's text.
	ConfigMapKeyLists = "lists.json"
	// ConfigMapKeyPrompts (in the manifest's data, when the policy has
	// ConfigMap prompts) lists them as lists.json does its lists: sha256 is
	// that of the WAV file, whose bytes the shards hold as they are (PCM
	// hardly compresses).
	ConfigMapKeyPrompts = "prompts.json"
	// ShardKey is the binaryData key of a shard ConfigMap: a part of one
	// list's gzip stream (gzipped without a modification time, so that equal
	// text gives equal bytes and equal shard names), or of one prompt.
	ShardKey = "part"
	// MaxShardBytes keeps a shard under the API server's 1 MiB object limit
	// with room for its metadata.
	MaxShardBytes = 900 << 10
)

// maxListsText bounds the decompressed text of all lists of one policy:
// about 18 times the 14 MB a million E.164 numbers take.
const maxListsText = 256 << 20

type storedPolicy struct {
	Namespace string                  `json:"namespace"`
	Name      string                  `json:"name"`
	Spec      v1alpha1.CallPolicySpec `json:"spec"`
}

// storedList is one number list, or one prompt, in the manifest.
type storedList struct {
	Name   string       `json:"name"`
	Key    string       `json:"key"`
	SHA256 string       `json:"sha256"`
	Shards []storedPart `json:"shards"`
}

type storedPart struct {
	ConfigMap string `json:"configMap"`
	SHA256    string `json:"sha256"`
}

// Shard is one shard ConfigMap's name and the bytes under its ShardKey.
type Shard struct {
	Name string
	Data []byte
}

// EncodeConfigMaps renders the resolved policy (defaulted spec plus the
// number lists and prompts it refers to) as the manifest's data and the
// shards it names, each called shardPrefix-<hash of its bytes>, and returns
// the policy's hash, the one Policy.Hash returns for the same Source. It
// does not validate: Compile first. Lists and prompts not referenced by the
// spec are left out; a referenced one missing from the Source is an error.
func EncodeConfigMaps(src *Source, shardPrefix string) (data map[string]string, shards []Shard, hash string, err error) {
	return encodeConfigMaps(src, shardPrefix, nil)
}

// ListStreams keeps the gzip streams of the list texts it last encoded, by
// the hash of each text, so that a version that keeps a list (a change to
// the rules, or to another list) does not compress it again: a million
// numbers take 1.7 s to compress and 0.06 s to hash. It keeps only the
// streams of the last version it encoded. Not safe for concurrent use.
type ListStreams struct {
	byText map[string][]byte
}

// Encode is EncodeConfigMaps, reusing the stream of each list whose text
// the last Encode saw.
func (ls *ListStreams) Encode(src *Source, shardPrefix string) (data map[string]string, shards []Shard, hash string, err error) {
	return encodeConfigMaps(src, shardPrefix, ls)
}

func encodeConfigMaps(src *Source, shardPrefix string, ls *ListStreams) (data map[string]string, shards []Shard, hash string, err error) {
	if src == nil {
		return nil, nil, "", errors.New("encode policy configmaps: no source")
	}
	spec := src.Spec.DeepCopy()
	applyDefaults(spec)
	pj, lists, prompts, err := canonical(src.Namespace, src.Name, spec, src.Lists, src.Prompts)
	if err != nil {
		return nil, nil, "", fmt.Errorf("encode policy configmaps: %w", err)
	}
	data = map[string]string{ConfigMapKeyPolicy: string(pj)}
	hash = hashOf(pj, lists, prompts)
	seen := map[string]bool{}
	// split stores b in shards and names them in the manifest's entry.
	split := func(b []byte, e *storedList) {
		for len(b) > 0 {
			n := min(len(b), MaxShardBytes)
			part := b[:n:n]
			b = b[n:]
			sum := sha256.Sum256(part)
			name := shardName(shardPrefix, sum)
			e.Shards = append(e.Shards, storedPart{ConfigMap: name, SHA256: hex.EncodeToString(sum[:])})
			if !seen[name] {
				seen[name] = true
				shards = append(shards, Shard{Name: name, Data: part})
			}
		}
	}
	streams := map[string][]byte{}
	if len(lists) > 0 {
		for i := range lists {
			gz, ok := ls.stream(lists[i].SHA256)
			if !ok {
				gz = Gzip([]byte(src.Lists[ListRef{Name: lists[i].Name, Key: lists[i].Key}]))
			}
			streams[lists[i].SHA256] = gz
			split(gz, &lists[i])
		}
		lj, err := json.Marshal(lists)
		if err != nil {
			return nil, nil, "", fmt.Errorf("encode policy configmaps: marshal number lists: %w", err)
		}
		data[ConfigMapKeyLists] = string(lj)
	}
	if len(prompts) > 0 {
		for i := range prompts {
			split(src.Prompts[ListRef{Name: prompts[i].Name, Key: prompts[i].Key}], &prompts[i])
		}
		pj, err := json.Marshal(prompts)
		if err != nil {
			return nil, nil, "", fmt.Errorf("encode policy configmaps: marshal prompts: %w", err)
		}
		data[ConfigMapKeyPrompts] = string(pj)
	}
	if ls != nil {
		ls.byText = streams
	}
	return data, shards, hash, nil
}

// stream returns the gzip stream last encoded for the text with hash sum.
func (ls *ListStreams) stream(sum string) ([]byte, bool) {
	if ls == nil {
		return nil, false
	}
	b, ok := ls.byText[sum]
	return b, ok
}

// shardName names a shard after its bytes: 64 bits of the hash keep names
// of one policy apart, and the full hash in the manifest is what is checked.
func shardName(prefix string, sum [sha256.Size]byte) string {
	return prefix + "-" + hex.EncodeToString(sum[:8])
}

// ShardNames returns the shard ConfigMaps a manifest names, in order and
// without repeats.
func ShardNames(data map[string]string) ([]string, error) {
	lists, err := manifestLists(data, ConfigMapKeyLists)
	if err != nil {
		return nil, err
	}
	prompts, err := manifestLists(data, ConfigMapKeyPrompts)
	if err != nil {
		return nil, err
	}
	var names []string
	seen := map[string]bool{}
	for _, l := range append(lists, prompts...) {
		for _, p := range l.Shards {
			if !seen[p.ConfigMap] {
				seen[p.ConfigMap] = true
				names = append(names, p.ConfigMap)
			}
		}
	}
	return names, nil
}

// manifestLists reads the manifest's lists.json or prompts.json; a
// manifest without the key has none.
func manifestLists(data map[string]string, key string) ([]storedList, error) {
	lj, ok := data[key]
	if !ok {
		return nil, nil
	}
	var lists []storedList
	if err := json.Unmarshal([]byte(lj), &lists); err != nil {
		return nil, fmt.Errorf("decode policy configmap: %s: %w", key, err)
	}
	return lists, nil
}

// DecodeConfigMaps reads back what EncodeConfigMaps wrote: data is the
// manifest's, and shard returns the bytes under ShardKey of the shard
// ConfigMap it is given the name of. Every shard must hash to what the
// manifest says, and every list's text and every prompt too, or nothing is
// returned: a receiver keeps its old version rather than decide by a
// partial one. A manifest without prompts.json (written before prompts
// existed) has no prompts.
func DecodeConfigMaps(data map[string]string, shard func(configMap string) ([]byte, error)) (*Source, error) {
	pj, ok := data[ConfigMapKeyPolicy]
	if !ok {
		return nil, fmt.Errorf("decode policy configmap: no key %s", ConfigMapKeyPolicy)
	}
	var sp storedPolicy
	if err := json.Unmarshal([]byte(pj), &sp); err != nil {
		return nil, fmt.Errorf("decode policy configmap: %s: %w", ConfigMapKeyPolicy, err)
	}
	lists, err := manifestLists(data, ConfigMapKeyLists)
	if err != nil {
		return nil, err
	}
	prompts, err := manifestLists(data, ConfigMapKeyPrompts)
	if err != nil {
		return nil, err
	}
	src := &Source{Namespace: sp.Namespace, Name: sp.Name, Spec: sp.Spec, Lists: map[ListRef]string{}}
	total := int64(0)
	for _, l := range lists {
		var gz [][]byte
		for _, p := range l.Shards {
			b, err := shard(p.ConfigMap)
			if err != nil {
				return nil, fmt.Errorf("decode policy configmap: list %s key %s: shard %s: %w", l.Name, l.Key, p.ConfigMap, err)
			}
			if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != p.SHA256 {
				return nil, fmt.Errorf("decode policy configmap: list %s key %s: shard %s holds %d bytes that do not match the manifest's sha256 %s",
					l.Name, l.Key, p.ConfigMap, len(b), p.SHA256)
			}
			gz = append(gz, b)
		}
		if len(gz) == 0 {
			gz = append(gz, nil)
		}
		text, sum, err := gunzipParts(gz, min(MaxListBytes, maxListsText-total))
		if err != nil {
			return nil, fmt.Errorf("decode policy configmap: list %s key %s: %w", l.Name, l.Key, err)
		}
		total += int64(len(text))
		if hex.EncodeToString(sum[:]) != l.SHA256 {
			return nil, fmt.Errorf("decode policy configmap: list %s key %s: its text does not match the manifest's sha256 %s", l.Name, l.Key, l.SHA256)
		}
		src.Lists[ListRef{Name: l.Name, Key: l.Key}] = text
	}
	if len(prompts) > 0 {
		src.Prompts = make(map[ListRef][]byte, len(prompts))
	}
	total = 0
	for _, l := range prompts {
		b, err := decodePrompt(l, shard, min(wav.MaxSize, maxPromptsBytes-total))
		if err != nil {
			return nil, fmt.Errorf("decode policy configmap: prompt %s key %s: %w", l.Name, l.Key, err)
		}
		total += int64(len(b))
		src.Prompts[ListRef{Name: l.Name, Key: l.Key}] = b
	}
	return src, nil
}

// decodePrompt reads a prompt's shards, at most limit bytes, and checks
// them and it against the manifest.
func decodePrompt(l storedList, shard func(configMap string) ([]byte, error), limit int64) ([]byte, error) {
	var b []byte
	for _, p := range l.Shards {
		part, err := shard(p.ConfigMap)
		if err != nil {
			return nil, fmt.Errorf("shard %s: %w", p.ConfigMap, err)
		}
		if sum := sha256.Sum256(part); hex.EncodeToString(sum[:]) != p.SHA256 {
			return nil, fmt.Errorf("shard %s holds %d bytes that do not match the manifest's sha256 %s", p.ConfigMap, len(part), p.SHA256)
		}
		if int64(len(b)+len(part)) > limit {
			return nil, fmt.Errorf("more than %d bytes", limit)
		}
		if b == nil {
			// The manifest cannot say the size; the shards are full but
			// for the last.
			b = make([]byte, 0, min(int64(len(l.Shards))*int64(len(part)), limit))
		}
		b = append(b, part...)
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != l.SHA256 {
		return nil, fmt.Errorf("its bytes do not match the manifest's sha256 %s", l.SHA256)
	}
	return b, nil
}

// canonical renders the policy as the bytes that are stored and hashed, and
// the referenced lists (with their texts' hashes, without shards) and
// prompts (with their hashes) in order.
func canonical(namespace, name string, spec *v1alpha1.CallPolicySpec, lists map[ListRef]string,
	prompts map[ListRef][]byte) (policyJSON []byte, storedLists, storedPrompts []storedList, err error) {
	policyJSON, err = json.Marshal(storedPolicy{Namespace: namespace, Name: name, Spec: *spec})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("marshal policy: %w", err)
	}
	var missing []string
	refs := ListRefs(spec)
	storedLists = make([]storedList, 0, len(refs))
	for _, r := range refs {
		text, ok := lists[r]
		if !ok {
			missing = append(missing, fmt.Sprintf("configmap %s key %s", r.Name, r.Key))
			continue
		}
		sum := sha256String(text)
		storedLists = append(storedLists, storedList{Name: r.Name, Key: r.Key, SHA256: hex.EncodeToString(sum[:])})
	}
	if len(missing) > 0 {
		return nil, nil, nil, fmt.Errorf("number lists not found: %s", strings.Join(missing, ", "))
	}
	for _, r := range PromptRefs(spec) {
		b, ok := prompts[r]
		if !ok {
			missing = append(missing, fmt.Sprintf("configmap %s key %s", r.Name, r.Key))
			continue
		}
		sum := sha256.Sum256(b)
		storedPrompts = append(storedPrompts, storedList{Name: r.Name, Key: r.Key, SHA256: hex.EncodeToString(sum[:])})
	}
	if len(missing) > 0 {
		return nil, nil, nil, fmt.Errorf("announce prompts not found: %s", strings.Join(missing, ", "))
	}
	return policyJSON, storedLists, storedPrompts, nil
}

// hashOf hashes the policy and its lists' texts and prompts (by their
// hashes), not the compressed bytes or the shards' names, so that the hash
// does not depend on the compressor (which may change between Go releases)
// or the shard size. Prompts are hashed after a marker that no list entry
// writes, and only when there are some, so that policies without prompts
// hash as before prompts existed.
func hashOf(policyJSON []byte, lists, prompts []storedList) string {
	h := sha256.New()
	h.Write(policyJSON)
	for _, l := range lists {
		fmt.Fprintf(h, "\x00%d:%s%d:%s%s", len(l.Name), l.Name, len(l.Key), l.Key, l.SHA256)
	}
	for _, p := range prompts {
		fmt.Fprintf(h, "\x01%d:%s%d:%s%s", len(p.Name), p.Name, len(p.Key), p.Key, p.SHA256)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func sourceHash(namespace, name string, spec *v1alpha1.CallPolicySpec, lists map[ListRef]string, prompts map[ListRef][]byte) (string, error) {
	pj, storedLists, storedPrompts, err := canonical(namespace, name, spec, lists, prompts)
	if err != nil {
		return "", err
	}
	return hashOf(pj, storedLists, storedPrompts), nil
}
