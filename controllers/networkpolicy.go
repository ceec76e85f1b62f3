package controllers

// spec.receiver.networkPolicy: what may reach the receivers and what they may
// reach.

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

// apiServerSlice is the EndpointSlice the API server keeps of its own
// addresses (the `kubernetes` Service's).
var apiServerSlice = types.NamespacedName{Namespace: metav1.NamespaceDefault, Name: "kubernetes"}

// apiServerTTL is how long the API server's addresses are reused before
// they are read again.
const apiServerTTL = time.Minute

// apiServer is where the API server listens: its addresses and ports, sorted.
type apiServer struct {
	addresses []string
	ports     []int32
}

// apiServerCache keeps the API server's addresses for apiServerTTL.
type apiServerCache struct {
	mu   sync.Mutex
	last apiServer
	read time.Time
}

// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get,resourceNames=kubernetes,namespace=default

// apiServerEndpoints reads the API server's addresses from its EndpointSlice,
// at most once a minute. Without the permission (a namespaced install missing
// its Role in default) the NetworkPolicies leave the API server out, which
// costs `kubectl callpolicy decisions` and the receivers' ConfigMap watch
// where the network plugin enforces egress; that is logged, not stalled on.
func (r *CallPolicyReconciler) apiServerEndpoints(ctx context.Context) (apiServer, error) {
	c := &r.apiServer
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.read.IsZero() && time.Since(c.read) < apiServerTTL {
		return c.last, nil
	}
	slice := &discoveryv1.EndpointSlice{}
	err := r.APIReader.Get(ctx, apiServerSlice, slice)
	switch {
	case apierrors.IsNotFound(err) || apierrors.IsForbidden(err):
		// Once a minute at most, and a known state of a namespaced
		// install: a warning, without the stack trace of an error log.
		logf.FromContext(ctx).Info("cannot read the API server's addresses; receivers' NetworkPolicies leave the API server out",
			"endpointSlice", apiServerSlice, "error", err.Error())
		c.last, c.read = apiServer{}, time.Now()
		return c.last, nil
	case err != nil:
		return apiServer{}, fmt.Errorf("get EndpointSlice %s: %w", apiServerSlice, err)
	}
	c.last, c.read = apiServerFromSlice(slice), time.Now()
	return c.last, nil
}

func apiServerFromSlice(s *discoveryv1.EndpointSlice) apiServer {
	var a apiServer
	for _, e := range s.Endpoints {
		if e.Conditions.Ready != nil && !*e.Conditions.Ready {
			continue
		}
		for _, ip := range e.Addresses {
			if net.ParseIP(ip) != nil {
				a.addresses = append(a.addresses, ip)
			}
		}
	}
	for _, p := range s.Ports {
		if p.Port != nil && ptr.Deref(p.Protocol, corev1.ProtocolTCP) == corev1.ProtocolTCP {
			a.ports = append(a.ports, *p.Port)
		}
	}
	slices.Sort(a.addresses)
	slices.Sort(a.ports)
	a.addresses, a.ports = slices.Compact(a.addresses), slices.Compact(a.ports)
	return a
}

func networkPolicyEnabled(cp *callsv1alpha1.CallPolicy) bool {
	if np := cp.Spec.Receiver.NetworkPolicy; np != nil && np.Enabled != nil {
		return *np.Enabled
	}
	return callsv1alpha1.DefaultNetworkPolicyEnabled
}

// urlPorts are the ports of the https (and upstream's http) URLs the policy
// names, 443 and 80 when a URL gives none; those that do not parse are
// left out (the compiler has refused them).
func urlPorts(cp *callsv1alpha1.CallPolicy) []int32 {
	g := cp.Spec.Graph
	urls := []string{
		cmp.Or(g.Endpoint, callsv1alpha1.DefaultGraphEndpoint),
		cmp.Or(g.AuthorityHost, callsv1alpha1.DefaultAuthorityHost),
		cmp.Or(g.OpenIDConfigURL, callsv1alpha1.DefaultOpenIDConfigURL),
	}
	if cp.Spec.Upstream != nil {
		urls = append(urls, cp.Spec.Upstream.URL)
	}
	var ports []int32
	for _, s := range urls {
		u, err := url.Parse(s)
		if err != nil {
			continue
		}
		port := u.Port()
		switch {
		case port != "":
		case u.Scheme == "https":
			port = "443"
		case u.Scheme == "http":
			port = "80"
		default:
			continue
		}
		if n, err := strconv.ParseInt(port, 10, 32); err == nil && n > 0 && n < 65536 {
			ports = append(ports, int32(n))
		}
	}
	slices.Sort(ports)
	return slices.Compact(ports)
}

