package chart

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// One API server for the package, started by the first test that needs it.
var (
	envOnce sync.Once
	env     *envtest.Environment
	k8s     client.Client
	restCfg *rest.Config
	envErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if env != nil {
		_ = env.Stop()
	}
	os.Exit(code)
}

// apiServer returns a client of envtest's API server, with the
// prometheus-operator CRDs (testdata/crds) and CallPolicy's installed.
func apiServer(t *testing.T) client.Client {
	t.Helper()
	envOnce.Do(func() {
		if os.Getenv("KUBEBUILDER_ASSETS") == "" {
			envErr = fmt.Errorf("KUBEBUILDER_ASSETS is not set: run the tests with `make test` (it builds kube-apiserver and etcd)")
			return
		}
		env = &envtest.Environment{
			// CallPolicy's CRD for TestMonitorsSelectTheReceivers; the
			// chart's copy is dry-run applied over it.
			CRDDirectoryPaths:     []string{filepath.Join("testdata", "crds"), filepath.Join(root, "config", "crd", "bases")},
			ErrorIfCRDPathMissing: true,
		}
		cfg, err := env.Start()
		if err != nil {
			envErr = fmt.Errorf("start envtest: %w", err)
			return
		}
		restCfg = cfg
		if k8s, envErr = client.New(cfg, client.Options{}); envErr != nil {
			return
		}
		// The release's namespace and those the value sets name.
		for _, ns := range []string{releaseNamespace, "telephony", "support", "monitoring"} {
			err := k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				envErr = err
				return
			}
		}
	})
	if envErr != nil {
		t.Fatal(envErr)
	}
	return k8s
}

