package controllers

import (
	"context"
	"encoding/binary"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
	"github.com/callguard/callguard/internal/wav"
	"github.com/callguard/callguard/test/harness/redisserver"
)

// repeatRule makes testPolicy's first rule count calls: it is stateful.
func repeatRule(cp *callsv1alpha1.CallPolicy) {
	cp.Spec.Rules[0].Match.Callers.Repeat = &callsv1alpha1.RepeatMatch{Calls: 3, Within: metav1.Duration{Duration: 10 * time.Minute}}
}

// promptRule makes testPolicy's first rule announce the ConfigMap prompt
// prompts/closed.wav.
func promptRule(cp *callsv1alpha1.CallPolicy) {
	r := &cp.Spec.Rules[0]
	r.Action, r.Reason = callsv1alpha1.ActionAnnounce, ""
	r.Announce = &callsv1alpha1.AnnounceSpec{Prompt: callsv1alpha1.PromptSource{
		ConfigMapKeyRef: &callsv1alpha1.ConfigMapKeyReference{Name: "prompts", Key: "closed.wav"},
	}}
}

const exposedURL = "https://calls.example.com/hotline/api/calls"

func stateSecret(g Gomega, ctx context.Context, ns, policyName string) *corev1.Secret {
	s := &corev1.Secret{}
	g.Expect(k8s.Get(ctx, key(ns, callsv1alpha1.StateSecretName(policyName)), s)).To(Succeed())
	return s
}

// TestStateSecretIsMadeOnceAndKept: a stateless policy has no state Secret;
// one with blockFor gets 32 random bytes, owned by the policy, that no later
// reconcile changes; one deleted by hand is made again.
func TestStateSecretIsMadeOnceAndKept(t *testing.T) {
	g := NewWithT(t)
	ctx, ns, cp := setup(t)
	g.Eventually(func(g Gomega) {
		g.Expect(liveStatus(g, ctx, ns, "hotline").Status.PolicyHash).NotTo(BeEmpty())
	}, eventually, poll).Should(Succeed())
	err := k8s.Get(ctx, key(ns, "hotline-callguard-state"), &corev1.Secret{})
	g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "a stateless policy has no state Secret: %v", err)

	update(t, cp, func() { cp.Spec.Rules[0].BlockFor = &metav1.Duration{Duration: time.Hour} })
	var first []byte
	g.Eventually(func(g Gomega) {
		s := stateSecret(g, ctx, ns, "hotline")
		first = s.Data[callsv1alpha1.StateSecretKey]
	}, eventually, poll).Should(Succeed())
	s := stateSecret(g, ctx, ns, "hotline")
	g.Expect(first).To(HaveLen(32))
	g.Expect(s.Data).To(HaveLen(1))
	g.Expect(ptr.Deref(s.Immutable, false)).To(BeTrue())
	g.Expect(s.Labels).To(HaveKeyWithValue(managedByLabel, managedBy))
	g.Expect(s.Labels).To(HaveKeyWithValue("app.kubernetes.io/instance", "hotline"))
	assertControlledBy(t, s, cp)

	// Another spec change, reconciled: the key stays.
	update(t, cp, func() { cp.Spec.Receiver.Replicas = ptr.To[int32](3) })
	g.Eventually(func(g Gomega) {
		dep := &appsv1.Deployment{}
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), dep)).To(Succeed())
		g.Expect(dep.Spec.Replicas).To(Equal(ptr.To[int32](3)))
		g.Expect(stateVolumeOf(dep)).NotTo(BeNil())
		liveStatus(g, ctx, ns, "hotline")
	}, eventually, poll).Should(Succeed())
	g.Expect(stateSecret(g, ctx, ns, "hotline").Data[callsv1alpha1.StateSecretKey]).To(Equal(first))

	// The policy no longer needs it: it stays, so that needing it again
	// brings the same key.
	update(t, cp, func() { cp.Spec.Rules[0].BlockFor = nil })
	g.Eventually(func(g Gomega) {
		dep := &appsv1.Deployment{}
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), dep)).To(Succeed())
		g.Expect(stateVolumeOf(dep)).To(BeNil())
	}, eventually, poll).Should(Succeed())
	g.Expect(stateSecret(g, ctx, ns, "hotline").Data[callsv1alpha1.StateSecretKey]).To(Equal(first))

	update(t, cp, func() { cp.Spec.Rules[0].BlockFor = &metav1.Duration{Duration: time.Hour} })
	must(t, k8s.Delete(ctx, stateSecret(g, ctx, ns, "hotline")))
	g.Eventually(func(g Gomega) {
		again := stateSecret(g, ctx, ns, "hotline")
		g.Expect(again.DeletionTimestamp).To(BeNil())
		g.Expect(again.Data[callsv1alpha1.StateSecretKey]).To(HaveLen(32))
		g.Expect(again.Data[callsv1alpha1.StateSecretKey]).NotTo(Equal(first))
	}, eventually, poll).Should(Succeed())
}

