package v1alpha1

import (
	"encoding/json"
	"os"
	"reflect"
	"sort"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// TestCRDDefaultsAreTheConstants checks every default of the generated CRD
// (from the +kubebuilder:default markers) against the Default* constants
// that the compiler, the operator and the receiver use, and that no default
// is missing from the list.
func TestCRDDefaultsAreTheConstants(t *testing.T) {
	b, err := os.ReadFile("../../config/crd/bases/calls.callguard.dev_callpolicies.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(b, &crd); err != nil {
		t.Fatal(err)
	}
	got := map[string]any{}
	var walk func(path string, s *apiextensionsv1.JSONSchemaProps)
	walk = func(path string, s *apiextensionsv1.JSONSchemaProps) {
		if s.Default != nil {
			var v any
			if err := json.Unmarshal(s.Default.Raw, &v); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			got[path] = v
		}
		for name, p := range s.Properties {
			walk(path+"."+name, &p)
		}
		if s.Items != nil && s.Items.Schema != nil {
			walk(path+"[]", s.Items.Schema)
		}
	}
	for _, v := range crd.Spec.Versions {
		if v.Name == GroupVersion.Version {
			walk("", v.Schema.OpenAPIV3Schema)
		}
	}
	// JSON numbers decode as float64.
	want := map[string]any{
		".spec.graph":                                               map[string]any{},
		".spec.graph.endpoint":                                      DefaultGraphEndpoint,
		".spec.graph.apiVersion":                                    string(DefaultGraphAPIVersion),
		".spec.graph.authorityHost":                                 DefaultAuthorityHost,
		".spec.graph.openIDConfigURL":                               DefaultOpenIDConfigURL,
		".spec.graph.issuers":                                       toAny(DefaultIssuers()),
		".spec.mode":                                                string(DefaultMode),
		".spec.defaultAction":                                       string(DefaultDefaultAction),
		".spec.defaultRedirect.timeoutSeconds":                      float64(DefaultRedirectTimeoutSeconds),
		".spec.rules[].redirect.timeoutSeconds":                     float64(DefaultRedirectTimeoutSeconds),
		".spec.rules[].match.schedule.timeZone":                     DefaultTimeZone,
		".spec.receiver":                                            map[string]any{},
		".spec.receiver.replicas":                                   float64(DefaultReceiverReplicas),
		".spec.receiver.callbackPath":                               DefaultCallbackPath,
		".spec.receiver.autoscaling.minReplicas":                    float64(DefaultAutoscalingMinReplicas),
		".spec.receiver.autoscaling.targetCPUUtilizationPercentage": float64(DefaultTargetCPUUtilizationPercentage),
		".spec.receiver.networkPolicy.enabled":                      DefaultNetworkPolicyEnabled,
		".spec.receiver.expose.httpRoute.parentRefs[].group":        DefaultParentRefGroup,
		".spec.receiver.expose.httpRoute.parentRefs[].kind":         DefaultParentRefKind,
		".spec.state.onError":                                       string(DefaultStateOnError),
		".spec.state.redis.keyPrefix":                               DefaultRedisKeyPrefix,
		".spec.rules[].announce.maxSeconds":                         float64(DefaultAnnounceMaxSeconds),
	}
	for _, k := range sortedKeys(got, want) {
		if !reflect.DeepEqual(got[k], want[k]) {
			t.Errorf("%s: CRD default %#v, constant %#v", k, got[k], want[k])
		}
	}
}

// TestParentRefDefaultsAreTheGatewayAPIs: the HTTPRoute parentRef defaults
// the CRD takes from the Gateway API's types are the Gateway API's own.
func TestParentRefDefaultsAreTheGatewayAPIs(t *testing.T) {
	if DefaultParentRefGroup != gatewayv1.GroupName {
		t.Errorf("DefaultParentRefGroup = %q, the Gateway API's group is %q", DefaultParentRefGroup, gatewayv1.GroupName)
	}
	if DefaultParentRefKind != "Gateway" {
		t.Errorf("DefaultParentRefKind = %q", DefaultParentRefKind)
	}
}

// TestDefaultReceiverResources: the defaults that carry Graph's per-tenant
// ceiling: a CPU request and no CPU limit (CFS throttling), memory and
// ephemeral storage requested and limited.
func TestDefaultReceiverResources(t *testing.T) {
	r := DefaultReceiverResources()
	if _, ok := r.Limits[corev1.ResourceCPU]; ok {
		t.Errorf("a CPU limit throttles the receivers: %v", r.Limits)
	}
	want := map[string]string{
		"requests.cpu": "500m", "requests.memory": "128Mi", "requests.ephemeral-storage": "64Mi",
		"limits.memory": "256Mi", "limits.ephemeral-storage": "256Mi",
	}
	got := map[string]string{}
	for k, v := range r.Requests {
		got["requests."+string(k)] = v.String()
	}
	for k, v := range r.Limits {
		got["limits."+string(k)] = v.String()
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("DefaultReceiverResources = %v, want %v", got, want)
	}
	// A new value each time: callers may change theirs.
	r.Requests[corev1.ResourceCPU] = r.Limits[corev1.ResourceMemory]
	if again := DefaultReceiverResources(); again.Requests.Cpu().String() != "500m" {
		t.Error("DefaultReceiverResources shares its maps")
	}
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func sortedKeys(ms ...map[string]any) []string {
	seen := map[string]bool{}
	var keys []string
	for _, m := range ms {
		for k := range m {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	sort.Strings(keys)
	return keys
}
