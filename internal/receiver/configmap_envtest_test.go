package receiver_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/controllers"
	"github.com/callguard/callguard/internal/policy"
	"github.com/callguard/callguard/internal/receiver"
)

// TestConfigMapSourceOnRealAPIServer runs the receiver's --policy-configmap
// source against a real kube-apiserver (envtest), as the ServiceAccount the
// operator creates, with the Role the operator gives it: it may only
// get/list/watch the one policy ConfigMap. A new policy goes live on the
// ConfigMap update (the time is logged: under -race, with two API servers on
// two cores, it is no measure of the receiver); a broken one is refused and
// the old one stays, as it does while a shard is missing or mismatched.
func TestConfigMapSourceOnRealAPIServer(t *testing.T) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Fatal("KUBEBUILDER_ASSETS is not set: run the tests with `make test` (it builds kube-apiserver and etcd)")
	}
	testEnv := &envtest.Environment{}
	cfg, err := testEnv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = testEnv.Stop() })
	admin := kubernetes.NewForConfigOrDie(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	const ns = "telephony"
	mustDo(t, func() error {
		_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		return err
	})
	// The Role and RoleBinding the operator gives the receivers of a policy.
	owner := &v1alpha1.CallPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "hotline"}}
	role, binding := controllers.BuildRole(owner, nil), controllers.BuildRoleBinding(owner)
	cmName, sa := role.Rules[0].ResourceNames[0], binding.Subjects[0].Name
	mustDo(t, func() error {
		_, err := admin.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{})
		return err
	})
	mustDo(t, func() error {
		_, err := admin.RbacV1().RoleBindings(ns).Create(ctx, binding, metav1.CreateOptions{})
		return err
	})
	// Another ConfigMap in the namespace the receiver must not be able to read.
	mustDo(t, func() error {
		_, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "other"}}, metav1.CreateOptions{})
		return err
	})

	cm := policyConfigMap(t, ns, cmName, "+1900")
	mustDo(t, func() error {
		_, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{})
		return err
	})

	asReceiver := rest.CopyConfig(cfg)
	asReceiver.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + sa}
	receiverClient := kubernetes.NewForConfigOrDie(asReceiver)
	if _, err := receiverClient.CoreV1().ConfigMaps(ns).Get(ctx, "other", metav1.GetOptions{}); err == nil {
		t.Fatal("the receiver's identity can read another ConfigMap; the test's RBAC is wrong")
	}

	creds := t.TempDir()
	mustDo(t, func() error { return os.WriteFile(filepath.Join(creds, "client-secret"), []byte("s3cret"), 0o600) })
	servers := make(chan *receiver.Server, 1)
	done := make(chan error, 1)
	go func() {
		done <- receiver.Run(ctx, receiver.Options{
			PolicyConfigMap: ns + "/" + cmName,
			Listen:          "127.0.0.1:0",
			MetricsListen:   "127.0.0.1:0",
			CredentialsDir:  creds,
			Kube:            receiverClient,
			OnServer:        func(s *receiver.Server) { servers <- s },
		})
	}()
	srv := <-servers

	first := sourceHash(t, cm)
	waitHash(t, srv, first, 10*time.Second)

	next := policyConfigMap(t, ns, cmName, "+44909")
	start := time.Now()
	mustDo(t, func() error {
		_, err := admin.CoreV1().ConfigMaps(ns).Update(ctx, next, metav1.UpdateOptions{})
		return err
	})
	waitHash(t, srv, sourceHash(t, next), 10*time.Second)
	t.Logf("ConfigMap update live after %s", time.Since(start))

	// A ConfigMap that does not compile is refused, which the reload-error
	// counter shows; the last good policy stays.
	e := &env{t: t, srv: srv} // for its metric reader
	reloadErrors := func() float64 {
		return e.metric("callguard_receiver_policy_reloads_total", map[string]string{"result": "error"})
	}
	errorsBefore := reloadErrors()
	broken := next.DeepCopy()
	broken.Data[policy.ConfigMapKeyPolicy] = `{"spec":{"bot":{"appId":"not-a-uuid"}}}`
	mustDo(t, func() error {
		_, err := admin.CoreV1().ConfigMaps(ns).Update(ctx, broken, metav1.UpdateOptions{})
		return err
	})
	eventually(t, 10*time.Second, "broken ConfigMap refused", func() bool { return reloadErrors() > errorsBefore })
	if got := srv.PolicyHash(); got != sourceHash(t, next) {
		t.Fatalf("after a broken update the live policy is %q, want the last good %q", got, sourceHash(t, next))
	}

	// A version with a number list comes as a manifest and shards. Until
	// every shard is there and matches, the live version stays; the
	// receiver keeps trying, and switches once the last shard arrives.
	listed := listPolicy(t, ns, cmName)
	mustDo(t, func() error {
		_, err := admin.RbacV1().Roles(ns).Update(ctx, controllers.BuildRole(owner, shardNames(listed.shards)), metav1.UpdateOptions{})
		return err
	})
	missing := listed.shards[len(listed.shards)-1]
	for _, s := range listed.shards[:len(listed.shards)-1] {
		mustDo(t, func() error {
			_, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, s, metav1.CreateOptions{})
			return err
		})
	}
	// The missing shard's name holds the wrong bytes at first.
	wrong := missing.DeepCopy()
	wrong.BinaryData[policy.ShardKey] = []byte("not the bytes the manifest names")
	mustDo(t, func() error {
		_, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, wrong, metav1.CreateOptions{})
		return err
	})
	errorsBefore = reloadErrors()
	mustDo(t, func() error {
		_, err := admin.CoreV1().ConfigMaps(ns).Update(ctx, listed.manifest, metav1.UpdateOptions{})
		return err
	})
	eventually(t, 10*time.Second, "a mismatched shard refused, more than once", func() bool { return reloadErrors() >= errorsBefore+2 })
	if got := srv.PolicyHash(); got != sourceHash(t, next) {
		t.Fatalf("with a mismatched shard the live policy is %q, want the last good %q", got, sourceHash(t, next))
	}
	mustDo(t, func() error { return admin.CoreV1().ConfigMaps(ns).Delete(ctx, missing.Name, metav1.DeleteOptions{}) })
	mustDo(t, func() error {
		_, err := admin.CoreV1().ConfigMaps(ns).Create(ctx, missing, metav1.CreateOptions{})
		return err
	})
	waitHash(t, srv, listed.hash, 20*time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

type published struct {
	manifest *corev1.ConfigMap
	shards   []*corev1.ConfigMap
	hash     string
}

// listPolicy is the operator's manifest and shards for a policy that
// rejects 300,000 listed numbers (several shards).
func listPolicy(t *testing.T, ns, name string) published {
	t.Helper()
	var text strings.Builder
	r := rand.New(rand.NewPCG(7, 7))
	for range 300_000 {
		fmt.Fprintf(&text, "+1%010d\n", r.Uint64N(1e10))
	}
	src := &policy.Source{Namespace: ns, Name: "hotline", Spec: v1alpha1.CallPolicySpec{
		Bot: v1alpha1.BotSpec{AppID: "6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10", TenantID: "0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55",
			Credentials: v1alpha1.Credentials{SecretRef: &v1alpha1.SecretReference{Name: "bot"}}},
		Graph: v1alpha1.GraphSpec{OpenIDConfigURL: "https://127.0.0.1:1/v1/.well-known/OpenIdConfiguration"},
		Rules: []v1alpha1.Rule{{Name: "feed", Action: v1alpha1.ActionReject,
			Match: v1alpha1.Match{Callers: &v1alpha1.CallerMatch{NumberLists: []v1alpha1.NumberList{
				{ConfigMapKeyRef: v1alpha1.ConfigMapKeyReference{Name: "feed", Key: "numbers.txt"}}}}}}},
	}, Lists: map[policy.ListRef]string{{Name: "feed", Key: "numbers.txt"}: text.String()}}
	data, shards, hash, err := policy.EncodeConfigMaps(src, name)
	if err != nil {
		t.Fatal(err)
	}
	if len(shards) < 2 {
		t.Fatalf("%d shards; the test wants several", len(shards))
	}
	out := published{manifest: &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: data}, hash: hash}
	for _, s := range shards {
		out.shards = append(out.shards, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: s.Name},
			BinaryData: map[string][]byte{policy.ShardKey: s.Data}})
	}
	return out
}