// TestStateSecretOfSomeoneElseStalls: the operator never takes over or
// rewrites a Secret it did not make.
func TestStateSecretOfSomeoneElseStalls(t *testing.T) {
	g := NewWithT(t)
	ctx, ns := sources(t)
	must(t, k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "hotline-callguard-state"},
		Data: map[string][]byte{"key": []byte("someone else's")}}))
	cp := testPolicy(ns, "hotline")
	repeatRule(cp)
	must(t, k8s.Create(ctx, cp))
	g.Eventually(func(g Gomega) {
		c := condition(g, ctx, ns, "hotline", ConditionStalled)
		g.Expect(c.Reason).To(Equal(ReasonStateSecretConflict))
		g.Expect(c.Message).To(ContainSubstring(`"hotline-callguard-state"`))
	}, eventually, poll).Should(Succeed())
	g.Expect(stateSecret(g, ctx, ns, "hotline").Data["key"]).To(Equal([]byte("someone else's")))
}

func stateVolumeOf(dep *appsv1.Deployment) *corev1.Volume {
	for i, v := range dep.Spec.Template.Spec.Volumes {
		if v.Name == stateVolume {
			return &dep.Spec.Template.Spec.Volumes[i]
		}
	}
	return nil
}

// TestBuildDeploymentState: the state dir's projected files, the
// state-hash annotation and the callback URL flag.
func TestBuildDeploymentState(t *testing.T) {
	keyFile := corev1.VolumeProjection{Secret: &corev1.SecretProjection{
		LocalObjectReference: corev1.LocalObjectReference{Name: "hotline-callguard-state"},
		Items:                []corev1.KeyToPath{{Key: "key", Path: "key"}},
	}}
	for _, tt := range []struct {
		name       string
		mutate     func(*callsv1alpha1.CallPolicy)
		in         podInputs
		sources    []corev1.VolumeProjection // nil: no state volume
		annotation string
		callback   string
	}{
		{name: "stateless, not exposed", mutate: func(*callsv1alpha1.CallPolicy) {}},
		{name: "repeat: the key alone", mutate: repeatRule, sources: []corev1.VolumeProjection{keyFile}},
		{name: "announce, exposed: the key and the callback URL", mutate: func(cp *callsv1alpha1.CallPolicy) {
			promptRule(cp)
			cp.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{URL: exposedURL}
		}, in: podInputs{callbackURL: exposedURL}, sources: []corev1.VolumeProjection{keyFile}, callback: exposedURL},
		{name: "redis with credentials and a CA", mutate: func(cp *callsv1alpha1.CallPolicy) {
			cp.Spec.State = &callsv1alpha1.StateSpec{Redis: &callsv1alpha1.RedisSpec{
				Address:           "redis.cache.svc:6380",
				UsernameSecretRef: &callsv1alpha1.SecretKeyReference{Name: "redis-acl", Key: "user"},
				PasswordSecretRef: &callsv1alpha1.SecretKeyReference{Name: "redis-acl", Key: "pass"},
				TLS: &callsv1alpha1.RedisTLS{Enabled: true, CABundle: &callsv1alpha1.ConfigMapKeyReference{
					Name: "redis-ca", Key: "ca.pem",
				}},
			}}
		}, in: podInputs{stateHash: "sha256:redis"}, annotation: "sha256:redis", sources: []corev1.VolumeProjection{
			keyFile,
			{Secret: &corev1.SecretProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "redis-acl"},
				Items: []corev1.KeyToPath{{Key: "user", Path: "redis-username"}}}},
			{Secret: &corev1.SecretProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "redis-acl"},
				Items: []corev1.KeyToPath{{Key: "pass", Path: "redis-password"}}}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "redis-ca"},
				Items: []corev1.KeyToPath{{Key: "ca.pem", Path: "redis-ca.crt"}}}},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			cp := testPolicy("telephony", "hotline")
			tt.mutate(cp)
			dep := buildDeployment(cp, "img", tt.in)
			c := dep.Spec.Template.Spec.Containers[0]
			g.Expect(dep.Spec.Template.Annotations[stateHashAnnot]).To(Equal(tt.annotation))
			if tt.callback != "" {
				g.Expect(containsPair(c.Args, "--callback-url", tt.callback)).To(BeTrue(), "%v", c.Args)
			} else {
				g.Expect(c.Args).NotTo(ContainElement("--callback-url"))
			}
			v := stateVolumeOf(dep)
			if tt.sources == nil {
				g.Expect(v).To(BeNil())
				g.Expect(c.Args).NotTo(ContainElement("--state-dir"))
				return
			}
			g.Expect(v).NotTo(BeNil())
			g.Expect(v.Projected.Sources).To(Equal(tt.sources))
			g.Expect(v.Projected.DefaultMode).To(Equal(ptr.To[int32](0o440)))
			g.Expect(c.VolumeMounts).To(ContainElement(corev1.VolumeMount{Name: stateVolume, MountPath: "/var/run/callguard/state", ReadOnly: true}))
			g.Expect(containsPair(c.Args, "--state-dir", "/var/run/callguard/state")).To(BeTrue(), "%v", c.Args)
		})
	}
}

