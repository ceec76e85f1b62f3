package controllers

import (
	"context"
	"reflect"
	"sync"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
)

// countingReader counts the reads that reach the API server, by kind and name.
type countingReader struct {
	client.Reader
	mu    sync.Mutex
	reads map[string]int
}

func (c *countingReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	c.mu.Lock()
	c.reads[reflect.TypeOf(obj).Elem().Name()+"/"+key.Name]++
	c.mu.Unlock()
	return c.Reader.Get(ctx, key, obj, opts...)
}

// take returns the reads counted since the last take.
func (c *countingReader) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.reads
	c.reads = map[string]int{}
	return out
}

// cached waits until the manager's cache has obj as the API server has it
// now: its generation for an object that has one (a CallPolicy, whose
// resourceVersion the suite's manager keeps moving with status patches),
// else its resourceVersion.
func cached(t *testing.T, obj client.Object) {
	t.Helper()
	g := NewWithT(t)
	must(t, k8s.Get(context.Background(), client.ObjectKeyFromObject(obj), obj))
	m := &metav1.PartialObjectMetadata{}
	gvk, err := testMgr.GetClient().GroupVersionKindFor(obj)
	must(t, err)
	m.SetGroupVersionKind(gvk)
	g.Eventually(func(g Gomega) {
		g.Expect(testMgr.GetClient().Get(context.Background(), client.ObjectKeyFromObject(obj), m)).To(Succeed())
		if obj.GetGeneration() != 0 {
			g.Expect(m.Generation).To(Equal(obj.GetGeneration()))
			return
		}
		g.Expect(m.ResourceVersion).To(Equal(obj.GetResourceVersion()))
	}, eventually, poll).Should(Succeed())
}

// A change of the rules alone compiles from the sources read before; a
// changed list is read again and published.
func TestUnchangedSourcesAreNotReadAgain(t *testing.T) {
	g := NewWithT(t)
	ctx, ns, cp := setup(t)
	g.Eventually(func(g Gomega) { decodedPolicy(g, ctx, ns) }, eventually, poll).Should(Succeed())
	list := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "robocallers"}}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bot"}}
	cached(t, list)
	cached(t, secret)
	cached(t, cp)

	reader := &countingReader{Reader: testMgr.GetAPIReader(), reads: map[string]int{}}
	r := &CallPolicyReconciler{
		Client:        testMgr.GetClient(),
		APIReader:     reader,
		Scheme:        testMgr.GetScheme(),
		Recorder:      testMgr.GetEventRecorder("callguard-manager"),
		ReceiverImage: testReceiverImage,
		// As the suite's manager is set up.
		GatewayAPI:               true,
		MetricsScraperNamespaces: []string{testScraperNamespace},
	}
	reconcile := func() map[string]int {
		t.Helper()
		if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: key(ns, "hotline")}); err != nil {
			t.Fatal(err)
		}
		return reader.take()
	}

	reads := reconcile()
	g.Expect(reads).To(HaveKeyWithValue("ConfigMap/robocallers", 1))
	g.Expect(reads).To(HaveKeyWithValue("Secret/bot", 1))
	g.Expect(reconcile()).NotTo(HaveKey(Or(Equal("ConfigMap/robocallers"), Equal("Secret/bot"))), "nothing changed")

	update(t, cp, func() {
		cp.Spec.Rules = append(cp.Spec.Rules, callsv1alpha1.Rule{Name: "guests", Action: callsv1alpha1.ActionReject,
			Match: callsv1alpha1.Match{Callers: &callsv1alpha1.CallerMatch{IdentityTypes: []callsv1alpha1.IdentityType{"guest"}}}})
	})
	cached(t, cp)
	g.Expect(reconcile()).NotTo(HaveKey(Or(Equal("ConfigMap/robocallers"), Equal("Secret/bot"))), "only the rules changed")
	g.Eventually(func(g Gomega) {
		_, src := decodedPolicy(g, ctx, ns)
		g.Expect(src.Spec.Rules).To(HaveLen(3))
	}, eventually, poll).Should(Succeed())

	update(t, list, func() { list.Data["numbers.txt"] += "+447700900123\n" })
	cached(t, list)
	reads = reconcile()
	g.Expect(reads).To(HaveKeyWithValue("ConfigMap/robocallers", 1), "the list changed")
	g.Expect(reads).NotTo(HaveKey("Secret/bot"))
	g.Eventually(func(g Gomega) {
		_, src := decodedPolicy(g, ctx, ns)
		g.Expect(src.Lists[policy.ListRef{Name: "robocallers", Key: "numbers.txt"}]).To(ContainSubstring("+447700900123"))
	}, eventually, poll).Should(Succeed())

	// What was kept goes with the policy.
	must(t, k8s.Delete(ctx, cp))
	g.Eventually(func() bool {
		return apierrors.IsNotFound(testMgr.GetClient().Get(ctx, key(ns, "hotline"), &callsv1alpha1.CallPolicy{}))
	}, eventually, poll).Should(BeTrue())
	reconcile()
	r.writtenMu.Lock()
	defer r.writtenMu.Unlock()
	g.Expect(r.written).NotTo(HaveKey(key(ns, "hotline")))
}
