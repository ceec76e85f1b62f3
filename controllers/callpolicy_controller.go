// Package controllers holds the CallPolicy reconciler: it compiles each policy
// and deploys and configures the receivers that enforce it.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
)

// FieldOwner is the server-side apply field manager of every child.
const FieldOwner = "callguard-manager"

// conflictRequeue is how soon a reconcile whose status write lost a race
// runs again.
const conflictRequeue = 100 * time.Millisecond

// CallPolicyReconciler reconciles CallPolicy objects.
type CallPolicyReconciler struct {
	client.Client
	// APIReader reads the Secrets and ConfigMaps a policy refers to straight
	// from the API server: the cache holds only their metadata, so the
	// manager neither keeps every Secret of the cluster in memory nor grows
	// with them (SetupWithManager defaults it to the manager's). What it
	// read is reused while unchanged (sources.go).
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	// ReceiverImage is used when a policy sets no spec.receiver.image.
	ReceiverImage string
	// MaxConcurrentReconciles bounds how many policies reconcile at once.
	MaxConcurrentReconciles int
	// GatewayAPI says whether the cluster serves HTTPRoutes, decided once at
	// start (GatewayAPIInstalled): HTTPRoutes are watched only then, and a
	// policy asking for one without them is Stalled (expose.go).
	GatewayAPI bool
	// MetricsScraperNamespaces may reach the receivers' metrics port when a
	// policy names no spec.receiver.networkPolicy.metricsFrom (networkpolicy.go).
	MetricsScraperNamespaces []string
	// CheckGraphAccess gets an app token with each policy's credentials and
	// sets GraphAccess from its roles (graphaccess.go); cmd/manager turns it
	// on. Off, policies have no GraphAccess condition.
	CheckGraphAccess bool
	// apiServer keeps the API server's addresses for the NetworkPolicies.
	apiServer apiServerCache

	writtenMu sync.Mutex
	// written is what was last written for each policy (applied.go).
	written map[types.NamespacedName]*written
}

// stalledError marks a spec that cannot be made to work until the user
// changes something; it is reported, not retried with backoff.
type stalledError struct {
	reason string
	// problems each name the field path they are about; a policy that does
	// not compile may have thousands.
	problems []string
}

func (e *stalledError) Error() string {
	return e.reason + ": " + e.message(maxConditionProblems, maxConditionMessage)
}

// message is the first problems, bounded for a condition or an event.
func (e *stalledError) message(maxItems, maxBytes int) string {
	return summarizeProblems(e.problems, maxItems, maxBytes)
}

func stalled(reason, format string, args ...any) error {
	return &stalledError{reason: reason, problems: []string{fmt.Sprintf(format, args...)}}
}

// fieldProblems renders compiler findings as "path: message" lines.
func fieldProblems(errs []policy.FieldError) []string {
	out := make([]string, len(errs))
	for i, fe := range errs {
		out[i] = fe.Error()
	}
	return out
}

