package policycli

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
	"github.com/callguard/callguard/internal/telemetry"
)

const statusSynopsis = `Show a CallPolicy's health and what its receivers did.

Usage:
  kubectl callpolicy status NAME [-n NAMESPACE] [-o table|json|yaml]

Prints the CallPolicy's conditions with their messages, the receiver
Deployment and Service and the callback URL, each receiver pod with the hash of
the policy it runs (and which pods disagree with status.policyHash), and, from
the receivers' metrics (read through the API server's pod proxy: get on
pods/proxy), the calls decided per rule and action, the Graph actions' results,
the inbound-token failures and the policy reloads, summed over the pods since
each started.

Exit status: 0 when the policy is Ready (for its current generation); 1 when
it is not, or on an error (it does not exist, the cluster cannot be reached),
as kubectl. The output format (-o) does not change the exit status.
`

// statusReport is what status prints; -o json and yaml print it as is.
type statusReport struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Ready is the Ready condition, True for the current generation.
	Ready              bool              `json:"ready"`
	Generation         int64             `json:"generation"`
	ObservedGeneration int64             `json:"observedGeneration"`
	Mode               string            `json:"mode"`
	Rules              int32             `json:"rules"`
	PolicyHash         string            `json:"policyHash,omitempty"`
	Receiver           receiverReport    `json:"receiver"`
	Conditions         []conditionReport `json:"conditions"`
	Pods               []podReport       `json:"pods"`
	// PodsDisagreeing names the pods whose live policy is not
	// status.policyHash.
	PodsDisagreeing []string        `json:"podsDisagreeing,omitempty"`
	Decisions       []decisionCount `json:"decisions"`
	GraphActions    []graphCount    `json:"graphActions"`
	AuthFailures    []authCount     `json:"authFailures"`
	Reloads         []reloadCount   `json:"policyReloads"`
	MetricsFrom     int             `json:"metricsFromPods"`
	rulesOrder      map[string]int
}

type receiverReport struct {
	Deployment    string `json:"deployment"`
	Service       string `json:"service,omitempty"`
	CallbackPath  string `json:"callbackPath,omitempty"`
	CallbackURL   string `json:"callbackURL,omitempty"`
	Replicas      int32  `json:"replicas"`
	ReadyReplicas int32  `json:"readyReplicas"`
}

type conditionReport struct {
	Type               string      `json:"type"`
	Status             string      `json:"status"`
	Reason             string      `json:"reason,omitempty"`
	Message            string      `json:"message,omitempty"`
	ObservedGeneration int64       `json:"observedGeneration,omitempty"`
	LastTransitionTime metav1.Time `json:"lastTransitionTime,omitzero"`
}

type podReport struct {
	Name  string `json:"name"`
	Phase string `json:"phase"`
	Ready bool   `json:"ready"`
	// PolicyHash is the hash of the pod's live policy, "" when unknown.
	PolicyHash string `json:"policyHash,omitempty"`
	// Current is whether PolicyHash is status.policyHash.
	Current bool `json:"current"`
	// Error says why the pod's metrics could not be read.
	Error string `json:"error,omitempty"`
}

type decisionCount struct {
	Rule   string `json:"rule"`
	Action string `json:"action"`
	Mode   string `json:"mode"`
	Calls  int64  `json:"calls"`
}

type graphCount struct {
	Operation string `json:"operation"`
	Result    string `json:"result"`
	Count     int64  `json:"count"`
}

type authCount struct {
	Reason string `json:"reason"`
	Count  int64  `json:"count"`
}

type reloadCount struct {
	Result string `json:"result"`
	Count  int64  `json:"count"`
}

