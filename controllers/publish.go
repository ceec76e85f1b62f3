package controllers

// The resolved policy's way to the receivers: compiled, encoded, written,
// and readable by the receivers' Role alone.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
)

// maxPolicyConfigMapBytes keeps the manifest (the defaulted spec and the
// lists' shard names; the lists themselves are in shards) under the API
// server's 1 MiB object limit with room for metadata.
const maxPolicyConfigMapBytes = 1000 * 1024

// ReasonShardConflict: a ConfigMap with a shard's name is someone else's.
const ReasonShardConflict = "PolicyShardConflict"

// shardLabel marks the shard ConfigMaps, which are cleaned up by it.
const shardLabel = "callguard.dev/policy-shard"

// published is a policy version as written: what the receivers read and
// what the status and events say of it. The reconciler keeps the last one of
// each policy so that the reconciles a rollout brings (Deployment status,
// shards created) do not read, compile and compress a million numbers each.
type published struct {
	// key identifies the inputs: the policy's generation and the list
	// ConfigMaps' resource versions.
	key      string
	data     map[string]string
	shards   []policy.Shard
	hash     string
	rules    int
	warnings []policy.FieldError
}

func (p *published) shardNames() []string {
	names := make([]string, len(p.shards))
	for i, s := range p.shards {
		names[i] = s.Name
	}
	return names
}

// publishedKey identifies the inputs of a compile from the metadata cache
// alone; ok is false when a list ConfigMap is not there (the full read then
// says why).
func (r *CallPolicyReconciler) publishedKey(ctx context.Context, cp *callsv1alpha1.CallPolicy) (string, bool) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s/%d", cp.UID, cp.Generation)
	for _, ref := range append(policy.ListRefs(&cp.Spec), policy.PromptRefs(&cp.Spec)...) {
		m := configMapMetadata()
		if err := r.Get(ctx, types.NamespacedName{Namespace: cp.Namespace, Name: ref.Name}, m); err != nil {
			return "", false
		}
		fmt.Fprintf(&b, ";%s=%s/%s", ref.Name, m.UID, m.ResourceVersion)
	}
	return b.String(), true
}

func configMapMetadata() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("ConfigMap"))
	return m
}

// lastPublished returns the version last written for cp if its inputs are
// still key.
func (r *CallPolicyReconciler) lastPublished(cp types.NamespacedName, key string) (p *published) {
	r.withWritten(cp, func(w *written) {
		if w.published != nil && w.published.key == key {
			p = w.published
		}
	})
	return p
}

// reconcilePolicy compiles the policy and writes it for the receivers:
// first the shards (new names for new bytes), then a Role that lets the
// receivers read the old and the new ones, then the manifest, whose update
// is what the receivers switch on. A policy that does not compile leaves
// everything alone, so the receivers keep enforcing the last good one.
func (r *CallPolicyReconciler) reconcilePolicy(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState) error {
	pub := st.published
	if pub == nil {
		src := &policy.Source{Namespace: cp.Namespace, Name: cp.Name, Spec: *cp.Spec.DeepCopy(), Lists: st.lists, Prompts: st.prompts}
		problems := unservedPrompts(cp)
		compiled, err := policy.Compile(src)
		if err != nil {
			var ce *policy.CompileError
			if !errors.As(err, &ce) {
				return fmt.Errorf("compile policy: %w", err)
			}
			problems = append(problems, fieldProblems(ce.Errors)...)
		}
		if len(problems) > 0 {
			return st.stall(&stalledError{reason: ReasonInvalidPolicy, problems: problems})
		}
		// A policy reconciles one at a time, so its streams are used by
		// one encode at a time.
		var streams *policy.ListStreams
		r.withWritten(client.ObjectKeyFromObject(cp), func(w *written) { streams = &w.streams })
		data, shards, hash, err := streams.Encode(src, policyConfigMapName(cp))
		if err != nil {
			return fmt.Errorf("encode policy ConfigMaps: %w", err)
		}
		size := 0
		for _, v := range data {
			size += len(v)
		}
		if size > maxPolicyConfigMapBytes {
			return st.stall(stalled(ReasonPolicyTooLarge, "the resolved policy's manifest is %d bytes; a ConfigMap holds at most %d", size, maxPolicyConfigMapBytes))
		}
		pub = &published{key: st.publishedKey, data: data, shards: shards, hash: hash, rules: compiled.Rules(), warnings: compiled.Warnings()}
	}

	previous := configMapMetadata()
	err := r.Get(ctx, types.NamespacedName{Namespace: cp.Namespace, Name: policyConfigMapName(cp)}, previous)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("get policy ConfigMap: %w", err)
	}
	for _, s := range pub.shards {
		if err := r.ensureShard(ctx, cp, st, s); err != nil {
			return err
		}
	}
	names := pub.shardNames()
	if prev := splitNames(previous.Annotations[callsv1alpha1.PolicyShardsAnnotation]); !slices.Equal(prev, names) {
		// Receivers still loading the previous version may read its shards
		// until the manifest names the new ones.
		if err := r.apply(ctx, cp, BuildRole(cp, union(prev, names))); err != nil {
			return err
		}
	}
	if err := r.apply(ctx, cp, buildPolicyConfigMap(cp, pub.data, pub.hash, names)); err != nil {
		return err
	}
	if previous.Annotations[callsv1alpha1.PolicyHashAnnotation] != pub.hash {
		// Once per policy version, not once per reconcile.
		r.Recorder.Eventf(cp, nil, corev1.EventTypeNormal, "PolicyApplied", "Apply",
			"policy %s with %d rules applied to ConfigMap %s (%d shards)", policy.ShortHash(pub.hash), pub.rules, policyConfigMapName(cp), len(names))
		// One event for all warnings: up to 512 rules could each have one.
		if len(pub.warnings) > 0 {
			r.Recorder.Eventf(cp, nil, corev1.EventTypeWarning, "PolicyWarning", "Compile", "%s",
				summarizeProblems(fieldProblems(pub.warnings), maxEventProblems, maxEventNote))
		}
	}
	if pub.key != "" {
		r.withWritten(client.ObjectKeyFromObject(cp), func(w *written) { w.published = pub })
	}
	st.published = pub
	st.policyHash = pub.hash
	st.rules = pub.rules
	return nil
}