// +kubebuilder:rbac:groups=calls.callguard.dev,resources=callpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=calls.callguard.dev,resources=callpolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=services;serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings one CallPolicy's children to its spec and reports status.
func (r *CallPolicyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	log := logf.FromContext(ctx)
	cp := &callsv1alpha1.CallPolicy{}
	if err := r.Get(ctx, req.NamespacedName, cp); err != nil {
		if apierrors.IsNotFound(err) {
			forgetConditions(req.NamespacedName)
			r.forgetWritten(req.NamespacedName)
			graphAccessChecks.forget(req.NamespacedName)
			stateChecks.forget(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !cp.DeletionTimestamp.IsZero() {
		// Children go with their owner through garbage collection.
		forgetConditions(req.NamespacedName)
		r.forgetWritten(req.NamespacedName)
		graphAccessChecks.forget(req.NamespacedName)
		stateChecks.forget(req.NamespacedName)
		return ctrl.Result{}, nil
	}

	base := cp.DeepCopy()
	st := &reconcileState{}
	defer func() {
		r.summarize(cp, st, retErr)
		recordConditions(cp)
		if equality.Semantic.DeepEqual(base.Status, cp.Status) {
			return
		}
		// Optimistic locking: a status computed from a stale cached copy
		// would flip conditions back and forth (and bump their transition
		// times); on conflict the next reconcile reads a fresh copy.
		err := r.Status().Patch(ctx, cp, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{}))
		switch {
		case apierrors.IsConflict(err):
			result = ctrl.Result{RequeueAfter: conflictRequeue}
		case err != nil:
			retErr = errors.Join(retErr, fmt.Errorf("patch status: %w", err))
		}
	}()

	steps := []func(context.Context, *callsv1alpha1.CallPolicy, *reconcileState) error{
		r.reconcileSources,
		// Before anything can stall: StateShared is about the store alone.
		r.reconcileStateShared,
		r.reconcilePolicy,
		r.reconcileRBAC,
		// After the ServiceAccount, whose token workload identity exchanges.
		r.reconcileGraphAccess,
		r.reconcileStaleShards,
		r.reconcileService,
		// Before the pods: they start with their traffic limited.
		r.reconcileNetworkPolicy,
		// Before the pods, which mount it.
		r.reconcileStateSecret,
		r.reconcileDeployment,
		r.reconcileAutoscaling,
		r.reconcilePodDisruptionBudget,
		// Last: a policy whose HTTPRoute cannot be made still gets its
		// receivers.
		r.reconcileExpose,
	}
	for _, step := range steps {
		if err := step(ctx, cp, st); err != nil {
			var se *stalledError
			if errors.As(err, &se) {
				log.Info("policy stalled", "reason", se.reason, "problems", len(se.problems),
					"message", se.message(maxConditionProblems, maxConditionMessage))
				// Nothing to retry until the user changes the spec or a
				// watched source; watches bring us back.
				return ctrl.Result{RequeueAfter: st.requeueAfter}, nil
			}
			return ctrl.Result{}, err
		}
	}
	// The GraphAccess check's next run, if it is on.
	return ctrl.Result{RequeueAfter: st.requeueAfter}, nil
}

// reconcileState carries what the steps learn to the next steps and to the
// status summary.
type reconcileState struct {
	stalled         *stalledError
	credentialsHash string
	caHash          string
	lists           map[policy.ListRef]string
	prompts         map[policy.ListRef][]byte
	// redis is what spec.state.redis refers to, stateCheck the last check
	// of the store (nil keeps the status' StateShared).
	redis      *redisSource
	stateCheck *stateCheck
	// publishedKey identifies the inputs read; published is the version
	// written, or, read before the lists, the last one if they are unchanged.
	publishedKey string
	published    *published
	policyHash   string
	rules        int
	// sourcesRead are the Secrets and ConfigMaps read (sources.go).
	sourcesRead map[childKey]bool
	deployment  *appsv1.Deployment
	// exposed is status.receiver.callbackURL once reconcileExpose has run
	// ("" when not exposed); nil keeps the status' value.
	exposed *string
	// credentials are the credentials Secret's data, caPEM the PEM of
	// spec.graph.caBundle, for the GraphAccess check.
	credentials map[string][]byte
	caPEM       []byte
	// graphAccess is the GraphAccess condition once checked (nil keeps the
	// status' value); requeueAfter is when the check is next due.
	graphAccess  *graphAccessResult
	requeueAfter time.Duration
}

// reconcileSources reads the credentials Secret and the number lists.
func (r *CallPolicyReconciler) reconcileSources(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState) error {
	if ref := cp.Spec.Bot.Credentials.SecretRef; ref != nil {
		secret := &corev1.Secret{}
		err := r.readSource(ctx, cp, st, ref.Name, secret)
		if apierrors.IsNotFound(err) {
			return st.stall(stalled(ReasonSecretNotFound, "spec.bot.credentials.secretRef.name: Secret %q not found in namespace %q", ref.Name, cp.Namespace))
		}
		if err != nil {
			return fmt.Errorf("get credentials Secret %q: %w", ref.Name, err)
		}
		if len(secret.Data["client-secret"]) == 0 && (len(secret.Data["tls.crt"]) == 0 || len(secret.Data["tls.key"]) == 0) {
			return st.stall(stalled(ReasonInvalidSecret, "spec.bot.credentials.secretRef.name: Secret %q needs key client-secret, or tls.crt and tls.key", ref.Name))
		}
		st.credentialsHash = hashData(secret.Data)
		st.credentials = secret.Data
	}

	if ref := cp.Spec.Graph.CABundle; ref != nil {
		pem, err := r.configMapKey(ctx, cp, st, "spec.graph.caBundle", ref.Name, ref.Key, false)
		if err != nil {
			return err
		}
		if !strings.Contains(pem, "-----BEGIN CERTIFICATE-----") {
			return st.stall(stalled(ReasonConfigMapNotFound, "spec.graph.caBundle: ConfigMap %q has no PEM certificate under key %q", ref.Name, ref.Key))
		}
		st.caHash = hashData(map[string][]byte{ref.Key: []byte(pem)})
		st.caPEM = []byte(pem)
	}
	if err := r.readRedisSources(ctx, cp, st); err != nil {
		return err
	}

	if key, ok := r.publishedKey(ctx, cp); ok {
		if st.published = r.lastPublished(client.ObjectKeyFromObject(cp), key); st.published != nil {
			return nil
		}
		st.publishedKey = key
	}
	st.lists = map[policy.ListRef]string{}
	for _, ref := range policy.ListRefs(&cp.Spec) {
		text, err := r.configMapKey(ctx, cp, st, "numberLists", ref.Name, ref.Key, true)
		if err != nil {
			return err
		}
		st.lists[ref] = text
	}
	st.prompts = map[policy.ListRef][]byte{}
	for _, ref := range policy.PromptRefs(&cp.Spec) {
		b, err := r.promptBytes(ctx, cp, st, ref)
		if err != nil {
			return err
		}
		st.prompts[ref] = b
	}
	r.keepSources(cp, st)
	return nil
}

// configMapKey reads one key (data or binaryData) of a ConfigMap in the
// policy's namespace, a number list (list) through policy.ListText, which
// gunzips binaryData keys ending in .gz; a missing ConfigMap or key, or a
// list that does not decompress, stalls the policy, naming the field that
// refers to it.
func (r *CallPolicyReconciler) configMapKey(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState, field, name, key string, list bool) (string, error) {
	cm, err := r.configMap(ctx, cp, st, field, name)
	if err != nil {
		return "", err
	}
	if !list {
		if text, ok := cm.Data[key]; ok {
			return text, nil
		}
		if b, ok := cm.BinaryData[key]; ok {
			return string(b), nil
		}
	} else if text, ok, err := policy.ListText(name, key, cm.Data, cm.BinaryData); err != nil {
		return "", st.stall(stalled(ReasonInvalidPolicy, "%s: %v", field, err))
	} else if ok {
		return text, nil
	}
	return "", st.stall(stalled(ReasonConfigMapNotFound, "%s: ConfigMap %q has no key %q", field, name, key))
}

// configMap reads a ConfigMap in the policy's namespace; a missing one
// stalls the policy, naming the field that refers to it.
func (r *CallPolicyReconciler) configMap(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState, field, name string) (*corev1.ConfigMap, error) {
	cm := &corev1.ConfigMap{}
	err := r.readSource(ctx, cp, st, name, cm)
	if apierrors.IsNotFound(err) {
		return nil, st.stall(stalled(ReasonConfigMapNotFound, "%s: ConfigMap %q not found in namespace %q", field, name, cp.Namespace))
	}
	if err != nil {
		return nil, fmt.Errorf("get ConfigMap %q for %s: %w", name, field, err)
	}
	return cm, nil
}

// promptBytes reads an announcement prompt: a binaryData key of a
// ConfigMap, named in the error by the first rule that refers to it.
func (r *CallPolicyReconciler) promptBytes(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState, ref policy.ListRef) ([]byte, error) {
	field := promptField(cp, ref)
	cm, err := r.configMap(ctx, cp, st, field, ref.Name)
	if err != nil {
		return nil, err
	}
	if b, ok := cm.BinaryData[ref.Key]; ok {
		return b, nil
	}
	if _, ok := cm.Data[ref.Key]; ok {
		return nil, st.stall(stalled(ReasonInvalidPolicy, "%s: ConfigMap %q has key %q in data: a prompt is a WAV file in binaryData (kubectl create configmap --from-file puts it there)", field, ref.Name, ref.Key))
	}
	return nil, st.stall(stalled(ReasonConfigMapNotFound, "%s: ConfigMap %q has no key %q", field, ref.Name, ref.Key))
}

// promptField is the path of the first announce prompt naming ref.
func promptField(cp *callsv1alpha1.CallPolicy, ref policy.ListRef) string {
	for i, rule := range cp.Spec.Rules {
		if rule.Announce != nil {
			if c := rule.Announce.Prompt.ConfigMapKeyRef; c != nil && c.Name == ref.Name && c.Key == ref.Key {
				return fmt.Sprintf("spec.rules[%d].announce.prompt.configMapKeyRef", i)
			}
		}
	}
	return "spec.rules"
}

func (r *CallPolicyReconciler) reconcileRBAC(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState) error {
	for _, obj := range []client.Object{buildServiceAccount(cp), BuildRole(cp, st.published.shardNames()), BuildRoleBinding(cp)} {
		if err := r.apply(ctx, cp, obj); err != nil {
			return err
		}
	}
	return nil
}

func (r *CallPolicyReconciler) reconcileService(ctx context.Context, cp *callsv1alpha1.CallPolicy, _ *reconcileState) error {
	return r.apply(ctx, cp, buildService(cp))
}

func (r *CallPolicyReconciler) reconcileDeployment(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState) error {
	if cp.Spec.Receiver.Image == "" && r.ReceiverImage == "" {
		return st.stall(stalled(ReasonNoReceiverImage, "spec.receiver.image is empty and the operator has no --receiver-image"))
	}
	in := podInputs{credentialsHash: st.credentialsHash, caHash: st.caHash, callbackURL: callbackURL(cp)}
	if st.redis != nil {
		in.stateHash = st.redis.hash
	}
	dep := buildDeployment(cp, r.ReceiverImage, in)
	if cp.Spec.Receiver.Autoscaling != nil {
		// dep has no spec.replicas: the autoscaler's (autoscaling.go).
		if err := r.handOverReplicas(ctx, cp, dep); err != nil {
			return err
		}
	}
	if err := r.apply(ctx, cp, dep); err != nil {
		return err
	}
	live := &appsv1.Deployment{}
	err := r.Get(ctx, client.ObjectKeyFromObject(dep), live)
	if apierrors.IsNotFound(err) {
		// Just created and not in the cache yet: its watch event brings
		// us back; until then the receivers count as rolling out.
		return nil
	}
	if err != nil {
		return fmt.Errorf("get Deployment: %w", err)
	}
	st.deployment = live
	return nil
}

func (r *CallPolicyReconciler) reconcilePodDisruptionBudget(ctx context.Context, cp *callsv1alpha1.CallPolicy, _ *reconcileState) error {
	if floorReplicas(cp) > 1 {
		return r.apply(ctx, cp, buildPodDisruptionBudget(cp))
	}
	// One replica cannot satisfy minAvailable 1 during a drain.
	return r.deleteOwned(ctx, cp, &policyv1.PodDisruptionBudget{})
}

// apply server-side-applies a child built by a pure builder, owned by cp.
// Forcing ownership corrects drift: fields someone else changed come back.
func (r *CallPolicyReconciler) apply(ctx context.Context, cp *callsv1alpha1.CallPolicy, obj client.Object) error {
	if err := controllerutil.SetControllerReference(cp, obj, r.Scheme); err != nil {
		return fmt.Errorf("set owner of %T %s: %w", obj, obj.GetName(), err)
	}
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return fmt.Errorf("convert %T %s: %w", obj, obj.GetName(), err)
	}
	// Typed objects carry empty status and creationTimestamp; applying them
	// would claim fields the controller does not own.
	delete(u, "status")
	unstructured.RemoveNestedField(u, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u, "spec", "template", "metadata", "creationTimestamp")
	sent, err := digest(u)
	if err != nil {
		return fmt.Errorf("digest %T %s: %w", obj, obj.GetName(), err)
	}
	out := &unstructured.Unstructured{Object: u}
	owner := client.ObjectKeyFromObject(cp)
	if r.unchanged(ctx, owner, out, sent) {
		return nil
	}
	if err := r.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(out), client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("apply %s %s: %w", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName(), err)
	}
	// out now holds what the API server answered.
	r.rememberApplied(owner, out, sent)
	return nil
}

