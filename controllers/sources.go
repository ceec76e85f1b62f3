package controllers

import (
	"context"
	"fmt"
	"reflect"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
)

// The Secrets and ConfigMaps a policy refers to are cached as metadata only
// (setup.go), so reading their data takes a round trip to the API server:
// five of them took 40 to 95 ms of every reconcile on a loaded machine, a
// change of the rules alone included (docs/benchmarks.md). So the reconciler
// keeps, for each policy, the ones it read, and reads one again only when
// the metadata cache shows a version other than the one kept. The operator
// still holds only the objects its policies name, dropped with the policy
// or once it no longer names them.

// sourceRead is a Secret or ConfigMap as a policy's reconcile last read it.
type sourceRead struct {
	uid types.UID
	rv  string
	obj client.Object
}

// readSource reads the Secret or ConfigMap name into obj, from what cp's
// reconciles read before when its UID and resourceVersion are unchanged,
// else from the API server.
func (r *CallPolicyReconciler) readSource(ctx context.Context, cp client.Object, st *reconcileState, name string, obj client.Object) error {
	gvk, err := apiutil.GVKForObject(obj, r.Scheme)
	if err != nil {
		return fmt.Errorf("kind of %T: %w", obj, err)
	}
	nn := types.NamespacedName{Namespace: cp.GetNamespace(), Name: name}
	ck := childKey{gk: gvk.GroupKind(), namespace: nn.Namespace, name: nn.Name}
	if st.sourcesRead == nil {
		st.sourcesRead = map[childKey]bool{}
	}
	st.sourcesRead[ck] = true
	owner := client.ObjectKeyFromObject(cp)
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(gvk)
	if err := r.Get(ctx, nn, m); err == nil {
		var last sourceRead
		var ok bool
		r.withWritten(owner, func(w *written) { last, ok = w.sources[ck] })
		if ok && last.uid == m.UID && last.rv == m.ResourceVersion {
			// A copy: the caller may keep or change what it gets.
			reflect.ValueOf(obj).Elem().Set(reflect.ValueOf(last.obj.DeepCopyObject()).Elem())
			return nil
		}
	}
	// Not in the cache (yet), or changed: the API server says.
	if err := r.APIReader.Get(ctx, nn, obj); err != nil {
		return err
	}
	kept := sourceRead{uid: obj.GetUID(), rv: obj.GetResourceVersion(), obj: obj.DeepCopyObject().(client.Object)}
	r.withWritten(owner, func(w *written) { w.sources[ck] = kept })
	return nil
}

// keepSources drops the sources cp's reconciles read before that the last
// full read did not.
func (r *CallPolicyReconciler) keepSources(cp client.Object, st *reconcileState) {
	r.withWritten(client.ObjectKeyFromObject(cp), func(w *written) {
		for k := range w.sources {
			if !st.sourcesRead[k] {
				delete(w.sources, k)
			}
		}
	})
}
