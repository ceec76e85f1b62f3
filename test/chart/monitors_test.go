package chart

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/controllers"
)

// The receiver monitors select what the operator really creates: the
// reconciler builds the sample policy's children, and the PodMonitor's
// selector, port and relabeling source must match its pod template, the
// ServiceMonitor's its Service.
func TestMonitorsSelectTheReceivers(t *testing.T) {
	apiServer(t)
	ctx := context.Background()
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(callsv1alpha1.AddToScheme(scheme))
	c, err := client.New(restCfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	const ns = "monitors"
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	// Every object of the samples' kustomization, so the sample policy
	// finds what it names.
	var kust struct{ Resources []string }
	b, err := os.ReadFile(filepath.Join(root, "config", "samples", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &kust); err != nil {
		t.Fatal(err)
	}
	for _, f := range kust.Resources {
		b, err := os.ReadFile(filepath.Join(root, "config", "samples", f))
		if err != nil {
			t.Fatal(err)
		}
		var o unstructured.Unstructured
		if err := yaml.Unmarshal(b, &o.Object); err != nil {
			t.Fatal(err)
		}
		o.SetNamespace(ns)
		if err := c.Create(ctx, &o); err != nil {
			t.Fatalf("create %s: %v", f, err)
		}
	}
	r := &controllers.CallPolicyReconciler{Client: c, APIReader: c, Scheme: scheme,
		Recorder: events.NewFakeRecorder(100), ReceiverImage: "example.com/callguard:test"}
	if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "hotline"}}); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	var dep corev1.PodTemplateSpec
	var d unstructured.Unstructured
	d.SetAPIVersion("apps/v1")
	d.SetKind("Deployment")
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "hotline-callguard"}, &d); err != nil {
		t.Fatal(err)
	}
	tmpl, _, _ := unstructured.NestedMap(d.Object, "spec", "template")
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(tmpl, &dep); err != nil {
		t.Fatal(err)
	}
	var svc corev1.Service
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "hotline-callguard"}, &svc); err != nil {
		t.Fatal(err)
	}

	objs := helmTemplate(t, "--set", "metrics.receivers.podMonitor.enabled=true,metrics.receivers.serviceMonitor.enabled=true")
	pm, sm := find(objs, "PodMonitor", "callguard-receivers"), find(objs, "ServiceMonitor", "callguard-receivers")
	if pm == nil || sm == nil {
		t.Fatal("no receiver PodMonitor or ServiceMonitor")
	}
	selects := func(what string, selector *unstructured.Unstructured, labels map[string]string) {
		sel, _, _ := unstructured.NestedStringMap(selector.Object, "spec", "selector", "matchLabels")
		if len(sel) == 0 {
			t.Errorf("%s: no selector", what)
		}
		for k, v := range sel {
			if labels[k] != v {
				t.Errorf("%s selects %s=%s; the operator's labels are %v", what, k, v, labels)
			}
		}
		jl, _, _ := unstructured.NestedString(selector.Object, "spec", "jobLabel")
		if labels[jl] != "callguard-receiver" {
			t.Errorf("%s: jobLabel %s gives job %q, the alerts expect callguard-receiver", what, jl, labels[jl])
		}
	}
	selects("the PodMonitor", pm, dep.Labels)
	selects("the ServiceMonitor", sm, svc.Labels)
	if dep.Labels["app.kubernetes.io/instance"] != "hotline" {
		t.Errorf("the pods' app.kubernetes.io/instance is %q, the monitors relabel it into policy", dep.Labels["app.kubernetes.io/instance"])
	}
	pe, _, _ := unstructured.NestedSlice(pm.Object, "spec", "podMetricsEndpoints")
	se, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	hasPort := false
	for _, cn := range dep.Spec.Containers {
		for _, p := range cn.Ports {
			hasPort = hasPort || p.Name == pe[0].(map[string]any)["port"]
		}
	}
	if !hasPort {
		t.Errorf("the PodMonitor scrapes port %v, which the receiver's container does not name", pe[0].(map[string]any)["port"])
	}
	hasPort = false
	for _, p := range svc.Spec.Ports {
		hasPort = hasPort || p.Name == se[0].(map[string]any)["port"]
	}
	if !hasPort {
		t.Errorf("the ServiceMonitor scrapes port %v, which the receiver's Service does not name", se[0].(map[string]any)["port"])
	}
}
