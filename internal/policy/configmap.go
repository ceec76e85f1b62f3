package policy

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/callguard/callguard/api/v1alpha1"
)

// Keys of the policy ConfigMap the operator writes and the receiver reads.
const (
	// ConfigMapKeyPolicy (in data) holds {"namespace", "name", "spec"}, the
	// spec with its defaults applied.
	ConfigMapKeyPolicy = "policy.json"
	// ConfigMapKeyLists (in binaryData) holds the referenced number lists,
	// [{"name", "key", "text"}] sorted by name and key, gzipped without a
	// modification time so that equal content gives equal bytes.
	ConfigMapKeyLists = "lists.json.gz"
)

// maxListsJSON bounds what DecodeConfigMap inflates: a million entries take
// about 20 MB, and a gzip bomb must not take the receiver down.
const maxListsJSON = 256 << 20

type storedPolicy struct {
	Namespace string                  `json:"namespace"`
	Name      string                  `json:"name"`
	Spec      v1alpha1.CallPolicySpec `json:"spec"`
}

type storedList struct {
	Name string `json:"name"`
	Key  string `json:"key"`
	Text string `json:"text"`
}

// EncodeConfigMap renders the resolved policy (defaulted spec plus the number
// lists it refers to) as ConfigMap data and binaryData, and returns its hash,
// the one Policy.Hash returns for the same Source. It does not validate:
// Compile first. Lists not referenced by the spec are left out; a referenced
// list missing from the Source is an error.
func EncodeConfigMap(src *Source) (data map[string]string, binaryData map[string][]byte, hash string, err error) {
	if src == nil {
		return nil, nil, "", errors.New("encode policy configmap: no source")
	}
	spec := src.Spec.DeepCopy()
	applyDefaults(spec)
	pj, lj, err := canonical(src.Namespace, src.Name, spec, src.Lists)
	if err != nil {
		return nil, nil, "", fmt.Errorf("encode policy configmap: %w", err)
	}
	data = map[string]string{ConfigMapKeyPolicy: string(pj)}
	if lj != nil {
		binaryData = map[string][]byte{ConfigMapKeyLists: Gzip(lj)}
	}
	return data, binaryData, hashOf(pj, lj), nil
}

// DecodeConfigMap reads back what EncodeConfigMap wrote.
func DecodeConfigMap(data map[string]string, binaryData map[string][]byte) (*Source, error) {
	pj, ok := data[ConfigMapKeyPolicy]
	if !ok {
		return nil, fmt.Errorf("decode policy configmap: no key %s", ConfigMapKeyPolicy)
	}
	var sp storedPolicy
	if err := json.Unmarshal([]byte(pj), &sp); err != nil {
		return nil, fmt.Errorf("decode policy configmap: %s: %w", ConfigMapKeyPolicy, err)
	}
	src := &Source{Namespace: sp.Namespace, Name: sp.Name, Spec: sp.Spec, Lists: map[ListRef]string{}}
	gz, ok := binaryData[ConfigMapKeyLists]
	if !ok {
		return src, nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return nil, fmt.Errorf("decode policy configmap: %s: %w", ConfigMapKeyLists, err)
	}
	lj, err := io.ReadAll(io.LimitReader(zr, maxListsJSON+1))
	if err != nil {
		return nil, fmt.Errorf("decode policy configmap: %s: %w", ConfigMapKeyLists, err)
	}
	if len(lj) > maxListsJSON {
		return nil, fmt.Errorf("decode policy configmap: %s: more than %d bytes uncompressed", ConfigMapKeyLists, maxListsJSON)
	}
	var lists []storedList
	if err := json.Unmarshal(lj, &lists); err != nil {
		return nil, fmt.Errorf("decode policy configmap: %s: %w", ConfigMapKeyLists, err)
	}
	for _, l := range lists {
		src.Lists[ListRef{Name: l.Name, Key: l.Key}] = l.Text
	}
	return src, nil
}

// canonical renders the policy and its lists as the bytes that are stored
// and hashed. listsJSON is nil when the spec refers to no list.
func canonical(namespace, name string, spec *v1alpha1.CallPolicySpec, lists map[ListRef]string) (policyJSON, listsJSON []byte, err error) {
	policyJSON, err = json.Marshal(storedPolicy{Namespace: namespace, Name: name, Spec: *spec})
	if err != nil {
		return nil, nil, fmt.Errorf("marshal policy: %w", err)
	}
	refs := ListRefs(spec)
	if len(refs) == 0 {
		return policyJSON, nil, nil
	}
	stored := make([]storedList, 0, len(refs))
	var missing []string
	for _, r := range refs {
		text, ok := lists[r]
		if !ok {
			missing = append(missing, fmt.Sprintf("configmap %s key %s", r.Name, r.Key))
			continue
		}
		stored = append(stored, storedList{Name: r.Name, Key: r.Key, Text: text})
	}
	if len(missing) > 0 {
		return nil, nil, fmt.Errorf("number lists not found: %s", strings.Join(missing, ", "))
	}
	listsJSON, err = json.Marshal(stored)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal number lists: %w", err)
	}
	return policyJSON, listsJSON, nil
}

// hashOf hashes the uncompressed content, so the hash does not depend on the
// compressor (which may change between Go releases).
func hashOf(policyJSON, listsJSON []byte) string {
	h := sha256.New()
	h.Write(policyJSON)
	h.Write([]byte{0})
	h.Write(listsJSON)
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func sourceHash(namespace, name string, spec *v1alpha1.CallPolicySpec, lists map[ListRef]string) (string, error) {
	pj, lj, err := canonical(namespace, name, spec, lists)
	if err != nil {
		return "", err
	}
	return hashOf(pj, lj), nil
}