func TestMaxReceivers(t *testing.T) {
	cp := testPolicy("telephony", "hotline")
	if got := maxReceivers(cp); got != callsv1alpha1.DefaultReceiverReplicas {
		t.Errorf("default: %d", got)
	}
	cp.Spec.Receiver.Replicas = ptr.To[int32](1)
	if got := maxReceivers(cp); got != 1 {
		t.Errorf("replicas 1: %d", got)
	}
	cp.Spec.Receiver.Autoscaling = &callsv1alpha1.AutoscalingSpec{MinReplicas: ptr.To[int32](1), MaxReplicas: 4}
	if got := maxReceivers(cp); got != 4 {
		t.Errorf("autoscaling to 4: %d", got)
	}
}

// TestExposeURLCreatesNothing: receiver.expose.url is the callback URL as
// written; no Ingress or HTTPRoute is made, and one made before goes.
func TestExposeURLCreatesNothing(t *testing.T) {
	g := NewWithT(t)
	ctx, ns, cp := setup(t)
	update(t, cp, func() {
		cp.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{Ingress: &callsv1alpha1.IngressExpose{Host: "calls.example.com"}}
	})
	g.Eventually(func() error { return k8s.Get(ctx, key(ns, "hotline-callguard"), &networkingv1.Ingress{}) }, eventually, poll).Should(Succeed())

	update(t, cp, func() { cp.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{URL: exposedURL} })
	g.Eventually(func(g Gomega) {
		g.Expect(callbackURLStatus(g, ctx, ns)).To(Equal(exposedURL))
		err := k8s.Get(ctx, key(ns, "hotline-callguard"), &networkingv1.Ingress{})
		g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "Ingress: %v", err)
		dep := &appsv1.Deployment{}
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), dep)).To(Succeed())
		g.Expect(containsPair(dep.Spec.Template.Spec.Containers[0].Args, "--callback-url", exposedURL)).To(BeTrue())
	}, eventually, poll).Should(Succeed())
	err := k8s.Get(ctx, key(ns, "hotline-callguard"), &gatewayv1.HTTPRoute{})
	g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "HTTPRoute: %v", err)
}

// badWAV is a tone at 8,000 Hz: a WAV file, but not one Graph plays.
func badWAV() []byte {
	b := wav.Tone(time.Second)
	binary.LittleEndian.PutUint32(b[24:], 8000)
	binary.LittleEndian.PutUint32(b[28:], 16000)
	return b
}

