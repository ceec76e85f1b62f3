package policycli

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/policy"
	"github.com/callguard/callguard/internal/state"
)

const blocksSynopsis = `List the callers under a temporary block (blockFor).

Usage:
  kubectl callpolicy blocks NAME [-n NAMESPACE] [-o table|wide|json|yaml]

Every running receiver pod of the CallPolicy NAME (the pods of the Deployment
NAME-callguard) is asked for the blocks its state store holds, through the API
server's pod proxy, so kubectl's own authentication and RBAC apply (get on
pods/proxy, as for decisions). With spec.state.redis every pod answers from the
same store; without it each pod holds the blocks of the calls it decided
itself. The answers are merged (a block reported by several pods is listed
once) and sorted by when the block ends. Numbers are masked to their last 4
digits: the store keeps no phone number. A pod that cannot be reached is
reported on stderr and the others are still shown.

-o table (the default) prints NUMBER, RULE, SINCE and UNTIL (UTC); -o wide adds
PODS, the pods that reported the block; -o json prints one JSON object a line
({"number","rule","since","until","pods"}); -o yaml one document a block.

Exit status: 0, or 1 (as kubectl) when no pod could be read, the CallPolicy
does not exist or the cluster cannot be reached.
`

const unblockSynopsis = `Lift temporary blocks (blockFor) before they end.

Usage:
  kubectl callpolicy unblock NAME [-n NAMESPACE] (--number E164 | --id ID | --all)

--number lifts every block of the caller with this number (under any rule),
--id those of a caller known by its identity id (a user, guest or
application: blocks lists it as is), --all every block of the policy. The
request goes to every running receiver pod of the CallPolicy NAME through the
API server's pod proxy, since without spec.state.redis each pod holds its own
blocks. RBAC: create on pods/proxy (a POST through the proxy; get, which
blocks and decisions need, does not allow it), get on callpolicies and
deployments, list on pods. It prints how many blocks were lifted, in total and
per pod.

Exit status: 0; 1 (as kubectl) on a usage error, when the CallPolicy does not
exist or the cluster cannot be reached, or when a pod that may hold blocks
could not be asked: with spec.state.redis, when no pod could be asked;
without it, when any running pod could not be.
`

// unblockPath is the receivers' endpoint that lifts blocks.
const unblockPath = "blocks/unblock"

// block is a temporary block as the receivers list it, with the pods that
// reported it.
type block struct {
	state.Block
	Pods []string `json:"pods"`
}

// blockKey identifies a block across pods: with a shared store every pod
// lists the same ones.
type blockKey struct {
	number, rule string
	since, until int64
}

func runBlocks(s streams, args []string) int {
	c := newCommand(s, "blocks", blocksSynopsis, true)
	out := c.outputFlag("table", "table", "wide", "json", "yaml")
	name, k, code, ok := c.policyVerb(args, out)
	if !ok {
		return code
	}
	_, results, code, ok := k.askBlockKeepers(s, name, func(ctx context.Context, pod *corev1.Pod) ([]byte, error) {
		return k.proxyGet(ctx, pod, "blocks", nil, "application/jsonl, */*")
	})
	if !ok {
		return code
	}
	merged := map[blockKey]*block{}
	read := 0
	for _, r := range results {
		var bs []state.Block
		if r.err == nil {
			bs, r.err = parseBlocks(r.body)
		}
		if r.err != nil {
			fmt.Fprintf(s.stderr, "warning: pod %s: cannot read its blocks: %v\n", r.pod, r.err)
		}
		if r.err == nil || bs != nil {
			read++
		}
		for _, b := range bs {
			key := blockKey{number: b.Masked, rule: b.Rule, since: b.Since.UnixNano(), until: b.Until.UnixNano()}
			if m, ok := merged[key]; ok {
				m.Pods = append(m.Pods, r.pod)
				continue
			}
			merged[key] = &block{Block: b, Pods: []string{r.pod}}
		}
	}
	list := make([]*block, 0, len(merged))
	for _, b := range merged {
		list = append(list, b)
	}
	slices.SortFunc(list, func(a, b *block) int {
		return cmp.Or(a.Until.Compare(b.Until), strings.Compare(a.Masked, b.Masked),
			strings.Compare(a.Rule, b.Rule), a.Since.Compare(b.Since))
	})
	if err := printBlocks(s.stdout, out.value, list); err != nil {
		fmt.Fprintf(s.stderr, "error: write blocks: %v\n", err)
		return exitError
	}
	if len(results) > 0 && read == 0 {
		return exitError
	}
	if len(list) == 0 && len(results) > 0 {
		fmt.Fprintln(s.stderr, "No blocks found.")
	}
	return exitOK
}

