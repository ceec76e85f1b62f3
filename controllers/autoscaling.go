package controllers

// spec.receiver.autoscaling: a HorizontalPodAutoscaler on the receivers, and
// the hand-over of the Deployment's replicas to it.

import (
	"context"
	"encoding/json"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

// ReplicasFieldOwner is the field manager that takes the Deployment's
// spec.replicas over from FieldOwner when autoscaling starts (see
// handOverReplicas); the autoscaler's writes then take it from there.
const ReplicasFieldOwner = "callguard-replicas-handover"

// +kubebuilder:rbac:groups=autoscaling,resources=horizontalpodautoscalers,verbs=get;list;watch;create;update;patch;delete

func minReplicas(cp *callsv1alpha1.CallPolicy) int32 {
	if a := cp.Spec.Receiver.Autoscaling; a != nil && a.MinReplicas != nil {
		return *a.MinReplicas
	}
	return callsv1alpha1.DefaultAutoscalingMinReplicas
}

func targetCPU(cp *callsv1alpha1.CallPolicy) int32 {
	if a := cp.Spec.Receiver.Autoscaling; a != nil && a.TargetCPUUtilizationPercentage != nil {
		return *a.TargetCPUUtilizationPercentage
	}
	return callsv1alpha1.DefaultTargetCPUUtilizationPercentage
}

// floorReplicas is the fewest receivers the policy asks for: minReplicas
// while autoscaling, replicas otherwise. A PodDisruptionBudget is made when
// it is more than one.
func floorReplicas(cp *callsv1alpha1.CallPolicy) int32 {
	if cp.Spec.Receiver.Autoscaling != nil {
		return minReplicas(cp)
	}
	return replicas(cp)
}

// wantReplicas is the number of receivers Ready waits for: while
// autoscaling, what the autoscaler last set on the Deployment.
func wantReplicas(cp *callsv1alpha1.CallPolicy, d *appsv1.Deployment) int32 {
	if cp.Spec.Receiver.Autoscaling == nil {
		return replicas(cp)
	}
	if d != nil && d.Spec.Replicas != nil {
		return *d.Spec.Replicas
	}
	return minReplicas(cp)
}

// buildHorizontalPodAutoscaler scales the receiver Deployment on the average
// CPU utilization of its pods (relative to their CPU request).
func buildHorizontalPodAutoscaler(cp *callsv1alpha1.CallPolicy) *autoscalingv2.HorizontalPodAutoscaler {
	return &autoscalingv2.HorizontalPodAutoscaler{
		TypeMeta:   metav1.TypeMeta{APIVersion: "autoscaling/v2", Kind: "HorizontalPodAutoscaler"},
		ObjectMeta: objectMeta(cp, childName(cp)),
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: childName(cp)},
			MinReplicas:    ptr.To(minReplicas(cp)),
			MaxReplicas:    cp.Spec.Receiver.Autoscaling.MaxReplicas,
			Metrics: []autoscalingv2.MetricSpec{{
				Type: autoscalingv2.ResourceMetricSourceType,
				Resource: &autoscalingv2.ResourceMetricSource{
					Name: corev1.ResourceCPU,
					Target: autoscalingv2.MetricTarget{
						Type:               autoscalingv2.UtilizationMetricType,
						AverageUtilization: ptr.To(targetCPU(cp)),
					},
				},
			}},
		},
	}
}

func (r *CallPolicyReconciler) reconcileAutoscaling(ctx context.Context, cp *callsv1alpha1.CallPolicy, _ *reconcileState) error {
	if cp.Spec.Receiver.Autoscaling != nil {
		return r.apply(ctx, cp, buildHorizontalPodAutoscaler(cp))
	}
	return r.deleteOwned(ctx, cp, &autoscalingv2.HorizontalPodAutoscaler{})
}

// handOverReplicas runs before the Deployment is applied without
// spec.replicas. Server-side apply deletes a field that its only manager stops
// applying, and the Deployment would fall back to one replica until the
// autoscaler noticed; so while FieldOwner still owns spec.replicas, another
// manager (ReplicasFieldOwner) first applies the live count (at least
// minReplicas), and the field outlives FieldOwner's letting go of it. A new
// Deployment is created with minReplicas and handed over the same way.
func (r *CallPolicyReconciler) handOverReplicas(ctx context.Context, cp *callsv1alpha1.CallPolicy, dep *appsv1.Deployment) error {
	live := &appsv1.Deployment{}
	// From the API server: the cache holds no managedFields.
	err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(dep), live)
	var n int32
	switch {
	case apierrors.IsNotFound(err):
		first := dep.DeepCopy()
		first.Spec.Replicas = ptr.To(minReplicas(cp))
		if err := r.apply(ctx, cp, first); err != nil {
			return err
		}
		n = minReplicas(cp)
	case err != nil:
		return fmt.Errorf("get Deployment: %w", err)
	case !ownsField(live.ManagedFields, FieldOwner, "f:spec", "f:replicas"):
		return nil
	default:
		n = max(ptr.Deref(live.Spec.Replicas, 1), minReplicas(cp))
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apps/v1",
		"kind":       "Deployment",
		"metadata":   map[string]any{"name": dep.Name, "namespace": dep.Namespace},
		"spec":       map[string]any{"replicas": int64(n)},
	}}
	if err := r.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(ReplicasFieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("hand the Deployment's replicas over to the autoscaler: %w", err)
	}
	return nil
}

// ownsField reports whether manager's apply entry in managedFields holds the
// field at path (e.g. "f:spec", "f:replicas").
func ownsField(entries []metav1.ManagedFieldsEntry, manager string, path ...string) bool {
	for _, e := range entries {
		if e.Manager != manager || e.Operation != metav1.ManagedFieldsOperationApply || e.Subresource != "" || e.FieldsV1 == nil {
			continue
		}
		var fields map[string]any
		if err := json.Unmarshal(e.FieldsV1.Raw, &fields); err != nil {
			continue
		}
		found := true
		for _, p := range path {
			next, ok := fields[p].(map[string]any)
			if !ok {
				found = false
				break
			}
			fields = next
		}
		if found {
			return true
		}
	}
	return false
}
