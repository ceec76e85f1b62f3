package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/callguard/callguard/api/v1alpha1"
)

// The resolved policy travels to the receivers in ConfigMaps: one manifest
// (policy.json and lists.json), plus the number lists, gzipped, in shard
// ConfigMaps of at most MaxShardBytes each. A shard is named after the hash
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
	// ShardKey is the binaryData key of a shard ConfigMap: a part of one
	// list's gzip stream (gzipped without a modification time, so that equal
	// text gives equal bytes and equal shard names).
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

// storedList is one number list in the manifest.
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
// number lists it refers to) as the manifest's data and the shards it names,
// each called shardPrefix-<hash of its bytes>, and returns the policy's hash,
// the one Policy.Hash returns for the same Source. It does not validate:
// Compile first. Lists not referenced by the spec are left out; a referenced
// list missing from the Source is an error.
func EncodeConfigMaps(src *Source, shardPrefix string) (data map[string]string, shards []Shard, hash string, err error) {
	if src == nil {
		return nil, nil, "", errors.New("encode policy configmaps: no source")
	}
	spec := src.Spec.DeepCopy()
	applyDefaults(spec)
	pj, lists, err := canonical(src.Namespace, src.Name, spec, src.Lists)
	if err != nil {
		return nil, nil, "", fmt.Errorf("encode policy configmaps: %w", err)
	}
	data = map[string]string{ConfigMapKeyPolicy: string(pj)}
	if len(lists) == 0 {
		return data, nil, hashOf(pj, lists), nil
	}
	seen := map[string]bool{}
	for i := range lists {
		gz := Gzip([]byte(src.Lists[ListRef{Name: lists[i].Name, Key: lists[i].Key}]))
		for len(gz) > 0 {
			n := min(len(gz), MaxShardBytes)
			part := gz[:n:n]
			gz = gz[n:]
			sum := sha256.Sum256(part)
			name := shardName(shardPrefix, sum)
			lists[i].Shards = append(lists[i].Shards, storedPart{ConfigMap: name, SHA256: hex.EncodeToString(sum[:])})
			if !seen[name] {
				seen[name] = true
				shards = append(shards, Shard{Name: name, Data: part})
			}
		}
	}
	lj, err := json.Marshal(lists)
	if err != nil {
		return nil, nil, "", fmt.Errorf("encode policy configmaps: marshal number lists: %w", err)
	}
	data[ConfigMapKeyLists] = string(lj)
	return data, shards, hashOf(pj, lists), nil
}

// shardName names a shard after its bytes: 64 bits of the hash keep names
// of one policy apart, and the full hash in the manifest is what is checked.
func shardName(prefix string, sum [sha256.Size]byte) string {
	return prefix + "-" + hex.EncodeToString(sum[:8])
}

// ShardNames returns the shard ConfigMaps a manifest names, in order and
// without repeats.
func ShardNames(data map[string]string) ([]string, error) {
	lists, err := manifestLists(data)
	if err != nil {
		return nil, err
	}
	var names []string
	seen := map[string]bool{}
	for _, l := range lists {
		for _, p := range l.Shards {
			if !seen[p.ConfigMap] {
				seen[p.ConfigMap] = true
				names = append(names, p.ConfigMap)
			}
		}
	}
	return names, nil
}

func manifestLists(data map[string]string) ([]storedList, error) {
	lj, ok := data[ConfigMapKeyLists]
	if !ok {
		return nil, nil
	}
	var lists []storedList
	if err := json.Unmarshal([]byte(lj), &lists); err != nil {
		return nil, fmt.Errorf("decode policy configmap: %s: %w", ConfigMapKeyLists, err)
	}
	return lists, nil
}

// DecodeConfigMaps reads back what EncodeConfigMaps wrote: data is the
// manifest's, and shard returns the bytes under ShardKey of the shard
// ConfigMap it is given the name of. Every shard must hash to what the
// manifest says, and every list's text too, or nothing is returned: a
// receiver keeps its old version rather than decide by a partial one.
func DecodeConfigMaps(data map[string]string, shard func(configMap string) ([]byte, error)) (*Source, error) {
	pj, ok := data[ConfigMapKeyPolicy]
	if !ok {
		return nil, fmt.Errorf("decode policy configmap: no key %s", ConfigMapKeyPolicy)
	}
	var sp storedPolicy
	if err := json.Unmarshal([]byte(pj), &sp); err != nil {
		return nil, fmt.Errorf("decode policy configmap: %s: %w", ConfigMapKeyPolicy, err)
	}
	lists, err := manifestLists(data)
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
	return src, nil
}

// canonical renders the policy as the bytes that are stored and hashed, and
// the referenced lists (with their texts' hashes, without shards) in order.
func canonical(namespace, name string, spec *v1alpha1.CallPolicySpec, lists map[ListRef]string) (policyJSON []byte, stored []storedList, err error) {
	policyJSON, err = json.Marshal(storedPolicy{Namespace: namespace, Name: name, Spec: *spec})
	if err != nil {
		return nil, nil, fmt.Errorf("marshal policy: %w", err)
	}
	refs := ListRefs(spec)
	stored = make([]storedList, 0, len(refs))
	var missing []string
	for _, r := range refs {
		text, ok := lists[r]
		if !ok {
			missing = append(missing, fmt.Sprintf("configmap %s key %s", r.Name, r.Key))
			continue
		}
		sum := sha256String(text)
		stored = append(stored, storedList{Name: r.Name, Key: r.Key, SHA256: hex.EncodeToString(sum[:])})
	}
	if len(missing) > 0 {
		return nil, nil, fmt.Errorf("number lists not found: %s", strings.Join(missing, ", "))
	}
	return policyJSON, stored, nil
}

// hashOf hashes the policy and its lists' texts (by their hashes), not the
// compressed bytes or the shards' names, so that the hash does not depend on
// the compressor (which may change between Go releases) or the shard size.
func hashOf(policyJSON []byte, lists []storedList) string {
	h := sha256.New()
	h.Write(policyJSON)
	for _, l := range lists {
		fmt.Fprintf(h, "\x00%d:%s%d:%s%s", len(l.Name), l.Name, len(l.Key), l.Key, l.SHA256)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func sourceHash(namespace, name string, spec *v1alpha1.CallPolicySpec, lists map[ListRef]string) (string, error) {
	pj, stored, err := canonical(namespace, name, spec, lists)
	if err != nil {
		return "", err
	}
	return hashOf(pj, stored), nil
}
