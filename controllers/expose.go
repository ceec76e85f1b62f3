package controllers

// spec.receiver.expose: the Ingress or the Gateway API HTTPRoute through which
// Graph reaches the receivers, and the callback URL it makes.

import (
	"context"
	"fmt"
	"maps"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
)

// ReasonGatewayAPINotInstalled stalls a policy asking for an HTTPRoute in a
// cluster without the Gateway API's CRDs.
const ReasonGatewayAPINotInstalled = "GatewayAPINotInstalled"

// +kubebuilder:rbac:groups=networking.k8s.io,resources=ingresses,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=httproutes,verbs=get;list;watch;create;update;patch;delete

// GatewayAPIInstalled reports whether the API server serves HTTPRoutes
// (gateway.networking.k8s.io/v1). The manager asks once, at start: it
// watches HTTPRoutes only when they exist, so that it neither fails to start
// nor waits for a cache that can never sync in a cluster without them.
func GatewayAPIInstalled(cfg *rest.Config) (bool, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return false, fmt.Errorf("discovery client: %w", err)
	}
	res, err := dc.ServerResourcesForGroupVersion(gatewayv1.GroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discover %s: %w", gatewayv1.GroupVersion, err)
	}
	for _, r := range res.APIResources {
		if r.Name == "httproutes" {
			return true, nil
		}
	}
	return false, nil
}

// callbackURL is the https URL Graph calls when the policy is exposed:
// expose.url as written, or the Ingress' host, or the HTTPRoute's first
// hostname, and the callback path.
// Graph calls only https URLs, so TLS is terminated at the ingress controller
// or the Gateway (or in front of them) whether or not tlsSecretName is set.
func callbackURL(cp *callsv1alpha1.CallPolicy) string {
	e := cp.Spec.Receiver.Expose
	switch {
	case e == nil:
		return ""
	case e.URL != "":
		return e.URL
	case e.Ingress != nil && e.Ingress.Host != "":
		return "https://" + e.Ingress.Host + callbackPath(cp)
	case e.HTTPRoute != nil && len(e.HTTPRoute.Hostnames) > 0:
		return "https://" + string(e.HTTPRoute.Hostnames[0]) + callbackPath(cp)
	}
	return ""
}

// promptsPath is the path prefix under which the receivers serve the
// policy's ConfigMap prompts for Graph to fetch; "" when it has none.
func promptsPath(cp *callsv1alpha1.CallPolicy) string {
	if len(policy.PromptRefs(&cp.Spec)) == 0 {
		return ""
	}
	return strings.TrimRight(callbackPath(cp), "/") + "/prompts"
}

// buildIngress routes host + the callback path to the receivers' Service.
// The path matches Exact: Graph posts to exactly that URL, and the receiver
// serves nothing else on its callback port but the prompts (a Prefix match
// of the callback path would forward /api/calls/anything to it).
func buildIngress(cp *callsv1alpha1.CallPolicy) *networkingv1.Ingress {
	in := cp.Spec.Receiver.Expose.Ingress
	backend := networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
		Name: childName(cp),
		Port: networkingv1.ServiceBackendPort{Name: "http"},
	}}
	paths := []networkingv1.HTTPIngressPath{{
		Path:     callbackPath(cp),
		PathType: ptr.To(networkingv1.PathTypeExact),
		Backend:  backend,
	}}
	if p := promptsPath(cp); p != "" {
		paths = append(paths, networkingv1.HTTPIngressPath{Path: p, PathType: ptr.To(networkingv1.PathTypePrefix), Backend: backend})
	}
	ing := &networkingv1.Ingress{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "Ingress"},
		ObjectMeta: objectMeta(cp, childName(cp)),
		Spec: networkingv1.IngressSpec{
			Rules: []networkingv1.IngressRule{{
				Host: in.Host,
				IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{
					Paths: paths,
				}},
			}},
		},
	}
	if len(in.Annotations) > 0 {
		ing.Annotations = maps.Clone(in.Annotations)
	}
	if in.ClassName != "" {
		ing.Spec.IngressClassName = ptr.To(in.ClassName)
	}
	if in.TLSSecretName != "" {
		ing.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{in.Host}, SecretName: in.TLSSecretName}}
	}
	return ing
}

// buildHTTPRoute attaches the receivers' Service (port 80) to the given
// Gateways for the hostnames and the callback path (Exact, as the Ingress).
func buildHTTPRoute(cp *callsv1alpha1.CallPolicy) *gatewayv1.HTTPRoute {
	hr := cp.Spec.Receiver.Expose.HTTPRoute
	parents := make([]gatewayv1.ParentReference, len(hr.ParentRefs))
	for i := range hr.ParentRefs {
		hr.ParentRefs[i].DeepCopyInto(&parents[i])
	}
	matches := []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{
		Type:  ptr.To(gatewayv1.PathMatchExact),
		Value: ptr.To(callbackPath(cp)),
	}}}
	if p := promptsPath(cp); p != "" {
		matches = append(matches, gatewayv1.HTTPRouteMatch{Path: &gatewayv1.HTTPPathMatch{
			Type:  ptr.To(gatewayv1.PathMatchPathPrefix),
			Value: ptr.To(p),
		}})
	}
	return &gatewayv1.HTTPRoute{
		TypeMeta:   metav1.TypeMeta{APIVersion: gatewayv1.GroupVersion.String(), Kind: "HTTPRoute"},
		ObjectMeta: objectMeta(cp, childName(cp)),
		Spec: gatewayv1.HTTPRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: parents},
			Hostnames:       append([]gatewayv1.Hostname(nil), hr.Hostnames...),
			Rules: []gatewayv1.HTTPRouteRule{{
				Matches: matches,
				BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{
					BackendObjectReference: gatewayv1.BackendObjectReference{
						Name: gatewayv1.ObjectName(childName(cp)),
						Port: ptr.To(gatewayv1.PortNumber(80)),
					},
				}}},
			}},
		},
	}
}

// reconcileExpose applies the Ingress or HTTPRoute the spec asks for and
// deletes the one it no longer asks for. It runs last: a policy asking for an
// HTTPRoute where there is no Gateway API still gets its receivers.
func (r *CallPolicyReconciler) reconcileExpose(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState) error {
	var ingress *callsv1alpha1.IngressExpose
	var route *callsv1alpha1.HTTPRouteExpose
	if e := cp.Spec.Receiver.Expose; e != nil {
		ingress, route = e.Ingress, e.HTTPRoute
	}
	if ingress != nil {
		if err := r.apply(ctx, cp, buildIngress(cp)); err != nil {
			return err
		}
	} else if err := r.deleteOwned(ctx, cp, &networkingv1.Ingress{}); err != nil {
		return err
	}
	switch {
	case r.GatewayAPI && route != nil:
		if err := r.apply(ctx, cp, buildHTTPRoute(cp)); err != nil {
			return err
		}
	case r.GatewayAPI:
		if err := r.deleteOwned(ctx, cp, &gatewayv1.HTTPRoute{}); err != nil {
			return err
		}
	case route != nil:
		// Without the CRDs there can be no HTTPRoute of ours to delete.
		st.exposed = ptr.To("")
		return st.stall(stalled(ReasonGatewayAPINotInstalled,
			"spec.receiver.expose.httpRoute: the Gateway API (HTTPRoute, %s) is not installed in this cluster, or was installed after the operator started: install its CRDs and restart the operator, or use spec.receiver.expose.ingress",
			gatewayv1.GroupVersion))
	}
	st.exposed = ptr.To(callbackURL(cp))
	return nil
}
