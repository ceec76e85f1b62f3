package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
)

const (
	eventually = 20 * time.Second
	poll       = 100 * time.Millisecond
)

func testSecret(ns, name, secret string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		StringData: map[string]string{"client-secret": secret},
	}
}

func testList(ns, name, text string) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Data:       map[string]string{"numbers.txt": text},
	}
}

// testPolicy is a policy using a Secret "bot" and a number list ConfigMap
// "robocallers".
func testPolicy(ns, name string) *callsv1alpha1.CallPolicy {
	return &callsv1alpha1.CallPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: callsv1alpha1.CallPolicySpec{
			Bot: callsv1alpha1.BotSpec{
				AppID:       "6d2a7b1e-0c1f-4a51-9a43-2f0f4c3b9e10",
				TenantID:    "0b3f5c1d-8a2e-4a77-b0c4-7f3e2d1a9c55",
				Credentials: callsv1alpha1.Credentials{SecretRef: &callsv1alpha1.SecretReference{Name: "bot"}},
			},
			Rules: []callsv1alpha1.Rule{
				{Name: "premium-rate", Action: callsv1alpha1.ActionReject, Reason: callsv1alpha1.ReasonForbidden,
					Match: callsv1alpha1.Match{Callers: &callsv1alpha1.CallerMatch{NumberPrefixes: []string{"+1900"}}}},
				{Name: "robocallers", Action: callsv1alpha1.ActionReject, Reason: callsv1alpha1.ReasonBusy,
					Match: callsv1alpha1.Match{Callers: &callsv1alpha1.CallerMatch{NumberLists: []callsv1alpha1.NumberList{
						{ConfigMapKeyRef: callsv1alpha1.ConfigMapKeyReference{Name: "robocallers", Key: "numbers.txt"}},
					}}}},
			},
		},
	}
}

// sources creates a namespace with the Secret and the list testPolicy uses.
func sources(t *testing.T) (context.Context, string) {
	t.Helper()
	ctx := context.Background()
	ns := newNamespace(t)
	must(t, k8s.Create(ctx, testSecret(ns, "bot", "s3cret")))
	must(t, k8s.Create(ctx, testList(ns, "robocallers", "+12125550143\n+1555010*\n")))
	return ctx, ns
}

// setup creates a namespace with the Secret, the list and the policy.
func setup(t *testing.T) (context.Context, string, *callsv1alpha1.CallPolicy) {
	t.Helper()
	ctx, ns := sources(t)
	cp := testPolicy(ns, "hotline")
	must(t, k8s.Create(ctx, cp))
	return ctx, ns, cp
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// update re-reads obj, mutates it and writes it back, retrying when the
// controller wrote in between (its status patches and applies race with us).
func update(t *testing.T, obj client.Object, mutate func(), opts ...client.UpdateOption) {
	t.Helper()
	updateWith(t, k8s, obj, mutate, opts...)
}

// updateWith is update on the API server c reaches.
func updateWith(t *testing.T, c client.Client, obj client.Object, mutate func(), opts ...client.UpdateOption) {
	t.Helper()
	must(t, retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := c.Get(context.Background(), client.ObjectKeyFromObject(obj), obj); err != nil {
			return err
		}
		mutate()
		return c.Update(context.Background(), obj, opts...)
	}))
}

