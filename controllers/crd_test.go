package controllers

import (
	"os"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"
)

// TestCRDFieldsDescribed: every field of the CRD's spec and status has a
// description, so `kubectl explain callpolicy.spec --recursive` (which
// prints the CRD's schema) leaves no field unexplained.
func TestCRDFieldsDescribed(t *testing.T) {
	b, err := os.ReadFile("../config/crd/bases/calls.callguard.dev_callpolicies.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(b, &crd); err != nil {
		t.Fatal(err)
	}
	fields := 0
	var walk func(path string, s *apiextensionsv1.JSONSchemaProps)
	walk = func(path string, s *apiextensionsv1.JSONSchemaProps) {
		for name, p := range s.Properties {
			fields++
			if p.Description == "" {
				t.Errorf("%s.%s has no description", path, name)
			}
			walk(path+"."+name, &p)
		}
		if s.Items != nil && s.Items.Schema != nil {
			walk(path+"[]", s.Items.Schema)
		}
		if s.AdditionalProperties != nil && s.AdditionalProperties.Schema != nil {
			walk(path+"{}", s.AdditionalProperties.Schema)
		}
	}
	for _, v := range crd.Spec.Versions {
		root := v.Schema.OpenAPIV3Schema
		for _, top := range []string{"spec", "status"} {
			p, ok := root.Properties[top]
			if !ok {
				t.Fatalf("%s: no %s in the schema", v.Name, top)
			}
			if p.Description == "" {
				t.Errorf("%s has no description", top)
			}
			walk(top, &p)
		}
	}
	if fields < 100 {
		t.Errorf("only %d fields walked: is the schema read right?", fields)
	}
}
