package controllers

import (
	"context"
	"crypto/tls"
	"fmt"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
)

// Field indexes over CallPolicies, so that a changed ConfigMap or Secret
// finds the policies that use it without listing every policy.
const (
	indexListConfigMaps = ".spec.configMaps" // number lists, prompts and the CA bundles
	indexSecret         = ".spec.secrets"    // the bot's credentials and the state store's
)

// SetupWithManager registers the reconciler, its indexes and its watches.
func (r *CallPolicyReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &callsv1alpha1.CallPolicy{}, indexListConfigMaps, func(o client.Object) []string {
		cp := o.(*callsv1alpha1.CallPolicy)
		var names []string
		if ref := cp.Spec.Graph.CABundle; ref != nil {
			names = append(names, ref.Name)
		}
		if rs := redisSpec(cp); rs != nil && rs.TLS != nil && rs.TLS.CABundle != nil {
			names = append(names, rs.TLS.CABundle.Name)
		}
		for _, ref := range append(policy.ListRefs(&cp.Spec), policy.PromptRefs(&cp.Spec)...) {
			names = append(names, ref.Name)
		}
		slices.Sort(names)
		return slices.Compact(names)
	}); err != nil {
		return fmt.Errorf("index number list ConfigMaps: %w", err)
	}
	if err := idx.IndexField(ctx, &callsv1alpha1.CallPolicy{}, indexSecret, func(o client.Object) []string {
		cp := o.(*callsv1alpha1.CallPolicy)
		var names []string
		if ref := cp.Spec.Bot.Credentials.SecretRef; ref != nil {
			names = append(names, ref.Name)
		}
		if rs := redisSpec(cp); rs != nil {
			for _, ref := range []*callsv1alpha1.SecretKeyReference{rs.UsernameSecretRef, rs.PasswordSecretRef} {
				if ref != nil {
					names = append(names, ref.Name)
				}
			}
		}
		slices.Sort(names)
		return slices.Compact(names)
	}); err != nil {
		return fmt.Errorf("index Secrets: %w", err)
	}

	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	// The children other controllers write status to (the autoscaler, ingress
	// controllers, Gateways) wake the reconciler only when someone changes
	// what it applies: their spec, labels or annotations.
	applied := builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{},
		predicate.LabelChangedPredicate{}, predicate.AnnotationChangedPredicate{}))
	b := ctrl.NewControllerManagedBy(mgr).
		For(&callsv1alpha1.CallPolicy{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&rbacv1.Role{}).
		Owns(&rbacv1.RoleBinding{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		Owns(&networkingv1.NetworkPolicy{}, applied).
		Owns(&autoscalingv2.HorizontalPodAutoscaler{}, applied).
		Owns(&networkingv1.Ingress{}, applied).
		// Secrets and ConfigMaps are watched as metadata only: a change
		// bumps the resourceVersion, which is all a watch needs, and the
		// reconciler reads the few it uses through APIReader. Their data,
		// often large and often secret, never enters the cache.
		Owns(&corev1.ConfigMap{}, builder.OnlyMetadata).
		// The state key's Secret: one deleted is made again.
		Owns(&corev1.Secret{}, builder.OnlyMetadata).
		WatchesMetadata(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(r.policiesUsing(indexListConfigMaps))).
		WatchesMetadata(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.policiesUsing(indexSecret))).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(r.MaxConcurrentReconciles, 1)})
	if r.GatewayAPI {
		// Only where the CRD is: a watch on a kind the API server does not
		// serve would keep the cache from ever syncing.
		b = b.Owns(&gatewayv1.HTTPRoute{}, applied)
	}
	return b.Complete(r)
}

// CacheOptions is the manager's cache: the given namespaces (all when none),
// children only by their managed-by label, and no managedFields, which
// nothing here reads and which are often the larger part of the metadata.
// gatewayAPI (GatewayAPIInstalled) adds HTTPRoutes; the cache cannot be made
// with a kind the API server does not serve.
func CacheOptions(namespaces []string, gatewayAPI bool) cache.Options {
	children := cache.ByObject{Label: labels.SelectorFromSet(labels.Set{managedByLabel: managedBy})}
	opts := cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&appsv1.Deployment{}:                     children,
			&corev1.Service{}:                        children,
			&corev1.ServiceAccount{}:                 children,
			&rbacv1.Role{}:                           children,
			&rbacv1.RoleBinding{}:                    children,
			&policyv1.PodDisruptionBudget{}:          children,
			&networkingv1.NetworkPolicy{}:            children,
			&networkingv1.Ingress{}:                  children,
			&autoscalingv2.HorizontalPodAutoscaler{}: children,
		},
	}
	if gatewayAPI {
		opts.ByObject[&gatewayv1.HTTPRoute{}] = children
	}
	if len(namespaces) > 0 {
		opts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range namespaces {
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	return opts
}

// MetricsOptions serves the manager's metrics over https to callers the API
// server authenticates (TokenReview) and authorizes for GET /metrics
// (SubjectAccessReview; the metrics-reader ClusterRole grants it), as
// kubebuilder scaffolds. certDir holds tls.crt and tls.key; when empty the
// server makes a self-signed certificate at start.
func MetricsOptions(bindAddress, certDir string) metricsserver.Options {
	opts := metricsserver.Options{
		BindAddress:    bindAddress,
		SecureServing:  true,
		FilterProvider: filters.WithAuthenticationAndAuthorization,
		// HTTP/1.1 only: HTTP/2's rapid-reset and stream floods
		// (CVE-2023-44487, CVE-2023-39325) need no credentials to cost us.
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
	}
	if certDir != "" {
		opts.CertDir = certDir
	}
	return opts
}

// policiesUsing maps a ConfigMap or Secret to the policies in its namespace
// whose index names it.
func (r *CallPolicyReconciler) policiesUsing(index string) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		var list callsv1alpha1.CallPolicyList
		if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{index: o.GetName()}); err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "list CallPolicies for watched object", "index", index, "name", o.GetName())
			return nil
		}
		reqs := make([]reconcile.Request, 0, len(list.Items))
		for i := range list.Items {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
		return reqs
	}
}