func runStatus(s streams, args []string) int {
	c := newCommand(s, "status", statusSynopsis, true)
	out := c.outputFlag("table", "table", "json", "yaml")
	name, k, code, ok := c.policyVerb(args, out)
	if !ok {
		return code
	}
	cp, u, err := k.callPolicy(s.ctx, name)
	if err != nil {
		fmt.Fprintf(s.stderr, "error: %v\n", err)
		return exitError
	}
	r := newStatusReport(cp, u)
	dep, err := k.core.AppsV1().Deployments(k.namespace).Get(s.ctx, r.Receiver.Deployment, metav1.GetOptions{})
	var pods []corev1.Pod
	switch {
	case apierrors.IsNotFound(err):
		fmt.Fprintf(s.stderr, "warning: receiver Deployment %q not found\n", r.Receiver.Deployment)
	case err != nil:
		fmt.Fprintf(s.stderr, "error: get Deployment %q: %v\n", r.Receiver.Deployment, err)
		return exitError
	default:
		if pods, err = k.podsOf(s.ctx, dep); err != nil {
			fmt.Fprintf(s.stderr, "error: %v\n", err)
			return exitError
		}
	}
	r.addPods(s, k, pods)

	var buf bytes.Buffer
	switch out.value {
	case "json":
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			fmt.Fprintf(s.stderr, "error: %v\n", err)
			return exitError
		}
		buf.Write(b)
		buf.WriteByte('\n')
	case "yaml":
		b, err := yaml.Marshal(r)
		if err != nil {
			fmt.Fprintf(s.stderr, "error: %v\n", err)
			return exitError
		}
		buf.Write(b)
	default:
		r.writeText(&buf)
	}
	if _, err := s.stdout.Write(buf.Bytes()); err != nil {
		fmt.Fprintf(s.stderr, "error: write status: %v\n", err)
		return exitError
	}
	if !r.Ready {
		return exitError
	}
	return exitOK
}

func newStatusReport(cp *v1alpha1.CallPolicy, u *unstructured.Unstructured) *statusReport {
	st := &cp.Status
	r := &statusReport{
		Namespace:          cp.Namespace,
		Name:               cp.Name,
		Generation:         cp.Generation,
		ObservedGeneration: st.ObservedGeneration,
		Mode:               string(cmp.Or(cp.Spec.Mode, v1alpha1.ModeEnforce)),
		Rules:              st.Rules,
		PolicyHash:         st.PolicyHash,
		Receiver: receiverReport{
			Deployment:    deploymentName(cp.Name),
			Service:       st.Receiver.Service,
			CallbackPath:  st.Receiver.CallbackPath,
			Replicas:      st.Receiver.Replicas,
			ReadyReplicas: st.Receiver.ReadyReplicas,
		},
		Conditions:   []conditionReport{},
		Pods:         []podReport{},
		Decisions:    []decisionCount{},
		GraphActions: []graphCount{},
		AuthFailures: []authCount{},
		Reloads:      []reloadCount{},
		rulesOrder:   map[string]int{},
	}
	// Newer operators report the callback URL an Ingress or HTTPRoute
	// gives; read it whether or not this plugin's types know the field.
	r.Receiver.CallbackURL, _, _ = unstructured.NestedString(u.Object, "status", "receiver", "callbackURL")
	for i, rule := range cp.Spec.Rules {
		r.rulesOrder[rule.Name] = i
	}
	for _, c := range st.Conditions {
		r.Conditions = append(r.Conditions, conditionReport{
			Type: c.Type, Status: string(c.Status), Reason: c.Reason, Message: c.Message,
			ObservedGeneration: c.ObservedGeneration, LastTransitionTime: c.LastTransitionTime,
		})
		if c.Type == "Ready" {
			r.Ready = c.Status == metav1.ConditionTrue && (c.ObservedGeneration == 0 || c.ObservedGeneration >= cp.Generation)
		}
	}
	return r
}

// podMetrics is what one pod's /metrics says.
type podMetrics struct {
	hash string
	fams map[string]*dto.MetricFamily
	err  error
}

