package controllers

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	azpolicy "github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	azruntime "github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
)

// The GraphAccess check: the operator gets an app token with the policy's
// credentials, as the receivers will, and reads the application permissions
// it carries, so that a bot that cannot act never looks healthy.
const (
	// graphAccessRecheck is how often a settled check is repeated when
	// nothing it depends on changed: consent can be revoked and secrets
	// expire without any change in the cluster.
	graphAccessRecheck = 30 * time.Minute
	// graphAccessTimeout bounds one check, retries of the identity library
	// included.
	graphAccessTimeout = 30 * time.Second
	// federatedTokenAudience is the audience Entra expects of a federated
	// ServiceAccount token, as the workload identity webhook projects it.
	federatedTokenAudience = "api://AzureADTokenExchange"
	// federatedTokenSeconds is the shortest lifetime the TokenRequest API
	// issues.
	federatedTokenSeconds = 600
)

// graphAccessRetryBase and graphAccessRetryMax bound the backoff of a check
// that could not reach Entra (CheckFailed); variables for the tests.
var (
	graphAccessRetryBase = 5 * time.Second
	graphAccessRetryMax  = 5 * time.Minute
)

// policyActionCalls maps each action a policy can take to the Graph call
// actions the receivers perform for it: Announce answers the call, plays
// the prompt and hangs up.
var policyActionCalls = map[callsv1alpha1.Action][]graph.CallAction{
	callsv1alpha1.ActionAllow:    nil,
	callsv1alpha1.ActionReject:   {graph.CallReject},
	callsv1alpha1.ActionRedirect: {graph.CallRedirect},
	callsv1alpha1.ActionAnnounce: {graph.CallAnswer, graph.CallPlayPrompt, graph.CallHangUp},
}

// policyCallActions lists the Graph call actions a policy can take, from its
// rules and default action; a DryRun policy takes none.
func policyCallActions(cp *callsv1alpha1.CallPolicy) []graph.CallAction {
	if cp.Spec.Mode == callsv1alpha1.ModeDryRun {
		return nil
	}
	var out []graph.CallAction
	add := func(a callsv1alpha1.Action) {
		for _, ca := range policyActionCalls[a] {
			if !slices.Contains(out, ca) {
				out = append(out, ca)
			}
		}
	}
	add(cp.Spec.DefaultAction)
	for _, r := range cp.Spec.Rules {
		add(r.Action)
	}
	slices.Sort(out)
	return out
}

// graphAccessResult is one check's outcome, as the GraphAccess condition.
type graphAccessResult struct {
	status  metav1.ConditionStatus
	reason  string
	message string
}

// graphAccessEntry is the last check of one policy.
type graphAccessEntry struct {
	key     string
	at      time.Time
	result  graphAccessResult
	retries int
}

// checkCache remembers the last check of each policy (GraphAccess,
// StateShared), so that a check runs when what it depends on changes or it
// is due again, not on every reconcile.
type checkCache[E any] struct {
	mu      sync.Mutex
	entries map[types.NamespacedName]E
}

func newCheckCache[E any]() *checkCache[E] {
	return &checkCache[E]{entries: map[types.NamespacedName]E{}}
}

func (c *checkCache[E]) get(k types.NamespacedName) (E, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k]
	return e, ok
}

func (c *checkCache[E]) put(k types.NamespacedName, e E) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries[k] = e
}

func (c *checkCache[E]) forget(k types.NamespacedName) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, k)
}

// graphAccessChecks: a check runs on a change of what it depends on, after
// graphAccessRecheck, or when the backoff of a failed one has passed.
var graphAccessChecks = newCheckCache[graphAccessEntry]()

// due is how long until the entry's check is to be repeated (≤ 0: now).
func (e graphAccessEntry) due(now time.Time) time.Duration {
	wait := graphAccessRecheck
	if e.result.status == metav1.ConditionUnknown {
		wait = min(graphAccessRetryBase<<min(e.retries, 10), graphAccessRetryMax)
	}
	return e.at.Add(wait).Sub(now)
}

