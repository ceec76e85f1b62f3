package controllers

import (
	"context"
	"encoding/json"
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

func testRoute() *callsv1alpha1.HTTPRouteExpose {
	return &callsv1alpha1.HTTPRouteExpose{
		ParentRefs: []gatewayv1.ParentReference{{Name: "public", Namespace: ptr.To[gatewayv1.Namespace]("gateways"), SectionName: ptr.To[gatewayv1.SectionName]("https")}},
		Hostnames:  []gatewayv1.Hostname{"calls.example.com", "calls.example.org"},
	}
}

func TestCallbackURL(t *testing.T) {
	for _, tt := range []struct {
		name   string
		expose *callsv1alpha1.ExposeSpec
		path   string
		want   string
	}{
		{"not exposed", nil, "", ""},
		{"ingress", &callsv1alpha1.ExposeSpec{Ingress: &callsv1alpha1.IngressExpose{Host: "calls.example.com"}}, "", "https://calls.example.com/api/calls"},
		{"ingress, own path", &callsv1alpha1.ExposeSpec{Ingress: &callsv1alpha1.IngressExpose{Host: "calls.example.com"}}, "/bot/notify", "https://calls.example.com/bot/notify"},
		{"httpRoute: its first hostname", &callsv1alpha1.ExposeSpec{HTTPRoute: testRoute()}, "", "https://calls.example.com/api/calls"},
		{"httpRoute without hostnames", &callsv1alpha1.ExposeSpec{HTTPRoute: &callsv1alpha1.HTTPRouteExpose{}}, "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cp := testPolicy("n", "p")
			cp.Spec.Receiver.Expose, cp.Spec.Receiver.CallbackPath = tt.expose, tt.path
			if got := callbackURL(cp); got != tt.want {
				t.Errorf("callbackURL = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestBuildIngress(t *testing.T) {
	for _, tt := range []struct {
		name  string
		in    callsv1alpha1.IngressExpose
		path  string
		check func(t *testing.T, ing *networkingv1.Ingress)
	}{
		{"host only: the default class, no TLS, no annotations", callsv1alpha1.IngressExpose{Host: "calls.example.com"}, "", func(t *testing.T, ing *networkingv1.Ingress) {
			if ing.Spec.IngressClassName != nil || ing.Spec.TLS != nil || ing.Annotations != nil {
				t.Errorf("class %v tls %v annotations %v", ing.Spec.IngressClassName, ing.Spec.TLS, ing.Annotations)
			}
		}},
		{"class, TLS and annotations", callsv1alpha1.IngressExpose{
			Host: "calls.example.com", ClassName: "traefik", TLSSecretName: "calls-tls",
			Annotations: map[string]string{"cert-manager.io/cluster-issuer": "letsencrypt"},
		}, "", func(t *testing.T, ing *networkingv1.Ingress) {
			if ptr.Deref(ing.Spec.IngressClassName, "") != "traefik" {
				t.Errorf("class = %v", ing.Spec.IngressClassName)
			}
			if len(ing.Spec.TLS) != 1 || ing.Spec.TLS[0].SecretName != "calls-tls" || len(ing.Spec.TLS[0].Hosts) != 1 || ing.Spec.TLS[0].Hosts[0] != "calls.example.com" {
				t.Errorf("tls = %+v", ing.Spec.TLS)
			}
			if ing.Annotations["cert-manager.io/cluster-issuer"] != "letsencrypt" {
				t.Errorf("annotations = %v", ing.Annotations)
			}
		}},
		{"the policy's callback path", callsv1alpha1.IngressExpose{Host: "calls.example.com"}, "/bot/notify", func(t *testing.T, ing *networkingv1.Ingress) {
			if p := ing.Spec.Rules[0].HTTP.Paths[0].Path; p != "/bot/notify" {
				t.Errorf("path = %q", p)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cp := testPolicy("telephony", "hotline")
			cp.Spec.Receiver.CallbackPath = tt.path
			cp.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{Ingress: &tt.in}
			ing := buildIngress(cp)
			if ing.Name != "hotline-callguard" || ing.Namespace != "telephony" || ing.Labels[managedByLabel] != managedBy {
				t.Errorf("meta = %+v", ing.ObjectMeta)
			}
			if len(ing.Spec.Rules) != 1 || ing.Spec.Rules[0].Host != tt.in.Host || len(ing.Spec.Rules[0].HTTP.Paths) != 1 {
				t.Fatalf("rules = %+v", ing.Spec.Rules)
			}
			p := ing.Spec.Rules[0].HTTP.Paths[0]
			if ptr.Deref(p.PathType, "") != networkingv1.PathTypeExact {
				t.Errorf("pathType = %v, want Exact", p.PathType)
			}
			if b := p.Backend.Service; b == nil || b.Name != "hotline-callguard" || b.Port.Name != "http" {
				t.Errorf("backend = %+v", p.Backend)
			}
			tt.check(t, ing)
			// The builder must not share the spec's map.
			if tt.in.Annotations != nil {
				ing.Annotations["x"] = "y"
				if _, ok := tt.in.Annotations["x"]; ok {
					t.Error("the Ingress shares the spec's annotations")
				}
			}
		})
	}
}

func TestBuildHTTPRoute(t *testing.T) {
	cp := testPolicy("telephony", "hotline")
	cp.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{HTTPRoute: testRoute()}
	hr := buildHTTPRoute(cp)
	if hr.APIVersion != "gateway.networking.k8s.io/v1" || hr.Kind != "HTTPRoute" || hr.Name != "hotline-callguard" {
		t.Errorf("type/meta = %+v %+v", hr.TypeMeta, hr.ObjectMeta)
	}
	if len(hr.Spec.ParentRefs) != 1 || hr.Spec.ParentRefs[0].Name != "public" || ptr.Deref(hr.Spec.ParentRefs[0].SectionName, "") != "https" {
		t.Errorf("parentRefs = %+v", hr.Spec.ParentRefs)
	}
	if len(hr.Spec.Hostnames) != 2 || hr.Spec.Hostnames[0] != "calls.example.com" {
		t.Errorf("hostnames = %v", hr.Spec.Hostnames)
	}
	if len(hr.Spec.Rules) != 1 || len(hr.Spec.Rules[0].Matches) != 1 || len(hr.Spec.Rules[0].BackendRefs) != 1 {
		t.Fatalf("rules = %+v", hr.Spec.Rules)
	}
	m := hr.Spec.Rules[0].Matches[0].Path
	if ptr.Deref(m.Type, "") != gatewayv1.PathMatchExact || ptr.Deref(m.Value, "") != "/api/calls" {
		t.Errorf("match = %+v", m)
	}
	b := hr.Spec.Rules[0].BackendRefs[0]
	if b.Name != "hotline-callguard" || ptr.Deref(b.Port, 0) != 80 {
		t.Errorf("backend = %+v", b)
	}
	// Changing the route must not change the policy (it is the cache's).
	hr.Spec.ParentRefs[0].Name = "other"
	if cp.Spec.Receiver.Expose.HTTPRoute.ParentRefs[0].Name != "public" {
		t.Error("the HTTPRoute shares the spec's parentRefs")
	}
}

// callbackURLStatus is the policy hotline's status.receiver.callbackURL, once
// its status is current.
func callbackURLStatus(g Gomega, ctx context.Context, ns string) string {
	return liveStatus(g, ctx, ns, "hotline").Status.Receiver.CallbackURL
}

func TestIngressIsCreatedCorrectedAndDeleted(t *testing.T) {
	g := NewWithT(t)
	ctx, ns := sources(t)
	cp := testPolicy(ns, "hotline")
	cp.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{Ingress: &callsv1alpha1.IngressExpose{
		Host: "calls.example.com", ClassName: "traefik", TLSSecretName: "calls-tls",
		Annotations: map[string]string{"cert-manager.io/cluster-issuer": "letsencrypt"},
	}}
	must(t, k8s.Create(ctx, cp))

	ing := &networkingv1.Ingress{}
	g.Eventually(func(g Gomega) {
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), ing)).To(Succeed())
		g.Expect(callbackURLStatus(g, ctx, ns)).To(Equal("https://calls.example.com/api/calls"))
	}, eventually, poll).Should(Succeed())
	must(t, k8s.Get(ctx, client.ObjectKeyFromObject(cp), cp))
	assertControlledBy(t, ing, cp)
	g.Expect(ing.Annotations).To(HaveKeyWithValue("cert-manager.io/cluster-issuer", "letsencrypt"))
	g.Expect(ing.Spec.IngressClassName).To(Equal(ptr.To("traefik")))
	g.Expect(ing.Spec.TLS).To(ConsistOf(networkingv1.IngressTLS{Hosts: []string{"calls.example.com"}, SecretName: "calls-tls"}))
	g.Expect(ing.Spec.Rules).To(HaveLen(1))
	g.Expect(ing.Spec.Rules[0].HTTP.Paths).To(ConsistOf(And(
		HaveField("Path", "/api/calls"), HaveField("PathType", ptr.To(networkingv1.PathTypeExact)),
		HaveField("Backend.Service.Name", "hotline-callguard"), HaveField("Backend.Service.Port.Name", "http"))))

	// Someone points it elsewhere: it comes back.
	update(t, ing, func() {
		ing.Spec.Rules[0].Host = "evil.example.com"
		ing.Spec.Rules[0].HTTP.Paths[0].Backend.Service.Name = "other"
	}, client.FieldOwner("kubectl-edit"))
	g.Eventually(func(g Gomega) {
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), ing)).To(Succeed())
		g.Expect(ing.Spec.Rules).To(HaveLen(1))
		g.Expect(ing.Spec.Rules[0].Host).To(Equal("calls.example.com"))
		g.Expect(ing.Spec.Rules[0].HTTP.Paths[0].Backend.Service.Name).To(Equal("hotline-callguard"))
	}, eventually, poll).Should(Succeed())

	// Deleted by hand: it comes back.
	oldUID := ing.UID
	must(t, k8s.Delete(ctx, ing))
	g.Eventually(func(g Gomega) {
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), ing)).To(Succeed())
		g.Expect(ing.UID).NotTo(Equal(oldUID))
	}, eventually, poll).Should(Succeed())

	// A changed host changes the URL.
	update(t, cp, func() { cp.Spec.Receiver.Expose.Ingress.Host = "voice.example.com" })
	g.Eventually(func(g Gomega) {
		g.Expect(callbackURLStatus(g, ctx, ns)).To(Equal("https://voice.example.com/api/calls"))
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), ing)).To(Succeed())
		g.Expect(ing.Spec.Rules[0].Host).To(Equal("voice.example.com"))
	}, eventually, poll).Should(Succeed())

	// No longer exposed: the Ingress goes, and the URL with it.
	update(t, cp, func() { cp.Spec.Receiver.Expose = nil })
	g.Eventually(func(g Gomega) {
		g.Expect(apierrors.IsNotFound(k8s.Get(ctx, key(ns, "hotline-callguard"), &networkingv1.Ingress{}))).To(BeTrue())
		g.Expect(callbackURLStatus(g, ctx, ns)).To(BeEmpty())
	}, eventually, poll).Should(Succeed())
}

