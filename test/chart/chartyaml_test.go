package chart

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// Chart.yaml's Artifact Hub annotations parse, name the CRD the chart
// installs, and their example CallPolicy passes the API server's validation.
func TestArtifactHubAnnotations(t *testing.T) {
	c := apiServer(t)
	b, err := os.ReadFile(filepath.Join(root, chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var chart struct {
		Annotations map[string]string `json:"annotations"`
	}
	if err := yaml.Unmarshal(b, &chart); err != nil {
		t.Fatal(err)
	}
	var crds []struct {
		Kind, Version, Name string
	}
	if err := yaml.Unmarshal([]byte(chart.Annotations["artifacthub.io/crds"]), &crds); err != nil || len(crds) == 0 {
		t.Fatalf("artifacthub.io/crds: %v (%d entries)", err, len(crds))
	}
	if crd := find(helmTemplate(t), "CustomResourceDefinition", crds[0].Name); crd == nil {
		t.Errorf("artifacthub.io/crds names %s, which the chart does not install", crds[0].Name)
	}
	var examples []map[string]any
	if err := yaml.Unmarshal([]byte(chart.Annotations["artifacthub.io/crdsExamples"]), &examples); err != nil || len(examples) == 0 {
		t.Fatalf("artifacthub.io/crdsExamples: %v (%d entries)", err, len(examples))
	}
	for _, ex := range examples {
		o := &unstructured.Unstructured{Object: ex}
		o.SetNamespace("telephony")
		if err := c.Create(context.Background(), o, client.DryRunAll); err != nil {
			t.Errorf("example %s: %v", o.GetName(), err)
		}
	}
}