func (st *reconcileState) stall(err error) error {
	var se *stalledError
	if errors.As(err, &se) {
		st.stalled = se
	}
	return err
}

// Condition types and reasons (kstatus-compatible: Reconciling and Stalled are
// present only while true).
const (
	ConditionReady       = "Ready"
	ConditionReconciling = "Reconciling"
	ConditionStalled     = "Stalled"
	// ConditionGraphAccess is the operator's check that the bot gets Graph
	// tokens carrying the permissions its policy needs (graphaccess.go).
	ConditionGraphAccess = "GraphAccess"

	ReasonReceiversAvailable = "ReceiversAvailable"
	ReasonProgressing        = "Progressing"
	ReasonReconcileError     = "ReconcileError"
	ReasonSecretNotFound     = "SecretNotFound"
	ReasonInvalidSecret      = "InvalidSecret"
	ReasonConfigMapNotFound  = "ConfigMapNotFound"
	ReasonInvalidPolicy      = "InvalidPolicy"
	ReasonPolicyTooLarge     = "PolicyTooLarge"
	ReasonNoReceiverImage    = "NoReceiverImage"

	// GraphAccess reasons; the False ones are also Ready's and Stalled's.
	ReasonPermissionsGranted = "PermissionsGranted"
	ReasonTokenRequestFailed = "TokenRequestFailed"
	ReasonPermissionsMissing = "PermissionsMissing"
	ReasonCheckFailed        = "CheckFailed"
)