// parseBlocks reads a pod's JSON lines. A line that cannot be read is an
// error after the lines that could.
func parseBlocks(body []byte) ([]state.Block, error) {
	return parseJSONLines(body, "block", func(b *state.Block, _ []byte) bool { return b.Rule != "" && !b.Until.IsZero() })
}

// parseJSONLines reads a pod's JSON lines, objects each, into Ts that valid
// accepts (it may complete them from the line). A line that cannot be read
// is an error after the lines that could; when none could, the error alone.
func parseJSONLines[T any](body []byte, what string, valid func(v *T, line []byte) bool) ([]T, error) {
	var (
		vs  []T
		bad int
		err error
	)
	for n, line := range bytes.Split(body, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		var v T
		if e := json.Unmarshal(line, &v); e != nil || line[0] != '{' || !valid(&v, line) {
			if bad == 0 {
				err = fmt.Errorf("line %d is not a %s: %.80q", n+1, what, line)
			}
			bad++
			continue
		}
		vs = append(vs, v)
	}
	if bad > 1 {
		err = fmt.Errorf("%w (and %d more)", err, bad-1)
	}
	if vs == nil && err != nil {
		return nil, err
	}
	return vs, err
}

func printBlocks(w io.Writer, format string, list []*block) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		for _, b := range list {
			if err := enc.Encode(b); err != nil {
				return err
			}
		}
		return nil
	case "yaml":
		var buf bytes.Buffer
		for _, b := range list {
			y, err := yaml.Marshal(b)
			if err != nil {
				return err
			}
			buf.WriteString("---\n")
			buf.Write(y)
		}
		_, err := w.Write(buf.Bytes())
		return err
	}
	wide := format == "wide"
	header := []string{"NUMBER", "RULE", "SINCE", "UNTIL"}
	if wide {
		header = append(header, "PODS")
	}
	rows := make([][]string, len(list))
	for i, b := range list {
		rows[i] = []string{orDash(b.Masked), b.Rule, blockTime(b.Since), blockTime(b.Until)}
		if wide {
			rows[i] = append(rows[i], strings.Join(b.Pods, ","))
		}
	}
	return newTable(w, header...).print(rows)
}

func blockTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func runUnblock(s streams, args []string) int {
	c := newCommand(s, "unblock", unblockSynopsis, true)
	var (
		number, id string
		all        bool
	)
	c.flags.StringVar(&number, "number", "", "lift the blocks of the caller with this phone number")
	c.flags.StringVar(&id, "id", "", "lift the blocks of the caller with this identity id")
	c.flags.BoolVar(&all, "all", false, "lift every block of the policy")
	rest, code, ok := c.parse(args)
	if !ok {
		return code
	}
	switch {
	case len(rest) == 0:
		c.usageError("the NAME of a CallPolicy is required")
		return exitError
	case len(rest) > 1:
		fmt.Fprintf(s.stderr, "error: unexpected argument %q\n", rest[1])
		return exitError
	case countTrue(number != "", id != "", all) != 1:
		c.usageError("give exactly one of --number, --id or --all")
		return exitError
	}
	name := rest[0]
	var req []byte
	switch {
	case all:
		req = []byte(`{"all":true}`)
	case id != "":
		req, _ = json.Marshal(map[string]string{"id": id})
	default:
		// The store knows callers by their normalized number.
		n, ok := policy.NormalizeNumber(number)
		if !ok {
			c.usageError("--number %q is not a phone number", number)
			return exitError
		}
		req, _ = json.Marshal(map[string]string{"number": n})
	}
	k, err := c.clients()
	if err != nil {
		fmt.Fprintf(s.stderr, "error: %v\n", err)
		return exitError
	}
	cp, results, code, ok := k.askBlockKeepers(s, name, func(ctx context.Context, pod *corev1.Pod) ([]byte, error) {
		return k.proxyPost(ctx, pod, unblockPath, req)
	})
	if !ok {
		if cp != nil {
			fmt.Fprintln(s.stdout, "0 blocks lifted")
		}
		return code
	}
	shared := cp.Spec.State != nil && cp.Spec.State.Redis != nil
	total, asked, failed := 0, 0, 0
	var per []string
	for _, r := range results {
		var n int
		if r.err == nil {
			n, r.err = parseUnblocked(r.body)
		}
		if r.err != nil {
			failed++
			fmt.Fprintf(s.stderr, "warning: pod %s: cannot lift its blocks: %v\n", r.pod, r.err)
			continue
		}
		asked++
		total += n
		per = append(per, fmt.Sprintf("%s: %d", r.pod, n))
	}
	line := plural(total, "block") + " lifted"
	if len(per) > 0 {
		line += " (" + strings.Join(per, ", ") + ")"
	}
	if _, err := fmt.Fprintln(s.stdout, line); err != nil {
		return exitError
	}
	switch {
	case shared && asked == 0:
		fmt.Fprintln(s.stderr, "error: no receiver pod could be asked: the blocks in spec.state.redis were not lifted")
		return exitError
	case !shared && failed > 0:
		fmt.Fprintln(s.stderr, "error: without spec.state.redis each pod holds its own blocks: those of the pods above were not lifted")
		return exitError
	}
	return exitOK
}

