package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

// Names, ports and paths shared by the children. The receiver's flags are its
// contract (docs/operator.md); the operator configures it only through them.
const (
	receiverContainer   = "receiver"
	receiverHTTPPort    = callsv1alpha1.ReceiverPort
	receiverMetricsPort = callsv1alpha1.ReceiverMetricsPort
	credentialsVolume   = "credentials"
	credentialsDir      = "/var/run/secrets/callguard/credentials"
	caVolume            = "ca-bundle"
	caDir               = "/etc/callguard/ca"
	caFile              = "ca.crt"
	nonRootUID          = int64(65532)

	// credentialsHashAnnotation rolls the receivers when the Secret changes;
	// the policy hash is deliberately NOT on the pod template, because the
	// receivers reload the policy ConfigMap live.
	credentialsHashAnnotation = "callguard.dev/credentials-hash"
	caHashAnnotation          = "callguard.dev/ca-bundle-hash"

	// managedByLabel marks every child; the manager caches only objects
	// carrying it, not every Deployment or Service in the cluster.
	managedByLabel = "app.kubernetes.io/managed-by"
	managedBy      = "callguard"

	workloadIdentityUseLabel      = "azure.workload.identity/use"
	workloadIdentityClientIDAnnot = "azure.workload.identity/client-id"
	workloadIdentityTenantIDAnnot = "azure.workload.identity/tenant-id"
)

// childName is the name of every child but the policy ConfigMaps.
func childName(cp *callsv1alpha1.CallPolicy) string { return callsv1alpha1.ReceiverName(cp.Name) }

// policyConfigMapName is the name of the resolved policy's manifest.
func policyConfigMapName(cp *callsv1alpha1.CallPolicy) string {
	return callsv1alpha1.PolicyConfigMapName(cp.Name)
}

func selectorLabels(cp *callsv1alpha1.CallPolicy) map[string]string {
	return callsv1alpha1.ReceiverSelector(cp.Name)
}

func commonLabels(cp *callsv1alpha1.CallPolicy) map[string]string {
	l := selectorLabels(cp)
	l[managedByLabel] = managedBy
	l["app.kubernetes.io/part-of"] = "callguard"
	return l
}

func objectMeta(cp *callsv1alpha1.CallPolicy, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: cp.Namespace, Labels: commonLabels(cp)}
}

// deploymentReplicas is the Deployment's spec.replicas: none while
// autoscaling, the autoscaler's field then.
func deploymentReplicas(cp *callsv1alpha1.CallPolicy) *int32 {
	if cp.Spec.Receiver.Autoscaling != nil {
		return nil
	}
	return ptr.To(replicas(cp))
}

func replicas(cp *callsv1alpha1.CallPolicy) int32 {
	if cp.Spec.Receiver.Replicas != nil {
		return *cp.Spec.Receiver.Replicas
	}
	return callsv1alpha1.DefaultReceiverReplicas
}

func callbackPath(cp *callsv1alpha1.CallPolicy) string {
	if cp.Spec.Receiver.CallbackPath != "" {
		return cp.Spec.Receiver.CallbackPath
	}
	return callsv1alpha1.DefaultCallbackPath
}

// hashData hashes a Secret's data in key order; it is what rolls the
// receivers when credentials change.
func hashData(data map[string][]byte) string {
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%d:%s%d:", len(k), k, len(data[k]))
		h.Write(data[k])
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// buildServiceAccount returns the receivers' ServiceAccount.
func buildServiceAccount(cp *callsv1alpha1.CallPolicy) *corev1.ServiceAccount {
	sa := &corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: objectMeta(cp, childName(cp)),
	}
	if cp.Spec.Bot.Credentials.WorkloadIdentity != nil {
		sa.Annotations = map[string]string{
			workloadIdentityClientIDAnnot: cp.Spec.Bot.AppID,
			workloadIdentityTenantIDAnnot: cp.Spec.Bot.TenantID,
		}
	}
	return sa
}

// BuildRoleBinding binds the Role to the receivers' ServiceAccount.
func BuildRoleBinding(cp *callsv1alpha1.CallPolicy) *rbacv1.RoleBinding {
	return &rbacv1.RoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"},
		ObjectMeta: objectMeta(cp, childName(cp)),
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: childName(cp)},
		Subjects: []rbacv1.Subject{{
			Kind: "ServiceAccount", Name: childName(cp), Namespace: cp.Namespace,
		}},
	}
}

