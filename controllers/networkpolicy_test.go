package controllers

import (
	"context"
	"fmt"
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

// rule is a NetworkPolicy rule flattened for comparison: protocol/port
// strings and peers.
type rule struct {
	ports []string
	peers []networkingv1.NetworkPolicyPeer
}

func ports(ps []networkingv1.NetworkPolicyPort) []string {
	var out []string
	for _, p := range ps {
		out = append(out, string(ptr.Deref(p.Protocol, ""))+"/"+p.Port.String())
	}
	return out
}

func ingressRules(np *networkingv1.NetworkPolicy) []rule {
	var out []rule
	for _, r := range np.Spec.Ingress {
		out = append(out, rule{ports(r.Ports), r.From})
	}
	return out
}

func egressRules(np *networkingv1.NetworkPolicy) []rule {
	var out []rule
	for _, r := range np.Spec.Egress {
		out = append(out, rule{ports(r.Ports), r.To})
	}
	return out
}

func ipPeer(cidr string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr}}
}

func namespacesPeer(names ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
		Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpIn, Values: names,
	}}}}
}

func TestBuildNetworkPolicy(t *testing.T) {
	api := apiServer{addresses: []string{"10.0.0.10", "fd00::10"}, ports: []int32{6443}}
	prometheus := networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "prometheus"}}}
	ingressNS := networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "traefik"}}}
	dns := rule{[]string{"UDP/53", "TCP/53"}, nil}
	apiOut := rule{[]string{"TCP/6443"}, []networkingv1.NetworkPolicyPeer{ipPeer("10.0.0.10/32"), ipPeer("fd00::10/128")}}
	for _, tt := range []struct {
		name         string
		mutate       func(*callsv1alpha1.CallPolicy)
		scrapers     []string
		api          apiServer
		ingress, egr []rule
	}{
		{"defaults: callback from anywhere, metrics from the scrapers and the API server", func(*callsv1alpha1.CallPolicy) {}, []string{"monitoring"}, api,
			[]rule{
				{[]string{"TCP/8080"}, nil},
				{[]string{"TCP/8081"}, []networkingv1.NetworkPolicyPeer{namespacesPeer("monitoring"), ipPeer("10.0.0.10/32"), ipPeer("fd00::10/128")}},
			},
			[]rule{dns, {[]string{"TCP/443"}, nil}, apiOut}},
		{"the policy's peers replace the defaults", func(cp *callsv1alpha1.CallPolicy) {
			cp.Spec.Receiver.NetworkPolicy = &callsv1alpha1.NetworkPolicySpec{
				CallbackFrom: []networkingv1.NetworkPolicyPeer{ingressNS},
				MetricsFrom:  []networkingv1.NetworkPolicyPeer{prometheus},
			}
		}, []string{"monitoring"}, api,
			[]rule{
				{[]string{"TCP/8080"}, []networkingv1.NetworkPolicyPeer{ingressNS}},
				{[]string{"TCP/8081"}, []networkingv1.NetworkPolicyPeer{prometheus, ipPeer("10.0.0.10/32"), ipPeer("fd00::10/128")}},
			},
			[]rule{dns, {[]string{"TCP/443"}, nil}, apiOut}},
		{"no scrapers, API server unknown: the metrics port is closed", func(*callsv1alpha1.CallPolicy) {}, nil, apiServer{},
			[]rule{{[]string{"TCP/8080"}, nil}},
			[]rule{dns, {[]string{"TCP/443"}, nil}}},
		{"the ports of the URLs the policy names", func(cp *callsv1alpha1.CallPolicy) {
			cp.Spec.Graph.Endpoint = "https://graph-emulator.test:8443"
			cp.Spec.Graph.OpenIDConfigURL = "https://graph-emulator.test:8443/openid"
			cp.Spec.Upstream = &callsv1alpha1.UpstreamSpec{URL: "http://old-bot.bots.svc/api/calls"}
		}, nil, api,
			[]rule{{[]string{"TCP/8080"}, nil}, {[]string{"TCP/8081"}, []networkingv1.NetworkPolicyPeer{ipPeer("10.0.0.10/32"), ipPeer("fd00::10/128")}}},
			[]rule{dns, {[]string{"TCP/443", "TCP/80", "TCP/8443"}, nil}, apiOut}},
		{"the state store's port", func(cp *callsv1alpha1.CallPolicy) {
			cp.Spec.State = &callsv1alpha1.StateSpec{Redis: &callsv1alpha1.RedisSpec{Address: "redis.cache.svc.cluster.local:6380"}}
		}, nil, apiServer{},
			[]rule{{[]string{"TCP/8080"}, nil}},
			[]rule{dns, {[]string{"TCP/443", "TCP/6380"}, nil}}},
		{"a state store on 443 and an upstream on its port: each port once", func(cp *callsv1alpha1.CallPolicy) {
			cp.Spec.State = &callsv1alpha1.StateSpec{Redis: &callsv1alpha1.RedisSpec{Address: "redis.example.com:443"}}
			cp.Spec.Upstream = &callsv1alpha1.UpstreamSpec{URL: "https://old-bot.example.com:6379/api/calls"}
		}, nil, apiServer{},
			[]rule{{[]string{"TCP/8080"}, nil}},
			[]rule{dns, {[]string{"TCP/443", "TCP/6379"}, nil}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			cp := testPolicy("telephony", "hotline")
			tt.mutate(cp)
			np := buildNetworkPolicy(cp, tt.scrapers, tt.api)
			g.Expect(np.Name).To(Equal("hotline-callguard"))
			g.Expect(np.Spec.PodSelector.MatchLabels).To(Equal(selectorLabels(cp)))
			g.Expect(np.Spec.PolicyTypes).To(ConsistOf(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress))
			g.Expect(ingressRules(np)).To(Equal(tt.ingress))
			g.Expect(egressRules(np)).To(Equal(tt.egr))
		})
	}
}

