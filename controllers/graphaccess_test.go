package controllers

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/emulator"
	"github.com/callguard/callguard/internal/graph"
)

// The emulated tenant and its apps, one per case of TestGraphAccess.
const (
	gaTenant      = "9c1e2d3f-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
	gaAppSecret   = "a0000001-0000-4000-8000-000000000001"
	gaAppCert     = "a0000001-0000-4000-8000-000000000002"
	gaAppWorkload = "a0000001-0000-4000-8000-000000000003"
	gaAppNoInit   = "a0000001-0000-4000-8000-000000000004"
	gaAppNoRoles  = "a0000001-0000-4000-8000-000000000005"
	gaAppNoJoin   = "a0000001-0000-4000-8000-000000000006"
	// gaAppUnknown is registered in no tenant.
	gaAppUnknown = "a0000001-0000-4000-8000-0000000000ff"
	gaSecret     = "emulated~secret"
	gaNamespace  = "graph-access"
)

// allBut is every calling permission but perms.
func allBut(perms ...string) []string {
	return slices.DeleteFunc(slices.Clone(graph.CallingPermissions), func(p string) bool { return slices.Contains(perms, p) })
}

// TestGraphAccess runs the check against the emulator over TLS on an API
// server of its own: the suite's manager does not check (its policies name
// tenants no authority knows), and two managers must not share policies.
func TestGraphAccess(t *testing.T) {
	g := NewWithT(t)
	// Retries of a failed check come sooner here (only this test's manager
	// checks).
	base, maxWait := graphAccessRetryBase, graphAccessRetryMax
	graphAccessRetryBase, graphAccessRetryMax = 200*time.Millisecond, time.Second
	t.Cleanup(func() { graphAccessRetryBase, graphAccessRetryMax = base, maxWait })
	apiCfg, c := startAPIServer(t)
	ctx := context.Background()

	// What an app's federated credential trusts: the API server's service
	// account issuer and its keys, read as Entra reads them.
	cs, err := kubernetes.NewForConfig(apiCfg)
	must(t, err)
	disco, err := cs.RESTClient().Get().AbsPath("/.well-known/openid-configuration").DoRaw(ctx)
	must(t, err)
	var oidc struct {
		Issuer string `json:"issuer"`
	}
	must(t, json.Unmarshal(disco, &oidc))
	jwks, err := cs.RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	must(t, err)

	certPEM, keyPEM := selfSignedCert(t)
	subject := func(policy string) string {
		return "system:serviceaccount:" + gaNamespace + ":" + callsv1alpha1.ReceiverName(policy)
	}
	emu, err := emulator.New(emulator.Config{Bots: []emulator.Bot{
		{AppID: gaAppSecret, TenantID: gaTenant, Secret: gaSecret},
		{AppID: gaAppCert, TenantID: gaTenant, CertPEM: certPEM},
		{AppID: gaAppWorkload, TenantID: gaTenant, Federated: []emulator.FederatedCredential{
			{Issuer: oidc.Issuer, Subject: subject("workload"), JWKS: jwks},
		}},
		{AppID: gaAppNoInit, TenantID: gaTenant, Secret: gaSecret, Roles: allBut(graph.PermissionCallsInitiate)},
		{AppID: gaAppNoRoles, TenantID: gaTenant, Secret: gaSecret, Roles: []string{}},
		{AppID: gaAppNoJoin, TenantID: gaTenant, Secret: gaSecret, Roles: allBut(graph.PermissionCallsJoinGroupCall, graph.PermissionCallsJoinGroupCallAsGuest)},
	}})
	must(t, err)
	must(t, emu.Start())
	t.Cleanup(func() { _ = emu.Close() })

	startManager(t, managerOptions{What: "the manager checking graph access", Config: apiCfg, CheckGraphAccess: true})

	must(t, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: gaNamespace}}))
	must(t, c.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: gaNamespace, Name: "emulator-ca"},
		Data: map[string]string{"ca.crt": string(emu.CACertPEM())}}))
	must(t, c.Create(ctx, testSecret(gaNamespace, "secret", gaSecret)))
	must(t, c.Create(ctx, testSecret(gaNamespace, "wrong-secret", "not-the-secret")))
	must(t, c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: gaNamespace, Name: "cert"},
		Data: map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM}}))

	// A closed port: nothing answers there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	closed := "https://" + ln.Addr().String() + "/"
	must(t, ln.Close())

	secretRef := func(name string) callsv1alpha1.Credentials {
		return callsv1alpha1.Credentials{SecretRef: &callsv1alpha1.SecretReference{Name: name}}
	}
	workload := callsv1alpha1.Credentials{WorkloadIdentity: &callsv1alpha1.WorkloadIdentity{}}
	redirect := func(cp *callsv1alpha1.CallPolicy) {
		cp.Spec.Rules = []callsv1alpha1.Rule{{Name: "divert", Action: callsv1alpha1.ActionRedirect,
			Redirect: &callsv1alpha1.RedirectSpec{Targets: []callsv1alpha1.RedirectTarget{{Phone: "+14255550199"}}}}}
	}
	announce := func(cp *callsv1alpha1.CallPolicy) {
		cp.Spec.Rules = []callsv1alpha1.Rule{{Name: "withheld", Action: callsv1alpha1.ActionAnnounce,
			Announce: &callsv1alpha1.AnnounceSpec{Prompt: callsv1alpha1.PromptSource{URL: "https://prompts.example.com/withheld.wav"}},
			Match:    callsv1alpha1.Match{Callers: &callsv1alpha1.CallerMatch{IdentityTypes: []callsv1alpha1.IdentityType{callsv1alpha1.IdentityAnonymous}}}}}
	}
	tests := []struct {
		name, app  string
		creds      callsv1alpha1.Credentials
		mutate     func(*callsv1alpha1.CallPolicy)
		wantStatus metav1.ConditionStatus
		wantReason string
		// wantIn are in the condition's message.
		wantIn []string
	}{
		{name: "secret", app: gaAppSecret, creds: secretRef("secret"), mutate: redirect,
			wantStatus: metav1.ConditionTrue, wantReason: ReasonPermissionsGranted, wantIn: graph.CallingPermissions},
		{name: "certificate", app: gaAppCert, creds: secretRef("cert"),
			wantStatus: metav1.ConditionTrue, wantReason: ReasonPermissionsGranted, wantIn: graph.CallingPermissions},
		// TokenRequest for the receivers' ServiceAccount, exchanged as a
		// client assertion against the app's federated credential.
		{name: "workload", app: gaAppWorkload, creds: workload,
			wantStatus: metav1.ConditionTrue, wantReason: ReasonPermissionsGranted, wantIn: graph.CallingPermissions},
		{name: "wrong-secret", app: gaAppSecret, creds: secretRef("wrong-secret"),
			wantStatus: metav1.ConditionFalse, wantReason: ReasonTokenRequestFailed, wantIn: []string{"AADSTS7000215", "invalid_client", "Invalid client secret"}},
		{name: "unknown-app", app: gaAppUnknown, creds: secretRef("secret"),
			wantStatus: metav1.ConditionFalse, wantReason: ReasonTokenRequestFailed, wantIn: []string{"AADSTS700016", gaAppUnknown}},
		// The federated credential names the ServiceAccount of "workload".
		{name: "other-workload", app: gaAppWorkload, creds: workload,
			wantStatus: metav1.ConditionFalse, wantReason: ReasonTokenRequestFailed, wantIn: []string{"AADSTS700213", subject("other-workload")}},
		{name: "redirect-without-initiate", app: gaAppNoInit, creds: secretRef("secret"), mutate: redirect,
			wantStatus: metav1.ConditionFalse, wantReason: ReasonPermissionsMissing, wantIn: []string{graph.PermissionCallsInitiate + " (for redirect)"}},
		// Rejecting needs no permission, but without any calling one the
		// callers arrive encrypted: no number rule could match them.
		{name: "reject-without-any-permission", app: gaAppNoRoles, creds: secretRef("secret"),
			wantStatus: metav1.ConditionFalse, wantReason: ReasonPermissionsMissing,
			wantIn: append([]string{"caller identities", "no roles"}, graph.CallingPermissions...)},
		// Neither rejecting nor redirecting answers: the answer permissions
		// are not needed.
		{name: "no-answer-permission", app: gaAppNoJoin, creds: secretRef("secret"), mutate: redirect,
			wantStatus: metav1.ConditionTrue, wantReason: ReasonPermissionsGranted},
		// Announcing answers the call: the same app is refused.
		{name: "announce-without-answer-permission", app: gaAppNoJoin, creds: secretRef("secret"), mutate: announce,
			wantStatus: metav1.ConditionFalse, wantReason: ReasonPermissionsMissing,
			wantIn: []string{graph.PermissionCallsJoinGroupCall + " or " + graph.PermissionCallsJoinGroupCallAsGuest + " (for answer)"}},
		{name: "announce", app: gaAppSecret, creds: secretRef("secret"), mutate: announce,
			wantStatus: metav1.ConditionTrue, wantReason: ReasonPermissionsGranted},
		{name: "unreachable", app: gaAppSecret, creds: secretRef("secret"),
			mutate:     func(cp *callsv1alpha1.CallPolicy) { cp.Spec.Graph.AuthorityHost = closed },
			wantStatus: metav1.ConditionUnknown, wantReason: ReasonCheckFailed, wantIn: []string{"could not be reached", closed}},
	}
	for _, tt := range tests {
		cp := &callsv1alpha1.CallPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: gaNamespace, Name: tt.name},
			Spec: callsv1alpha1.CallPolicySpec{
				Bot: callsv1alpha1.BotSpec{AppID: tt.app, TenantID: gaTenant, Credentials: tt.creds},
				Graph: callsv1alpha1.GraphSpec{
					Endpoint: emu.URL(), AuthorityHost: emu.URL() + "/",
					CABundle: &callsv1alpha1.ConfigMapKeyReference{Name: "emulator-ca", Key: "ca.crt"},
				},
				DefaultAction: callsv1alpha1.ActionReject,
			},
		}
		if tt.mutate != nil {
			tt.mutate(cp)
		}
		must(t, c.Create(ctx, cp))
	}
	// graphAccess is the policy and its GraphAccess condition.
	graphAccess := func(g Gomega, name string) (*callsv1alpha1.CallPolicy, *metav1.Condition) {
		cp := &callsv1alpha1.CallPolicy{}
		g.Expect(c.Get(ctx, key(gaNamespace, name), cp)).To(Succeed())
		ga := meta.FindStatusCondition(cp.Status.Conditions, ConditionGraphAccess)
		g.Expect(ga).NotTo(BeNil())
		return cp, ga
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			g.Eventually(func(g Gomega) {
				cp, ga := graphAccess(g, tt.name)
				g.Expect(ga.Status).To(Equal(tt.wantStatus), ga.Message)
				g.Expect(ga.Reason).To(Equal(tt.wantReason), ga.Message)
				for _, s := range tt.wantIn {
					g.Expect(ga.Message).To(ContainSubstring(s))
				}
				stalled := meta.FindStatusCondition(cp.Status.Conditions, ConditionStalled)
				ready := meta.FindStatusCondition(cp.Status.Conditions, ConditionReady)
				g.Expect(ready).NotTo(BeNil())
				if tt.wantStatus == metav1.ConditionFalse {
					// A bot that cannot act must not look healthy.
					g.Expect(stalled).NotTo(BeNil())
					g.Expect(stalled.Reason).To(Equal(tt.wantReason))
					g.Expect(ready.Status).To(Equal(metav1.ConditionFalse))
					g.Expect(ready.Reason).To(Equal(tt.wantReason))
					return
				}
				// Ready is the receivers' business (no pods run here).
				g.Expect(stalled).To(BeNil())
				g.Expect(ready.Reason).To(Equal(ReasonProgressing))
			}, eventually, poll).Should(Succeed())
			// The receivers are deployed whatever the check says.
			g.Eventually(func() error {
				return c.Get(ctx, key(gaNamespace, callsv1alpha1.ReceiverName(tt.name)), &corev1.ServiceAccount{})
			}, eventually, poll).Should(Succeed())
		})
	}

	t.Run("kubectl get -o wide shows the reason and Entra's error", func(t *testing.T) {
		body, err := cs.RESTClient().Get().
			AbsPath("/apis/calls.callguard.dev/v1alpha1/namespaces", gaNamespace, "callpolicies", "wrong-secret").
			SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(ctx)
		if err != nil {
			t.Fatalf("GET as Table: %v: %s", err, body)
		}
		var table metav1.Table
		must(t, json.Unmarshal(body, &table))
		if len(table.Rows) != 1 {
			t.Fatalf("rows %+v: want one", table.Rows)
		}
		// The reason, and Entra's error code in the message.
		want := map[string]func(any) bool{
			"Graph Access":         func(v any) bool { return v == ReasonTokenRequestFailed },
			"Graph Access Message": func(v any) bool { s, _ := v.(string); return strings.Contains(s, "AADSTS7000215") },
		}
		for i, col := range table.ColumnDefinitions {
			ok, found := want[col.Name]
			if !found {
				continue
			}
			delete(want, col.Name)
			if col.Priority != 1 {
				t.Errorf("%s has priority %d: want 1 (-o wide only)", col.Name, col.Priority)
			}
			if !ok(table.Rows[0].Cells[i]) {
				t.Errorf("%s is %q", col.Name, table.Rows[0].Cells[i])
			}
		}
		for name := range want {
			t.Errorf("no %s column in %+v", name, table.ColumnDefinitions)
		}
	})

	t.Run("a refusal is a warning event", func(t *testing.T) {
		g := NewWithT(t)
		g.Eventually(func(g Gomega) []string {
			var list eventsv1.EventList
			g.Expect(c.List(ctx, &list, client.InNamespace(gaNamespace))).To(Succeed())
			var notes []string
			for _, e := range list.Items {
				if e.Regarding.Name == "wrong-secret" && e.Type == corev1.EventTypeWarning && e.Reason == ReasonTokenRequestFailed {
					notes = append(notes, e.Note)
				}
			}
			return notes
		}, eventually, poll).Should(ContainElement(ContainSubstring("AADSTS7000215")))
	})

	t.Run("an unreachable authority is retried until it answers", func(t *testing.T) {
		g := NewWithT(t)
		// The closed port now forwards to the emulator (its certificate
		// names 127.0.0.1): nothing in the cluster changes.
		ln, err := net.Listen("tcp", strings.TrimSuffix(strings.TrimPrefix(closed, "https://"), "/"))
		must(t, err)
		t.Cleanup(func() { _ = ln.Close() })
		target := strings.TrimPrefix(emu.URL(), "https://")
		go func() {
			for {
				in, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer in.Close()
					out, err := net.Dial("tcp", target)
					if err != nil {
						return
					}
					defer out.Close()
					go func() { _, _ = io.Copy(out, in) }()
					_, _ = io.Copy(in, out)
				}()
			}
		}()
		g.Eventually(func(g Gomega) {
			_, ga := graphAccess(g, "unreachable")
			g.Expect(ga.Reason).To(Equal(ReasonPermissionsGranted), ga.Message)
		}, eventually, poll).Should(Succeed())
	})

	t.Run("fixing the secret is checked at once", func(t *testing.T) {
		g := NewWithT(t)
		fixed := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: gaNamespace, Name: "wrong-secret"}}
		updateWith(t, c, fixed, func() { fixed.Data = map[string][]byte{"client-secret": []byte(gaSecret)} })
		g.Eventually(func(g Gomega) {
			cp, ga := graphAccess(g, "wrong-secret")
			g.Expect(ga.Reason).To(Equal(ReasonPermissionsGranted))
			g.Expect(meta.FindStatusCondition(cp.Status.Conditions, ConditionStalled)).To(BeNil())
		}, eventually, poll).Should(Succeed())
	})
	_ = g
}