// buildService exposes the callback on port 80 and the metrics on 8081.
func buildService(cp *callsv1alpha1.CallPolicy) *corev1.Service {
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: objectMeta(cp, childName(cp)),
		Spec: corev1.ServiceSpec{
			Selector: selectorLabels(cp),
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
				{Name: "metrics", Port: receiverMetricsPort, TargetPort: intstr.FromString("metrics"), Protocol: corev1.ProtocolTCP},
			},
		},
	}
}

// buildPodDisruptionBudget keeps one receiver up during voluntary disruptions.
func buildPodDisruptionBudget(cp *callsv1alpha1.CallPolicy) *policyv1.PodDisruptionBudget {
	minAvailable := intstr.FromInt32(1)
	return &policyv1.PodDisruptionBudget{
		TypeMeta:   metav1.TypeMeta{APIVersion: "policy/v1", Kind: "PodDisruptionBudget"},
		ObjectMeta: objectMeta(cp, childName(cp)),
		Spec: policyv1.PodDisruptionBudgetSpec{
			MinAvailable: &minAvailable,
			Selector:     &metav1.LabelSelector{MatchLabels: selectorLabels(cp)},
		},
	}
}

// podInputs is what the receiver pods are made from besides the spec.
type podInputs struct {
	// credentialsHash is the hash of the credentials Secret ("" with
	// workload identity), caHash that of the CA bundle ("" without one),
	// stateHash that of the state store's credentials and CA ("" without
	// spec.state.redis): a change rolls the receivers.
	credentialsHash, caHash, stateHash string
	// callbackURL is status.receiver.callbackURL ("" when not exposed).
	callbackURL string
}