func key(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

// decodedPolicy reads the policy manifest ConfigMap and its shards, as a
// receiver does, and decodes them.
func decodedPolicy(g Gomega, ctx context.Context, ns string) (*corev1.ConfigMap, *policy.Source) {
	cm := &corev1.ConfigMap{}
	g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard-policy"), cm)).To(Succeed())
	src, err := policy.DecodeConfigMaps(cm.Data, func(name string) ([]byte, error) {
		shard := &corev1.ConfigMap{}
		if err := k8s.Get(ctx, key(ns, name), shard); err != nil {
			return nil, err
		}
		return shard.BinaryData[policy.ShardKey], nil
	})
	g.Expect(err).NotTo(HaveOccurred())
	return cm, src
}

func condition(g Gomega, ctx context.Context, ns, name, typ string) *metav1.Condition {
	cp := &callsv1alpha1.CallPolicy{}
	g.Expect(k8s.Get(ctx, key(ns, name), cp)).To(Succeed())
	c := meta.FindStatusCondition(cp.Status.Conditions, typ)
	g.Expect(c).NotTo(BeNil(), "condition %s", typ)
	g.Expect(c.ObservedGeneration).To(Equal(cp.Generation))
	return c
}

// liveStatus is the policy, once its status is current.
func liveStatus(g Gomega, ctx context.Context, ns, name string) *callsv1alpha1.CallPolicy {
	return liveStatusWith(g, ctx, k8s, ns, name)
}

// liveStatusWith is liveStatus on the API server c reaches.
func liveStatusWith(g Gomega, ctx context.Context, c client.Client, ns, name string) *callsv1alpha1.CallPolicy {
	cp := &callsv1alpha1.CallPolicy{}
	g.Expect(c.Get(ctx, key(ns, name), cp)).To(Succeed())
	g.Expect(cp.Status.ObservedGeneration).To(Equal(cp.Generation))
	return cp
}

// markAvailable plays the Deployment controller, which envtest does not run,
// for the receivers of the policy hotline.
func markAvailable(g Gomega, ctx context.Context, ns string) {
	markAvailableWith(g, ctx, k8s, key(ns, "hotline-callguard"))
}

// markAvailableWith is markAvailable for the Deployment dep on the API
// server c reaches.
func markAvailableWith(g Gomega, ctx context.Context, c client.Client, dep types.NamespacedName) {
	d := &appsv1.Deployment{}
	g.Expect(c.Get(ctx, dep, d)).To(Succeed())
	n := *d.Spec.Replicas
	d.Status = appsv1.DeploymentStatus{
		ObservedGeneration: d.Generation, Replicas: n, UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n,
	}
	g.Expect(c.Status().Update(ctx, d)).To(Succeed())
}

func TestChildrenAreCreatedWithOwnerReferences(t *testing.T) {
	g := NewWithT(t)
	ctx, ns, cp := setup(t)
	must(t, k8s.Get(ctx, client.ObjectKeyFromObject(cp), cp))

	children := []client.Object{
		&appsv1.Deployment{}, &corev1.Service{}, &corev1.ServiceAccount{}, &rbacv1.Role{},
		&rbacv1.RoleBinding{}, &policyv1.PodDisruptionBudget{},
	}
	for _, obj := range children {
		g.Eventually(func() error { return k8s.Get(ctx, key(ns, "hotline-callguard"), obj) }, eventually, poll).
			Should(Succeed(), "%T", obj)
		assertControlledBy(t, obj, cp)
	}
	cm := &corev1.ConfigMap{}
	g.Eventually(func() error { return k8s.Get(ctx, key(ns, "hotline-callguard-policy"), cm) }, eventually, poll).Should(Succeed())
	assertControlledBy(t, cm, cp)

	// The Deployment: the receiver's contract flags, ports, probes, the
	// restricted security context, credentials as read-only files only.
	dep := children[0].(*appsv1.Deployment)
	g.Expect(*dep.Spec.Replicas).To(Equal(int32(2)))
	pod := dep.Spec.Template.Spec
	g.Expect(pod.ServiceAccountName).To(Equal("hotline-callguard"))
	g.Expect(pod.Containers).To(HaveLen(1))
	c := pod.Containers[0]
	g.Expect(c.Image).To(Equal(testReceiverImage))
	g.Expect(strings.Join(c.Args, " ")).To(ContainSubstring("--policy-configmap " + ns + "/hotline-callguard-policy"))
	g.Expect(c.Ports).To(ContainElements(
		HaveField("ContainerPort", int32(8080)), HaveField("ContainerPort", int32(8081))))
	g.Expect(c.LivenessProbe.HTTPGet.Path).To(Equal("/healthz"))
	g.Expect(c.ReadinessProbe.HTTPGet.Path).To(Equal("/readyz"))
	g.Expect(*pod.SecurityContext.RunAsNonRoot).To(BeTrue())
	g.Expect(pod.SecurityContext.SeccompProfile.Type).To(Equal(corev1.SeccompProfileTypeRuntimeDefault))
	g.Expect(*c.SecurityContext.ReadOnlyRootFilesystem).To(BeTrue())
	g.Expect(*c.SecurityContext.AllowPrivilegeEscalation).To(BeFalse())
	g.Expect(c.SecurityContext.Capabilities.Drop).To(ConsistOf(corev1.Capability("ALL")))
	g.Expect(c.Resources.Requests.Cpu().String()).To(Equal("500m"))
	g.Expect(c.Resources.Requests.StorageEphemeral().String()).To(Equal("64Mi"))
	g.Expect(c.Resources.Limits.Memory().String()).To(Equal("256Mi"))
	g.Expect(c.Resources.Limits).NotTo(HaveKey(corev1.ResourceCPU), "a CPU limit throttles the receivers")
	g.Expect(c.Env).To(BeEmpty(), "credentials must never be env")
	g.Expect(c.EnvFrom).To(BeEmpty())
	g.Expect(c.VolumeMounts).To(ContainElement(And(
		HaveField("Name", credentialsVolume), HaveField("ReadOnly", true), HaveField("MountPath", credentialsDir))))
	g.Expect(pod.Volumes).To(ContainElement(HaveField("Secret.SecretName", "bot")))
	g.Expect(dep.Spec.Template.Annotations).To(HaveKeyWithValue(credentialsHashAnnotation, HavePrefix("sha256:")))

	svc := children[1].(*corev1.Service)
	g.Expect(svc.Spec.Ports).To(ContainElements(
		And(HaveField("Name", "http"), HaveField("Port", int32(80))),
		And(HaveField("Name", "metrics"), HaveField("Port", int32(8081)))))
	role := children[3].(*rbacv1.Role)
	g.Expect(role.Rules).To(HaveLen(1))
	// The manifest and its shards, nothing else: the policy has one small list.
	manifest, _ := decodedPolicy(g, ctx, ns)
	shards := strings.Split(manifest.Annotations[callsv1alpha1.PolicyShardsAnnotation], ",")
	g.Expect(shards).To(HaveLen(1))
	g.Expect(role.Rules[0].ResourceNames).To(Equal(append([]string{"hotline-callguard-policy"}, shards...)))
	g.Expect(role.Rules[0].Verbs).To(ConsistOf("get", "list", "watch"))
	rb := children[4].(*rbacv1.RoleBinding)
	g.Expect(rb.Subjects).To(ConsistOf(HaveField("Name", "hotline-callguard")))
	pdb := children[5].(*policyv1.PodDisruptionBudget)
	g.Expect(pdb.Spec.MinAvailable.IntValue()).To(Equal(1))

	// The policy ConfigMap holds the resolved policy, lists merged.
	_, src := decodedPolicy(g, ctx, ns)
	g.Expect(src.Spec.Rules).To(HaveLen(2))
	g.Expect(src.Lists).To(HaveKeyWithValue(policy.ListRef{Name: "robocallers", Key: "numbers.txt"}, ContainSubstring("+12125550143")))

	// Status before and after the Deployment reports available replicas.
	g.Eventually(func(g Gomega) {
		c := condition(g, ctx, ns, "hotline", ConditionReady)
		g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(condition(g, ctx, ns, "hotline", ConditionReconciling).Status).To(Equal(metav1.ConditionTrue))
	}, eventually, poll).Should(Succeed())
	g.Eventually(func(g Gomega) { markAvailable(g, ctx, ns) }, eventually, poll).Should(Succeed())
	g.Eventually(func(g Gomega) {
		got := liveStatus(g, ctx, ns, "hotline")
		c := meta.FindStatusCondition(got.Status.Conditions, ConditionReady)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(c.Reason).To(Equal(ReasonReceiversAvailable))
		g.Expect(meta.FindStatusCondition(got.Status.Conditions, ConditionReconciling)).To(BeNil())
		g.Expect(got.Status.Rules).To(Equal(int32(2)))
		g.Expect(got.Status.PolicyHash).To(HavePrefix("sha256:"))
		g.Expect(got.Status.Receiver).To(Equal(callsv1alpha1.ReceiverStatus{
			Replicas: 2, ReadyReplicas: 2, Service: "hotline-callguard", CallbackPath: "/api/calls"}))
	}, eventually, poll).Should(Succeed())
	g.Expect(policyEvents(ctx, ns, "hotline")).To(ContainElement(HaveField("Reason", "PolicyApplied")))
}

func assertControlledBy(t *testing.T, obj client.Object, cp *callsv1alpha1.CallPolicy) {
	t.Helper()
	ref := metav1.GetControllerOf(obj)
	if ref == nil || ref.UID != cp.UID || ref.Kind != "CallPolicy" || !ptr.Deref(ref.BlockOwnerDeletion, false) {
		t.Errorf("%T %s: controller reference = %+v, want CallPolicy %s", obj, obj.GetName(), ref, cp.UID)
	}
}

func policyEvents(ctx context.Context, ns, name string) []eventsv1.Event {
	var list eventsv1.EventList
	if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return nil
	}
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Name == name {
			out = append(out, e)
		}
	}
	return out
}

