package v1alpha1

// The names and labels of the children the operator makes for a CallPolicy,
// in one place for the operator, the plugin and the tests.

// ReceiverName is the name of a CallPolicy's receiver Deployment, Service,
// ServiceAccount, Role and RoleBinding, PodDisruptionBudget, NetworkPolicy,
// Ingress or HTTPRoute and HorizontalPodAutoscaler.
func ReceiverName(policy string) string { return policy + "-callguard" }

// PolicyConfigMapName is the name of the ConfigMap holding the manifest of a
// CallPolicy's resolved policy; its shards are named after it.
func PolicyConfigMapName(policy string) string { return ReceiverName(policy) + "-policy" }

// ReceiverSelector is the label selector of a CallPolicy's receiver pods.
func ReceiverSelector(policy string) map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":     "callguard-receiver",
		"app.kubernetes.io/instance": policy,
	}
}

// StateSecretName is the name of the Secret holding the per-policy key that
// hashes callers in the state store and signs announcement steps.
func StateSecretName(policy string) string { return ReceiverName(policy) + "-state" }

// StateSecretKey is the data key of StateSecretName's key (32 random bytes).
const StateSecretKey = "key"

// Annotations of the manifest ConfigMap (PolicyConfigMapName).
const (
	// PolicyHashAnnotation is the hash of the policy the manifest holds, as
	// in status.policyHash.
	PolicyHashAnnotation = "callguard.dev/policy-hash"
	// PolicyShardsAnnotation names the manifest's shards, so that the next
	// version knows from the metadata cache which shards the receivers may
	// still be reading.
	PolicyShardsAnnotation = "callguard.dev/policy-shards"
)