// valueSets are the configurations the chart is checked in: each renders,
// passes a server-side dry-run apply of every object, and does what its
// values say.
var valueSets = []struct {
	name  string
	args  []string
	check func(t *testing.T, objs []*unstructured.Unstructured)
}{
	{"defaults", nil, func(t *testing.T, objs []*unstructured.Unstructured) {
		crd := find(objs, "CustomResourceDefinition", "callpolicies.calls.callguard.dev")
		if crd == nil || crd.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
			t.Errorf("the CRD is missing or not kept on uninstall: %v", crd)
		}
		if c := container(t, objs); c["image"] != "callguard:0.1.0" || envValue(c, "RECEIVER_IMAGE") != "callguard:0.1.0" {
			t.Errorf("default image %v, RECEIVER_IMAGE %q; want callguard:<appVersion> for both", c["image"], envValue(c, "RECEIVER_IMAGE"))
		}
		for _, kind := range []string{"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"} {
			for _, o := range objs {
				if o.GetKind() == kind {
					t.Errorf("%s rendered by default; needs the Prometheus operator", key(o))
				}
			}
		}
	}},
	{"watchNamespaces", []string{"--set", "watchNamespaces={telephony,support}"}, func(t *testing.T, objs []*unstructured.Unstructured) {
		if find(objs, "ClusterRoleBinding", "callguard-manager-rolebinding") != nil {
			t.Error("a ClusterRoleBinding of the manager's role with watchNamespaces")
		}
		if find(objs, "ClusterRoleBinding", "callguard-metrics-auth-rolebinding") == nil {
			t.Error("the metrics auth ClusterRoleBinding is gone (TokenReview/SubjectAccessReview are cluster-scoped)")
		}
		var bound []string
		for _, o := range objs {
			if o.GetKind() == "RoleBinding" && o.GetName() == "callguard-manager" {
				ref, _, _ := unstructured.NestedString(o.Object, "roleRef", "name")
				if ref != "callguard-manager-role" {
					t.Errorf("%s binds %s", key(o), ref)
				}
				bound = append(bound, o.GetNamespace())
			}
		}
		if strings.Join(bound, ",") != "telephony,support" {
			t.Errorf("manager RoleBindings in %v, want telephony and support", bound)
		}
		if !hasArg(container(t, objs), "--namespaces=telephony,support") {
			t.Errorf("args %v lack --namespaces=telephony,support", container(t, objs)["args"])
		}
		// The API server's addresses are read in default whatever is watched.
		if rb := find(objs, "RoleBinding", "callguard-manager-apiserver-rolebinding"); rb == nil || rb.GetNamespace() != "default" {
			t.Errorf("the RoleBinding for the API server's EndpointSlice is missing or not in default: %v", rb)
		}
	}},
	{"receivers' metrics scrapers", []string{"--set", "metrics.receivers.scraperNamespaces={monitoring,obs}"}, func(t *testing.T, objs []*unstructured.Unstructured) {
		if !hasArg(container(t, objs), "--metrics-scraper-namespaces=monitoring,obs") {
			t.Errorf("args %v lack --metrics-scraper-namespaces=monitoring,obs", container(t, objs)["args"])
		}
	}},
	{"monitoring on", []string{"--set", "metrics.serviceMonitor.enabled=true,metrics.receivers.podMonitor.enabled=true,metrics.receivers.serviceMonitor.enabled=true,prometheusRule.enabled=true,dashboard.enabled=true,dashboard.namespace=monitoring",
		"--set", "prometheusRule.additionalAlertLabels.team=telephony,metrics.serviceMonitor.interval=30s,metrics.receivers.podMonitor.interval=15s",
		"--set-json", `metrics.readerSubjects=[{"kind":"ServiceAccount","name":"prometheus-k8s","namespace":"monitoring"}]`},
		func(t *testing.T, objs []*unstructured.Unstructured) {
			for _, k := range []string{"ServiceMonitor callguard-controller-manager-metrics-monitor", "ServiceMonitor callguard-receivers", "PodMonitor callguard-receivers",
				"PrometheusRule callguard-rules", "ConfigMap callguard-dashboard", "ClusterRoleBinding callguard-metrics-reader"} {
				kind, name, _ := strings.Cut(k, " ")
				if find(objs, kind, name) == nil {
					t.Errorf("no %s", k)
				}
			}
			if cm := find(objs, "ConfigMap", "callguard-dashboard"); cm != nil && (cm.GetNamespace() != "monitoring" || cm.GetLabels()["grafana_dashboard"] != "1") {
				t.Errorf("dashboard ConfigMap in %q labelled %v", cm.GetNamespace(), cm.GetLabels())
			}
			if r := find(objs, "PrometheusRule", "callguard-rules"); r != nil {
				groups, _, _ := unstructured.NestedSlice(r.Object, "spec", "groups")
				for _, g := range groups {
					rules, _ := g.(map[string]any)["rules"].([]any)
					for _, rule := range rules {
						rm := rule.(map[string]any)
						labels, _ := rm["labels"].(map[string]any)
						if labels["team"] != "telephony" || labels["severity"] == nil {
							t.Errorf("alert %v: labels %v, want team=telephony beside its severity", rm["alert"], labels)
						}
					}
				}
			}
		}},
	{"crds off, not kept", []string{"--set", "crds.install=false"}, func(t *testing.T, objs []*unstructured.Unstructured) {
		for _, o := range objs {
			if o.GetKind() == "CustomResourceDefinition" {
				t.Errorf("%s rendered with crds.install=false", key(o))
			}
		}
	}},
	{"digest, scheduling, replicas", []string{
		"--set", "image.repository=registry.example.com/callguard,image.tag=v0.1.0,image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef,image.pullPolicy=Always",
		"--set", "receiverImage.repository=registry.example.com/callguard-receiver,receiverImage.digest=sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210",
		"--set", "replicas=2,crds.keep=false,imagePullSecrets[0].name=regcred,nodeSelector.kubernetes\\.io/os=linux,priorityClassName=system-cluster-critical",
		"--set", "extraArgs={--max-concurrent-reconciles=8,--zap-log-level=debug},resources.limits.memory=1Gi,podAnnotations.example\\.com/a=b",
		"--set-json", `tolerations=[{"key":"dedicated","operator":"Equal","value":"telephony","effect":"NoSchedule"}]`,
		"--set-json", `affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"kubernetes.io/arch","operator":"In","values":["amd64","arm64"]}]}]}}}`},
		func(t *testing.T, objs []*unstructured.Unstructured) {
			c := container(t, objs)
			if c["image"] != "registry.example.com/callguard:v0.1.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" {
				t.Errorf("image %v", c["image"])
			}
			if r := envValue(c, "RECEIVER_IMAGE"); r != "registry.example.com/callguard-receiver@sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210" {
				t.Errorf("RECEIVER_IMAGE %q", r)
			}
			if !hasArg(c, "--leader-elect") || !hasArg(c, "--max-concurrent-reconciles=8") {
				t.Errorf("args %v", c["args"])
			}
			if crd := find(objs, "CustomResourceDefinition", "callpolicies.calls.callguard.dev"); crd == nil || crd.GetAnnotations()["helm.sh/resource-policy"] != "" {
				t.Errorf("crds.keep=false: CRD %v", crd)
			}
			d := find(objs, "Deployment", "callguard-controller-manager")
			if n, _, _ := unstructured.NestedFieldNoCopy(d.Object, "spec", "replicas"); normal(n) != float64(2) {
				t.Errorf("replicas %v", n)
			}
			for _, f := range []string{"tolerations", "affinity", "nodeSelector", "imagePullSecrets"} {
				if _, ok, _ := unstructured.NestedFieldNoCopy(d.Object, "spec", "template", "spec", f); !ok {
					t.Errorf("pod spec lacks %s", f)
				}
			}
		}},
	{"metrics off, one replica without leader election", []string{"--set", "metrics.enabled=false,leaderElection=false,receiverImage.tag=v2"}, func(t *testing.T, objs []*unstructured.Unstructured) {
		c := container(t, objs)
		if !hasArg(c, "--metrics-bind-address=0") || hasArg(c, "--leader-elect") {
			t.Errorf("args %v", c["args"])
		}
		if envValue(c, "RECEIVER_IMAGE") != "callguard:v2" {
			t.Errorf("RECEIVER_IMAGE %q, want the operator's repository with receiverImage.tag", envValue(c, "RECEIVER_IMAGE"))
		}
		for _, k := range []string{"Service callguard-controller-manager-metrics", "Role callguard-leader-election-role"} {
			kind, name, _ := strings.Cut(k, " ")
			if find(objs, kind, name) != nil {
				t.Errorf("%s rendered", k)
			}
		}
	}},
}

