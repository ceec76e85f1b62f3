package controllers

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
)

// TestConvergedReconcileAppliesNothing: reconciling a converged policy
// again (as every Deployment status change does) sends no apply; a child
// someone changed, in its data or its metadata, is applied again and comes
// back. It runs its own reconciler, counting applies, beside the suite's.
func TestConvergedReconcileAppliesNothing(t *testing.T) {
	ctx, ns, cp := setup(t)
	direct, err := client.NewWithWatch(testMgr.GetConfig(), client.Options{Scheme: testMgr.GetScheme()})
	must(t, err)
	var applies atomic.Int32
	r := &CallPolicyReconciler{
		Client: interceptor.NewClient(direct, interceptor.Funcs{
			Apply: func(ctx context.Context, c client.WithWatch, obj runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
				applies.Add(1)
				return c.Apply(ctx, obj, opts...)
			},
		}),
		APIReader:                direct,
		Scheme:                   testMgr.GetScheme(),
		Recorder:                 testMgr.GetEventRecorder("applied-test"),
		ReceiverImage:            testReceiverImage,
		GatewayAPI:               true,
		MetricsScraperNamespaces: []string{testScraperNamespace},
	}
	req := ctrl.Request{NamespacedName: client.ObjectKeyFromObject(cp)}
	reconcile := func() int32 {
		t.Helper()
		applies.Store(0)
		if _, err := r.Reconcile(ctx, req); err != nil {
			t.Fatalf("reconcile: %v", err)
		}
		return applies.Load()
	}
	if n := reconcile(); n == 0 {
		t.Fatal("the first reconcile applied nothing")
	}
	// The suite's manager reconciles the same policy; its applies change
	// nothing either, so the children keep their resourceVersions.
	time.Sleep(200 * time.Millisecond)
	if n := reconcile(); n != 0 {
		t.Fatalf("a converged policy's reconcile sent %d applies, want 0", n)
	}

	// Drift: the Role's names (no generation), the manifest's data, the
	// Deployment's labels (its resourceVersion moves with status anyway).
	role := &rbacv1.Role{}
	must(t, k8s.Get(ctx, key(ns, "hotline-callguard"), role))
	update(t, role, func() { role.Rules[0].ResourceNames = append(role.Rules[0].ResourceNames, "someone-elses") }, client.FieldOwner("kubectl-edit"))
	manifest := &corev1.ConfigMap{}
	must(t, k8s.Get(ctx, key(ns, "hotline-callguard-policy"), manifest))
	update(t, manifest, func() { manifest.Data["policy.json"] = `{"spec":{}}` }, client.FieldOwner("kubectl-edit"))
	dep := &appsv1.Deployment{}
	must(t, k8s.Get(ctx, key(ns, "hotline-callguard"), dep))
	update(t, dep, func() { dep.Labels["app.kubernetes.io/part-of"] = "something-else" }, client.FieldOwner("kubectl-edit"))

	// The Role and the manifest have new resourceVersions whoever restored
	// them first (the suite's manager may have); the Deployment is applied
	// again only if that manager has not restored its labels yet.
	if n := reconcile(); n < 2 {
		t.Errorf("after three children drifted the reconcile sent %d applies, want at least the Role and the manifest applied again", n)
	}
	must(t, direct.Get(ctx, key(ns, "hotline-callguard"), role))
	for _, n := range role.Rules[0].ResourceNames {
		if n == "someone-elses" {
			t.Errorf("the Role still names %q", n)
		}
	}
	must(t, direct.Get(ctx, key(ns, "hotline-callguard-policy"), manifest))
	if manifest.Data["policy.json"] == `{"spec":{}}` {
		t.Error("the manifest's edited data stayed")
	}
	must(t, direct.Get(ctx, key(ns, "hotline-callguard"), dep))
	if got := dep.Labels["app.kubernetes.io/part-of"]; got != "callguard" {
		t.Errorf("the Deployment's label is %q, want callguard back", got)
	}
}
