package controllers

// spec.state: the per-policy state key (the Secret NAME-callguard-state), the
// state store's credentials the receivers mount, and the StateShared
// condition.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create

const (
	// ConditionStateShared says whether the receivers share repeat counts
	// and temporary blocks.
	ConditionStateShared = "StateShared"

	ReasonPerReplica          = "PerReplica"
	ReasonStoreReachable      = "StoreReachable"
	ReasonStoreUnreachable    = "StoreUnreachable"
	ReasonStateSecretConflict = "StateSecretConflict"

	// stateDir is where the receivers read the state key and the store's
	// credentials (the receiver's --state-dir).
	stateDir        = "/var/run/callguard/state"
	stateVolume     = "state"
	stateHashAnnot  = "callguard.dev/state-hash"
	stateKeyBytes   = 32
	redisUserFile   = "redis-username"
	redisPassFile   = "redis-password"
	redisCAFile     = "redis-ca.crt"
	stateKeyFile    = callsv1alpha1.StateSecretKey
	stateCheckLimit = 2 * time.Second
)

// How often the store's reachability is checked again when nothing it
// depends on changed; variables for the tests.
var (
	stateRecheckUnreachable = 5 * time.Minute
	stateRecheckReachable   = 30 * time.Minute
)

// stateful reports whether the policy counts calls or blocks callers.
func stateful(cp *callsv1alpha1.CallPolicy) bool {
	for _, r := range cp.Spec.Rules {
		if r.BlockFor != nil || (r.Match.Callers != nil && r.Match.Callers.Repeat != nil) {
			return true
		}
	}
	return false
}

func announces(cp *callsv1alpha1.CallPolicy) bool {
	for _, r := range cp.Spec.Rules {
		if r.Action == callsv1alpha1.ActionAnnounce {
			return true
		}
	}
	return false
}

func redisSpec(cp *callsv1alpha1.CallPolicy) *callsv1alpha1.RedisSpec {
	if cp.Spec.State == nil {
		return nil
	}
	return cp.Spec.State.Redis
}

// needsStateKey reports whether the receivers need the policy's state key:
// to hash callers in the store, and to sign the announcement steps that any
// replica may take.
func needsStateKey(cp *callsv1alpha1.CallPolicy) bool {
	return stateful(cp) || announces(cp) || redisSpec(cp) != nil
}

// maxReceivers is the most receivers the policy may run at once.
func maxReceivers(cp *callsv1alpha1.CallPolicy) int32 {
	if a := cp.Spec.Receiver.Autoscaling; a != nil {
		return a.MaxReplicas
	}
	return replicas(cp)
}

// redisSource is what the operator read for spec.state.redis.
type redisSource struct {
	username, password string
	caPEM              []byte
	// hash rolls the receivers when the credentials or the CA change.
	hash string
}

// readRedisSources reads the store's credentials and CA bundle; a missing
// Secret, ConfigMap or key stalls the policy naming the field.
func (r *CallPolicyReconciler) readRedisSources(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState) error {
	rs := redisSpec(cp)
	if rs == nil {
		return nil
	}
	src := &redisSource{}
	data := map[string][]byte{}
	if ref := rs.UsernameSecretRef; ref != nil {
		v, err := r.secretKey(ctx, cp, st, "spec.state.redis.usernameSecretRef", ref)
		if err != nil {
			return err
		}
		src.username, data[redisUserFile] = string(v), v
	}
	if ref := rs.PasswordSecretRef; ref != nil {
		v, err := r.secretKey(ctx, cp, st, "spec.state.redis.passwordSecretRef", ref)
		if err != nil {
			return err
		}
		src.password, data[redisPassFile] = string(v), v
	}
	if rs.TLS != nil && rs.TLS.CABundle != nil {
		ref := rs.TLS.CABundle
		pem, err := r.configMapKey(ctx, cp, st, "spec.state.redis.tls.caBundle", ref.Name, ref.Key, false)
		if err != nil {
			return err
		}
		if !strings.Contains(pem, "-----BEGIN CERTIFICATE-----") {
			return st.stall(stalled(ReasonConfigMapNotFound, "spec.state.redis.tls.caBundle: ConfigMap %q has no PEM certificate under key %q", ref.Name, ref.Key))
		}
		src.caPEM = []byte(pem)
		data[redisCAFile] = src.caPEM
	}
	src.hash = hashData(data)
	st.redis = src
	return nil
}

