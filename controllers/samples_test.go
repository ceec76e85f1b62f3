package controllers

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/callguard/callguard/internal/policy"
)

// TestSamplesReconcile applies config/samples as its kustomization lists
// them: the sample policy is admitted and compiles with its prompts; a
// stateful or announcing one gets its state key, and one counting on two
// receivers without a store says so.
func TestSamplesReconcile(t *testing.T) {
	g := NewWithT(t)
	ctx, ns := context.Background(), newNamespace(t)
	dir := filepath.Join("..", "config", "samples")
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	must(t, err)
	var k struct {
		Resources []string `json:"resources"`
	}
	must(t, yaml.Unmarshal(b, &k))
	g.Expect(k.Resources).NotTo(BeEmpty())
	for _, res := range k.Resources {
		b, err := os.ReadFile(filepath.Join(dir, res))
		must(t, err)
		u := &unstructured.Unstructured{}
		must(t, yaml.Unmarshal(b, &u.Object))
		u.SetNamespace(ns)
		if err := k8s.Create(ctx, u); err != nil {
			t.Fatalf("%s: %v", res, err)
		}
	}
	g.Eventually(func(g Gomega) {
		live := liveStatus(g, ctx, ns, "hotline")
		g.Expect(meta.FindStatusCondition(live.Status.Conditions, ConditionStalled)).To(BeNil())
		g.Expect(live.Status.PolicyHash).NotTo(BeEmpty())
		g.Expect(live.Status.Rules).To(BeEquivalentTo(len(live.Spec.Rules)))
		c := meta.FindStatusCondition(live.Status.Conditions, ConditionStateShared)
		if stateful(live) && redisSpec(live) == nil && maxReceivers(live) > 1 {
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(ReasonPerReplica))
		}
		if needsStateKey(live) {
			g.Expect(stateSecret(g, ctx, ns, "hotline").Data["key"]).To(HaveLen(stateKeyBytes))
		}
		_, src := decodedPolicy(g, ctx, ns)
		g.Expect(src.Prompts).To(HaveLen(len(policy.PromptRefs(&live.Spec))))
	}, eventually, poll).Should(Succeed())
}