func TestRulesChangeUpdatesConfigMapWithoutRollingPods(t *testing.T) {
	g := NewWithT(t)
	ctx, ns, cp := setup(t)
	var before appsv1.Deployment
	var beforeHash string
	g.Eventually(func(g Gomega) {
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), &before)).To(Succeed())
		cm, _ := decodedPolicy(g, ctx, ns)
		beforeHash = cm.Annotations[callsv1alpha1.PolicyHashAnnotation]
	}, eventually, poll).Should(Succeed())

	update(t, cp, func() {
		cp.Spec.Rules = append(cp.Spec.Rules, callsv1alpha1.Rule{Name: "guests", Action: callsv1alpha1.ActionReject,
			Match: callsv1alpha1.Match{Callers: &callsv1alpha1.CallerMatch{IdentityTypes: []callsv1alpha1.IdentityType{"guest"}}}})
	})

	g.Eventually(func(g Gomega) {
		cm, src := decodedPolicy(g, ctx, ns)
		g.Expect(src.Spec.Rules).To(HaveLen(3))
		g.Expect(cm.Annotations[callsv1alpha1.PolicyHashAnnotation]).NotTo(Equal(beforeHash))
	}, eventually, poll).Should(Succeed())
	var after appsv1.Deployment
	must(t, k8s.Get(ctx, key(ns, "hotline-callguard"), &after))
	g.Expect(after.Spec.Template).To(Equal(before.Spec.Template), "a rules change must not roll the receivers")
	g.Expect(after.Generation).To(Equal(before.Generation))
}