// selfSignedCert is a certificate and its key in PEM, as a bot's Secret
// holds them (tls.crt, tls.key).
func selfSignedCert(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	must(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "callguard bot"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(t, err)
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	must(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
}

// TestPolicyCallActions: the Graph actions a policy can take, which the
// check wants permissions for.
func TestPolicyCallActions(t *testing.T) {
	cp := testPolicy("ns", "p")
	if got := policyCallActions(cp); !slices.Equal(got, []graph.CallAction{graph.CallReject}) {
		t.Errorf("reject rules, default Allow: %v", got)
	}
	cp.Spec.DefaultAction = callsv1alpha1.ActionRedirect
	if got := policyCallActions(cp); !slices.Equal(got, []graph.CallAction{graph.CallRedirect, graph.CallReject}) {
		t.Errorf("reject rules, default Redirect: %v", got)
	}
	cp.Spec.Mode = callsv1alpha1.ModeDryRun
	if got := policyCallActions(cp); len(got) != 0 {
		t.Errorf("DryRun: %v, want none", got)
	}
	// Announce: answer, play the prompt, hang up.
	cp = testPolicy("ns", "p")
	cp.Spec.Rules = []callsv1alpha1.Rule{{Name: "announce", Action: callsv1alpha1.ActionAnnounce}}
	cp.Spec.DefaultAction = callsv1alpha1.ActionAllow
	want := []graph.CallAction{graph.CallAnswer, graph.CallHangUp, graph.CallPlayPrompt}
	if got := policyCallActions(cp); !slices.Equal(got, want) {
		t.Errorf("Announce: %v, want %v", got, want)
	}
	missing := graph.MissingPermissions(nil, want)
	var text []string
	for _, m := range missing {
		text = append(text, m.Describe())
	}
	for _, s := range []string{"(for caller identities", "(for answer)", "(for playPrompt)", "(for hang up)"} {
		if !strings.Contains(strings.Join(text, "; "), s) {
			t.Errorf("missing with no roles = %q, want %q", text, s)
		}
	}
}

// TestGraphAccessSchedule: a settled check is repeated every 30 minutes, an
// unanswered one with a doubling backoff; a change of what it depends on
// changes the key that makes it run at once.
func TestGraphAccessSchedule(t *testing.T) {
	now := time.Now()
	for _, status := range []metav1.ConditionStatus{metav1.ConditionTrue, metav1.ConditionFalse} {
		e := graphAccessEntry{at: now, result: graphAccessResult{status: status}}
		if d := e.due(now); d != 30*time.Minute {
			t.Errorf("%s: due in %v, want 30m", status, d)
		}
	}
	var prev time.Duration
	for retries := range 12 {
		e := graphAccessEntry{at: now, retries: retries, result: graphAccessResult{status: metav1.ConditionUnknown}}
		d := e.due(now)
		if d < prev || d > graphAccessRetryMax || (retries == 0 && d != graphAccessRetryBase) {
			t.Errorf("Unknown after %d retries: due in %v (previous %v)", retries, d, prev)
		}
		prev = d
	}
	if prev != graphAccessRetryMax {
		t.Errorf("backoff tops out at %v, want %v", prev, graphAccessRetryMax)
	}

	cp := testPolicy("ns", "p")
	st := &reconcileState{credentialsHash: "a"}
	k := graphAccessKey(cp, st)
	for name, change := range map[string]func(*callsv1alpha1.CallPolicy, *reconcileState){
		"secret data": func(_ *callsv1alpha1.CallPolicy, st *reconcileState) { st.credentialsHash = "b" },
		"CA bundle":   func(_ *callsv1alpha1.CallPolicy, st *reconcileState) { st.caHash = "c" },
		"app":         func(cp *callsv1alpha1.CallPolicy, _ *reconcileState) { cp.Spec.Bot.AppID = gaAppCert },
		"tenant":      func(cp *callsv1alpha1.CallPolicy, _ *reconcileState) { cp.Spec.Bot.TenantID = gaTenant },
		"authority": func(cp *callsv1alpha1.CallPolicy, _ *reconcileState) {
			cp.Spec.Graph.AuthorityHost = "https://login.example/"
		},
		"graph": func(cp *callsv1alpha1.CallPolicy, _ *reconcileState) {
			cp.Spec.Graph.Endpoint = "https://graph.example"
		},
		"redirect rule": func(cp *callsv1alpha1.CallPolicy, _ *reconcileState) {
			cp.Spec.DefaultAction = callsv1alpha1.ActionRedirect
		},
		"workload identity": func(cp *callsv1alpha1.CallPolicy, _ *reconcileState) {
			cp.Spec.Bot.Credentials = callsv1alpha1.Credentials{WorkloadIdentity: &callsv1alpha1.WorkloadIdentity{}}
		},
	} {
		cp2, st2 := cp.DeepCopy(), *st
		change(cp2, &st2)
		if graphAccessKey(cp2, &st2) == k {
			t.Errorf("a change of the %s does not change the check's key", name)
		}
	}
	// A new rule with an action already used needs no new check.
	cp2 := cp.DeepCopy()
	cp2.Spec.Rules = append(cp2.Spec.Rules, callsv1alpha1.Rule{Name: "more", Action: callsv1alpha1.ActionReject})
	if graphAccessKey(cp2, st) != k {
		t.Error("another Reject rule changes the check's key")
	}
}
