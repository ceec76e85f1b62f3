// Command demo shows callguard working on the local cluster: it runs the
// Graph emulator (the bot registered in its home tenant and in the sample's
// additional tenant), deploys a Redis pod for the receivers' shared state,
// applies config/samples exposed through the cluster's ingress controller
// (spec.receiver.expose.ingress) with its state in that Redis, and a second
// policy whose Secret holds a wrong client secret (GraphAccess=False). It
// places scripted calls to the public https callback URL (one arriving in
// the second tenant), prints the announced call as the emulator recorded
// it and a repeat caller's block, changes the policy with kubectl and
// measures how long the change takes to be enforced. `make demo` runs it
// after bringing the cluster, its add-ons (hack/local-cluster/addons.sh)
// and the operator up.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/test/harness"
	"github.com/callguard/callguard/test/harness/ingress"
)

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster")
	emulatorBin := flag.String("emulator-bin", "bin/graph-emulator", "graph-emulator binary")
	listen := flag.String("emulator-listen", "10.213.0.1:8443", "address the emulator serves on; pods must reach it")
	stateDir := flag.String("state-dir", "", "where the emulator keeps its CA, pid and log")
	ns := flag.String("namespace", "callguard-demo", "namespace of the demo policy")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *kubeconfig, *emulatorBin, *listen, *stateDir, *ns); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func run(ctx context.Context, kubeconfig, emulatorBin, listen, stateDir, ns string) error {
	if kubeconfig == "" || stateDir == "" {
		return errors.New("--kubeconfig and --state-dir are required")
	}
	c, err := harness.Connect(kubeconfig)
	if err != nil {
		return err
	}
	pub, err := ingress.FromEnv()
	if err != nil {
		return err
	}
	sample, err := harness.LoadSample()
	if err != nil {
		return err
	}
	if len(sample.Policy.Spec.Bot.AdditionalTenants) == 0 {
		return errors.New("the sample policy has no bot.additionalTenants: the demo places a call in the second tenant")
	}
	tenant2 := sample.Policy.Spec.Bot.AdditionalTenants[0]
	host := pub.Host("hotline")
	// The emulator delivers to the public URL: host dialled at the ingress
	// address (no DNS names it), the ingress CA trusted. The bot is
	// registered in its home tenant and in the sample's additional tenant.
	// Restarted so that one started without those flags is not reused.
	harness.StopEmulator(stateDir)
	step("starting the Graph emulator on %s (it delivers to https://%s through the ingress at %s; the bot is registered in tenants %s and %s)",
		listen, host, pub.Address, short(harness.BotTenantID), short(tenant2))
	emu, err := harness.StartEmulator(ctx, emulatorBin, listen, stateDir, append(pub.EmulatorArgs(host), sample.EmulatorBotArgs()...)...)
	if err != nil {
		return err
	}
	if err := c.EnsureNamespace(ctx, ns); err != nil {
		return err
	}
	step("Redis for the receivers' shared state (repeat-call counts, temporary blocks): Debian's redis-server in a pod")
	fresh := !exists(ctx, c, ns)
	addr, err := c.DeployRedis(ctx, ns, 2*time.Minute)
	if err != nil {
		return err
	}
	if !fresh {
		// A run before this one left counts and blocks: start from none.
		if err := c.RestartRedis(ctx, ns, 2*time.Minute); err != nil {
			return err
		}
	}
	fmt.Printf("    redis at %s (Service redis, password in Secret %s)\n", addr, harness.RedisSecret)

	step("applying config/samples (the hotline CallPolicy, its credentials, blocklist and announcement) in namespace %s, exposed at https://%s, state in Redis", ns, host)
	tlsSecret, err := pub.TLSSecret(ns, "hotline-tls")
	if err != nil {
		return err
	}
	objs := sample.Objects(ns, emu, 2)
	for _, o := range objs {
		if cp, ok := o.(*callsv1alpha1.CallPolicy); ok {
			ingress.Expose(cp, host, tlsSecret.Name)
			harness.UseRedis(cp, addr, callsv1alpha1.StateOnErrorIgnore)
		}
	}
	// A second policy of the same bot whose Secret holds a wrong client
	// secret: the operator's GraphAccess check gets Entra's refusal.
	wrong := sample.PolicyIn(ns, emu, 1)
	wrong.Name = "wrong-secret"
	wrong.Spec.Bot.Credentials.SecretRef = &callsv1alpha1.SecretReference{Name: "wrong-secret-bot"}
	wrong.Spec.Rules = slices.DeleteFunc(wrong.Spec.Rules, func(r callsv1alpha1.Rule) bool { return r.Action == callsv1alpha1.ActionAnnounce })
	wrong.Spec.Receiver.Expose = nil
	// A tenth of the default CPU request: it shares the 2-core node.
	res := callsv1alpha1.DefaultReceiverResources()
	res.Requests[corev1.ResourceCPU] = resource.MustParse("50m")
	wrong.Spec.Receiver.Resources = &res
	wrongSecret := &corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "wrong-secret-bot"},
		StringData: map[string]string{"client-secret": "not-the-client-secret"}}
	if err := c.Apply(ctx, append([]client.Object{tlsSecret, wrongSecret, wrong}, objs...)...); err != nil {
		return err
	}
	t0 := time.Now()
	step("waiting for the policy to be Ready (receivers running and passing their probes, GraphAccess granted)")
	cp, err := c.WaitReady(ctx, ns, "hotline", 3*time.Minute)
	if err != nil {
		return err
	}
	// Receivers of an earlier run being replaced would take their decision
	// logs with them: wait for the rollout to finish.
	if _, err := c.Kubectl(ctx, nil, "-n", ns, "rollout", "status", "deployment/"+callsv1alpha1.ReceiverName("hotline"), "--timeout=3m"); err != nil {
		return err
	}
	fmt.Printf("    Ready after %s: %d rules, policy %s, %d/%d receivers\n", time.Since(t0).Round(time.Millisecond),
		cp.Status.Rules, short(cp.Status.PolicyHash), cp.Status.Receiver.ReadyReplicas, cp.Status.Receiver.Replicas)
	for _, t := range []string{"GraphAccess", "StateShared"} {
		if cond := meta.FindStatusCondition(cp.Status.Conditions, t); cond != nil {
			fmt.Printf("    %s=%s (%s): %s\n", t, cond.Status, cond.Reason, cond.Message)
		}
	}
	if err := waitCondition(ctx, c, ns, wrong.Name, "GraphAccess", metav1.ConditionFalse, time.Minute); err != nil {
		return err
	}
	step("kubectl get cpol -n %s -o wide   (the second policy's Secret holds a wrong client secret)", ns)
	if err := show(ctx, c, "get", "cpol", "-n", ns, "-o", "wide"); err != nil {
		return err
	}
	step("kubectl callpolicy status wrong-secret -n %s", ns)
	_ = show(ctx, c, "callpolicy", "status", "wrong-secret", "-n", ns) // exits 1: not Ready

	callback, err := ingress.WaitCallbackURL(ctx, c, ns, "hotline", time.Minute)
	if err != nil {
		return err
	}
	fmt.Printf("    public callback URL (status.receiver.callbackURL, the bot's calling webhook): %s\n", callback)
	if err := pub.WaitReachable(ctx, callback, time.Minute); err != nil {
		return err
	}
	scenarios := harness.Scenarios(tenant2)
	step("placing %d calls through the emulator to %s (the last one arrives in tenant %s)", len(scenarios), callback, tenant2)
	before, err := placeAll(ctx, c, emu, ns, callback, scenarios)
	if err != nil {
		return err
	}
	printTable(before, nil)
	for _, r := range before {
		if r.s.Source == nil {
			if err := printAnnounced(ctx, emu, r); err != nil {
				return err
			}
		}
	}
	if err := repeatCaller(ctx, c, emu, ns, callback); err != nil {
		return err
	}

	step("changing the policy with kubectl: reject UK mobiles (+447…) first, and send video callers to the default")
	if err := c.Client.Get(ctx, client.ObjectKeyFromObject(cp), cp); err != nil {
		return err
	}
	oldHash := cp.Status.PolicyHash
	video := slices.IndexFunc(cp.Spec.Rules, func(r callsv1alpha1.Rule) bool { return r.Name == "video-to-desk" })
	if video < 0 {
		return errors.New("the sample policy has no rule video-to-desk")
	}
	// After the insertion at 0 the video rule is one further down.
	patch := `[{"op":"add","path":"/spec/rules/0","value":{"name":"uk-mobiles","action":"Reject","reason":"busy","match":{"callers":{"numberPrefixes":["+447"]}}}},` +
		fmt.Sprintf(`{"op":"test","path":"/spec/rules/%d/name","value":"video-to-desk"},{"op":"remove","path":"/spec/rules/%d"}]`, video+1, video+1)
	start := time.Now()
	if _, err := c.Kubectl(ctx, nil, "-n", ns, "patch", "callpolicy", "hotline", "--type=json", "-p", patch); err != nil {
		return err
	}
	hash, compiled, live, err := c.WaitPolicyLive(ctx, ns, "hotline", oldHash, start, 30*time.Second)
	if err != nil {
		return err
	}
	fmt.Printf("    operator compiled policy %s after %s; every receiver enforced it after %s (no pod restarted)\n",
		short(hash), compiled.Round(time.Millisecond), live.Round(time.Millisecond))
	step("placing the same calls again")
	after, err := placeAll(ctx, c, emu, ns, callback, scenarios)
	if err != nil {
		return err
	}
	printTable(after, before)

	fmt.Println()
	fmt.Println("The cluster is still running. To explore it:")
	fmt.Printf("  export KUBECONFIG=%s\n", kubeconfig)
	fmt.Printf("  kubectl get cpol -A -o wide; kubectl get ingress -n %s\n", ns)
	ip, port, _ := net.SplitHostPort(pub.Address)
	fmt.Printf("  curl -X POST --cacert %s --resolve %s:%s:%s %s   # 401: the receivers want Graph's token\n",
		pub.CAFile, host, port, ip, callback)
	fmt.Println("Tear it all down with: make demo-down")
	return nil
}