func TestSecretChangeRollsPods(t *testing.T) {
	g := NewWithT(t)
	ctx, ns, _ := setup(t)
	var before appsv1.Deployment
	g.Eventually(func() error { return k8s.Get(ctx, key(ns, "hotline-callguard"), &before) }, eventually, poll).Should(Succeed())

	secret := &corev1.Secret{}
	must(t, k8s.Get(ctx, key(ns, "bot"), secret))
	secret.Data["client-secret"] = []byte("rotated")
	must(t, k8s.Update(ctx, secret))

	g.Eventually(func(g Gomega) {
		var after appsv1.Deployment
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), &after)).To(Succeed())
		g.Expect(after.Spec.Template.Annotations[credentialsHashAnnotation]).
			NotTo(Equal(before.Spec.Template.Annotations[credentialsHashAnnotation]))
	}, eventually, poll).Should(Succeed())
}

func TestDriftIsCorrected(t *testing.T) {
	g := NewWithT(t)
	ctx, ns, _ := setup(t)
	dep := &appsv1.Deployment{}
	g.Eventually(func() error { return k8s.Get(ctx, key(ns, "hotline-callguard"), dep) }, eventually, poll).Should(Succeed())

	// Someone scales the receivers by hand and deletes the Service.
	update(t, dep, func() { dep.Spec.Replicas = ptr.To[int32](7) }, client.FieldOwner("kubectl-edit"))
	svc := &corev1.Service{}
	must(t, k8s.Get(ctx, key(ns, "hotline-callguard"), svc))
	oldUID := svc.UID
	must(t, k8s.Delete(ctx, svc))

	g.Eventually(func(g Gomega) {
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), dep)).To(Succeed())
		g.Expect(*dep.Spec.Replicas).To(Equal(int32(2)))
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), svc)).To(Succeed())
		g.Expect(svc.UID).NotTo(Equal(oldUID))
	}, eventually, poll).Should(Succeed())
}

