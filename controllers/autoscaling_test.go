package controllers

import (
	"context"
	"sync"
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

func TestBuildHorizontalPodAutoscaler(t *testing.T) {
	for _, tt := range []struct {
		name                string
		spec                callsv1alpha1.AutoscalingSpec
		min, max, targetCPU int32
	}{
		{"defaults", callsv1alpha1.AutoscalingSpec{MaxReplicas: 6}, 2, 6, 70},
		{"given", callsv1alpha1.AutoscalingSpec{MinReplicas: ptr.To[int32](3), MaxReplicas: 10, TargetCPUUtilizationPercentage: ptr.To[int32](50)}, 3, 10, 50},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cp := testPolicy("telephony", "hotline")
			cp.Spec.Receiver.Autoscaling = &tt.spec
			h := buildHorizontalPodAutoscaler(cp)
			if h.APIVersion != "autoscaling/v2" || h.Name != "hotline-callguard" {
				t.Errorf("type/meta = %+v %+v", h.TypeMeta, h.ObjectMeta)
			}
			ref := h.Spec.ScaleTargetRef
			if ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || ref.Name != "hotline-callguard" {
				t.Errorf("scaleTargetRef = %+v", ref)
			}
			if ptr.Deref(h.Spec.MinReplicas, 0) != tt.min || h.Spec.MaxReplicas != tt.max {
				t.Errorf("replicas %v..%d, want %d..%d", h.Spec.MinReplicas, h.Spec.MaxReplicas, tt.min, tt.max)
			}
			if len(h.Spec.Metrics) != 1 || h.Spec.Metrics[0].Resource == nil || h.Spec.Metrics[0].Resource.Name != corev1.ResourceCPU ||
				h.Spec.Metrics[0].Resource.Target.Type != autoscalingv2.UtilizationMetricType ||
				ptr.Deref(h.Spec.Metrics[0].Resource.Target.AverageUtilization, 0) != tt.targetCPU {
				t.Errorf("metrics = %+v", h.Spec.Metrics)
			}
		})
	}
}

func TestReplicaCounts(t *testing.T) {
	dep := func(n *int32) *appsv1.Deployment { return &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Replicas: n}} }
	for _, tt := range []struct {
		name                 string
		replicas             *int32
		autoscaling          *callsv1alpha1.AutoscalingSpec
		live                 *appsv1.Deployment
		deployment           *int32
		floor, wantAvailable int32
	}{
		{"fixed", ptr.To[int32](3), nil, dep(ptr.To[int32](7)), ptr.To[int32](3), 3, 3},
		{"fixed, default", nil, nil, nil, ptr.To[int32](2), 2, 2},
		{"autoscaling: the autoscaler's count", ptr.To[int32](3), &callsv1alpha1.AutoscalingSpec{MaxReplicas: 9}, dep(ptr.To[int32](7)), nil, 2, 7},
		{"autoscaling, no Deployment yet: minReplicas", nil, &callsv1alpha1.AutoscalingSpec{MinReplicas: ptr.To[int32](4), MaxReplicas: 9}, nil, nil, 4, 4},
		{"autoscaling, minReplicas 1", nil, &callsv1alpha1.AutoscalingSpec{MinReplicas: ptr.To[int32](1), MaxReplicas: 9}, dep(ptr.To[int32](1)), nil, 1, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cp := testPolicy("n", "p")
			cp.Spec.Receiver.Replicas, cp.Spec.Receiver.Autoscaling = tt.replicas, tt.autoscaling
			if got := deploymentReplicas(cp); !ptr.Equal(got, tt.deployment) {
				t.Errorf("deploymentReplicas = %v, want %v", ptr.Deref(got, -1), ptr.Deref(tt.deployment, -1))
			}
			if got := buildDeployment(cp, "img", podInputs{}).Spec.Replicas; !ptr.Equal(got, tt.deployment) {
				t.Errorf("buildDeployment replicas = %v, want %v", ptr.Deref(got, -1), ptr.Deref(tt.deployment, -1))
			}
			if got := floorReplicas(cp); got != tt.floor {
				t.Errorf("floorReplicas = %d, want %d", got, tt.floor)
			}
			if got := wantReplicas(cp, tt.live); got != tt.wantAvailable {
				t.Errorf("wantReplicas = %d, want %d", got, tt.wantAvailable)
			}
		})
	}
}