func TestChartValueSetsServerSideDryRun(t *testing.T) {
	c := apiServer(t)
	ctx := context.Background()
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			objs := helmTemplate(t, vs.args...)
			vs.check(t, objs)
			for _, o := range objs {
				err := c.Patch(ctx, o.DeepCopy(), client.Apply, client.DryRunAll, client.FieldOwner("helm"), client.ForceOwnership)
				if err != nil {
					t.Errorf("server-side dry-run apply of %s: %v", key(o), err)
				}
			}
		})
	}
}

// The dry-run is a real check: the API server refuses objects that break a
// schema, the monitoring CRDs' included.
func TestDryRunCatchesSchemaErrors(t *testing.T) {
	c := apiServer(t)
	objs := helmTemplate(t, "--set", "metrics.serviceMonitor.enabled=true,metrics.receivers.podMonitor.enabled=true")
	for _, tc := range []struct {
		kind, name string
		path       []string
		value      any
	}{
		{"ServiceMonitor", "callguard-controller-manager-metrics-monitor", []string{"spec", "endpoints"}, "https"},
		{"PodMonitor", "callguard-receivers", []string{"spec", "podMetricsEndpoints"}, []any{map[string]any{"port": "metrics", "scheme": "gopher"}}},
		{"Deployment", "callguard-controller-manager", []string{"spec", "replicas"}, "two"},
		{"CustomResourceDefinition", "callpolicies.calls.callguard.dev", []string{"spec", "scope"}, "Galactic"},
	} {
		o := find(objs, tc.kind, tc.name)
		if o == nil {
			t.Fatalf("no %s %s", tc.kind, tc.name)
		}
		o = o.DeepCopy()
		if err := unstructured.SetNestedField(o.Object, tc.value, tc.path...); err != nil {
			t.Fatal(err)
		}
		err := c.Patch(context.Background(), o, client.Apply, client.DryRunAll, client.FieldOwner("helm"), client.ForceOwnership)
		if err == nil {
			t.Errorf("%s with %s = %v passed the dry-run", key(o), strings.Join(tc.path, "."), tc.value)
		} else if apierrors.IsNotFound(err) {
			t.Errorf("%s with %s = %v: %v, want a schema error", key(o), strings.Join(tc.path, "."), tc.value, err)
		}
	}
}

// Values the schema must refuse at `helm install`, and a template guard.
func TestChartRefusesWrongValues(t *testing.T) {
	t.Parallel()
	helm := tool(t, "HELM", "helm")
	for _, set := range []string{
		"replicas=-1",
		"image.digest=latest",
		"image.pullPolicy=Sometimes",
		"watchNamespace=telephony", // a typo of watchNamespaces
		"watchNamespaces={Not_A_Namespace}",
		"metrics.receivers.scraperNamespaces={Not_A_Namespace}",
		"crds.install=maybe",
		"extraArgs={-v}",
		"replicas=2,leaderElection=false",
	} {
		if out, err := runErr(root, helm, "template", releaseName, filepath.Join(root, chartDir), "--set", set); err == nil {
			t.Errorf("--set %s rendered:\n%.300s", set, out)
		}
	}
}

func TestHelmLint(t *testing.T) {
	t.Parallel()
	helm := tool(t, "HELM", "helm")
	run(t, root, helm, "lint", "--strict", filepath.Join(root, chartDir))
	run(t, root, helm, "lint", "--strict", filepath.Join(root, chartDir), "--set",
		"watchNamespaces={telephony},metrics.serviceMonitor.enabled=true,metrics.receivers.podMonitor.enabled=true,prometheusRule.enabled=true,dashboard.enabled=true")
}

// container is the manager's container.
func container(t *testing.T, objs []*unstructured.Unstructured) map[string]any {
	t.Helper()
	d := find(objs, "Deployment", "callguard-controller-manager")
	if d == nil {
		t.Fatal("no Deployment callguard-controller-manager")
	}
	cs, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	if len(cs) != 1 {
		t.Fatalf("%d containers", len(cs))
	}
	return cs[0].(map[string]any)
}

func hasArg(c map[string]any, arg string) bool {
	args, _ := c["args"].([]any)
	for _, a := range args {
		if a == arg {
			return true
		}
	}
	return false
}

func envValue(c map[string]any, name string) string {
	env, _ := c["env"].([]any)
	for _, e := range env {
		if m := e.(map[string]any); m["name"] == name {
			v, _ := m["value"].(string)
			return v
		}
	}
	return ""
}