func TestNonCompilingPolicyStallsAndKeepsOldConfigMap(t *testing.T) {
	g := NewWithT(t)
	ctx, ns, cp := setup(t)
	var good *corev1.ConfigMap
	g.Eventually(func(g Gomega) { good, _ = decodedPolicy(g, ctx, ns) }, eventually, poll).Should(Succeed())

	update(t, cp, func() { cp.Spec.Rules[0].Match.Callers.NumberPatterns = []string{"^+1(900"} })

	g.Eventually(func(g Gomega) {
		c := condition(g, ctx, ns, "hotline", ConditionStalled)
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(c.Reason).To(Equal(ReasonInvalidPolicy))
		g.Expect(c.Message).To(ContainSubstring("spec.rules[0].match.callers.numberPatterns[0]"))
		g.Expect(condition(g, ctx, ns, "hotline", ConditionReady).Status).To(Equal(metav1.ConditionFalse))
	}, eventually, poll).Should(Succeed())
	g.Eventually(func() []eventsv1.Event { return policyEvents(ctx, ns, "hotline") }, eventually, poll).Should(ContainElement(And(
		HaveField("Type", corev1.EventTypeWarning), HaveField("Reason", ReasonInvalidPolicy),
		HaveField("Note", ContainSubstring("numberPatterns[0]")))))

	now := &corev1.ConfigMap{}
	must(t, k8s.Get(ctx, key(ns, "hotline-callguard-policy"), now))
	g.Expect(now.ResourceVersion).To(Equal(good.ResourceVersion), "the last good policy must stay")
	g.Expect(now.Data).To(Equal(good.Data))
}

// TestThousandCompileErrorsStallWithBoundedMessages: 1,000 inline numbers
// the CRD admits and the compiler refuses must not make a message the API
// server refuses (32 KiB for a condition, 1 KiB for an event note): the
// policy is Stalled with the first errors and their field paths, and a
// Warning event says so.
func TestThousandCompileErrorsStallWithBoundedMessages(t *testing.T) {
	g := NewWithT(t)
	ctx, ns := sources(t)
	cp := testPolicy(ns, "hotline")
	bad := make([]string, 1000)
	for i := range bad {
		bad[i] = fmt.Sprintf("+1 425 CALL %04d", i)
	}
	cp.Spec.Rules[0].Match.Callers.Numbers = bad
	must(t, k8s.Create(ctx, cp))

	const more = `; … and \d+ more \(kubectl callpolicy lint lists them all\)$`
	g.Eventually(func(g Gomega) {
		c := condition(g, ctx, ns, "hotline", ConditionStalled)
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(c.Reason).To(Equal(ReasonInvalidPolicy))
		g.Expect(len(c.Message)).To(BeNumerically("<=", maxConditionMessage))
		g.Expect(c.Message).To(HavePrefix(`spec.rules[0].match.callers.numbers[0]: "+1 425 CALL 0000"`))
		g.Expect(c.Message).To(ContainSubstring(`spec.rules[0].match.callers.numbers[9]: "+1 425 CALL 0009"`))
		g.Expect(c.Message).To(MatchRegexp(more))
		ready := condition(g, ctx, ns, "hotline", ConditionReady)
		g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(ready.Message).To(Equal(c.Message))
	}, eventually, poll).Should(Succeed())
	g.Eventually(func() []eventsv1.Event { return policyEvents(ctx, ns, "hotline") }, eventually, poll).Should(ContainElement(And(
		HaveField("Type", corev1.EventTypeWarning), HaveField("Reason", ReasonInvalidPolicy),
		HaveField("Note", And(HavePrefix(`spec.rules[0].match.callers.numbers[0]: "+1 425 CALL 0000"`), MatchRegexp(more))),
		HaveField("Note", WithTransform(func(s string) int { return len(s) }, BeNumerically("<=", maxEventNote))))))
}

func TestMissingSecretStallsThenRecovers(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	must(t, k8s.Create(ctx, testList(ns, "robocallers", "+12125550143\n")))
	must(t, k8s.Create(ctx, testPolicy(ns, "hotline")))

	g.Eventually(func(g Gomega) {
		c := condition(g, ctx, ns, "hotline", ConditionStalled)
		g.Expect(c.Reason).To(Equal(ReasonSecretNotFound))
		g.Expect(c.Message).To(ContainSubstring(`Secret "bot" not found`))
	}, eventually, poll).Should(Succeed())
	g.Eventually(func() []eventsv1.Event { return policyEvents(ctx, ns, "hotline") }, eventually, poll).
		Should(ContainElement(HaveField("Reason", ReasonSecretNotFound)))

	must(t, k8s.Create(ctx, testSecret(ns, "bot", "s3cret")))
	g.Eventually(func(g Gomega) {
		cp := &callsv1alpha1.CallPolicy{}
		g.Expect(k8s.Get(ctx, key(ns, "hotline"), cp)).To(Succeed())
		g.Expect(meta.FindStatusCondition(cp.Status.Conditions, ConditionStalled)).To(BeNil())
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), &appsv1.Deployment{})).To(Succeed())
	}, eventually, poll).Should(Succeed())
}