// askBlockKeepers asks every running receiver pod of the policy with ask
// (see eachRunningPod), when its receivers may hold blocks. When it returns
// !ok the command ends with code: on an error (cp nil), or when the
// receivers keep no blocks, so that there is nothing to ask them.
func (k *kube) askBlockKeepers(s streams, name string, ask func(context.Context, *corev1.Pod) ([]byte, error)) (cp *v1alpha1.CallPolicy, results []podResult, code int, ok bool) {
	cp, _, err := k.callPolicy(s.ctx, name)
	if err != nil {
		fmt.Fprintf(s.stderr, "error: %v\n", err)
		return nil, nil, exitError, false
	}
	if !keepsBlocks(&cp.Spec) {
		fmt.Fprintf(s.stderr, "CallPolicy %q has no blockFor rule: no caller is under a block.\n", name)
		return cp, nil, exitOK, false
	}
	results, err = k.eachRunningPod(s.ctx, name, stderrWarn(s), ask)
	if err != nil {
		fmt.Fprintf(s.stderr, "error: %v\n", err)
		return nil, nil, exitError, false
	}
	return cp, results, exitOK, true
}

// keepsBlocks reports whether the policy's receivers may hold blocks: a
// rule puts callers under one, or the policy has a shared store, which may
// still hold those of an earlier version.
func keepsBlocks(spec *v1alpha1.CallPolicySpec) bool {
	return spec.State != nil && spec.State.Redis != nil ||
		slices.ContainsFunc(spec.Rules, func(r v1alpha1.Rule) bool { return r.BlockFor != nil })
}

func countTrue(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// parseUnblocked reads a receiver's {"unblocked": N}.
func parseUnblocked(body []byte) (int, error) {
	var resp struct {
		Unblocked *int `json:"unblocked"`
	}
	if err := json.Unmarshal(body, &resp); err != nil || resp.Unblocked == nil || *resp.Unblocked < 0 {
		return 0, fmt.Errorf("not an unblock answer: %.80q", bytes.TrimSpace(body))
	}
	return *resp.Unblocked, nil
}

// podResult is what one pod answered.
type podResult struct {
	pod  string
	body []byte
	err  error
}

// eachRunningPod calls ask on every running receiver pod of the policy at
// once, through the API server's pod proxy, and returns their answers in pod
// name order. Pods that are not running are skipped with a warning about the
// pod; a policy without receiver pods gets a warning about pod "" and nil
// results.
func (k *kube) eachRunningPod(ctx context.Context, policyName string, warn func(pod, msg string), ask func(context.Context, *corev1.Pod) ([]byte, error)) ([]podResult, error) {
	pods, err := k.receiverPods(ctx, policyName)
	if err != nil {
		return nil, err
	}
	if len(pods) == 0 {
		warn("", fmt.Sprintf("CallPolicy %q has no receiver pods (Deployment %q in namespace %q)", policyName, deploymentName(policyName), k.namespace))
		return nil, nil
	}
	up := make([]*corev1.Pod, 0, len(pods))
	for i := range pods {
		if !running(&pods[i]) {
			warn(pods[i].Name, fmt.Sprintf("pod %s is %s: skipped", pods[i].Name, phaseOf(&pods[i])))
			continue
		}
		up = append(up, &pods[i])
	}
	results := make([]podResult, len(up))
	var wg sync.WaitGroup
	for i, pod := range up {
		results[i].pod = pod.Name
		wg.Go(func() { results[i].body, results[i].err = ask(ctx, pod) })
	}
	wg.Wait()
	return results, nil
}

// stderrWarn writes warnings to stderr.
func stderrWarn(s streams) func(pod, msg string) {
	return func(_, msg string) { fmt.Fprintf(s.stderr, "warning: %s\n", msg) }
}
