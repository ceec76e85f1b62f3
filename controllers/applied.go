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

	"github.com/callguard/callguard/internal/policy"
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

// written is what the reconciler last wrote for one policy: the policy
// version it published (publish.go) and each child's last apply, and the
// sources it last read. It lives as long as the policy does.
type written struct {
	published *published
	// streams are the compressed lists of the last version encoded, which
	// the next reuses for the lists it keeps.
	streams  policy.ListStreams
	children map[childKey]appliedChild
	// sources are the Secrets and ConfigMaps it refers to as last read
	// (sources.go).
	sources map[childKey]sourceRead
}

// withWritten runs f on the record of owner, made if there is none, under
// the reconciler's lock (policies reconcile concurrently).
func (r *CallPolicyReconciler) withWritten(owner types.NamespacedName, f func(*written)) {
	r.writtenMu.Lock()
	defer r.writtenMu.Unlock()
	if r.written == nil {
		r.written = map[types.NamespacedName]*written{}
	}
	w := r.written[owner]
	if w == nil {
		w = &written{children: map[childKey]appliedChild{}, sources: map[childKey]sourceRead{}}
		r.written[owner] = w
	}
	f(w)
}

// forgetWritten drops the record of a policy that is gone.
func (r *CallPolicyReconciler) forgetWritten(owner types.NamespacedName) {
	r.writtenMu.Lock()
	defer r.writtenMu.Unlock()
	delete(r.written, owner)
}

// unchanged reports whether applying u to its child would change nothing.
func (r *CallPolicyReconciler) unchanged(ctx context.Context, owner types.NamespacedName, u *unstructured.Unstructured, sent [sha256.Size]byte) bool {
	gvk := u.GroupVersionKind()
	byOthers, known := statusByOthers[gvk.GroupKind()]
	if !known {
		return false
	}
	var last appliedChild
	var ok bool
	r.withWritten(owner, func(w *written) { last, ok = w.children[childKey{gvk.GroupKind(), u.GetNamespace(), u.GetName()}] })
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
	r.withWritten(owner, func(w *written) {
		w.children[childKey{back.GroupVersionKind().GroupKind(), back.GetNamespace(), back.GetName()}] = appliedChild{
			sent: sent, rv: back.GetResourceVersion(), generation: back.GetGeneration(),
		}
	})
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