type row struct {
	s        harness.Scenario
	decision harness.Decision
	record   *harness.Record
}

func placeAll(ctx context.Context, c *harness.Cluster, emu *harness.Emulator, ns, callback string, scenarios []harness.Scenario) ([]row, error) {
	var rows []row
	for _, s := range scenarios {
		id, err := emu.PlaceCallIn(ctx, callback, s.Tenant, s.Source, s.Modalities)
		if err != nil {
			return nil, fmt.Errorf("place call from %s: %w", s.Caller, err)
		}
		rec, err := emu.WaitAction(ctx, id, 2*time.Second)
		if err != nil {
			return nil, err
		}
		rows = append(rows, row{s: s, record: rec})
	}
	// The receivers log one line per decision; read them once for all calls.
	deadline := time.Now().Add(10 * time.Second)
	for {
		decisions, err := c.Decisions(ctx, ns, "hotline")
		missing := 0
		for i := range rows {
			if d, ok := decisions[rows[i].record.ID]; ok {
				rows[i].decision = d
			} else {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			if err != nil {
				fmt.Fprintln(os.Stderr, "    (reading receiver logs:", err, ")")
			}
			return rows, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func printTable(rows, before []row) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	header := "CALLER\tKIND\tTENANT\tDECISION\tRULE\tGRAPH ACTION\tNOTIFICATION→ACTION"
	if before != nil {
		header += "\tCHANGED"
	}
	fmt.Fprintln(w, header)
	for i, r := range rows {
		decision := r.decision.Action
		switch {
		case !r.record.Delivered():
			decision = "(not delivered)"
		case decision == "":
			decision = "(no log line)"
		case r.decision.Reason != "" && r.decision.Reason != "none":
			decision += " (" + r.decision.Reason + ")"
		}
		rule := r.decision.Rule
		if rule == "" && r.decision.Action != "" {
			rule = "(default)"
		}
		action, latency := "none", "-"
		if r.record.Action != "" {
			action = r.record.Action
			if r.record.Reason != "" {
				action += " (" + r.record.Reason + ")"
			}
			latency = fmt.Sprintf("%.1f ms", float64(r.record.Latency.Microseconds())/1000)
		} else if r.record.Missed {
			action = "missed"
		}
		tenant := r.record.TenantID
		if tenant == harness.BotTenantID {
			tenant = "home"
		}
		line := strings.Join([]string{r.s.Caller, r.s.Kind, short(tenant), decision, rule, action, latency}, "\t")
		if before != nil {
			changed := ""
			if before[i].decision.Action != "" && (before[i].decision.Action != r.decision.Action || before[i].decision.Rule != r.decision.Rule) {
				changed = "← was " + before[i].decision.Action
			}
			line += "\t" + changed
		}
		fmt.Fprintln(w, line)
	}
	_ = w.Flush()
}

func short(h string) string {
	h = strings.TrimPrefix(h, "sha256:")
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// exists reports whether the demo's Redis was deployed by an earlier run.
func exists(ctx context.Context, c *harness.Cluster, ns string) bool {
	return c.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: harness.RedisName}, &appsv1.Deployment{}) == nil
}

// waitCondition waits until the policy's condition has status.
func waitCondition(ctx context.Context, c *harness.Cluster, ns, name, typ string, status metav1.ConditionStatus, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	cp := &callsv1alpha1.CallPolicy{}
	for {
		err := c.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, cp)
		if cond := meta.FindStatusCondition(cp.Status.Conditions, typ); err == nil && cond != nil && cond.Status == status && cond.ObservedGeneration == cp.Generation {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("CallPolicy %s/%s: %s is not %s after %s (%v; conditions %+v)", ns, name, typ, status, timeout, err, cp.Status.Conditions)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// show runs kubectl (with the plugin on its PATH) and prints its output
// indented. The kubeconfig flag goes last: kubectl refuses flags before a
// plugin's name.
func show(ctx context.Context, c *harness.Cluster, args ...string) error {
	out, err := exec.CommandContext(ctx, "kubectl", append(args, "--kubeconfig", c.Kubeconfig)...).CombinedOutput()
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Println("    " + line)
	}
	if err != nil {
		return fmt.Errorf("kubectl %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// printAnnounced waits for the announced call to end and prints what the
// caller heard, as the emulator recorded it.
func printAnnounced(ctx context.Context, emu *harness.Emulator, r row) error {
	rec, err := emu.WaitEnded(ctx, r.record.ID, 2*time.Minute)
	if err != nil {
		return err
	}
	step("the announced call (rule %s): what the emulator recorded", r.decision.Rule)
	fmt.Printf("    caller %s: answered, ", r.s.Caller)
	for _, p := range rec.Prompts {
		fmt.Printf("prompt %s played %d ms (sha256 %s, %s), ", p.URI, p.DurationMs, short(p.SHA256), p.Status)
	}
	lasted := "-"
	if !rec.AnsweredAt.IsZero() && !rec.EndedAt.IsZero() {
		lasted = rec.EndedAt.Sub(rec.AnsweredAt).Round(time.Millisecond).String()
	}
	fmt.Printf("ended by %s %s after the answer\n", rec.EndedBy, lasted)
	if len(rec.Prompts) == 0 || rec.EndedBy != "bot" {
		return fmt.Errorf("announced call %s: prompts %+v, ended by %q: want a prompt played and the bot hanging up", rec.ID, rec.Prompts, rec.EndedBy)
	}
	return nil
}

// repeatCaller places calls from one number until the repeat-callers rule
// rejects it, then lists the block that put on the caller.
func repeatCaller(ctx context.Context, c *harness.Cluster, emu *harness.Emulator, ns, callback string) error {
	const number = "+14255550177"
	step("one caller, %s, calling 4 times (rule repeat-callers: the 3rd call within 10m is rejected and blocks the caller for 1h)", number)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "    CALL\tDECISION\tRULE\tGRAPH ACTION")
	var ids []string
	var recs []*harness.Record
	for range 4 {
		id, err := emu.PlaceCall(ctx, callback, &graph.IdentitySet{Phone: &graph.Identity{ID: number}}, []string{"audio"})
		if err != nil {
			return err
		}
		rec, err := emu.WaitAction(ctx, id, 2*time.Second)
		if err != nil {
			return err
		}
		ids, recs = append(ids, id), append(recs, rec)
	}
	decisions, err := waitDecisions(ctx, c, ns, ids)
	if err != nil {
		return err
	}
	for i, id := range ids {
		d := decisions[id]
		rule, action := d.Rule, "none"
		if rule == "" {
			rule = "(default)"
		}
		if recs[i].Action != "" {
			action = recs[i].Action + " (" + recs[i].Reason + ")"
		}
		fmt.Fprintf(w, "    %d\t%s\t%s\t%s\n", i+1, d.Action, rule, action)
	}
	_ = w.Flush()
	if recs[2].Action != "reject" || decisions[ids[2]].Rule != "repeat-callers" {
		return fmt.Errorf("the third call of %s was not rejected by repeat-callers: %+v", number, decisions[ids[2]])
	}
	step("kubectl callpolicy blocks hotline -n %s -o wide   (one store: both receivers report the block)", ns)
	return show(ctx, c, "callpolicy", "blocks", "hotline", "-n", ns, "-o", "wide")
}

func waitDecisions(ctx context.Context, c *harness.Cluster, ns string, ids []string) (map[string]harness.Decision, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, err := c.Decisions(ctx, ns, "hotline")
		missing := 0
		for _, id := range ids {
			if _, ok := d[id]; !ok {
				missing++
			}
		}
		if err == nil && missing == 0 {
			return d, nil
		}
		if time.Now().After(deadline) {
			return d, fmt.Errorf("%d of %d calls have no decision log line after 10 s (%v)", missing, len(ids), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