// summarize turns what the reconcile learned into status; it never writes.
func (r *CallPolicyReconciler) summarize(cp *callsv1alpha1.CallPolicy, st *reconcileState, err error) {
	gen := cp.Generation
	set := func(t string, s metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&cp.Status.Conditions, metav1.Condition{
			Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen,
		})
	}
	cp.Status.ObservedGeneration = gen
	cp.Status.Receiver.Service = childName(cp)
	cp.Status.Receiver.CallbackPath = callbackPath(cp)
	if st.exposed != nil {
		cp.Status.Receiver.CallbackURL = *st.exposed
	}
	if st.policyHash != "" {
		cp.Status.PolicyHash = st.policyHash
		cp.Status.Rules = int32(st.rules)
	}
	if st.deployment != nil {
		cp.Status.Receiver.Replicas = st.deployment.Status.Replicas
		cp.Status.Receiver.ReadyReplicas = st.deployment.Status.ReadyReplicas
	}

	if ga := st.graphAccess; ga != nil {
		// A definite refusal is also in st.stalled: Ready is False and
		// Stalled True below. Unknown leaves Ready to the rest.
		// Bounded: the message quotes what the authority answered.
		set(ConditionGraphAccess, ga.status, ga.reason, summarizeProblems([]string{ga.message}, 1, maxConditionMessage))
	}

	setStateShared(cp, st, set, func(t string) { meta.RemoveStatusCondition(&cp.Status.Conditions, t) })

	// While autoscaling, as many as the autoscaler last asked for.
	want := wantReplicas(cp, st.deployment)
	switch {
	case st.stalled != nil:
		msg := st.stalled.message(maxConditionProblems, maxConditionMessage)
		prev := meta.FindStatusCondition(cp.Status.Conditions, ConditionStalled)
		if prev == nil || prev.Reason != st.stalled.reason || prev.Message != msg || prev.ObservedGeneration != gen {
			r.Recorder.Eventf(cp, nil, corev1.EventTypeWarning, st.stalled.reason, "Reconcile", "%s",
				st.stalled.message(maxEventProblems, maxEventNote))
		}
		set(ConditionStalled, metav1.ConditionTrue, st.stalled.reason, msg)
		set(ConditionReady, metav1.ConditionFalse, st.stalled.reason, msg)
		meta.RemoveStatusCondition(&cp.Status.Conditions, ConditionReconciling)
	case err != nil:
		// A transient error: retried with backoff, so still reconciling.
		// Bounded too: an API server's validation error lists every field.
		msg := summarizeProblems([]string{err.Error()}, 1, maxConditionMessage)
		set(ConditionReconciling, metav1.ConditionTrue, ReasonReconcileError, msg)
		set(ConditionReady, metav1.ConditionFalse, ReasonReconcileError, msg)
		meta.RemoveStatusCondition(&cp.Status.Conditions, ConditionStalled)
	case deploymentAvailable(st.deployment, want):
		set(ConditionReady, metav1.ConditionTrue, ReasonReceiversAvailable,
			fmt.Sprintf("policy %s live on %d/%d receivers", policy.ShortHash(st.policyHash), st.deployment.Status.AvailableReplicas, want))
		meta.RemoveStatusCondition(&cp.Status.Conditions, ConditionReconciling)
		meta.RemoveStatusCondition(&cp.Status.Conditions, ConditionStalled)
	default:
		msg := "waiting for the receiver Deployment to roll out"
		if st.deployment != nil {
			msg = fmt.Sprintf("%d/%d receivers updated and available", min(st.deployment.Status.UpdatedReplicas, st.deployment.Status.AvailableReplicas), want)
		}
		set(ConditionReconciling, metav1.ConditionTrue, ReasonProgressing, msg)
		set(ConditionReady, metav1.ConditionFalse, ReasonProgressing, msg)
		meta.RemoveStatusCondition(&cp.Status.Conditions, ConditionStalled)
	}
}

// deploymentAvailable reports whether the Deployment controller has seen the
// current template and every wanted replica is updated and available.
func deploymentAvailable(d *appsv1.Deployment, want int32) bool {
	if d == nil || d.Status.ObservedGeneration < d.Generation {
		return false
	}
	return d.Status.UpdatedReplicas >= want && d.Status.AvailableReplicas >= want && d.Status.Replicas == d.Status.UpdatedReplicas
}