func TestAPIServerFromSlice(t *testing.T) {
	s := &discoveryv1.EndpointSlice{
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.12"}},
			{Addresses: []string{"10.0.0.11"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
			{Addresses: []string{"10.0.0.13"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
			{Addresses: []string{"10.0.0.11", "not-an-ip"}},
		},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("https"), Port: ptr.To[int32](6443), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	a := apiServerFromSlice(s)
	if got := a.addresses; len(got) != 2 || got[0] != "10.0.0.11" || got[1] != "10.0.0.12" {
		t.Errorf("addresses = %v", got)
	}
	if len(a.ports) != 1 || a.ports[0] != 6443 {
		t.Errorf("ports = %v", a.ports)
	}
}

func TestDeploymentSpreadsReceiversAcrossNodes(t *testing.T) {
	cp := testPolicy("telephony", "hotline")
	tsc := buildDeployment(cp, "img", podInputs{}).Spec.Template.Spec.TopologySpreadConstraints
	if len(tsc) != 1 {
		t.Fatalf("topologySpreadConstraints = %+v", tsc)
	}
	c := tsc[0]
	if c.TopologyKey != "kubernetes.io/hostname" || c.WhenUnsatisfiable != corev1.ScheduleAnyway || c.MaxSkew != 1 ||
		c.LabelSelector == nil || c.LabelSelector.MatchLabels["app.kubernetes.io/instance"] != "hotline" {
		t.Errorf("constraint = %+v", c)
	}
}

// TestNetworkPolicyIsAppliedAndRemoved: every receiver gets a NetworkPolicy
// by default, with the suite manager's scraper namespace and the API
// server's addresses as envtest's API server reports them; enabled: false
// deletes it.
func TestNetworkPolicyIsAppliedAndRemoved(t *testing.T) {
	g := NewWithT(t)
	ctx, ns, cp := setup(t)

	slice := &discoveryv1.EndpointSlice{}
	must(t, k8s.Get(ctx, apiServerSlice, slice))
	api := apiServerFromSlice(slice)
	if len(api.addresses) == 0 || len(api.ports) == 0 {
		t.Fatalf("envtest's API server has no addresses in %+v", slice)
	}
	var apiPeers []networkingv1.NetworkPolicyPeer
	var apiPorts []string
	for _, a := range api.addresses {
		apiPeers = append(apiPeers, ipPeer(a+"/32"))
	}
	for _, p := range api.ports {
		apiPorts = append(apiPorts, fmt.Sprintf("TCP/%d", p))
	}

	np := &networkingv1.NetworkPolicy{}
	g.Eventually(func() error { return k8s.Get(ctx, key(ns, "hotline-callguard"), np) }, eventually, poll).Should(Succeed())
	must(t, k8s.Get(ctx, client.ObjectKeyFromObject(cp), cp))
	assertControlledBy(t, np, cp)
	g.Expect(np.Spec.PodSelector.MatchLabels).To(Equal(selectorLabels(cp)))
	g.Expect(ingressRules(np)).To(Equal([]rule{
		{[]string{"TCP/8080"}, nil},
		{[]string{"TCP/8081"}, append([]networkingv1.NetworkPolicyPeer{namespacesPeer(testScraperNamespace)}, apiPeers...)},
	}))
	g.Expect(egressRules(np)).To(Equal([]rule{
		{[]string{"UDP/53", "TCP/53"}, nil}, {[]string{"TCP/443"}, nil}, {apiPorts, apiPeers},
	}))
	// The Deployment's pods are the ones it selects.
	dep := &appsv1.Deployment{}
	must(t, k8s.Get(ctx, key(ns, "hotline-callguard"), dep))
	for k, v := range np.Spec.PodSelector.MatchLabels {
		g.Expect(dep.Spec.Template.Labels).To(HaveKeyWithValue(k, v))
	}

	// Opened by hand: closed again.
	update(t, np, func() { np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{}) }, client.FieldOwner("kubectl-edit"))
	g.Eventually(func(g Gomega) {
		g.Expect(k8s.Get(ctx, key(ns, "hotline-callguard"), np)).To(Succeed())
		g.Expect(np.Spec.Ingress).To(HaveLen(2))
	}, eventually, poll).Should(Succeed())

	update(t, cp, func() {
		cp.Spec.Receiver.NetworkPolicy = &callsv1alpha1.NetworkPolicySpec{Enabled: ptr.To(false)}
	})
	g.Eventually(func() bool {
		return apierrors.IsNotFound(k8s.Get(ctx, key(ns, "hotline-callguard"), &networkingv1.NetworkPolicy{}))
	}, eventually, poll).Should(BeTrue())
}

// TestManagerReadsOnlyTheAPIServersEndpointSlice: the Role controller-gen
// writes into config/rbac/role.yaml beside the ClusterRole (bound in
// namespace default, as config/ and the chart do) lets the manager read the
// API server's addresses and no other EndpointSlice.
func TestManagerReadsOnlyTheAPIServersEndpointSlice(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	role := &rbacv1.Role{}
	readManifestKind(t, "role.yaml", "Role", role)
	g.Expect(role.Namespace).To(Equal(metav1.NamespaceDefault))
	const saNamespace, saName = "callguard-system", "endpoints-reader"
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: role.Namespace, Name: saName},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: saNamespace, Name: saName}},
	}
	for _, obj := range []client.Object{role, binding} {
		if err := k8s.Create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	asManager := rest.CopyConfig(cfg)
	asManager.Impersonate = rest.ImpersonationConfig{UserName: serviceaccount.MakeUsername(saNamespace, saName)}
	direct, err := client.New(asManager, client.Options{Scheme: scheme})
	must(t, err)

	r := &CallPolicyReconciler{APIReader: direct}
	g.Eventually(func(g Gomega) { // RBAC takes a moment to apply
		g.Expect(direct.Get(ctx, apiServerSlice, &discoveryv1.EndpointSlice{})).To(Succeed())
	}, eventually, poll).Should(Succeed())
	api, err := r.apiServerEndpoints(ctx)
	must(t, err)
	g.Expect(api.addresses).NotTo(BeEmpty())
	g.Expect(api.ports).NotTo(BeEmpty())

	for what, err := range map[string]error{
		"list EndpointSlices in default": direct.List(ctx, &discoveryv1.EndpointSliceList{}, client.InNamespace(metav1.NamespaceDefault)),
		"get another EndpointSlice":      direct.Get(ctx, key(metav1.NamespaceDefault, "other"), &discoveryv1.EndpointSlice{}),
		"get kubernetes elsewhere":       direct.Get(ctx, key("kube-system", "kubernetes"), &discoveryv1.EndpointSlice{}),
	} {
		g.Expect(apierrors.IsForbidden(err)).To(BeTrue(), "%s: %v", what, err)
	}
}