// redisPort is the port of spec.state.redis.address, if any; the receivers
// reach the store on it (its address is often a name, which no IP block
// can name, so the port alone opens it).
func redisPort(cp *callsv1alpha1.CallPolicy) []int32 {
	rs := redisSpec(cp)
	if rs == nil {
		return nil
	}
	_, p, err := net.SplitHostPort(rs.Address)
	if err != nil {
		return nil
	}
	n, err := strconv.ParseInt(p, 10, 32)
	if err != nil || n <= 0 || n >= 65536 {
		return nil
	}
	return []int32{int32(n)}
}

// buildNetworkPolicy returns the receivers' NetworkPolicy:
//   - in, callback port: from callbackFrom (empty: from anywhere);
//   - in, metrics port: from metricsFrom (empty: from the namespaces in
//     scrapers, the manager's --metrics-scraper-namespaces) and from the
//     API server's addresses (its pod proxy serves `kubectl callpolicy
//     decisions`); nobody else;
//   - out: DNS (53/UDP, 53/TCP) and 443 anywhere, the ports of the URLs the
//     policy names and of its state store, and the API server's addresses on its ports (the
//     receivers watch their policy ConfigMap; network plugins that apply
//     policy after the Service's address is translated see those).
func buildNetworkPolicy(cp *callsv1alpha1.CallPolicy, scrapers []string, api apiServer) *networkingv1.NetworkPolicy {
	spec := cp.Spec.Receiver.NetworkPolicy
	if spec == nil {
		spec = &callsv1alpha1.NetworkPolicySpec{}
	}
	tcp, udp := ptr.To(corev1.ProtocolTCP), ptr.To(corev1.ProtocolUDP)
	port := func(p *corev1.Protocol, n int32) networkingv1.NetworkPolicyPort {
		return networkingv1.NetworkPolicyPort{Protocol: p, Port: ptr.To(intstr.FromInt32(n))}
	}
	var apiPeers []networkingv1.NetworkPolicyPeer
	for _, ip := range api.addresses {
		bits := "/32"
		if net.ParseIP(ip).To4() == nil {
			bits = "/128"
		}
		apiPeers = append(apiPeers, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: ip + bits}})
	}

	metricsFrom := deepCopyPeers(spec.MetricsFrom)
	if len(metricsFrom) == 0 && len(scrapers) > 0 {
		metricsFrom = []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{
			MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpIn, Values: slices.Clone(scrapers),
			}},
		}}}
	}
	ingress := []networkingv1.NetworkPolicyIngressRule{{
		Ports: []networkingv1.NetworkPolicyPort{port(tcp, receiverHTTPPort)},
		From:  deepCopyPeers(spec.CallbackFrom),
	}}
	// A rule without peers would admit everyone: no peers, no rule.
	if peers := append(metricsFrom, apiPeers...); len(peers) > 0 {
		ingress = append(ingress, networkingv1.NetworkPolicyIngressRule{
			Ports: []networkingv1.NetworkPolicyPort{port(tcp, receiverMetricsPort)},
			From:  peers,
		})
	}

	out := []networkingv1.NetworkPolicyPort{port(tcp, 443)}
	extra := append(urlPorts(cp), redisPort(cp)...)
	slices.Sort(extra)
	for _, p := range slices.Compact(extra) {
		if p != 443 {
			out = append(out, port(tcp, p))
		}
	}
	egress := []networkingv1.NetworkPolicyEgressRule{
		{Ports: []networkingv1.NetworkPolicyPort{port(udp, 53), port(tcp, 53)}},
		{Ports: out},
	}
	if len(apiPeers) > 0 && len(api.ports) > 0 {
		var ports []networkingv1.NetworkPolicyPort
		for _, p := range api.ports {
			ports = append(ports, port(tcp, p))
		}
		egress = append(egress, networkingv1.NetworkPolicyEgressRule{Ports: ports, To: apiPeers})
	}
	return &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: objectMeta(cp, childName(cp)),
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: selectorLabels(cp)},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress:     ingress,
			Egress:      egress,
		},
	}
}

func deepCopyPeers(in []networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer {
	if len(in) == 0 {
		return nil
	}
	out := make([]networkingv1.NetworkPolicyPeer, len(in))
	for i := range in {
		in[i].DeepCopyInto(&out[i])
	}
	return out
}

func (r *CallPolicyReconciler) reconcileNetworkPolicy(ctx context.Context, cp *callsv1alpha1.CallPolicy, _ *reconcileState) error {
	if !networkPolicyEnabled(cp) {
		return r.deleteOwned(ctx, cp, &networkingv1.NetworkPolicy{})
	}
	api, err := r.apiServerEndpoints(ctx)
	if err != nil {
		return err
	}
	return r.apply(ctx, cp, buildNetworkPolicy(cp, r.MetricsScraperNamespaces, api))
}