// TestConfigMapPrompt: a ConfigMap prompt needs receiver.expose; exposed,
// it travels to the receivers in the policy's shards; a bad WAV put in the
// ConfigMap later stalls the policy at the rule's path and the receivers keep
// the last good policy.
func TestConfigMapPrompt(t *testing.T) {
	g := NewWithT(t)
	ctx, ns := sources(t)
	good := wav.Tone(time.Second)
	prompts := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "prompts"},
		BinaryData: map[string][]byte{"closed.wav": good}}
	must(t, k8s.Create(ctx, prompts))
	cp := testPolicy(ns, "hotline")
	promptRule(cp)
	must(t, k8s.Create(ctx, cp))

	const path = "spec.rules[0].announce.prompt.configMapKeyRef"
	g.Eventually(func(g Gomega) {
		c := condition(g, ctx, ns, "hotline", ConditionStalled)
		g.Expect(c.Reason).To(Equal(ReasonInvalidPolicy))
		g.Expect(c.Message).To(ContainSubstring(path + ": a prompt kept in a ConfigMap is served by the receivers under the public callback URL: set spec.receiver.expose"))
		g.Expect(condition(g, ctx, ns, "hotline", ConditionReady).Status).To(Equal(metav1.ConditionFalse))
	}, eventually, poll).Should(Succeed())
	err := k8s.Get(ctx, key(ns, "hotline-callguard-policy"), &corev1.ConfigMap{})
	g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "a refused policy is not published: %v", err)

	update(t, cp, func() { cp.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{URL: exposedURL} })
	var goodHash string
	g.Eventually(func(g Gomega) {
		live := liveStatus(g, ctx, ns, "hotline")
		g.Expect(meta.FindStatusCondition(live.Status.Conditions, ConditionStalled)).To(BeNil())
		g.Expect(live.Status.PolicyHash).NotTo(BeEmpty())
		cm, src := decodedPolicy(g, ctx, ns)
		g.Expect(src.Prompts).To(HaveKeyWithValue(policy.ListRef{Name: "prompts", Key: "closed.wav"}, good))
		goodHash = cm.Annotations[callsv1alpha1.PolicyHashAnnotation]
		g.Expect(goodHash).To(Equal(live.Status.PolicyHash))
	}, eventually, poll).Should(Succeed())

	// The ConfigMap is watched: its change is compiled at once.
	update(t, prompts, func() { prompts.BinaryData["closed.wav"] = badWAV() })
	g.Eventually(func(g Gomega) {
		c := condition(g, ctx, ns, "hotline", ConditionStalled)
		g.Expect(c.Reason).To(Equal(ReasonInvalidPolicy))
		g.Expect(c.Message).To(ContainSubstring(path + ": configmap prompts key closed.wav"))
		g.Expect(c.Message).To(ContainSubstring("8000"))
		g.Expect(condition(g, ctx, ns, "hotline", ConditionReady).Status).To(Equal(metav1.ConditionFalse))
	}, eventually, poll).Should(Succeed())
	g.Eventually(func() []string {
		var notes []string
		for _, e := range policyEvents(ctx, ns, "hotline") {
			if e.Type == corev1.EventTypeWarning && e.Reason == ReasonInvalidPolicy {
				notes = append(notes, e.Note)
			}
		}
		return notes
	}, eventually, poll).Should(ContainElement(ContainSubstring(path)))
	cm, src := decodedPolicy(g, ctx, ns)
	g.Expect(cm.Annotations[callsv1alpha1.PolicyHashAnnotation]).To(Equal(goodHash))
	g.Expect(src.Prompts[policy.ListRef{Name: "prompts", Key: "closed.wav"}]).To(Equal(good))

	// A prompt in data, not binaryData, is named as such.
	update(t, prompts, func() {
		prompts.BinaryData = nil
		prompts.Data = map[string]string{"closed.wav": "RIFF"}
	})
	g.Eventually(func(g Gomega) {
		c := condition(g, ctx, ns, "hotline", ConditionStalled)
		g.Expect(c.Message).To(ContainSubstring(path + `: ConfigMap "prompts" has key "closed.wav" in data`))
	}, eventually, poll).Should(Succeed())
}

