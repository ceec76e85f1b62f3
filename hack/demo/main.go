// Command demo shows callguard working on the local cluster: it runs the
// Graph emulator, applies a CallPolicy exposed through the cluster's ingress
// controller (spec.receiver.expose.ingress), places scripted calls to its
// public https callback URL, changes the policy with kubectl and measures how
// long the change takes to be enforced. `make demo` runs it after bringing
// the cluster, its add-ons (hack/local-cluster/addons.sh) and the operator up.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
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
	host := pub.Host("hotline")
	// The emulator delivers to the public URL: host dialled at the ingress
	// address (no DNS names it), the ingress CA trusted. Restarted so that
	// one started without those flags is not reused.
	harness.StopEmulator(stateDir)
	step("starting the Graph emulator on %s (it delivers to https://%s through the ingress at %s)", listen, host, pub.Address)
	emu, err := harness.StartEmulator(ctx, emulatorBin, listen, stateDir, pub.EmulatorArgs(host)...)
	if err != nil {
		return err
	}
	step("applying the hotline CallPolicy (exposed at https://%s by an Ingress), its credentials, blocklist and TLS Secret in namespace %s", host, ns)
	if err := c.EnsureNamespace(ctx, ns); err != nil {
		return err
	}
	tlsSecret, err := pub.TLSSecret(ns, "hotline-tls")
	if err != nil {
		return err
	}
	objs := harness.DemoObjects(ns, emu, 2)
	for _, o := range objs {
		if cp, ok := o.(*callsv1alpha1.CallPolicy); ok {
			ingress.Expose(cp, host, tlsSecret.Name)
		}
	}
	if err := c.Apply(ctx, append([]client.Object{tlsSecret}, objs...)...); err != nil {
		return err
	}
	t0 := time.Now()
	step("waiting for the policy to be Ready (receivers running and passing their probes)")
	cp, err := c.WaitReady(ctx, ns, "hotline", 3*time.Minute)
	if err != nil {
		return err
	}
	fmt.Printf("    Ready after %s: %d rules, policy %s, %d/%d receivers\n", time.Since(t0).Round(time.Millisecond),
		cp.Status.Rules, short(cp.Status.PolicyHash), cp.Status.Receiver.ReadyReplicas, cp.Status.Receiver.Replicas)
	callback, err := ingress.WaitCallbackURL(ctx, c, ns, "hotline", time.Minute)
	if err != nil {
		return err
	}
	fmt.Printf("    public callback URL (status.receiver.callbackURL, the bot's calling webhook): %s\n", callback)
	if err := pub.WaitReachable(ctx, callback, time.Minute); err != nil {
		return err
	}
	step("placing %d calls through the emulator to %s", len(harness.Scenarios()), callback)
	before, err := placeAll(ctx, c, emu, ns, callback)
	if err != nil {
		return err
	}
	printTable(before, nil)

	step("changing the policy with kubectl: reject UK mobiles (+447…) first, and send video callers to the default")
	oldHash := cp.Status.PolicyHash
	patch := `[{"op":"add","path":"/spec/rules/0","value":{"name":"uk-mobiles","action":"Reject","reason":"busy","match":{"callers":{"numberPrefixes":["+447"]}}}},` +
		`{"op":"remove","path":"/spec/rules/4"}]`
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
	after, err := placeAll(ctx, c, emu, ns, callback)
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

func placeAll(ctx context.Context, c *harness.Cluster, emu *harness.Emulator, ns, callback string) ([]row, error) {
	var rows []row
	for _, s := range harness.Scenarios() {
		id, err := emu.PlaceCall(ctx, callback, s.Source, s.Modalities)
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
	header := "CALLER\tKIND\tDECISION\tRULE\tGRAPH ACTION\tNOTIFICATION→ACTION"
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
			latency = fmt.Sprintf("%.1f ms", float64(r.record.LatencyNs.Microseconds())/1000)
		} else if r.record.Missed {
			action = "missed"
		}
		line := strings.Join([]string{r.s.Caller, r.s.Kind, decision, rule, action, latency}, "\t")
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