func TestOwnsField(t *testing.T) {
	entry := func(manager string, op metav1.ManagedFieldsOperationType, sub, fields string) metav1.ManagedFieldsEntry {
		return metav1.ManagedFieldsEntry{Manager: manager, Operation: op, Subresource: sub, FieldsV1: &metav1.FieldsV1{Raw: []byte(fields)}}
	}
	const replicas = `{"f:spec":{"f:replicas":{},"f:selector":{}}}`
	const noReplicas = `{"f:spec":{"f:selector":{}}}`
	for _, tt := range []struct {
		name    string
		entries []metav1.ManagedFieldsEntry
		want    bool
	}{
		{"applied by us", []metav1.ManagedFieldsEntry{entry(FieldOwner, metav1.ManagedFieldsOperationApply, "", replicas)}, true},
		{"applied by us without it", []metav1.ManagedFieldsEntry{entry(FieldOwner, metav1.ManagedFieldsOperationApply, "", noReplicas)}, false},
		{"someone else's", []metav1.ManagedFieldsEntry{
			entry(FieldOwner, metav1.ManagedFieldsOperationApply, "", noReplicas),
			entry(ReplicasFieldOwner, metav1.ManagedFieldsOperationApply, "", replicas),
		}, false},
		{"our update, not apply", []metav1.ManagedFieldsEntry{entry(FieldOwner, metav1.ManagedFieldsOperationUpdate, "", replicas)}, false},
		{"a subresource", []metav1.ManagedFieldsEntry{entry(FieldOwner, metav1.ManagedFieldsOperationApply, "status", replicas)}, false},
		{"none", nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := ownsField(tt.entries, FieldOwner, "f:spec", "f:replicas"); got != tt.want {
				t.Errorf("ownsField = %v, want %v", got, tt.want)
			}
		})
	}
}

// watchReplicas records spec.replicas of the policy hotline's Deployment at
// every change (-1 when unset) until the returned function is called.
func watchReplicas(t *testing.T, ctx context.Context, ns string) func() []int32 {
	t.Helper()
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	must(t, err)
	w, err := wc.Watch(ctx, &appsv1.DeploymentList{}, client.InNamespace(ns),
		client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("metadata.name", "hotline-callguard")})
	must(t, err)
	var (
		mu   sync.Mutex
		seen []int32
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			if ev.Type != watch.Added && ev.Type != watch.Modified {
				continue
			}
			if d, ok := ev.Object.(*appsv1.Deployment); ok {
				mu.Lock()
				seen = append(seen, ptr.Deref(d.Spec.Replicas, -1))
				mu.Unlock()
			}
		}
	}()
	return func() []int32 {
		w.Stop()
		<-done
		mu.Lock()
		defer mu.Unlock()
		return seen
	}
}

func liveDeployment(g Gomega, ctx context.Context, ns string) *appsv1.Deployment {
	dep := &appsv1.Deployment{}
	g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), dep)).To(Succeed())
	return dep
}

// TestAutoscalingTakesReplicasOverWithoutDroppingThem: turning autoscaling on
// for three running receivers never makes the Deployment ask for fewer (an
// apply that merely dropped spec.replicas would delete it: one replica);
// the autoscaler's count is then left alone and is what Ready waits for;
// turning it off writes the policy's replicas again and deletes the HPA.
func TestAutoscalingTakesReplicasOverWithoutDroppingThem(t *testing.T) {
	g := NewWithT(t)
	ctx, ns := sources(t)
	cp := testPolicy(ns, "hotline")
	cp.Spec.Receiver.Replicas = ptr.To[int32](3)
	must(t, k8s.Create(ctx, cp))
	g.Eventually(func(g Gomega) {
		g.Expect(*liveDeployment(g, ctx, ns).Spec.Replicas).To(Equal(int32(3)))
	}, eventually, poll).Should(Succeed())

	stop := watchReplicas(t, ctx, ns)
	update(t, cp, func() {
		cp.Spec.Receiver.Autoscaling = &callsv1alpha1.AutoscalingSpec{MinReplicas: ptr.To[int32](2), MaxReplicas: 6}
	})
	g.Eventually(func(g Gomega) {
		hpa := &autoscalingv2.HorizontalPodAutoscaler{}
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), hpa)).To(Succeed())
		g.Expect(hpa.Spec.MinReplicas).To(Equal(ptr.To[int32](2)))
		g.Expect(hpa.Spec.MaxReplicas).To(Equal(int32(6)))
		dep := liveDeployment(g, ctx, ns)
		g.Expect(ownsField(dep.ManagedFields, FieldOwner, "f:spec", "f:replicas")).To(BeFalse(), "the operator still applies replicas")
		g.Expect(ownsField(dep.ManagedFields, ReplicasFieldOwner, "f:spec", "f:replicas")).To(BeTrue())
		g.Expect(*dep.Spec.Replicas).To(Equal(int32(3)))
	}, eventually, poll).Should(Succeed())
	seen := stop()
	g.Expect(seen).NotTo(BeEmpty())
	g.Expect(seen).To(HaveEach(Equal(int32(3))), "spec.replicas while autoscaling was turned on")
	must(t, k8s.Get(ctx, client.ObjectKeyFromObject(cp), cp))
	hpa := &autoscalingv2.HorizontalPodAutoscaler{}
	must(t, k8s.Get(ctx, key(ns, "hotline-callguard"), hpa))
	assertControlledBy(t, hpa, cp)

	// The autoscaler scales to 5 through the scale subresource, as it does.
	dep := liveDeployment(g, ctx, ns)
	scale := &autoscalingv1.Scale{ObjectMeta: metav1.ObjectMeta{Name: dep.Name, Namespace: ns}, Spec: autoscalingv1.ScaleSpec{Replicas: 5}}
	must(t, k8s.SubResource("scale").Update(ctx, dep, client.WithSubResourceBody(scale), client.FieldOwner("horizontal-pod-autoscaler")))
	g.Eventually(func(g Gomega) { markAvailable(g, ctx, ns) }, eventually, poll).Should(Succeed())
	g.Eventually(func(g Gomega) {
		c := condition(g, ctx, ns, "hotline", ConditionReady)
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(c.Message).To(HaveSuffix(" live on 5/5 receivers"))
	}, eventually, poll).Should(Succeed())
	g.Expect(*liveDeployment(g, ctx, ns).Spec.Replicas).To(Equal(int32(5)), "the operator wrote replicas while autoscaling")

	// Off again: the policy's replicas, the operator's field, no HPA.
	update(t, cp, func() { cp.Spec.Receiver.Autoscaling = nil })
	g.Eventually(func(g Gomega) {
		g.Expect(apierrors.IsNotFound(k8s.Get(ctx, key(ns, "hotline-callguard"), &autoscalingv2.HorizontalPodAutoscaler{}))).To(BeTrue())
		dep := liveDeployment(g, ctx, ns)
		g.Expect(*dep.Spec.Replicas).To(Equal(int32(3)))
		g.Expect(ownsField(dep.ManagedFields, FieldOwner, "f:spec", "f:replicas")).To(BeTrue())
	}, eventually, poll).Should(Succeed())
}