// TestPromptsAreRouted: the Ingress and the HTTPRoute route the prompts'
// path, under the callback path, only when the policy has ConfigMap prompts.
func TestPromptsAreRouted(t *testing.T) {
	g := NewWithT(t)
	cp := testPolicy("telephony", "hotline")
	cp.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{Ingress: &callsv1alpha1.IngressExpose{Host: "calls.example.com"}}
	g.Expect(buildIngress(cp).Spec.Rules[0].HTTP.Paths).To(HaveLen(1))
	promptRule(cp)
	paths := buildIngress(cp).Spec.Rules[0].HTTP.Paths
	g.Expect(paths).To(HaveLen(2))
	g.Expect(paths[1].Path).To(Equal("/api/calls/prompts"))
	g.Expect(*paths[1].PathType).To(Equal(networkingv1.PathTypePrefix))
	g.Expect(paths[1].Backend).To(Equal(paths[0].Backend))

	cp.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{HTTPRoute: testRoute()}
	m := buildHTTPRoute(cp).Spec.Rules[0].Matches
	g.Expect(m).To(HaveLen(2))
	g.Expect(*m[1].Path.Type).To(Equal(gatewayv1.PathMatchPathPrefix))
	g.Expect(*m[1].Path.Value).To(Equal("/api/calls/prompts"))
}

// TestStateSharedPerReplica: counting without a store on more than one
// receiver is reported, without making the policy unready.
func TestStateSharedPerReplica(t *testing.T) {
	g := NewWithT(t)
	ctx, ns, cp := setup(t)
	g.Eventually(func(g Gomega) {
		live := liveStatus(g, ctx, ns, "hotline")
		g.Expect(live.Status.PolicyHash).NotTo(BeEmpty())
		g.Expect(meta.FindStatusCondition(live.Status.Conditions, ConditionStateShared)).To(BeNil())
	}, eventually, poll).Should(Succeed())

	update(t, cp, func() { repeatRule(cp) })
	g.Eventually(func(g Gomega) {
		c := condition(g, ctx, ns, "hotline", ConditionStateShared)
		g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(c.Reason).To(Equal(ReasonPerReplica))
		g.Expect(c.Message).To(ContainSubstring("up to 2 receivers"))
		g.Expect(c.Message).To(ContainSubstring("spec.state.redis"))
	}, eventually, poll).Should(Succeed())
	// Per-replica counting still decides every call: Ready as usual.
	g.Eventually(func(g Gomega) {
		markAvailable(g, ctx, ns)
		g.Expect(condition(g, ctx, ns, "hotline", ConditionReady).Status).To(Equal(metav1.ConditionTrue))
		g.Expect(condition(g, ctx, ns, "hotline", ConditionStateShared).Reason).To(Equal(ReasonPerReplica))
	}, eventually, poll).Should(Succeed())

	update(t, cp, func() { cp.Spec.Receiver.Replicas = ptr.To[int32](1) })
	g.Eventually(func(g Gomega) {
		live := liveStatus(g, ctx, ns, "hotline")
		g.Expect(meta.FindStatusCondition(live.Status.Conditions, ConditionStateShared)).To(BeNil())
	}, eventually, poll).Should(Succeed())
}

