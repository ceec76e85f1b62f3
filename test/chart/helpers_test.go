package chart

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// root is the repository's top directory.
var root = func() string {
	r, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		panic(err)
	}
	return r
}()

const (
	releaseName      = "callguard"
	releaseNamespace = "callguard-system"
	chartDir         = "dist/chart"
)

// tool is the path of a pinned binary: $ENV, or bin/<name> (make test
// builds them from hack/tools).
func tool(t *testing.T, env, name string) string {
	t.Helper()
	p := os.Getenv(env)
	if p == "" {
		p = filepath.Join(root, "bin", name)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s not found (%v): run the tests with `make test`, which builds it from hack/tools, or set %s", name, err, env)
	}
	return p
}

// run runs a command in dir and returns its standard output.
func run(t *testing.T, dir, name string, args ...string) []byte {
	t.Helper()
	out, err := runErr(dir, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", filepath.Base(name), strings.Join(args, " "), err)
	}
	return out
}

func runErr(dir, name string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), errors.New(err.Error() + ": " + stderr.String() + stdout.String())
	}
	return stdout.Bytes(), nil
}

// helmTemplate renders the chart as `helm install` would, with value
// overrides given as --set/--set-json/-f arguments.
func helmTemplate(t *testing.T, args ...string) []*unstructured.Unstructured {
	t.Helper()
	all := append([]string{"template", releaseName, filepath.Join(root, chartDir), "--namespace", releaseNamespace}, args...)
	return decode(t, run(t, root, tool(t, "HELM", "helm"), all...))
}

// kustomizeBuild builds config/default from a scratch copy of config/, with
// config/prometheus switched on when monitoring is true (the line the
// kustomization tells users to uncomment).
func kustomizeBuild(t *testing.T, monitoring bool) []*unstructured.Unstructured {
	t.Helper()
	tmp := t.TempDir()
	run(t, root, "cp", "-r", filepath.Join(root, "config"), tmp)
	if monitoring {
		k := filepath.Join(tmp, "config", "default", "kustomization.yaml")
		b, err := os.ReadFile(k)
		if err != nil {
			t.Fatal(err)
		}
		on := strings.Replace(string(b), "# - ../prometheus", "- ../prometheus", 1)
		if on == string(b) {
			t.Fatal("config/default/kustomization.yaml no longer has the line `# - ../prometheus`")
		}
		if err := os.WriteFile(k, []byte(on), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return decode(t, run(t, root, tool(t, "KUSTOMIZE", "kustomize"), "build", filepath.Join(tmp, "config", "default")))
}

// decode splits a YAML stream into objects, skipping empty documents.
func decode(t *testing.T, b []byte) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	d := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	for {
		var m map[string]any
		if err := d.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("decode: %v", err)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	return objs
}

// key names an object: Kind namespace/name.
func key(o *unstructured.Unstructured) string {
	return o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
}

func index(objs []*unstructured.Unstructured) map[string]*unstructured.Unstructured {
	m := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		m[key(o)] = o
	}
	return m
}

func keys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// find returns the object of kind and name, or nil.
func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}
