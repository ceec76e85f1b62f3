package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/json"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// A converged policy is reconciled again for every status change of its
// Deployment; applying all its children each time made most of the API
// server's work at a thousand policies (docs/benchmarks.md, Operator). So the
// reconciler remembers what it last applied to each child and what came
// back, and skips an apply that would change nothing: the same object, to a
// child nobody changed since (its resourceVersion, or, for children whose
// status others write, its generation and our labels and annotations). Any
// change by someone else, or to the spec, applies again, which is what
// corrects drift.

// appliedChild is what the last apply of a child sent and got back.
type appliedChild struct {
	sent       [sha256.Size]byte
	rv         string
	generation int64
}

// statusByOthers are the kinds whose resourceVersion moves with status
// written by other controllers: for them the generation (spec) and metadata
// tell whether someone changed what the reconciler applies.
var statusByOthers = map[schema.GroupKind]bool{
	{Group: "apps", Kind: "Deployment"}:                       true,
	{Group: "policy", Kind: "PodDisruptionBudget"}:            true,
	{Group: "autoscaling", Kind: "HorizontalPodAutoscaler"}:   true,
	{Group: "networking.k8s.io", Kind: "Ingress"}:             true,
	{Group: "gateway.networking.k8s.io", Kind: "HTTPRoute"}:   true,
	{Group: "networking.k8s.io", Kind: "NetworkPolicy"}:       false,
	{Group: "", Kind: "Service"}:                              false,
	{Group: "rbac.authorization.k8s.io", Kind: "Role"}:        false,
	{Group: "rbac.authorization.k8s.io", Kind: "RoleBinding"}: false,
	{Group: "", Kind: "ServiceAccount"}:                       false,
	{Group: "", Kind: "ConfigMap"}:                            false,
}

type childKey struct {
	gk        schema.GroupKind
	namespace string
	name      string
}

// unchanged reports whether applying u to its child would change nothing.
func (r *CallPolicyReconciler) unchanged(ctx context.Context, owner types.NamespacedName, u *unstructured.Unstructured, sent [sha256.Size]byte) bool {
	gvk := u.GroupVersionKind()
	byOthers, known := statusByOthers[gvk.GroupKind()]
	if !known {
		return false
	}
	r.appliedMu.Lock()
	last, ok := r.applied[owner][childKey{gvk.GroupKind(), u.GetNamespace(), u.GetName()}]
	r.appliedMu.Unlock()
	if !ok || last.sent != sent {
		return false
	}
	// From the cache, as it holds the kind: ConfigMaps as metadata only,
	// the others whole.
	var live client.Object
	if gvk.Kind == "ConfigMap" {
		m := &metav1.PartialObjectMetadata{}
		m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("ConfigMap"))
		live = m
	} else {
		o, err := r.Scheme.New(gvk)
		if err != nil {
			return false
		}
		if live, ok = o.(client.Object); !ok {
			return false
		}
	}
	if err := r.Get(ctx, client.ObjectKeyFromObject(u), live); err != nil {
		return false
	}
	if live.GetResourceVersion() == last.rv {
		return true
	}
	if !byOthers || last.generation == 0 || live.GetGeneration() != last.generation || live.GetDeletionTimestamp() != nil {
		return false
	}
	return hasAll(live.GetLabels(), u.GetLabels()) && hasAll(live.GetAnnotations(), u.GetAnnotations())
}

// rememberApplied records what an apply sent and what came back.
func (r *CallPolicyReconciler) rememberApplied(owner types.NamespacedName, back *unstructured.Unstructured, sent [sha256.Size]byte) {
	r.appliedMu.Lock()
	defer r.appliedMu.Unlock()
	if r.applied == nil {
		r.applied = map[types.NamespacedName]map[childKey]appliedChild{}
	}
	if r.applied[owner] == nil {
		r.applied[owner] = map[childKey]appliedChild{}
	}
	r.applied[owner][childKey{back.GroupVersionKind().GroupKind(), back.GetNamespace(), back.GetName()}] = appliedChild{
		sent: sent, rv: back.GetResourceVersion(), generation: back.GetGeneration(),
	}
}

// forgetApplied drops what is remembered of a policy's children.
func (r *CallPolicyReconciler) forgetApplied(owner types.NamespacedName) {
	r.appliedMu.Lock()
	defer r.appliedMu.Unlock()
	delete(r.applied, owner)
}

func hasAll(live, want map[string]string) bool {
	for k, v := range want {
		if got, ok := live[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func digest(u map[string]any) ([sha256.Size]byte, error) {
	b, err := json.Marshal(u)
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	return sha256.Sum256(b), nil
}
