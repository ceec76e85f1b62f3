package harness

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

// SampleDir is config/samples of the repository holding the working
// directory (the demo runs from the root, go test from the package).
func SampleDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		d := filepath.Join(dir, "config", "samples")
		if _, err := os.Stat(filepath.Join(d, "kustomization.yaml")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("config/samples/kustomization.yaml not found above the working directory")
		}
		dir = parent
	}
}

// Sample is config/samples as `kubectl apply -k config/samples` applies
// it: the CallPolicy and the Secrets and ConfigMaps it names.
type Sample struct {
	Policy     *callsv1alpha1.CallPolicy
	Secrets    []*corev1.Secret
	ConfigMaps []*corev1.ConfigMap
}

// LoadSample reads the files config/samples/kustomization.yaml lists.
func LoadSample() (*Sample, error) {
	dir, err := SampleDir()
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.UnmarshalStrict(raw, &k); err != nil {
		return nil, fmt.Errorf("%s/kustomization.yaml: %w", dir, err)
	}
	s := &Sample{}
	for _, r := range k.Resources {
		path := filepath.Join(dir, r)
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		var tm struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal(data, &tm); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		var obj any
		switch tm.Kind {
		case "CallPolicy":
			s.Policy = &callsv1alpha1.CallPolicy{}
			obj = s.Policy
		case "Secret":
			sec := &corev1.Secret{}
			s.Secrets = append(s.Secrets, sec)
			obj = sec
		case "ConfigMap":
			cm := &corev1.ConfigMap{}
			s.ConfigMaps = append(s.ConfigMaps, cm)
			obj = cm
		default:
			return nil, fmt.Errorf("%s: kind %q is not one the sample uses", path, tm.Kind)
		}
		if err := yaml.UnmarshalStrict(bytes.TrimSpace(data), obj); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	if s.Policy == nil {
		return nil, fmt.Errorf("%s lists no CallPolicy", dir)
	}
	return s, nil
}

// Objects are the sample's objects in ns, the policy pointed at the
// emulator with replicas receivers: its Secret holds the emulator's client
// secret, and a ConfigMap graph-emulator-ca the emulator's CA. The policy
// keeps the sample's receiver.expose; callers replace it with a host the
// local ingress serves (ingress.Expose).
func (s *Sample) Objects(ns string, emu *Emulator, replicas int32) []client.Object {
	var out []client.Object
	for _, sec := range s.Secrets {
		sec = sec.DeepCopy()
		sec.Namespace = ns
		if _, ok := sec.StringData["client-secret"]; ok {
			sec.StringData["client-secret"] = BotSecret
		}
		out = append(out, sec)
	}
	for _, cm := range s.ConfigMaps {
		cm = cm.DeepCopy()
		cm.Namespace = ns
		out = append(out, cm)
	}
	out = append(out, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "graph-emulator-ca"},
		Data: map[string]string{"ca.crt": string(emu.CAPEM)}})
	return append(out, s.PolicyIn(ns, emu, replicas))
}

// PolicyIn is the sample's policy in ns, pointed at the emulator.
func (s *Sample) PolicyIn(ns string, emu *Emulator, replicas int32) *callsv1alpha1.CallPolicy {
	cp := s.Policy.DeepCopy()
	cp.Namespace = ns
	cp.TypeMeta.APIVersion, cp.TypeMeta.Kind = callsv1alpha1.GroupVersion.String(), "CallPolicy"
	cp.Spec.Graph = callsv1alpha1.GraphSpec{
		Endpoint:        emu.URL,
		AuthorityHost:   emu.URL + "/",
		OpenIDConfigURL: emu.URL + "/v1/.well-known/OpenIdConfiguration",
		CABundle:        &callsv1alpha1.ConfigMapKeyReference{Name: "graph-emulator-ca", Key: "ca.crt"},
	}
	cp.Spec.Receiver.Replicas = ptr.To(replicas)
	return cp
}

// EmulatorBotArgs register the sample's bot in each of its additional
// tenants too (the emulator's --bot for the home tenant is StartEmulator's).
func (s *Sample) EmulatorBotArgs() []string {
	var args []string
	for _, t := range s.Policy.Spec.Bot.AdditionalTenants {
		args = append(args, "--bot", fmt.Sprintf("appId=%s,tenantId=%s,secret=%s", BotAppID, t, BotSecret))
	}
	return args
}