// TestStateSharedRedis checks the store against a real redis-server that
// wants a password: reachable with it; unreachable with a wrong one (the
// message never shows either) or where nothing listens, until the Secret is
// fixed; a missing Secret stalls the policy with the field's path; the
// receivers may reach the store's port.
func TestStateSharedRedis(t *testing.T) {
	g := NewWithT(t)
	const password = "pw-9f3c2a-s3cret"
	srv := redisserver.Start(t, "--requirepass", password)
	ctx, ns := sources(t)
	must(t, k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "redis"},
		Data: map[string][]byte{"password": []byte(password)}}))
	must(t, k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "redis-wrong"},
		Data: map[string][]byte{"password": []byte("not-the-pass-7d1e")}}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	closed := ln.Addr().String()
	must(t, ln.Close())

	policyWith := func(name, addr, secret string) *callsv1alpha1.CallPolicy {
		cp := testPolicy(ns, name)
		repeatRule(cp)
		cp.Spec.State = &callsv1alpha1.StateSpec{Redis: &callsv1alpha1.RedisSpec{
			Address: addr, PasswordSecretRef: &callsv1alpha1.SecretKeyReference{Name: secret, Key: "password"},
		}}
		must(t, k8s.Create(ctx, cp))
		return cp
	}
	policyWith("shared", srv.Addr(), "redis")
	policyWith("wrong-password", srv.Addr(), "redis-wrong")
	policyWith("nothing-there", closed, "redis")
	policyWith("no-secret", srv.Addr(), "absent")

	stateShared := func(name string, status metav1.ConditionStatus, reason string, in ...string) {
		t.Helper()
		g.Eventually(func(g Gomega) {
			c := condition(g, ctx, ns, name, ConditionStateShared)
			g.Expect(c.Status).To(Equal(status), c.Message)
			g.Expect(c.Reason).To(Equal(reason), c.Message)
			for _, s := range in {
				g.Expect(c.Message).To(ContainSubstring(s))
			}
			g.Expect(c.Message).NotTo(ContainSubstring(password))
			g.Expect(c.Message).NotTo(ContainSubstring("not-the-pass"))
			live := liveStatus(g, ctx, ns, name)
			g.Expect(meta.FindStatusCondition(live.Status.Conditions, ConditionStalled)).To(BeNil())
		}, eventually, poll).Should(Succeed())
	}
	stateShared("shared", metav1.ConditionTrue, ReasonStoreReachable, srv.Addr())
	stateShared("wrong-password", metav1.ConditionFalse, ReasonStoreUnreachable, srv.Addr())
	stateShared("nothing-there", metav1.ConditionFalse, ReasonStoreUnreachable, closed)

	g.Eventually(func(g Gomega) {
		c := condition(g, ctx, ns, "no-secret", ConditionStalled)
		g.Expect(c.Reason).To(Equal(ReasonSecretNotFound))
		g.Expect(c.Message).To(ContainSubstring(`spec.state.redis.passwordSecretRef.name: Secret "absent" not found`))
	}, eventually, poll).Should(Succeed())

	g.Eventually(func(g Gomega) {
		np := &networkingv1.NetworkPolicy{}
		g.Expect(k8s.Get(ctx, key(ns, "shared-callguard"), np)).To(Succeed())
		_, port, _ := net.SplitHostPort(srv.Addr())
		g.Expect(slices.ContainsFunc(egressRules(np), func(r rule) bool { return slices.Contains(r.ports, "TCP/"+port) })).To(BeTrue())
		dep := &appsv1.Deployment{}
		g.Expect(k8s.Get(ctx, key(ns, "shared-callguard"), dep)).To(Succeed())
		v := stateVolumeOf(dep)
		g.Expect(v).NotTo(BeNil())
		var paths []string
		for _, s := range v.Projected.Sources {
			if s.Secret != nil {
				paths = append(paths, s.Secret.Name+"/"+s.Secret.Items[0].Key+"="+s.Secret.Items[0].Path)
			}
		}
		g.Expect(paths).To(Equal([]string{"shared-callguard-state/key=key", "redis/password=redis-password"}))
		g.Expect(dep.Spec.Template.Annotations[stateHashAnnot]).To(HavePrefix("sha256:"))
	}, eventually, poll).Should(Succeed())

	// The Secret is watched: fixing it is checked at once, not in 5 minutes.
	wrong := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "redis-wrong"}}
	update(t, wrong, func() {
		wrong.Data = map[string][]byte{"password": []byte(password)}
	})
	stateShared("wrong-password", metav1.ConditionTrue, ReasonStoreReachable)
}

