package v1alpha1

import (
	"encoding/json"
	"os"
	"reflect"
	"sort"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
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
		".spec.graph":                           map[string]any{},
		".spec.graph.endpoint":                  DefaultGraphEndpoint,
		".spec.graph.apiVersion":                string(DefaultGraphAPIVersion),
		".spec.graph.authorityHost":             DefaultAuthorityHost,
		".spec.graph.openIDConfigURL":           DefaultOpenIDConfigURL,
		".spec.graph.issuers":                   toAny(DefaultIssuers()),
		".spec.mode":                            string(DefaultMode),
		".spec.defaultAction":                   string(DefaultDefaultAction),
		".spec.defaultRedirect.timeoutSeconds":  float64(DefaultRedirectTimeoutSeconds),
		".spec.rules[].redirect.timeoutSeconds": float64(DefaultRedirectTimeoutSeconds),
		".spec.rules[].match.schedule.timeZone": DefaultTimeZone,
		".spec.receiver":                        map[string]any{},
		".spec.receiver.replicas":               float64(DefaultReceiverReplicas),
		".spec.receiver.callbackPath":           DefaultCallbackPath,
	}
	for _, k := range sortedKeys(got, want) {
		if !reflect.DeepEqual(got[k], want[k]) {
			t.Errorf("%s: CRD default %#v, constant %#v", k, got[k], want[k])
		}
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