func TestMissingConfigMapStallsThenRecovers(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	must(t, k8s.Create(ctx, testSecret(ns, "bot", "s3cret")))
	must(t, k8s.Create(ctx, testPolicy(ns, "hotline")))

	g.Eventually(func(g Gomega) {
		c := condition(g, ctx, ns, "hotline", ConditionStalled)
		g.Expect(c.Reason).To(Equal(ReasonConfigMapNotFound))
		g.Expect(c.Message).To(ContainSubstring(`"robocallers"`))
	}, eventually, poll).Should(Succeed())

	must(t, k8s.Create(ctx, testList(ns, "robocallers", "+12125550143\n")))
	g.Eventually(func(g Gomega) {
		_, src := decodedPolicy(g, ctx, ns)
		g.Expect(src.Lists).To(HaveLen(1))
		cp := &callsv1alpha1.CallPolicy{}
		g.Expect(k8s.Get(ctx, key(ns, "hotline"), cp)).To(Succeed())
		g.Expect(meta.FindStatusCondition(cp.Status.Conditions, ConditionStalled)).To(BeNil())
	}, eventually, poll).Should(Succeed())
}

func TestNumberListEditUpdatesPolicyConfigMap(t *testing.T) {
	g := NewWithT(t)
	ctx, ns, _ := setup(t)
	g.Eventually(func(g Gomega) { decodedPolicy(g, ctx, ns) }, eventually, poll).Should(Succeed())

	list := &corev1.ConfigMap{}
	must(t, k8s.Get(ctx, key(ns, "robocallers"), list))
	list.Data["numbers.txt"] += "+447700900123\n"
	must(t, k8s.Update(ctx, list))

	g.Eventually(func(g Gomega) {
		_, src := decodedPolicy(g, ctx, ns)
		g.Expect(src.Lists[policy.ListRef{Name: "robocallers", Key: "numbers.txt"}]).To(ContainSubstring("+447700900123"))
	}, eventually, poll).Should(Succeed())
}

func TestPodDisruptionBudgetFollowsReplicas(t *testing.T) {
	g := NewWithT(t)
	ctx, ns, cp := setup(t)
	g.Eventually(func() error {
		return k8s.Get(ctx, key(ns, "hotline-callguard"), &policyv1.PodDisruptionBudget{})
	}, eventually, poll).Should(Succeed())

	update(t, cp, func() { cp.Spec.Receiver.Replicas = ptr.To[int32](1) })
	g.Eventually(func() bool {
		err := k8s.Get(ctx, key(ns, "hotline-callguard"), &policyv1.PodDisruptionBudget{})
		return apierrors.IsNotFound(err)
	}, eventually, poll).Should(BeTrue())
}

func TestWorkloadIdentity(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	cp := testPolicy(ns, "hotline")
	cp.Spec.Bot.Credentials = callsv1alpha1.Credentials{WorkloadIdentity: &callsv1alpha1.WorkloadIdentity{}}
	cp.Spec.Rules = cp.Spec.Rules[:1]
	must(t, k8s.Create(ctx, cp))

	g.Eventually(func(g Gomega) {
		sa := &corev1.ServiceAccount{}
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), sa)).To(Succeed())
		g.Expect(sa.Annotations).To(HaveKeyWithValue(workloadIdentityClientIDAnnot, cp.Spec.Bot.AppID))
		dep := &appsv1.Deployment{}
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), dep)).To(Succeed())
		g.Expect(dep.Spec.Template.Labels).To(HaveKeyWithValue(workloadIdentityUseLabel, "true"))
		g.Expect(dep.Spec.Template.Spec.Volumes).NotTo(ContainElement(HaveField("Name", credentialsVolume)))
	}, eventually, poll).Should(Succeed())
}