// addPods reads every running pod's metrics and adds the pods and the
// summed counters to the report.
func (r *statusReport) addPods(s streams, k *kube, pods []corev1.Pod) {
	results := make([]podMetrics, len(pods))
	var wg sync.WaitGroup
	for i := range pods {
		if !running(&pods[i]) {
			continue
		}
		wg.Go(func() {
			body, err := k.proxyGet(s.ctx, &pods[i], "metrics", nil, metricsAccept)
			if err != nil {
				results[i].err = err
				return
			}
			parser := expfmt.NewTextParser(model.UTF8Validation)
			fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
			if err != nil {
				results[i].err = fmt.Errorf("read metrics: %w", err)
				return
			}
			results[i].fams = fams
			results[i].hash = policyHashOf(fams)
		})
	}
	wg.Wait()

	decisions := map[decisionCount]int64{}
	graph := map[graphCount]int64{}
	auth := map[string]int64{}
	reloads := map[string]int64{}
	for i := range pods {
		pod, m := &pods[i], results[i]
		pr := podReport{Name: pod.Name, Phase: phaseOf(pod), Ready: podReady(pod), PolicyHash: m.hash}
		pr.Current = m.hash != "" && m.hash == r.PolicyHash
		switch {
		case !running(pod):
			pr.Error = "not running"
		case m.err != nil:
			pr.Error = m.err.Error()
			fmt.Fprintf(s.stderr, "warning: pod %s: cannot read its metrics: %v\n", pod.Name, m.err)
		case m.hash == "":
			pr.Error = "no live policy"
		}
		if running(pod) && !pr.Current {
			r.PodsDisagreeing = append(r.PodsDisagreeing, pod.Name)
		}
		r.Pods = append(r.Pods, pr)
		if m.fams == nil {
			continue
		}
		r.MetricsFrom++
		sum(m.fams[telemetry.MetricDecisions], func(l map[string]string, v int64) {
			decisions[decisionCount{Rule: l["rule"], Action: l["action"], Mode: l["mode"]}] += v
		})
		sum(m.fams[telemetry.MetricGraphActions], func(l map[string]string, v int64) {
			graph[graphCount{Operation: l["operation"], Result: l["result"]}] += v
		})
		sum(m.fams[telemetry.MetricAuthFailures], func(l map[string]string, v int64) { auth[l["reason"]] += v })
		sum(m.fams[telemetry.MetricPolicyReloads], func(l map[string]string, v int64) { reloads[l["result"]] += v })
	}

	for k, v := range decisions {
		k.Calls = v
		r.Decisions = append(r.Decisions, k)
	}
	slices.SortFunc(r.Decisions, func(a, b decisionCount) int {
		return cmp.Or(cmp.Compare(r.ruleIndex(a.Rule), r.ruleIndex(b.Rule)), strings.Compare(a.Rule, b.Rule),
			strings.Compare(a.Action, b.Action), strings.Compare(a.Mode, b.Mode))
	})
	for k, v := range graph {
		k.Count = v
		r.GraphActions = append(r.GraphActions, k)
	}
	slices.SortFunc(r.GraphActions, func(a, b graphCount) int {
		return cmp.Or(strings.Compare(a.Operation, b.Operation), strings.Compare(a.Result, b.Result))
	})
	for _, k := range slices.Sorted(maps.Keys(auth)) {
		r.AuthFailures = append(r.AuthFailures, authCount{Reason: k, Count: auth[k]})
	}
	for _, k := range slices.Sorted(maps.Keys(reloads)) {
		r.Reloads = append(r.Reloads, reloadCount{Result: k, Count: reloads[k]})
	}
}

// ruleIndex orders rules as the policy does, rules it no longer has after
// them, and the default last.
func (r *statusReport) ruleIndex(rule string) int {
	if rule == "" {
		return 1 << 30
	}
	if i, ok := r.rulesOrder[rule]; ok {
		return i
	}
	return 1<<30 - 1
}

// policyHashOf is the hash label of the policy_info gauge that is 1.
func policyHashOf(fams map[string]*dto.MetricFamily) string {
	f := fams[telemetry.MetricPolicyInfo]
	if f == nil {
		return ""
	}
	for _, m := range f.GetMetric() {
		if m.GetGauge().GetValue() == 1 {
			for _, l := range m.GetLabel() {
				if l.GetName() == "hash" {
					return l.GetValue()
				}
			}
		}
	}
	return ""
}

// sum calls add with the labels and value of each counter of a family.
func sum(f *dto.MetricFamily, add func(labels map[string]string, v int64)) {
	for _, m := range f.GetMetric() {
		labels := make(map[string]string, len(m.GetLabel()))
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		add(labels, int64(m.GetCounter().GetValue()))
	}
}