// buildDeployment returns the receiver Deployment.
func buildDeployment(cp *callsv1alpha1.CallPolicy, defaultImage string, in podInputs) *appsv1.Deployment {
	image := defaultImage
	if cp.Spec.Receiver.Image != "" {
		image = cp.Spec.Receiver.Image
	}
	res := callsv1alpha1.DefaultReceiverResources()
	if cp.Spec.Receiver.Resources != nil {
		res = *cp.Spec.Receiver.Resources.DeepCopy()
	}
	podLabels := selectorLabels(cp)
	podAnnotations := map[string]string{}
	volumes := []corev1.Volume{{
		Name:         "tmp",
		VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}},
	}}
	mounts := []corev1.VolumeMount{{Name: "tmp", MountPath: "/tmp"}}
	args := []string{
		"--policy-configmap", cp.Namespace + "/" + policyConfigMapName(cp),
		"--listen", fmt.Sprintf(":%d", receiverHTTPPort),
		"--metrics-listen", fmt.Sprintf(":%d", receiverMetricsPort),
	}
	if ref := cp.Spec.Bot.Credentials.SecretRef; ref != nil {
		// Files, never env: env leaks into crash dumps and `kubectl describe`.
		volumes = append(volumes, corev1.Volume{
			Name: credentialsVolume,
			VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName:  ref.Name,
				DefaultMode: ptr.To[int32](0o440),
			}},
		})
		mounts = append(mounts, corev1.VolumeMount{Name: credentialsVolume, MountPath: credentialsDir, ReadOnly: true})
		args = append(args, "--credentials-dir", credentialsDir)
		podAnnotations[credentialsHashAnnotation] = in.credentialsHash
	}
	if ref := cp.Spec.Graph.CABundle; ref != nil {
		volumes = append(volumes, corev1.Volume{
			Name: caVolume,
			VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: ref.Name},
				Items:                []corev1.KeyToPath{{Key: ref.Key, Path: caFile}},
			}},
		})
		mounts = append(mounts, corev1.VolumeMount{Name: caVolume, MountPath: caDir, ReadOnly: true})
		args = append(args, "--ca-file", caDir+"/"+caFile)
		podAnnotations[caHashAnnotation] = in.caHash
	}
	if needsStateKey(cp) {
		volumes = append(volumes, corev1.Volume{
			Name: stateVolume,
			VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
				Sources:     stateVolumeSources(cp),
				DefaultMode: ptr.To[int32](0o440),
			}},
		})
		mounts = append(mounts, corev1.VolumeMount{Name: stateVolume, MountPath: stateDir, ReadOnly: true})
		args = append(args, "--state-dir", stateDir)
		if redisSpec(cp) != nil {
			podAnnotations[stateHashAnnot] = in.stateHash
		}
	}
	if in.callbackURL != "" {
		// Announce answers calls with it and serves ConfigMap prompts
		// under it.
		args = append(args, "--callback-url", in.callbackURL)
	}
	if cp.Spec.Bot.Credentials.WorkloadIdentity != nil {
		podLabels[workloadIdentityUseLabel] = "true"
	}
	probe := func(path string, period int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromString("metrics"), Scheme: corev1.URISchemeHTTP,
			}},
			PeriodSeconds:    period,
			TimeoutSeconds:   2,
			FailureThreshold: 3,
			SuccessThreshold: 1,
		}
	}
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: objectMeta(cp, childName(cp)),
		Spec: appsv1.DeploymentSpec{
			Replicas: deploymentReplicas(cp),
			Selector: &metav1.LabelSelector{MatchLabels: selectorLabels(cp)},
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				// Never fewer ready receivers than asked for: a call
				// arriving mid-rollout must still be decided.
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxUnavailable: ptr.To(intstr.FromInt32(0)),
					MaxSurge:       ptr.To(intstr.FromInt32(1)),
				},
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels, Annotations: podAnnotations},
				Spec: corev1.PodSpec{
					ServiceAccountName:            childName(cp),
					AutomountServiceAccountToken:  ptr.To(true),
					TerminationGracePeriodSeconds: ptr.To[int64](30),
					NodeSelector:                  cp.Spec.Receiver.NodeSelector,
					Tolerations:                   cp.Spec.Receiver.Tolerations,
					PriorityClassName:             cp.Spec.Receiver.PriorityClassName,
					// One node down takes as few receivers as possible with
					// it; ScheduleAnyway: a one-node cluster still runs them all.
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew:           1,
						TopologyKey:       corev1.LabelHostname,
						WhenUnsatisfiable: corev1.ScheduleAnyway,
						LabelSelector:     &metav1.LabelSelector{MatchLabels: selectorLabels(cp)},
						// Spread each rollout's new pods too.
						MatchLabelKeys: []string{appsv1.DefaultDeploymentUniqueLabelKey},
					}},
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot:   ptr.To(true),
						RunAsUser:      ptr.To(nonRootUID),
						RunAsGroup:     ptr.To(nonRootUID),
						FSGroup:        ptr.To(nonRootUID),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					Containers: []corev1.Container{{
						Name:            receiverContainer,
						Image:           image,
						ImagePullPolicy: corev1.PullIfNotPresent,
						Command:         []string{"/receiver"},
						Args:            args,
						Ports: []corev1.ContainerPort{
							{Name: "http", ContainerPort: receiverHTTPPort, Protocol: corev1.ProtocolTCP},
							{Name: "metrics", ContainerPort: receiverMetricsPort, Protocol: corev1.ProtocolTCP},
						},
						LivenessProbe:  probe("/healthz", 10),
						ReadinessProbe: probe("/readyz", 2),
						Resources:      res,
						SecurityContext: &corev1.SecurityContext{
							RunAsNonRoot:             ptr.To(true),
							ReadOnlyRootFilesystem:   ptr.To(true),
							AllowPrivilegeEscalation: ptr.To(false),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
							SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
						},
						VolumeMounts: mounts,
					}},
					Volumes: volumes,
				},
			},
		},
	}
}

// deleteOwned deletes the child named childName(cp) of obj's type, if there is
// one and cp controls it: a child the spec no longer asks for.
func (r *CallPolicyReconciler) deleteOwned(ctx context.Context, cp *callsv1alpha1.CallPolicy, obj client.Object) error {
	kind := fmt.Sprintf("%T", obj)
	if gvk, err := r.GroupVersionKindFor(obj); err == nil {
		kind = gvk.Kind
	}
	err := r.Get(ctx, types.NamespacedName{Namespace: cp.Namespace, Name: childName(cp)}, obj)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("get %s: %w", kind, err)
	}
	if !metav1.IsControlledBy(obj, cp) {
		return nil
	}
	if err := r.Delete(ctx, obj); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("delete %s: %w", kind, err)
	}
	return nil
}