// unservedPrompts refuses ConfigMap prompts of a policy that is not exposed:
// Graph fetches them from the receivers under the public callback URL.
func unservedPrompts(cp *callsv1alpha1.CallPolicy) []string {
	if cp.Spec.Receiver.Expose != nil {
		return nil
	}
	var out []string
	for i, rule := range cp.Spec.Rules {
		if rule.Announce != nil && rule.Announce.Prompt.ConfigMapKeyRef != nil {
			out = append(out, fmt.Sprintf("spec.rules[%d].announce.prompt.configMapKeyRef: a prompt kept in a ConfigMap is served by the receivers under the public callback URL: set spec.receiver.expose", i))
		}
	}
	return out
}

// ensureShard creates a shard unless it is there. Shards are immutable and
// named after their bytes, so one that is there holds them, as long as it
// is this policy's.
func (r *CallPolicyReconciler) ensureShard(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState, s policy.Shard) error {
	m := configMapMetadata()
	err := r.Get(ctx, types.NamespacedName{Namespace: cp.Namespace, Name: s.Name}, m)
	if err == nil {
		if !metav1.IsControlledBy(m, cp) {
			return st.stall(stalled(ReasonShardConflict, "ConfigMap %q, a shard of the resolved policy, exists and is not this policy's", s.Name))
		}
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("get policy shard %s: %w", s.Name, err)
	}
	cm := buildShardConfigMap(cp, s)
	if err := controllerutil.SetControllerReference(cp, cm, r.Scheme); err != nil {
		return fmt.Errorf("set owner of shard %s: %w", s.Name, err)
	}
	// The cache may not have seen a shard created a moment ago.
	if err := r.Create(ctx, cm); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create policy shard %s: %w", s.Name, err)
	}
	return nil
}

// reconcileStaleShards deletes the shards the live manifest no longer names,
// once the Role no longer lets the receivers read them.
func (r *CallPolicyReconciler) reconcileStaleShards(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState) error {
	if st.published == nil {
		return nil
	}
	live := map[string]bool{}
	for _, s := range st.published.shards {
		live[s.Name] = true
	}
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("ConfigMapList"))
	sel := selectorLabels(cp)
	sel[shardLabel] = "true"
	if err := r.List(ctx, list, client.InNamespace(cp.Namespace), client.MatchingLabels(sel)); err != nil {
		return fmt.Errorf("list policy shards: %w", err)
	}
	for i := range list.Items {
		m := &list.Items[i]
		if live[m.Name] || !metav1.IsControlledBy(m, cp) {
			continue
		}
		if err := r.Delete(ctx, m); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("delete stale policy shard %s: %w", m.Name, err)
		}
	}
	return nil
}

func splitNames(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// union is a then the names of b not in a.
func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, n := range b {
		if !slices.Contains(a, n) {
			out = append(out, n)
		}
	}
	return out
}

// buildPolicyConfigMap returns the resolved policy's manifest ConfigMap.
func buildPolicyConfigMap(cp *callsv1alpha1.CallPolicy, data map[string]string, hash string, shards []string) *corev1.ConfigMap {
	cm := &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: objectMeta(cp, policyConfigMapName(cp)),
		Data:       data,
	}
	cm.Annotations = map[string]string{callsv1alpha1.PolicyHashAnnotation: hash}
	if len(shards) > 0 {
		cm.Annotations[callsv1alpha1.PolicyShardsAnnotation] = strings.Join(shards, ",")
	}
	return cm
}

// buildShardConfigMap returns one shard: immutable, as its name promises.
func buildShardConfigMap(cp *callsv1alpha1.CallPolicy, s policy.Shard) *corev1.ConfigMap {
	cm := &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: objectMeta(cp, s.Name),
		BinaryData: map[string][]byte{policy.ShardKey: s.Data},
		Immutable:  ptr.To(true),
	}
	cm.Labels[shardLabel] = "true"
	return cm
}

// BuildRole lets the receivers read exactly their policy's manifest and the
// shards it names. Exported for the receiver's tests, which run as this Role
// allows.
func BuildRole(cp *callsv1alpha1.CallPolicy, shards []string) *rbacv1.Role {
	return &rbacv1.Role{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
		ObjectMeta: objectMeta(cp, childName(cp)),
		Rules: []rbacv1.PolicyRule{{
			APIGroups:     []string{""},
			Resources:     []string{"configmaps"},
			ResourceNames: append([]string{policyConfigMapName(cp)}, shards...),
			Verbs:         []string{"get", "list", "watch"},
		}},
	}
}
