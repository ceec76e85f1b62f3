package controllers

// The resolved policy's way to the receivers: compiled, encoded, written,
// and readable by the receivers' Role alone.

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
)

// maxPolicyConfigMapBytes keeps the resolved policy under the API server's
// 1 MiB object limit with room for metadata.
const maxPolicyConfigMapBytes = 1000 * 1024

// reconcilePolicy compiles the policy and writes the resolved policy
// ConfigMap. A policy that does not compile leaves the old ConfigMap alone, so
// the receivers keep enforcing the last good one.
func (r *CallPolicyReconciler) reconcilePolicy(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState) error {
	src := &policy.Source{Namespace: cp.Namespace, Name: cp.Name, Spec: *cp.Spec.DeepCopy(), Lists: st.lists}
	compiled, err := policy.Compile(src)
	if err != nil {
		var ce *policy.CompileError
		if errors.As(err, &ce) {
			return st.stall(&stalledError{reason: ReasonInvalidPolicy, problems: fieldProblems(ce.Errors)})
		}
		return fmt.Errorf("compile policy: %w", err)
	}
	data, binaryData, hash, err := policy.EncodeConfigMap(src)
	if err != nil {
		return fmt.Errorf("encode policy ConfigMap: %w", err)
	}
	size := 0
	for _, v := range data {
		size += len(v)
	}
	for _, v := range binaryData {
		size += len(v)
	}
	if size > maxPolicyConfigMapBytes {
		return st.stall(stalled(ReasonPolicyTooLarge, "the resolved policy is %d bytes compressed; a ConfigMap holds at most %d", size, maxPolicyConfigMapBytes))
	}

	// Only its hash annotation matters, and the cache holds ConfigMaps as
	// metadata only.
	previous := &metav1.PartialObjectMetadata{}
	previous.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("ConfigMap"))
	err = r.Get(ctx, types.NamespacedName{Namespace: cp.Namespace, Name: policyConfigMapName(cp)}, previous)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("get policy ConfigMap: %w", err)
	}
	if err := r.apply(ctx, cp, buildPolicyConfigMap(cp, data, binaryData, hash)); err != nil {
		return err
	}
	if previous.Annotations[policyHashAnnotation] != hash {
		// Once per policy version, not once per reconcile.
		r.Recorder.Eventf(cp, nil, corev1.EventTypeNormal, "PolicyApplied", "Apply",
			"policy %s with %d rules applied to ConfigMap %s", shortHash(hash), compiled.Rules(), policyConfigMapName(cp))
		// One event for all warnings: up to 512 rules could each have one.
		if ws := compiled.Warnings(); len(ws) > 0 {
			r.Recorder.Eventf(cp, nil, corev1.EventTypeWarning, "PolicyWarning", "Compile", "%s",
				summarizeProblems(fieldProblems(ws), maxEventProblems, maxEventNote))
		}
	}
	st.policyHash = hash
	st.rules = compiled.Rules()
	return nil
}

// buildPolicyConfigMap returns the resolved policy ConfigMap.
func buildPolicyConfigMap(cp *callsv1alpha1.CallPolicy, data map[string]string, binaryData map[string][]byte, hash string) *corev1.ConfigMap {
	cm := &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: objectMeta(cp, policyConfigMapName(cp)),
		Data:       data,
		BinaryData: binaryData,
	}
	cm.Annotations = map[string]string{policyHashAnnotation: hash}
	return cm
}

// BuildRole lets the receivers read exactly one ConfigMap: their policy.
// Exported for the receiver's tests, which run as this Role allows.
func BuildRole(cp *callsv1alpha1.CallPolicy) *rbacv1.Role {
	return &rbacv1.Role{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
		ObjectMeta: objectMeta(cp, childName(cp)),
		Rules: []rbacv1.PolicyRule{{
			APIGroups:     []string{""},
			Resources:     []string{"configmaps"},
			ResourceNames: []string{policyConfigMapName(cp)},
			Verbs:         []string{"get", "list", "watch"},
		}},
	}
}