// TestIdleControllerWritesNothing: once converged, a reconcile writes
// nothing, status included, so the controller's own writes cannot wake it up
// again in a loop. The test runs the reconciles itself: they are synchronous,
// so every write they would make is done when they return, and no waiting
// window can miss one.
func TestIdleControllerWritesNothing(t *testing.T) {
	g := NewWithT(t)
	ctx, ns, _ := setup(t)
	g.Eventually(func(g Gomega) { decodedPolicy(g, ctx, ns) }, eventually, poll).Should(Succeed())
	g.Eventually(func(g Gomega) { markAvailable(g, ctx, ns) }, eventually, poll).Should(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(condition(g, ctx, ns, "hotline", ConditionReady).Status).To(Equal(metav1.ConditionTrue))
	}, eventually, poll).Should(Succeed())

	// versions reads the resourceVersion of the policy and every child; the
	// policy ConfigMap as metadata, the only way the manager's cache has it.
	versions := func(g Gomega, c client.Reader) map[string]string {
		policyCM := &metav1.PartialObjectMetadata{}
		policyCM.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("ConfigMap"))
		out := map[string]string{}
		for name, obj := range map[string]client.Object{
			"callpolicy": &callsv1alpha1.CallPolicy{}, "deployment": &appsv1.Deployment{}, "service": &corev1.Service{},
			"serviceaccount": &corev1.ServiceAccount{}, "role": &rbacv1.Role{}, "rolebinding": &rbacv1.RoleBinding{},
			"pdb": &policyv1.PodDisruptionBudget{}, "configmap": policyCM, "networkpolicy": &networkingv1.NetworkPolicy{},
		} {
			n := "hotline-callguard"
			switch name {
			case "callpolicy":
				n = "hotline"
			case "configmap":
				n = "hotline-callguard-policy"
			}
			g.Expect(c.Get(ctx, key(ns, n), obj)).To(Succeed())
			out[name] = obj.GetResourceVersion()
		}
		return out
	}
	before := versions(g, k8s)
	beforeCP := &callsv1alpha1.CallPolicy{}
	must(t, k8s.Get(ctx, key(ns, "hotline"), beforeCP))
	// The reconciler reads the cache: let it catch up, or a stale copy
	// would make it write (and this test pass or fail on timing).
	g.Eventually(func(g Gomega) map[string]string { return versions(g, testMgr.GetClient()) }, eventually, poll).Should(Equal(before))

	r := &CallPolicyReconciler{
		Client:        testMgr.GetClient(),
		APIReader:     testMgr.GetAPIReader(),
		Scheme:        testMgr.GetScheme(),
		Recorder:      testMgr.GetEventRecorder("callguard-manager"),
		ReceiverImage: testReceiverImage,
		// As the suite's manager is set up.
		GatewayAPI:               true,
		MetricsScraperNamespaces: []string{testScraperNamespace},
	}
	for range 3 {
		res, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: key(ns, "hotline")})
		must(t, err)
		g.Expect(res).To(Equal(ctrl.Result{}), "a requeue means a status write lost a race")
	}
	afterCP := &callsv1alpha1.CallPolicy{}
	must(t, k8s.Get(ctx, key(ns, "hotline"), afterCP))
	g.Expect(afterCP.Status).To(Equal(beforeCP.Status))
	g.Expect(versions(g, k8s)).To(Equal(before))
}

func TestCABundleIsMountedAndRollsPodsWhenChanged(t *testing.T) {
	g := NewWithT(t)
	ctx, ns := sources(t)
	cp := testPolicy(ns, "hotline")
	cp.Spec.Graph.CABundle = &callsv1alpha1.ConfigMapKeyReference{Name: "emulator-ca", Key: "ca.crt"}
	must(t, k8s.Create(ctx, cp))
	g.Eventually(func(g Gomega) {
		g.Expect(condition(g, ctx, ns, "hotline", ConditionStalled).Message).To(ContainSubstring("spec.graph.caBundle"))
	}, eventually, poll).Should(Succeed())

	ca := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "emulator-ca"},
		Data: map[string]string{"ca.crt": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}}
	must(t, k8s.Create(ctx, ca))
	var first string
	g.Eventually(func(g Gomega) {
		dep := &appsv1.Deployment{}
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), dep)).To(Succeed())
		g.Expect(strings.Join(dep.Spec.Template.Spec.Containers[0].Args, " ")).To(ContainSubstring("--ca-file /etc/callguard/ca/ca.crt"))
		first = dep.Spec.Template.Annotations[caHashAnnotation]
		g.Expect(first).To(HavePrefix("sha256:"))
	}, eventually, poll).Should(Succeed())

	ca.Data["ca.crt"] = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n"
	must(t, k8s.Update(ctx, ca))
	g.Eventually(func(g Gomega) {
		dep := &appsv1.Deployment{}
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), dep)).To(Succeed())
		g.Expect(dep.Spec.Template.Annotations[caHashAnnotation]).NotTo(Equal(first))
	}, eventually, poll).Should(Succeed())
}
