package controllers

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

func TestBuildDeployment(t *testing.T) {
	base := func() *callsv1alpha1.CallPolicy {
		return testPolicy("telephony", "hotline")
	}
	tests := []struct {
		name  string
		cp    func() *callsv1alpha1.CallPolicy
		check func(t *testing.T, pod corev1.PodSpec, annotations, labels map[string]string)
	}{
		{"secret credentials are a read-only volume", base, func(t *testing.T, pod corev1.PodSpec, ann, _ map[string]string) {
			if ann[credentialsHashAnnotation] != "sha256:abc" {
				t.Errorf("credentials hash annotation = %q", ann[credentialsHashAnnotation])
			}
			if got := pod.Volumes[len(pod.Volumes)-1].Secret; got == nil || got.SecretName != "bot" {
				t.Errorf("credentials volume = %+v", got)
			}
			args := pod.Containers[0].Args
			if !containsPair(args, "--credentials-dir", credentialsDir) || !containsPair(args, "--policy-configmap", "telephony/hotline-callguard-policy") {
				t.Errorf("args = %v", args)
			}
		}},
		{"workload identity: label, no secret volume", func() *callsv1alpha1.CallPolicy {
			cp := base()
			cp.Spec.Bot.Credentials = callsv1alpha1.Credentials{WorkloadIdentity: &callsv1alpha1.WorkloadIdentity{}}
			return cp
		}, func(t *testing.T, pod corev1.PodSpec, ann, labels map[string]string) {
			if labels[workloadIdentityUseLabel] != "true" {
				t.Errorf("labels = %v", labels)
			}
			if _, ok := ann[credentialsHashAnnotation]; ok {
				t.Errorf("no Secret, yet a credentials hash")
			}
			for _, v := range pod.Volumes {
				if v.Secret != nil {
					t.Errorf("unexpected secret volume %s", v.Name)
				}
			}
		}},
		{"CA bundle mounted and passed as --ca-file", func() *callsv1alpha1.CallPolicy {
			cp := base()
			cp.Spec.Graph.CABundle = &callsv1alpha1.ConfigMapKeyReference{Name: "emulator-ca", Key: "ca.crt"}
			return cp
		}, func(t *testing.T, pod corev1.PodSpec, ann, _ map[string]string) {
			if !containsPair(pod.Containers[0].Args, "--ca-file", caDir+"/"+caFile) {
				t.Errorf("args = %v", pod.Containers[0].Args)
			}
			if ann[caHashAnnotation] != "sha256:ca" {
				t.Errorf("annotations = %v", ann)
			}
			found := false
			for _, v := range pod.Volumes {
				found = found || (v.ConfigMap != nil && v.ConfigMap.Name == "emulator-ca")
			}
			if !found {
				t.Errorf("no CA volume in %+v", pod.Volumes)
			}
		}},
		{"image, resources and scheduling overrides", func() *callsv1alpha1.CallPolicy {
			cp := base()
			cp.Spec.Receiver.Image = "mirror.example.com/callguard:v2"
			cp.Spec.Receiver.Resources = &corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}}
			cp.Spec.Receiver.NodeSelector = map[string]string{"pool": "telephony"}
			cp.Spec.Receiver.PriorityClassName = "high"
			return cp
		}, func(t *testing.T, pod corev1.PodSpec, _, _ map[string]string) {
			c := pod.Containers[0]
			if c.Image != "mirror.example.com/callguard:v2" || c.Resources.Limits.Memory().String() != "1Gi" {
				t.Errorf("image %q resources %+v", c.Image, c.Resources)
			}
			if pod.NodeSelector["pool"] != "telephony" || pod.PriorityClassName != "high" {
				t.Errorf("scheduling not passed: %+v", pod)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cp := tt.cp()
			d := buildDeployment(cp, "operator/default:1", podInputs{credentialsHash: "sha256:abc", caHash: "sha256:ca"})
			pt := d.Spec.Template
			if pt.Spec.Containers[0].SecurityContext == nil || !*pt.Spec.Containers[0].SecurityContext.ReadOnlyRootFilesystem {
				t.Errorf("container not read-only")
			}
			if *d.Spec.Replicas != 2 || d.Spec.Selector.MatchLabels["app.kubernetes.io/instance"] != "hotline" {
				t.Errorf("replicas/selector: %v %v", *d.Spec.Replicas, d.Spec.Selector)
			}
			tt.check(t, pt.Spec, pt.Annotations, pt.Labels)
		})
	}
}

func containsPair(args []string, flag, value string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == value {
			return true
		}
	}
	return false
}

func TestHashData(t *testing.T) {
	a := hashData(map[string][]byte{"client-secret": []byte("x")})
	b := hashData(map[string][]byte{"client-secret": []byte("y")})
	// Key/value boundaries are part of the hash: "ab"+"c" differs from "a"+"bc".
	c := hashData(map[string][]byte{"ab": []byte("c")})
	d := hashData(map[string][]byte{"a": []byte("bc")})
	if a == b || c == d || a != hashData(map[string][]byte{"client-secret": []byte("x")}) {
		t.Errorf("hashes: %s %s %s %s", a, b, c, d)
	}
}

func TestPodDisruptionBudgetKeepsOneUp(t *testing.T) {
	cp := &callsv1alpha1.CallPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "n", Name: "p"}}
	if pdb := buildPodDisruptionBudget(cp); pdb.Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("pdb minAvailable = %v", pdb.Spec.MinAvailable)
	}
}