// graphAccessKey digests everything a check depends on: the credentials, the
// app and tenant, where the token comes from and the CAs trusted for it,
// and the actions the policy can take.
func graphAccessKey(cp *callsv1alpha1.CallPolicy, st *reconcileState) string {
	h := sha256.New()
	spec := cp.Spec.Bot
	parts := []string{spec.AppID, spec.TenantID, cp.Spec.Graph.AuthorityHost, graphScope(cp), st.credentialsHash, st.caHash,
		fmt.Sprint(spec.Credentials.WorkloadIdentity != nil)}
	for _, a := range policyCallActions(cp) {
		parts = append(parts, string(a))
	}
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s;", len(p), p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// graphScope is the scope the receivers ask tokens for.
func graphScope(cp *callsv1alpha1.CallPolicy) string {
	endpoint := cp.Spec.Graph.Endpoint
	if endpoint == "" {
		endpoint = callsv1alpha1.DefaultGraphEndpoint
	}
	return strings.TrimRight(endpoint, "/") + "/.default"
}

// reconcileGraphAccess checks, when due, that the bot's credentials get an
// app token and that it carries the permissions the policy's actions need.
// A definite refusal stalls the policy (Ready False); an Entra that cannot
// be reached leaves GraphAccess Unknown and Ready alone, and is retried with
// backoff. It never fails the reconcile: the receivers are deployed either
// way, so that fixing the app registration is all it takes.
func (r *CallPolicyReconciler) reconcileGraphAccess(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState) error {
	if !r.CheckGraphAccess {
		return nil
	}
	key := client.ObjectKeyFromObject(cp)
	digest := graphAccessKey(cp, st)
	now := time.Now()
	e, ok := graphAccessChecks.get(key)
	if !ok || e.key != digest || e.due(now) <= 0 {
		retries := 0
		if ok && e.key == digest && e.result.status == metav1.ConditionUnknown {
			retries = e.retries + 1
		}
		e = graphAccessEntry{key: digest, at: now, result: r.checkGraphAccess(ctx, cp, st), retries: retries}
		graphAccessChecks.put(key, e)
		logf.FromContext(ctx).V(1).Info("graph access checked", "status", e.result.status, "reason", e.result.reason, "message", e.result.message)
	}
	st.graphAccess = &e.result
	st.requeueAfter = max(e.due(now), time.Second)
	if e.result.status == metav1.ConditionFalse {
		st.stalled = &stalledError{reason: e.result.reason, problems: []string{e.result.message}}
	}
	return nil
}

// checkGraphAccess gets an app token for the home tenant with the policy's
// credentials and compares its roles with what the policy needs.
func (r *CallPolicyReconciler) checkGraphAccess(ctx context.Context, cp *callsv1alpha1.CallPolicy, st *reconcileState) graphAccessResult {
	ctx, cancel := context.WithTimeout(ctx, graphAccessTimeout)
	defer cancel()
	unknown := func(format string, args ...any) graphAccessResult {
		return graphAccessResult{status: metav1.ConditionUnknown, reason: ReasonCheckFailed, message: fmt.Sprintf(format, args...)}
	}
	httpClient, err := graphAccessHTTPClient(st.caPEM)
	if err != nil {
		return unknown("%v", err)
	}
	authority := cp.Spec.Graph.AuthorityHost
	if authority == "" {
		authority = callsv1alpha1.DefaultAuthorityHost
	}
	cfg := graph.CredentialConfig{
		TenantID: cp.Spec.Bot.TenantID, ClientID: cp.Spec.Bot.AppID, AuthorityHost: authority,
		Secret: st.credentials, HTTPClient: httpClient,
	}
	// The identity library keeps only the text of the assertion's error.
	var saErr error
	if cp.Spec.Bot.Credentials.WorkloadIdentity != nil {
		cfg.WorkloadIdentity = true
		cfg.Assertion = func(ctx context.Context) (string, error) {
			tok, err := r.serviceAccountToken(ctx, cp)
			saErr = err
			return tok, err
		}
	}
	cred, err := graph.NewCredential(cfg)
	if err != nil {
		return graphAccessResult{status: metav1.ConditionFalse, reason: ReasonTokenRequestFailed, message: err.Error()}
	}
	tok, err := cred.GetToken(ctx, azpolicy.TokenRequestOptions{Scopes: []string{graphScope(cp)}})
	if err != nil {
		if refusal, ok := entraRefusal(err); ok {
			return graphAccessResult{status: metav1.ConditionFalse, reason: ReasonTokenRequestFailed,
				message: fmt.Sprintf("Entra refused an app token for app %s in tenant %s: %s", cp.Spec.Bot.AppID, cp.Spec.Bot.TenantID, refusal)}
		}
		if saErr != nil {
			return unknown("a token of the receivers' ServiceAccount could not be requested: %v", saErr)
		}
		return unknown("Entra at %s could not be reached: %s", authority, firstLine(err.Error()))
	}
	roles, err := tokenRoles(tok.Token)
	if err != nil {
		return unknown("the app token could not be read: %v", err)
	}
	if missing := graph.MissingPermissions(roles, policyCallActions(cp)); len(missing) > 0 {
		names := make([]string, len(missing))
		for i, m := range missing {
			names[i] = m.Describe()
		}
		return graphAccessResult{status: metav1.ConditionFalse, reason: ReasonPermissionsMissing,
			message: fmt.Sprintf("app %s lacks application permissions (grant them with admin consent): %s; it has %s",
				cp.Spec.Bot.AppID, strings.Join(names, "; "), rolesList(roles))}
	}
	return graphAccessResult{status: metav1.ConditionTrue, reason: ReasonPermissionsGranted,
		message: fmt.Sprintf("app %s gets tokens with roles %s", cp.Spec.Bot.AppID, rolesList(roles))}
}

func rolesList(roles []string) string {
	if len(roles) == 0 {
		return "no roles"
	}
	sorted := slices.Clone(roles)
	slices.Sort(sorted)
	return strings.Join(sorted, ", ")
}

// graphAccessHTTPClient trusts the system roots and spec.graph.caBundle, as
// the receivers do.
func graphAccessHTTPClient(caPEM []byte) (*http.Client, error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if len(caPEM) > 0 && !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("spec.graph.caBundle holds no usable PEM certificate")
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 5 * time.Second,
		// One check per policy every half hour: nothing worth keeping open.
		DisableKeepAlives: true,
	}}, nil
}