func TestHTTPRouteIsCreatedAndReplacedByAnIngress(t *testing.T) {
	g := NewWithT(t)
	ctx, ns := sources(t)
	cp := testPolicy(ns, "hotline")
	cp.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{HTTPRoute: testRoute()}
	must(t, k8s.Create(ctx, cp))

	hr := &gatewayv1.HTTPRoute{}
	g.Eventually(func(g Gomega) {
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), hr)).To(Succeed())
		g.Expect(callbackURLStatus(g, ctx, ns)).To(Equal("https://calls.example.com/api/calls"))
	}, eventually, poll).Should(Succeed())
	must(t, k8s.Get(ctx, client.ObjectKeyFromObject(cp), cp))
	assertControlledBy(t, hr, cp)
	g.Expect(hr.Spec.Hostnames).To(Equal([]gatewayv1.Hostname{"calls.example.com", "calls.example.org"}))
	g.Expect(hr.Spec.ParentRefs).To(ConsistOf(And(HaveField("Name", gatewayv1.ObjectName("public")),
		HaveField("Namespace", ptr.To[gatewayv1.Namespace]("gateways")), HaveField("SectionName", ptr.To[gatewayv1.SectionName]("https")))))
	g.Expect(hr.Spec.Rules).To(HaveLen(1))
	g.Expect(hr.Spec.Rules[0].Matches).To(ConsistOf(HaveField("Path", And(
		HaveField("Type", ptr.To(gatewayv1.PathMatchExact)), HaveField("Value", ptr.To("/api/calls"))))))
	g.Expect(hr.Spec.Rules[0].BackendRefs).To(ConsistOf(And(
		HaveField("Name", gatewayv1.ObjectName("hotline-callguard")), HaveField("Port", ptr.To[gatewayv1.PortNumber](80)))))
	g.Eventually(func(g Gomega) { markAvailable(g, ctx, ns) }, eventually, poll).Should(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(condition(g, ctx, ns, "hotline", ConditionReady).Status).To(Equal(metav1.ConditionTrue))
	}, eventually, poll).Should(Succeed())

	// Drift: a hand-removed hostname comes back.
	update(t, hr, func() { hr.Spec.Hostnames = hr.Spec.Hostnames[1:] }, client.FieldOwner("kubectl-edit"))
	g.Eventually(func(g Gomega) {
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), hr)).To(Succeed())
		g.Expect(hr.Spec.Hostnames).To(ContainElement(gatewayv1.Hostname("calls.example.com")))
	}, eventually, poll).Should(Succeed())

	update(t, cp, func() {
		cp.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{Ingress: &callsv1alpha1.IngressExpose{Host: "voice.example.com"}}
	})
	g.Eventually(func(g Gomega) {
		g.Expect(apierrors.IsNotFound(k8s.Get(ctx, key(ns, "hotline-callguard"), &gatewayv1.HTTPRoute{}))).To(BeTrue())
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), &networkingv1.Ingress{})).To(Succeed())
		g.Expect(callbackURLStatus(g, ctx, ns)).To(Equal("https://voice.example.com/api/calls"))
	}, eventually, poll).Should(Succeed())
}