// writeText prints the report for people.
func (r *statusReport) writeText(w *bytes.Buffer) {
	ready := "Not ready"
	if r.Ready {
		ready = "Ready"
	} else if cond := r.condition("Ready"); cond != nil && cond.Status == "True" {
		ready = fmt.Sprintf("Not ready (Ready=True is for generation %d; the policy is at generation %d)", cond.ObservedGeneration, r.Generation)
	}
	fmt.Fprintf(w, "CallPolicy %s/%s: %s\n", r.Namespace, r.Name, ready)
	hash := "none applied yet"
	if r.PolicyHash != "" {
		hash = policy.ShortHash(r.PolicyHash)
	}
	fmt.Fprintf(w, "  generation %d (observed %d), mode %s, %s, policy %s\n", r.Generation, r.ObservedGeneration, r.Mode, plural(int(r.Rules), "rule"), hash)

	w.WriteString("\nConditions:\n")
	rows := [][]string{{"TYPE", "STATUS", "REASON", "MESSAGE"}}
	for _, c := range r.Conditions {
		rows = append(rows, []string{c.Type, c.Status, orDash(c.Reason), oneLine(c.Message)})
	}
	indentTable(w, rows, "(none reported yet)")

	w.WriteString("\nReceiver:\n")
	fmt.Fprintf(w, "  Deployment %s: %d/%d ready", r.Receiver.Deployment, r.Receiver.ReadyReplicas, r.Receiver.Replicas)
	if r.Receiver.Service != "" {
		fmt.Fprintf(w, ", Service %s", r.Receiver.Service)
	}
	if r.Receiver.CallbackPath != "" {
		fmt.Fprintf(w, ", callback path %s", r.Receiver.CallbackPath)
	}
	w.WriteString("\n")
	if r.Receiver.CallbackURL != "" {
		fmt.Fprintf(w, "  Callback URL: %s\n", r.Receiver.CallbackURL)
	}

	w.WriteString("\nPods:\n")
	rows = [][]string{{"NAME", "PHASE", "READY", "POLICY"}}
	for _, p := range r.Pods {
		running := "-"
		switch {
		case p.Current:
			running = policy.ShortHash(p.PolicyHash) + " (current)"
		case p.PolicyHash != "":
			running = policy.ShortHash(p.PolicyHash) + " (DIFFERS from status.policyHash)"
		case p.Error != "":
			running = "unknown: " + oneLine(p.Error)
		}
		rows = append(rows, []string{p.Name, p.Phase, fmt.Sprint(p.Ready), running})
	}
	indentTable(w, rows, "(no receiver pods)")
	running := 0
	for _, p := range r.Pods {
		if p.Phase == string(corev1.PodRunning) {
			running++
		}
	}
	switch {
	case len(r.PodsDisagreeing) > 0:
		fmt.Fprintf(w, "  %d of %d running pods do not run status.policyHash %s: %s\n", len(r.PodsDisagreeing), running, policy.ShortHash(r.PolicyHash), strings.Join(r.PodsDisagreeing, ", "))
	case running == 1:
		w.WriteString("  the running pod runs status.policyHash\n")
	case running > 1:
		fmt.Fprintf(w, "  all %d running pods run status.policyHash\n", running)
	}

	fmt.Fprintf(w, "\nDecisions (since each pod started, summed over %s):\n", plural(r.MetricsFrom, "pod"))
	rows = [][]string{{"RULE", "ACTION", "MODE", "CALLS"}}
	for _, d := range r.Decisions {
		rows = append(rows, []string{ruleName(d.Rule), d.Action, d.Mode, fmt.Sprint(d.Calls)})
	}
	indentTable(w, rows, "(none)")

	w.WriteString("\nGraph actions:\n")
	rows = [][]string{{"OPERATION", "RESULT", "COUNT"}}
	for _, g := range r.GraphActions {
		rows = append(rows, []string{g.Operation, g.Result, fmt.Sprint(g.Count)})
	}
	indentTable(w, rows, "(none)")

	w.WriteString("\nAuth failures:\n")
	rows = [][]string{{"REASON", "COUNT"}}
	for _, a := range r.AuthFailures {
		rows = append(rows, []string{a.Reason, fmt.Sprint(a.Count)})
	}
	indentTable(w, rows, "(none)")

	w.WriteString("\nPolicy reloads:\n")
	rows = [][]string{{"RESULT", "COUNT"}}
	for _, l := range r.Reloads {
		rows = append(rows, []string{l.Result, fmt.Sprint(l.Count)})
	}
	indentTable(w, rows, "(none)")
}

func (r *statusReport) condition(t string) *conditionReport {
	for i := range r.Conditions {
		if r.Conditions[i].Type == t {
			return &r.Conditions[i]
		}
	}
	return nil
}

// indentTable writes rows aligned and indented, or the placeholder when
// there is only the header.
func indentTable(w *bytes.Buffer, rows [][]string, empty string) {
	if len(rows) <= 1 {
		fmt.Fprintf(w, "  %s\n", empty)
		return
	}
	var b bytes.Buffer
	// Written to a buffer first: a placeholder or the rows are all there is.
	_ = newTable(&b, rows[0]...).print(rows[1:])
	for _, line := range strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n") {
		// An empty last cell (a condition without a message) leaves padding.
		w.WriteString("  " + strings.TrimRight(line, " ") + "\n")
	}
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