// entraError is the body of Entra's token errors.
type entraError struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
	ErrorCodes  []int  `json:"error_codes"`
}

// entraRefusal words Entra's answer when it definitely refused the token
// (a 4xx with its error body): its error, AADSTS code and text. Anything
// else (no answer, a 5xx, a body not Entra's) is not a refusal.
func entraRefusal(err error) (string, bool) {
	var af *azidentity.AuthenticationFailedError
	if !errors.As(err, &af) || af.RawResponse == nil {
		return "", false
	}
	resp := af.RawResponse
	if resp.StatusCode < 400 || resp.StatusCode >= 500 {
		return "", false
	}
	body, err := azruntime.Payload(resp)
	if err != nil {
		return "", false
	}
	var e entraError
	if json.Unmarshal(body, &e) != nil || e.Error == "" {
		return "", false
	}
	// The description's first line is "AADSTSnnn: text"; trace and
	// correlation ids follow.
	return fmt.Sprintf("%s (HTTP %d): %s", e.Error, resp.StatusCode, firstLine(e.Description)), true
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(s)
}

// tokenRoles reads the roles claim of an access token WITHOUT verifying its
// signature: the token comes straight from the authority over TLS (the
// system roots or spec.graph.caBundle vouch for it), and the operator only
// reads what Entra granted; Graph verifies it on use.
func tokenRoles(token string) ([]string, error) {
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.ES256})
	if err != nil {
		return nil, err
	}
	var claims struct {
		Roles []string `json:"roles"`
	}
	if err := tok.UnsafeClaimsWithoutVerification(&claims); err != nil {
		return nil, err
	}
	return claims.Roles, nil
}

// +kubebuilder:rbac:groups="",resources=serviceaccounts/token,verbs=create

// serviceAccountToken requests a token of the receivers' ServiceAccount from
// the TokenRequest API with the audience Entra expects, the token the
// workload identity webhook projects into their pods.
func (r *CallPolicyReconciler) serviceAccountToken(ctx context.Context, cp *callsv1alpha1.CallPolicy) (string, error) {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: cp.Namespace, Name: callsv1alpha1.ReceiverName(cp.Name)}}
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{federatedTokenAudience},
		ExpirationSeconds: ptr.To[int64](federatedTokenSeconds),
	}}
	if err := r.SubResource("token").Create(ctx, sa, tr); err != nil {
		return "", err
	}
	return tr.Status.Token, nil
}
