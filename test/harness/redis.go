package harness

import (
	"context"
	"fmt"
	"net"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

// The local cluster's Redis: Debian's redis-server packed by
// hack/local-cluster/images.sh, one pod without persistence (a new pod
// starts empty), a password from a Secret.
const (
	RedisImage      = "localhost/callguard/redis:local"
	RedisName       = "redis"
	RedisSecret     = "redis-auth"
	RedisSecretKey  = "password"
	RedisPort       = 6379
	redisPassword   = "local-cluster-redis-password"
	redisContainers = "redis"
)

// RedisObjects are the Secret, Deployment and Service of the Redis in ns.
func RedisObjects(ns string) []client.Object {
	labels := map[string]string{"app.kubernetes.io/name": RedisName}
	return []client.Object{
		&corev1.Secret{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: RedisSecret},
			StringData: map[string]string{RedisSecretKey: redisPassword},
		},
		&appsv1.Deployment{
			TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: RedisName, Labels: labels},
			Spec: appsv1.DeploymentSpec{
				Replicas: ptr.To(int32(1)),
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{
						SecurityContext: &corev1.PodSecurityContext{
							RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To(int64(65532)),
							SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
						},
						TerminationGracePeriodSeconds: ptr.To(int64(5)),
						Containers: []corev1.Container{{
							Name:            redisContainers,
							Image:           RedisImage,
							ImagePullPolicy: corev1.PullNever,
							// $(REDIS_PASSWORD) is expanded by the kubelet.
							Args: []string{"--port", fmt.Sprint(RedisPort), "--bind", "0.0.0.0", "--protected-mode", "no",
								"--save", "", "--appendonly", "no", "--dir", "/data", "--requirepass", "$(REDIS_PASSWORD)"},
							Env: []corev1.EnvVar{{Name: "REDIS_PASSWORD", ValueFrom: &corev1.EnvVarSource{
								SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: RedisSecret}, Key: RedisSecretKey}}}},
							Ports: []corev1.ContainerPort{{Name: "redis", ContainerPort: RedisPort}},
							ReadinessProbe: &corev1.Probe{
								ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(RedisPort)}},
								PeriodSeconds: 1,
							},
							SecurityContext: &corev1.SecurityContext{
								AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
								Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
							},
							VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
						}},
						Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
					},
				},
			},
		},
		&corev1.Service{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: RedisName, Labels: labels},
			Spec: corev1.ServiceSpec{
				Selector: labels,
				Ports:    []corev1.ServicePort{{Name: "redis", Port: RedisPort, TargetPort: intstr.FromString("redis")}},
			},
		},
	}
}

// DeployRedis applies RedisObjects, waits until its pod is ready, and
// returns the Service's address (its ClusterIP: pods have no DNS here).
func (c *Cluster) DeployRedis(ctx context.Context, ns string, timeout time.Duration) (string, error) {
	if err := c.Apply(ctx, RedisObjects(ns)...); err != nil {
		return "", err
	}
	if err := c.WaitRedis(ctx, ns, timeout); err != nil {
		return "", err
	}
	svc := &corev1.Service{}
	if err := c.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: RedisName}, svc); err != nil {
		return "", err
	}
	return net.JoinHostPort(svc.Spec.ClusterIP, fmt.Sprint(RedisPort)), nil
}

// WaitRedis waits until the Redis Deployment has a ready pod for its
// current generation.
func (c *Cluster) WaitRedis(ctx context.Context, ns string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	dep := &appsv1.Deployment{}
	for {
		err := c.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: RedisName}, dep)
		if err == nil && dep.Status.ObservedGeneration == dep.Generation && dep.Status.ReadyReplicas == 1 && dep.Status.UpdatedReplicas == 1 && dep.Status.Replicas == 1 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis in %s not ready after %s: %v (status %+v)", ns, timeout, err, dep.Status)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// RestartRedis deletes the Redis pod (the Deployment makes a new, empty
// one) and waits until a new pod is ready.
func (c *Cluster) RestartRedis(ctx context.Context, ns string, timeout time.Duration) error {
	sel := client.MatchingLabels{"app.kubernetes.io/name": RedisName}
	old := &corev1.PodList{}
	if err := c.Client.List(ctx, old, client.InNamespace(ns), sel); err != nil {
		return err
	}
	gone := map[string]bool{}
	for i := range old.Items {
		gone[old.Items[i].Name] = true
		if err := c.Client.Delete(ctx, &old.Items[i], client.GracePeriodSeconds(0)); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("delete redis pod %s: %w", old.Items[i].Name, err)
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		pods := &corev1.PodList{}
		if err := c.Client.List(ctx, pods, client.InNamespace(ns), sel); err == nil {
			for i := range pods.Items {
				if p := &pods.Items[i]; !gone[p.Name] && p.DeletionTimestamp == nil && podReady(p) {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no new redis pod ready in %s after %s", ns, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// UseRedis points cp's state store at the Redis of its namespace.
func UseRedis(cp *callsv1alpha1.CallPolicy, address string, onError callsv1alpha1.StateOnError) {
	cp.Spec.State = &callsv1alpha1.StateSpec{
		Redis: &callsv1alpha1.RedisSpec{
			Address:           address,
			PasswordSecretRef: &callsv1alpha1.SecretKeyReference{Name: RedisSecret, Key: RedisSecretKey},
		},
		OnError: onError,
	}
}
