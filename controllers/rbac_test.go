package controllers

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// TestNamespacedManagerNeedsOnlyARoleBinding: with --namespaces, the
// manager's ClusterRole bound by a RoleBinding in the watched namespace (as
// docs/operator.md tells) is all it needs: its cache syncs and a reconcile
// reads the Secret and the list and applies every child, while it cannot
// list Secrets cluster-wide.
func TestNamespacedManagerNeedsOnlyARoleBinding(t *testing.T) {
	g := NewWithT(t)
	ctx, ns, cp := setup(t)
	role := &rbacv1.ClusterRole{}
	readManifest(t, "role.yaml", role)
	createOnce(t, role)
	const saNamespace, saName = "callguard-system", "namespaced-manager"
	must(t, k8s.Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "callguard-manager"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: saNamespace, Name: saName}},
	}))

	asManager := rest.CopyConfig(cfg)
	asManager.Impersonate = rest.ImpersonationConfig{UserName: serviceaccount.MakeUsername(saNamespace, saName)}
	direct, err := client.New(asManager, client.Options{Scheme: scheme})
	must(t, err)
	err = direct.List(ctx, &corev1.SecretList{})
	g.Expect(apierrors.IsForbidden(err)).To(BeTrue(), "listing Secrets cluster-wide: %v; the test's RBAC is wrong", err)
	// The state key's Secret is made by the manager (a dry run is
	// authorized as the real thing).
	g.Expect(direct.Create(ctx, buildStateSecret(cp, make([]byte, stateKeyBytes)), client.DryRunAll)).To(Succeed())

	mgr, r := startManager(t, managerOptions{
		What: "the namespaced manager", Config: asManager, Namespaces: []string{ns}, GatewayAPI: true,
	})

	// A cache that cannot list what it watches never syncs; the reconcile
	// would then time out reading the policy instead of returning.
	syncCtx, syncCancel := context.WithTimeout(ctx, eventually)
	defer syncCancel()
	g.Expect(mgr.GetCache().WaitForCacheSync(syncCtx)).To(BeTrue())
	g.Eventually(func(g Gomega) {
		reconcileCtx, done := context.WithTimeout(ctx, 5*time.Second)
		defer done()
		_, err := r.Reconcile(reconcileCtx, ctrl.Request{NamespacedName: client.ObjectKeyFromObject(cp)})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), &appsv1.Deployment{})).To(Succeed())
	}, eventually, poll).Should(Succeed())
}

// readManifest decodes the first object of a file in config/rbac (generated
// files start with an empty document).
func readManifest(t *testing.T, name string, into client.Object) {
	t.Helper()
	readManifestKind(t, name, "", into)
}

// readManifestKind decodes the first object of the kind ("": any) in a file
// in config/rbac.
func readManifestKind(t *testing.T, name, kind string, into client.Object) {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "config", "rbac", name))
	must(t, err)
	defer f.Close()
	docs := yaml.NewYAMLReader(bufio.NewReader(f))
	for into.GetName() == "" {
		doc, err := docs.Read()
		if err != nil {
			t.Fatalf("%s: no %s: %v", name, kind, err)
		}
		var tm metav1.TypeMeta
		must(t, yaml.Unmarshal(doc, &tm))
		if kind == "" || tm.Kind == kind {
			must(t, yaml.Unmarshal(doc, into))
		}
	}
}

// createOnce creates a cluster-scoped object, which an earlier run of the
// test with -count may have left.
func createOnce(t *testing.T, obj client.Object) {
	t.Helper()
	if err := k8s.Create(context.Background(), obj); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}