// TestStateSharedRedisACLAndTLS: the least-privilege ACL user (no PING
// among its commands) and a TLS-only server whose CA the policy names are
// reachable; the same server checked against the system roots is not.
func TestStateSharedRedisACLAndTLS(t *testing.T) {
	g := NewWithT(t)
	acl := []string{"--user", "default", "off", "--user", "callguard", "on", ">acl-pass-41", "~callguard:*"}
	for _, c := range strings.Fields("evalsha eval set scan hgetall select zadd zremrangebyscore zremrangebyrank zcount pexpire hset hdel del") {
		acl = append(acl, "+"+c)
	}
	plain := redisserver.Start(t, acl...)
	secure := redisserver.StartTLS(t, "--requirepass", "tls-pass-52")
	caPEM := secure.CAPEM()
	ctx, ns := sources(t)
	must(t, k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "redis-acl"},
		Data: map[string][]byte{"user": []byte("callguard"), "pass": []byte("acl-pass-41"), "tls-pass": []byte("tls-pass-52")}}))
	must(t, k8s.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "redis-ca"},
		Data: map[string]string{"ca.crt": string(caPEM)}}))
	create := func(name string, rs *callsv1alpha1.RedisSpec) {
		cp := testPolicy(ns, name)
		repeatRule(cp)
		cp.Spec.State = &callsv1alpha1.StateSpec{Redis: rs}
		must(t, k8s.Create(ctx, cp))
	}
	create("acl", &callsv1alpha1.RedisSpec{Address: plain.Addr(), Database: 3,
		UsernameSecretRef: &callsv1alpha1.SecretKeyReference{Name: "redis-acl", Key: "user"},
		PasswordSecretRef: &callsv1alpha1.SecretKeyReference{Name: "redis-acl", Key: "pass"}})
	tlsSpec := func(ca *callsv1alpha1.ConfigMapKeyReference) *callsv1alpha1.RedisSpec {
		return &callsv1alpha1.RedisSpec{Address: secure.Addr(),
			PasswordSecretRef: &callsv1alpha1.SecretKeyReference{Name: "redis-acl", Key: "tls-pass"},
			TLS:               &callsv1alpha1.RedisTLS{Enabled: true, CABundle: ca}}
	}
	create("tls", tlsSpec(&callsv1alpha1.ConfigMapKeyReference{Name: "redis-ca", Key: "ca.crt"}))
	create("tls-system-roots", tlsSpec(nil))
	for _, tt := range []struct {
		name   string
		status metav1.ConditionStatus
		reason string
		in     string
	}{
		{"acl", metav1.ConditionTrue, ReasonStoreReachable, plain.Addr()},
		{"tls", metav1.ConditionTrue, ReasonStoreReachable, secure.Addr()},
		{"tls-system-roots", metav1.ConditionFalse, ReasonStoreUnreachable, "certificate"},
	} {
		g.Eventually(func(g Gomega) {
			c := condition(g, ctx, ns, tt.name, ConditionStateShared)
			g.Expect(c.Status).To(Equal(tt.status), "%s: %s", tt.name, c.Message)
			g.Expect(c.Reason).To(Equal(tt.reason), "%s: %s", tt.name, c.Message)
			g.Expect(c.Message).To(ContainSubstring(tt.in))
		}, eventually, poll).Should(Succeed())
	}
	g.Eventually(func(g Gomega) {
		dep := &appsv1.Deployment{}
		g.Expect(k8s.Get(ctx, key(ns, "tls-callguard"), dep)).To(Succeed())
		v := stateVolumeOf(dep)
		g.Expect(v).NotTo(BeNil())
		g.Expect(v.Projected.Sources).To(ContainElement(corev1.VolumeProjection{ConfigMap: &corev1.ConfigMapProjection{
			LocalObjectReference: corev1.LocalObjectReference{Name: "redis-ca"},
			Items:                []corev1.KeyToPath{{Key: "ca.crt", Path: "redis-ca.crt"}},
		}}))
	}, eventually, poll).Should(Succeed())
}

// TestStateCheckSchedule: an unreachable store is dialled again within 5
// minutes, a reachable one within 30.
func TestStateCheckSchedule(t *testing.T) {
	now := time.Now()
	for _, tt := range []struct {
		status metav1.ConditionStatus
		want   time.Duration
	}{{metav1.ConditionTrue, 30 * time.Minute}, {metav1.ConditionFalse, 5 * time.Minute}} {
		if got := (stateCheck{at: now, status: tt.status}).due(now); got != tt.want {
			t.Errorf("%s: due in %v, want %v", tt.status, got, tt.want)
		}
	}
}