// TestAutoscalingStartsAtMinReplicas: fewer receivers than minReplicas are
// raised to it at once (and get a PodDisruptionBudget); a new policy's
// Deployment never asks for fewer than minReplicas.
func TestAutoscalingStartsAtMinReplicas(t *testing.T) {
	t.Run("raised", func(t *testing.T) {
		g := NewWithT(t)
		ctx, ns := sources(t)
		cp := testPolicy(ns, "hotline")
		cp.Spec.Receiver.Replicas = ptr.To[int32](1)
		must(t, k8s.Create(ctx, cp))
		g.Eventually(func(g Gomega) {
			g.Expect(*liveDeployment(g, ctx, ns).Spec.Replicas).To(Equal(int32(1)))
		}, eventually, poll).Should(Succeed())
		g.Expect(apierrors.IsNotFound(k8s.Get(ctx, key(ns, "hotline-callguard"), &policyv1.PodDisruptionBudget{}))).To(BeTrue())

		update(t, cp, func() {
			cp.Spec.Receiver.Autoscaling = &callsv1alpha1.AutoscalingSpec{MinReplicas: ptr.To[int32](3), MaxReplicas: 5}
		})
		g.Eventually(func(g Gomega) {
			g.Expect(*liveDeployment(g, ctx, ns).Spec.Replicas).To(Equal(int32(3)))
			g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), &policyv1.PodDisruptionBudget{})).To(Succeed())
			g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), &autoscalingv2.HorizontalPodAutoscaler{})).To(Succeed())
		}, eventually, poll).Should(Succeed())
	})
	t.Run("new policy", func(t *testing.T) {
		g := NewWithT(t)
		ctx, ns := sources(t)
		stop := watchReplicas(t, ctx, ns)
		cp := testPolicy(ns, "hotline")
		cp.Spec.Receiver.Autoscaling = &callsv1alpha1.AutoscalingSpec{MaxReplicas: 4}
		must(t, k8s.Create(ctx, cp))
		g.Eventually(func(g Gomega) {
			dep := liveDeployment(g, ctx, ns)
			g.Expect(ownsField(dep.ManagedFields, FieldOwner, "f:spec", "f:replicas")).To(BeFalse())
			hpa := &autoscalingv2.HorizontalPodAutoscaler{}
			g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), hpa)).To(Succeed())
			g.Expect(hpa.Spec.MinReplicas).To(Equal(ptr.To(callsv1alpha1.DefaultAutoscalingMinReplicas)))
			g.Expect(hpa.Spec.Metrics[0].Resource.Target.AverageUtilization).To(Equal(ptr.To(callsv1alpha1.DefaultTargetCPUUtilizationPercentage)))
			g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), &policyv1.PodDisruptionBudget{})).To(Succeed())
		}, eventually, poll).Should(Succeed())
		seen := stop()
		g.Expect(seen).NotTo(BeEmpty())
		g.Expect(seen).To(HaveEach(Equal(callsv1alpha1.DefaultAutoscalingMinReplicas)), "spec.replicas of a new autoscaled Deployment")
		g.Eventually(func(g Gomega) { markAvailable(g, ctx, ns) }, eventually, poll).Should(Succeed())
		g.Eventually(func(g Gomega) {
			c := condition(g, ctx, ns, "hotline", ConditionReady)
			g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
			g.Expect(c.Message).To(HaveSuffix(" live on 2/2 receivers"))
		}, eventually, poll).Should(Succeed())
	})
}
