/*
Copyright 2026 The callguard Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// The defaults of a CallPolicy, in one place. The +kubebuilder:default
// markers repeat them because markers cannot name Go constants;
// TestCRDDefaultsAreTheConstants checks every default of the generated CRD
// against these. The policy compiler (for YAML that never went through an
// API server), the operator and the receiver use these, never literals.
const (
	DefaultGraphEndpoint          = "https://graph.microsoft.com"
	DefaultGraphAPIVersion        = APIVersion("v1.0")
	DefaultAuthorityHost          = "https://login.microsoftonline.com/"
	DefaultOpenIDConfigURL        = "https://api.aps.skype.com/v1/.well-known/OpenIdConfiguration"
	DefaultMode                   = ModeEnforce
	DefaultDefaultAction          = ActionAllow
	DefaultRedirectTimeoutSeconds = int32(30)
	DefaultTimeZone               = "UTC"
	DefaultReceiverReplicas       = int32(2)
	DefaultCallbackPath           = "/api/calls"
	DefaultStateOnError           = StateOnErrorIgnore
	DefaultRedisKeyPrefix         = "callguard:"
	DefaultAnnounceMaxSeconds     = int32(30)

	// DefaultAutoscalingMinReplicas and DefaultTargetCPUUtilizationPercentage
	// apply when spec.receiver.autoscaling is given without them: two
	// receivers at least (one may be drained while the other decides), and
	// room above the target for the seconds a new receiver takes to start.
	DefaultAutoscalingMinReplicas         = int32(2)
	DefaultTargetCPUUtilizationPercentage = int32(70)
	// DefaultNetworkPolicyEnabled: every receiver gets a NetworkPolicy
	// unless spec.receiver.networkPolicy.enabled is false.
	DefaultNetworkPolicyEnabled = true
	// DefaultParentRefGroup and DefaultParentRefKind are the Gateway API's
	// defaults of an HTTPRoute parentRef (its markers, which the CRD repeats).
	DefaultParentRefGroup = "gateway.networking.k8s.io"
	DefaultParentRefKind  = "Gateway"

	// ReceiverPort and ReceiverMetricsPort are where the receiver listens for
	// Graph's callbacks and serves /metrics, /healthz and /readyz.
	ReceiverPort        = 8080
	ReceiverMetricsPort = 8081
)

// DefaultIssuers returns the accepted iss values of inbound tokens by
// default, a new slice each time.
func DefaultIssuers() []string {
	return []string{"https://api.botframework.com", "https://graph.microsoft.com"}
}

// DefaultReceiverResources returns the receiver container's resources when
// spec.receiver.resources is not given: requests cpu 500m, memory 128Mi,
// ephemeral-storage 64Mi; limits memory 256Mi, ephemeral-storage 256Mi, and
// no CPU limit. A receiver needs about 190-230 µs of CPU per notification
// (docs/benchmarks.md); a 500m CPU limit carried only 2,200-2,700
// notifications/s, with CFS throttling stalls beyond, below Graph's
// per-tenant ceiling of about 3,400/s. Without a CPU limit a receiver uses
// idle CPU of its node in bursts, and the 500m request is what the scheduler
// reserves and what a HorizontalPodAutoscaler's utilization is measured
// against. Memory stays limited: the receiver sets its Go heap's soft limit
// from it.
func DefaultReceiverResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:              resource.MustParse("500m"),
			corev1.ResourceMemory:           resource.MustParse("128Mi"),
			corev1.ResourceEphemeralStorage: resource.MustParse("64Mi"),
		},
		Limits: corev1.ResourceList{
			corev1.ResourceMemory:           resource.MustParse("256Mi"),
			corev1.ResourceEphemeralStorage: resource.MustParse("256Mi"),
		},
	}
}