func shardNames(cms []*corev1.ConfigMap) []string {
	var names []string
	for _, cm := range cms {
		names = append(names, cm.Name)
	}
	return names
}

func mustDo(t *testing.T, f func() error) {
	t.Helper()
	if err := f(); err != nil {
		t.Fatal(err)
	}
}

// policyConfigMap is the operator's policy ConfigMap for a policy that
// rejects one prefix.
func policyConfigMap(t *testing.T, ns, name, prefix string) *corev1.ConfigMap {
	t.Helper()
	src := &policy.Source{Namespace: ns, Name: "hotline", Spec: v1alpha1.CallPolicySpec{
		Bot: v1alpha1.BotSpec{AppID: "6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10", TenantID: "0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55",
			Credentials: v1alpha1.Credentials{SecretRef: &v1alpha1.SecretReference{Name: "bot"}}},
		// Nothing listens here: the test is about the policy source only.
		Graph: v1alpha1.GraphSpec{OpenIDConfigURL: "https://127.0.0.1:1/v1/.well-known/OpenIdConfiguration"},
		Rules: []v1alpha1.Rule{{Name: "premium", Action: v1alpha1.ActionReject,
			Match: v1alpha1.Match{Callers: &v1alpha1.CallerMatch{NumberPrefixes: []string{prefix}}}}},
	}}
	data, shards, _, err := policy.EncodeConfigMaps(src, name)
	if err != nil || len(shards) > 0 {
		t.Fatalf("encode: %v, %d shards (this policy has no number lists)", err, len(shards))
	}
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: data}
}

func sourceHash(t *testing.T, cm *corev1.ConfigMap) string {
	t.Helper()
	src, err := policy.DecodeConfigMaps(cm.Data, func(string) ([]byte, error) { return nil, errors.New("no shards here") })
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Compile(src)
	if err != nil {
		t.Fatal(err)
	}
	return p.Hash()
}

func waitHash(t *testing.T, srv *receiver.Server, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for srv.PolicyHash() != want {
		if time.Now().After(deadline) {
			t.Fatalf("live policy %q, want %q within %s", srv.PolicyHash(), want, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