// secretKey reads one key of a Secret in the policy's namespace.
func (r *CallPolicyReconciler) secretKey(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState, field string, ref *callsv1alpha1.SecretKeyReference) ([]byte, error) {
	secret := &corev1.Secret{}
	err := r.readSource(ctx, cp, st, ref.Name, secret)
	if apierrors.IsNotFound(err) {
		return nil, st.stall(stalled(ReasonSecretNotFound, "%s.name: Secret %q not found in namespace %q", field, ref.Name, cp.Namespace))
	}
	if err != nil {
		return nil, fmt.Errorf("get Secret %q for %s: %w", ref.Name, field, err)
	}
	v, ok := secret.Data[ref.Key]
	if !ok {
		return nil, st.stall(stalled(ReasonInvalidSecret, "%s.key: Secret %q has no key %q", field, ref.Name, ref.Key))
	}
	return v, nil
}

// reconcileStateSecret makes the Secret holding the policy's state key once.
// It is never rewritten: a new key would reset every count and block and
// invalidate the announcement steps in flight. The Secret stays when the
// policy stops needing it, so that needing it again brings the same key; it
// goes with the policy.
func (r *CallPolicyReconciler) reconcileStateSecret(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState) error {
	if !needsStateKey(cp) {
		return nil
	}
	name := callsv1alpha1.StateSecretName(cp.Name)
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	err := r.Get(ctx, types.NamespacedName{Namespace: cp.Namespace, Name: name}, m)
	if err == nil {
		if !metav1.IsControlledBy(m, cp) {
			return st.stall(stalled(ReasonStateSecretConflict, "Secret %q, which holds the policy's state key, exists and is not this policy's: delete or rename it", name))
		}
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("get state Secret: %w", err)
	}
	key := make([]byte, stateKeyBytes)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("make state key: %w", err)
	}
	secret := buildStateSecret(cp, key)
	if err := controllerutil.SetControllerReference(cp, secret, r.Scheme); err != nil {
		return fmt.Errorf("set owner of state Secret: %w", err)
	}
	// The cache may not have seen the one made a moment ago; that one stays.
	if err := r.Create(ctx, secret); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create state Secret: %w", err)
	}
	return nil
}

// buildStateSecret returns the state key's Secret: immutable, as the key
// must never change under the receivers.
func buildStateSecret(cp *callsv1alpha1.CallPolicy, key []byte) *corev1.Secret {
	return &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: objectMeta(cp, callsv1alpha1.StateSecretName(cp.Name)),
		Type:       corev1.SecretTypeOpaque,
		Immutable:  ptr.To(true),
		Data:       map[string][]byte{callsv1alpha1.StateSecretKey: key},
	}
}

// stateVolumeSources are the files of the receivers' state dir: the state
// key and the store's credentials and CA.
func stateVolumeSources(cp *callsv1alpha1.CallPolicy) []corev1.VolumeProjection {
	secret := func(name, key, path string) corev1.VolumeProjection {
		return corev1.VolumeProjection{Secret: &corev1.SecretProjection{
			LocalObjectReference: corev1.LocalObjectReference{Name: name},
			Items:                []corev1.KeyToPath{{Key: key, Path: path}},
		}}
	}
	out := []corev1.VolumeProjection{secret(callsv1alpha1.StateSecretName(cp.Name), callsv1alpha1.StateSecretKey, stateKeyFile)}
	rs := redisSpec(cp)
	if rs == nil {
		return out
	}
	if ref := rs.UsernameSecretRef; ref != nil {
		out = append(out, secret(ref.Name, ref.Key, redisUserFile))
	}
	if ref := rs.PasswordSecretRef; ref != nil {
		out = append(out, secret(ref.Name, ref.Key, redisPassFile))
	}
	if rs.TLS != nil && rs.TLS.CABundle != nil {
		out = append(out, corev1.VolumeProjection{ConfigMap: &corev1.ConfigMapProjection{
			LocalObjectReference: corev1.LocalObjectReference{Name: rs.TLS.CABundle.Name},
			Items:                []corev1.KeyToPath{{Key: rs.TLS.CABundle.Key, Path: redisCAFile}},
		}})
	}
	return out
}

// stateCheck is one check of the store, as the StateShared condition.
type stateCheck struct {
	key     string
	at      time.Time
	status  metav1.ConditionStatus
	reason  string
	message string
}

func (c stateCheck) due(now time.Time) time.Duration {
	wait := stateRecheckReachable
	if c.status != metav1.ConditionTrue {
		wait = stateRecheckUnreachable
	}
	return c.at.Add(wait).Sub(now)
}

// stateChecks: the store is dialled on a change of the spec or the
// credentials, or when the last check is old.
var stateChecks = newCheckCache[stateCheck]()

