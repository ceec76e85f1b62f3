package controllers

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"

	. "github.com/onsi/gomega"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// TestMetricsNeedAnAuthorizedCaller runs a manager with cmd/manager's metrics
// options, as the ServiceAccount config/rbac gives the metrics-auth role to:
// plain http, a call without a token and a forged token are refused, a token
// of an account without the metrics-reader ClusterRole gets 403, and one
// bound to it reads the metrics over https.
func TestMetricsNeedAnAuthorizedCaller(t *testing.T) {
	g := NewWithT(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	// The shipped RBAC, as written (kustomize adds a prefix and namespace).
	authRole, authBinding, reader := &rbacv1.ClusterRole{}, &rbacv1.ClusterRoleBinding{}, &rbacv1.ClusterRole{}
	readManifest(t, "metrics_auth_role.yaml", authRole)
	readManifest(t, "metrics_auth_role_binding.yaml", authBinding)
	readManifest(t, "metrics_reader_role.yaml", reader)
	for _, obj := range []client.Object{authRole, authBinding, reader} {
		createOnce(t, obj)
	}

	// The manager reviews scrapers' tokens and access as itself.
	sub := authBinding.Subjects[0]
	asManager := rest.CopyConfig(cfg)
	asManager.Impersonate = rest.ImpersonationConfig{UserName: serviceaccount.MakeUsername(sub.Namespace, sub.Name)}
	addr := freeAddress(t)
	mgr, err := ctrl.NewManager(asManager, ctrl.Options{Scheme: scheme, Metrics: MetricsOptions(addr, "")})
	must(t, err)
	runManager(t, ctx, cancel, mgr, "the metrics manager")

	ns := newNamespace(t)
	token := func(name string) string {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
		must(t, k8s.Create(ctx, sa))
		tr := &authenticationv1.TokenRequest{}
		must(t, k8s.SubResource("token").Create(ctx, sa, tr))
		return tr.Status.Token
	}
	scraper, nosy := token("prometheus"), token("nosy")
	createOnce(t, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: ns + "-prometheus"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: reader.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: "prometheus"}},
	})

	// The certificate is self-signed; what is tested here is who may read.
	httpc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	scrape := func(scheme, token string) (int, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+addr+"/metrics", nil)
		if err != nil {
			return 0, "", err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := httpc.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), err
	}
	status := func(token string) func() (int, error) {
		return func() (int, error) {
			code, _, err := scrape("https", token)
			return code, err
		}
	}
	g.Eventually(status(""), eventually, poll).Should(Equal(http.StatusUnauthorized))
	// controller-runtime answers a token the API server rejects with 500.
	g.Expect(status("not-a-token")()).To(BeNumerically(">=", http.StatusBadRequest))
	g.Expect(status(nosy)()).To(Equal(http.StatusForbidden))
	// RBAC takes effect in the authorizer's cache a moment after the binding.
	g.Eventually(status(scraper), eventually, poll).Should(Equal(http.StatusOK))
	_, body, err := scrape("https", scraper)
	must(t, err)
	g.Expect(body).To(ContainSubstring("controller_runtime_reconcile_total"))
	code, _, _ := scrape("http", scraper)
	g.Expect(code).NotTo(Equal(http.StatusOK), "plain http must not serve the metrics")
}

// freeAddress is a loopback address with a port nothing listens on now; the
// metrics server takes an address, not a listener.
func freeAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	addr := l.Addr().String()
	must(t, l.Close())
	return addr
}