// TestCallbackURLIsAWideColumn: `kubectl get cpol -o wide` shows the callback
// URL, plain `kubectl get cpol` does not: the API server's Table for
// CallPolicies, as kubectl asks for it.
func TestCallbackURLIsAWideColumn(t *testing.T) {
	g := NewWithT(t)
	ctx, ns := sources(t)
	cp := testPolicy(ns, "hotline")
	cp.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{Ingress: &callsv1alpha1.IngressExpose{Host: "calls.example.com"}}
	must(t, k8s.Create(ctx, cp))
	g.Eventually(func(g Gomega) {
		g.Expect(callbackURLStatus(g, ctx, ns)).To(Equal("https://calls.example.com/api/calls"))
	}, eventually, poll).Should(Succeed())

	cs, err := kubernetes.NewForConfig(cfg)
	must(t, err)
	body, err := cs.Discovery().RESTClient().Get().
		AbsPath("/apis/calls.callguard.dev/v1alpha1/namespaces", ns, "callpolicies", "hotline").
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(ctx)
	if err != nil {
		t.Fatalf("GET as Table: %v: %s", err, body)
	}
	var table metav1.Table
	must(t, json.Unmarshal(body, &table))
	col := -1
	for i, c := range table.ColumnDefinitions {
		if c.Name == "Callback URL" {
			col = i
			if c.Priority != 1 {
				t.Errorf("Callback URL has priority %d: want 1 (-o wide only)", c.Priority)
			}
		}
	}
	if col < 0 || len(table.Rows) != 1 {
		t.Fatalf("columns %+v, rows %d", table.ColumnDefinitions, len(table.Rows))
	}
	if got := table.Rows[0].Cells[col]; got != "https://calls.example.com/api/calls" {
		t.Errorf("Callback URL cell = %v", got)
	}
}