// reconcileStateShared checks, when due, that the operator reaches the
// policy's store: a dial, AUTH with the policy's credentials and a PING
// within stateCheckLimit. The result is a condition only: receivers that
// cannot reach the store still decide every call (spec.state.onError).
func (r *CallPolicyReconciler) reconcileStateShared(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState) error {
	rs := redisSpec(cp)
	if rs == nil || !stateful(cp) || st.redis == nil {
		return nil
	}
	spec, err := json.Marshal(rs)
	if err != nil {
		return fmt.Errorf("digest spec.state.redis: %w", err)
	}
	sum := sha256.Sum256(append(spec, st.redis.hash...))
	digest := hex.EncodeToString(sum[:])
	k := types.NamespacedName{Namespace: cp.Namespace, Name: cp.Name}
	now := time.Now()
	c, ok := stateChecks.get(k)
	if !ok || c.key != digest || c.due(now) <= 0 {
		c = stateCheck{key: digest, at: now, status: metav1.ConditionTrue, reason: ReasonStoreReachable,
			message: fmt.Sprintf("the operator reached the state store at %s: the receivers share repeat counts and temporary blocks", rs.Address)}
		if err := pingRedis(ctx, rs, st.redis); err != nil {
			c.status, c.reason = metav1.ConditionFalse, ReasonStoreUnreachable
			c.message = fmt.Sprintf("the operator could not reach the state store at %s: %v (the receivers decide calls as spec.state.onError says while they cannot reach it either)", rs.Address, err)
		}
		stateChecks.put(k, c)
	}
	st.stateCheck = &c
	if due := max(c.due(now), time.Second); st.requeueAfter == 0 || due < st.requeueAfter {
		st.requeueAfter = due
	}
	return nil
}

// pingRedis dials the store as the receivers do (RESP2, no client-identity
// handshake, TLS per the spec) and sends AUTH, SELECT and PING.
func pingRedis(ctx context.Context, rs *callsv1alpha1.RedisSpec, src *redisSource) error {
	ctx, cancel := context.WithTimeout(ctx, stateCheckLimit)
	defer cancel()
	opts := &redis.Options{
		Addr:                     rs.Address,
		DB:                       int(rs.Database),
		Username:                 src.username,
		Password:                 src.password,
		Protocol:                 2,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		ContextTimeoutEnabled:    true,
		MaxRetries:               -1,
		DialerRetries:            1,
		DialTimeout:              stateCheckLimit,
		PoolSize:                 1,
	}
	if rs.TLS != nil && rs.TLS.Enabled {
		host, _, err := net.SplitHostPort(rs.Address)
		if err != nil {
			return fmt.Errorf("address %q: %w", rs.Address, err)
		}
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
		if len(src.caPEM) > 0 {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(src.caPEM) {
				return fmt.Errorf("spec.state.redis.tls.caBundle holds no usable certificate")
			}
			cfg.RootCAs = pool
		}
		opts.TLSConfig = cfg
	}
	quietRedis.Do(func() { redis.SetLogger(quiet{}) })
	c := redis.NewClient(opts)
	defer func() { _ = c.Close() }()
	err := c.Ping(ctx).Err()
	var reply redis.Error
	if errors.As(err, &reply) && strings.HasPrefix(reply.Error(), "NOPERM") {
		// A least-privilege ACL user may not PING: the server answered
		// after AUTH (a refused AUTH fails the dial), which is all the
		// check is after.
		return nil
	}
	if err != nil {
		return fmt.Errorf("PING: %w", err)
	}
	return nil
}

// quietRedis silences the Redis client's own log, once per process: the
// check's error is in the condition, and a log line per failed dial would
// only repeat it.
var quietRedis sync.Once

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

// setStateShared sets or removes the StateShared condition. It never makes
// Ready False: receivers counting per replica, or deciding by
// spec.state.onError while the store is away, still decide every call.
func setStateShared(cp *callsv1alpha1.CallPolicy, st *reconcileState, set func(t string, s metav1.ConditionStatus, reason, msg string), remove func(t string)) {
	switch {
	case !stateful(cp):
		remove(ConditionStateShared)
	case redisSpec(cp) == nil:
		if n := maxReceivers(cp); n > 1 {
			set(ConditionStateShared, metav1.ConditionFalse, ReasonPerReplica, fmt.Sprintf(
				"without spec.state.redis each receiver counts repeat calls and keeps temporary blocks for the calls it receives itself, and up to %d receivers may run: a caller's calls spread over them count less, and a block holds only on the receiver that made it; set spec.state.redis to share them", n))
		} else {
			remove(ConditionStateShared)
		}
	case st.stateCheck != nil:
		set(ConditionStateShared, st.stateCheck.status, st.stateCheck.reason, summarizeProblems([]string{st.stateCheck.message}, 1, maxConditionMessage))
	}
}
