package controllers

import (
	"context"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
)

// TestGzipNumberList: a numberLists key in binaryData ending in .gz is read
// as gzip-compressed text; one that decompresses past policy.MaxListBytes
// stalls the policy naming the ConfigMap and key, and fixing it recovers.
func TestGzipNumberList(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	must(t, k8s.Create(ctx, testSecret(ns, "bot", "s3cret")))
	feed := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "feed"},
		BinaryData: map[string][]byte{"numbers.txt.gz": policy.Gzip([]byte(strings.Repeat("\n", policy.MaxListBytes+1)))},
	}
	must(t, k8s.Create(ctx, feed))
	must(t, k8s.Create(ctx, testList(ns, "robocallers", "+12125550143\n")))
	cp := testPolicy(ns, "hotline")
	cp.Spec.Rules[1].Match.Callers.NumberLists = append(cp.Spec.Rules[1].Match.Callers.NumberLists,
		callsv1alpha1.NumberList{ConfigMapKeyRef: callsv1alpha1.ConfigMapKeyReference{Name: "feed", Key: "numbers.txt.gz"}})
	must(t, k8s.Create(ctx, cp))

	g.Eventually(func(g Gomega) {
		c := condition(g, ctx, ns, "hotline", ConditionStalled)
		g.Expect(c.Reason).To(Equal(ReasonInvalidPolicy))
		g.Expect(c.Message).To(Equal(`numberLists: ConfigMap "feed" key "numbers.txt.gz": decompresses to more than 64 MiB, the limit for one number list`))
	}, eventually, poll).Should(Succeed())

	update(t, feed, func() { feed.BinaryData["numbers.txt.gz"] = policy.Gzip([]byte("# feed\n+13125550111\n+1206555*\n")) })
	g.Eventually(func(g Gomega) {
		_, src := decodedPolicy(g, ctx, ns)
		g.Expect(src.Lists[policy.ListRef{Name: "feed", Key: "numbers.txt.gz"}]).To(Equal("# feed\n+13125550111\n+1206555*\n"))
		p, err := policy.Compile(src)
		g.Expect(err).NotTo(HaveOccurred())
		for num, rule := range map[string]string{"+13125550111": "robocallers", "+12065550000": "robocallers", "+12125550143": "robocallers", "+13125550112": ""} {
			call := &graph.Call{ID: "c", Source: &graph.ParticipantInfo{Identity: &graph.IdentitySet{Phone: &graph.Identity{ID: num}}}}
			g.Expect(p.Decide(call, time.Now()).Rule).To(Equal(rule), num)
		}
		got := &callsv1alpha1.CallPolicy{}
		g.Expect(k8s.Get(ctx, key(ns, "hotline"), got)).To(Succeed())
		g.Expect(meta.FindStatusCondition(got.Status.Conditions, ConditionStalled)).To(BeNil())
	}, eventually, poll).Should(Succeed())
}