// TestWithoutGatewayAPI runs an API server without the Gateway API's CRDs and
// a manager set up as cmd/manager sets it up there: it starts, policies
// without an httpRoute become Ready, and one with an httpRoute gets its
// receivers and is Stalled with GatewayAPINotInstalled naming the field.
func TestWithoutGatewayAPI(t *testing.T) {
	g := NewWithT(t)
	bare, c := startAPIServer(t)
	gatewayAPI, err := GatewayAPIInstalled(bare)
	must(t, err)
	if gatewayAPI {
		t.Fatal("GatewayAPIInstalled = true for an API server without the Gateway API's CRDs")
	}
	startManager(t, managerOptions{What: "the manager without the Gateway API", Config: bare, GatewayAPI: gatewayAPI})
	ctx := context.Background()

	const ns = "telephony"
	must(t, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
	must(t, c.Create(ctx, testSecret(ns, "bot", "s3cret")))
	must(t, c.Create(ctx, testList(ns, "robocallers", "+12125550143\n")))
	plain := testPolicy(ns, "plain")
	plain.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{Ingress: &callsv1alpha1.IngressExpose{Host: "calls.example.com"}}
	must(t, c.Create(ctx, plain))
	routed := testPolicy(ns, "routed")
	routed.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{HTTPRoute: testRoute()}
	must(t, c.Create(ctx, routed))

	get := func(g Gomega, name string) *callsv1alpha1.CallPolicy { return liveStatusWith(g, ctx, c, ns, name) }
	g.Eventually(func(g Gomega) {
		cp := get(g, "routed")
		st := meta.FindStatusCondition(cp.Status.Conditions, ConditionStalled)
		g.Expect(st).NotTo(BeNil())
		g.Expect(st.Reason).To(Equal(ReasonGatewayAPINotInstalled))
		g.Expect(st.Message).To(HavePrefix("spec.receiver.expose.httpRoute: "))
		ready := meta.FindStatusCondition(cp.Status.Conditions, ConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(ready.Reason).To(Equal(ReasonGatewayAPINotInstalled))
		g.Expect(cp.Status.Receiver.CallbackURL).To(BeEmpty())
		// Its receivers run all the same.
		g.Expect(c.Get(ctx, key(ns, "routed-callguard"), &appsv1.Deployment{})).To(Succeed())
	}, eventually, poll).Should(Succeed())

	g.Eventually(func(g Gomega) { markAvailableWith(g, ctx, c, key(ns, "plain-callguard")) }, eventually, poll).Should(Succeed())
	g.Eventually(func(g Gomega) {
		cp := get(g, "plain")
		ready := meta.FindStatusCondition(cp.Status.Conditions, ConditionReady)
		g.Expect(ready).NotTo(BeNil())
		g.Expect(ready.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(cp.Status.Receiver.CallbackURL).To(Equal("https://calls.example.com/api/calls"))
		g.Expect(c.Get(ctx, key(ns, "plain-callguard"), &networkingv1.Ingress{})).To(Succeed())
	}, eventually, poll).Should(Succeed())

	// From httpRoute to ingress: the stall clears.
	updateWith(t, c, routed, func() {
		routed.Spec.Receiver.Expose = &callsv1alpha1.ExposeSpec{Ingress: &callsv1alpha1.IngressExpose{Host: "routed.example.com"}}
	})
	g.Eventually(func(g Gomega) {
		cp := get(g, "routed")
		g.Expect(meta.FindStatusCondition(cp.Status.Conditions, ConditionStalled)).To(BeNil())
		g.Expect(cp.Status.Receiver.CallbackURL).To(Equal("https://routed.example.com/api/calls"))
	}, eventually, poll).Should(Succeed())
}
