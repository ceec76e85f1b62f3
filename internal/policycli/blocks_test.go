package policycli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/callguard/callguard/api/v1alpha1"
)

// Blocks as the receivers list them at /blocks.
var (
	blockEarly  = `{"number":"****0123","rule":"robocallers","since":"2026-03-04T20:41:07Z","until":"2026-03-04T21:41:07Z"}`
	blockLate   = `{"number":"****0199","rule":"repeat-callers","since":"2026-03-04T20:45:00.5Z","until":"2026-03-05T20:45:00.5Z"}`
	blockMiddle = `{"number":"****4567","rule":"robocallers","since":"2026-03-04T20:50:00Z","until":"2026-03-04T21:50:00Z"}`
)

// blocksPod serves a receiver pod's /blocks and /blocks/unblock as the
// receivers' contract says, on podIP:0 until the test ends.
type blocksPod struct {
	port int
	// status, when set, is answered to every request with the receiver's
	// error body for a store that cannot be read.
	status int
	mu     sync.Mutex
	// unblocks are the bodies of the unblock requests.
	unblocks []string
}

func (p *blocksPod) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.unblocks...)
}

// serveBlocks serves lines at /blocks and answers every unblock with
// {"unblocked": lifted}, or with answer when it is not "".
func serveBlocks(t *testing.T, ip, lines string, lifted int, answer string) *blocksPod {
	t.Helper()
	bp := &blocksPod{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /blocks", func(w http.ResponseWriter, r *http.Request) {
		bp.mu.Lock()
		status := bp.status
		bp.mu.Unlock()
		if status != 0 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			fmt.Fprintln(w, `{"error":"state store: list blocks: dial tcp: connection refused"}`)
			return
		}
		w.Header().Set("Content-Type", "application/jsonl")
		fmt.Fprint(w, lines)
	})
	mux.HandleFunc("POST /blocks/unblock", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		bp.mu.Lock()
		bp.unblocks = append(bp.unblocks, r.Header.Get("Content-Type")+" "+string(body))
		bp.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if answer != "" {
			fmt.Fprint(w, answer)
			return
		}
		fmt.Fprintf(w, `{"unblocked":%d}`+"\n", lifted)
	})
	bp.port = servePodMux(t, ip, mux)
	return bp
}

// blockingSpec is the sample policy with a blockFor on its first rule that
// is not Allow.
func blockingSpec(t *testing.T) v1alpha1.CallPolicySpec {
	t.Helper()
	spec, _ := sampleSpec(t)
	for i := range spec.Rules {
		if spec.Rules[i].Action != v1alpha1.ActionAllow {
			spec.Rules[i].BlockFor = &metav1.Duration{Duration: time.Hour}
			return spec
		}
	}
	t.Fatal("the sample policy has only Allow rules")
	return spec
}

// TestBlocks lists the blocks of three receiver pods through the API
// server's pod proxy: two pods share a store (they list the same block),
// the third holds its own; a pending pod, one that does not answer and one
// that answers a bad line are reported on stderr.
func TestBlocks(t *testing.T) {
	cluster(t)
	ip := podIP(t)
	ns := newNamespace(t)
	spec := blockingSpec(t)
	stateless, _ := sampleSpec(t)

	a := serveBlocks(t, ip, blockLate+"\n"+blockEarly+"\n", 0, "")
	b := serveBlocks(t, ip, blockEarly+"\n"+blockLate+"\n", 0, "")
	c := serveBlocks(t, ip, blockMiddle+"\nnot json\n", 0, "")
	callPolicy(t, ns, "hotline", spec, "", "")
	receivers(t, ns, "hotline", ip, a.port, b.port, c.port, 0, freePort(t, ip))

	// A policy whose pods hold no blocks, one whose only pod does not
	// answer, and one without receivers.
	empty := serveBlocks(t, ip, "", 0, "")
	callPolicy(t, ns, "quiet", spec, "", "")
	receivers(t, ns, "quiet", ip, empty.port)
	callPolicy(t, ns, "dark", spec, "", "")
	receivers(t, ns, "dark", ip, freePort(t, ip))
	callPolicy(t, ns, "lonely", spec, "", "")
	// A policy that keeps no state: its pods answer 404, and are not asked.
	stateless404 := serveBlocks(t, ip, "", 0, "")
	callPolicy(t, ns, "plain", stateless, "", "")
	receivers(t, ns, "plain", ip, stateless404.port)
	// A pod that answers as a receiver does when it cannot read its store.
	refusing := serveBlocks(t, ip, "", 0, "")
	refusing.mu.Lock()
	refusing.status = http.StatusServiceUnavailable
	refusing.mu.Unlock()
	callPolicy(t, ns, "refused", spec, "", "")
	receivers(t, ns, "refused", ip, refusing.port)

	warnings := []string{
		"warning: pod hotline-callguard-c: cannot read its blocks: line 2 is not a block",
		"warning: pod hotline-callguard-d is Pending: skipped",
		"warning: pod hotline-callguard-e: cannot read its blocks:",
	}
	tests := []struct {
		name      string
		args      []string
		code      int
		stdout    string
		stderrHas []string
	}{
		{
			name: "table, one row a block, by until",
			args: []string{"blocks", "hotline", "-n", ns},
			stdout: "" +
				"NUMBER     RULE             SINCE                  UNTIL\n" +
				"****0123   robocallers      2026-03-04T20:41:07Z   2026-03-04T21:41:07Z\n" +
				"****4567   robocallers      2026-03-04T20:50:00Z   2026-03-04T21:50:00Z\n" +
				"****0199   repeat-callers   2026-03-04T20:45:00Z   2026-03-05T20:45:00Z\n",
			stderrHas: warnings,
		},
		{
			name: "wide: the pods that hold each block",
			args: []string{"blocks", "hotline", "-n", ns, "-o", "wide"},
			stdout: "" +
				"NUMBER     RULE             SINCE                  UNTIL                  PODS\n" +
				"****0123   robocallers      2026-03-04T20:41:07Z   2026-03-04T21:41:07Z   hotline-callguard-a,hotline-callguard-b\n" +
				"****4567   robocallers      2026-03-04T20:50:00Z   2026-03-04T21:50:00Z   hotline-callguard-c\n" +
				"****0199   repeat-callers   2026-03-04T20:45:00Z   2026-03-05T20:45:00Z   hotline-callguard-a,hotline-callguard-b\n",
			stderrHas: warnings,
		},
		{
			name: "json lines",
			args: []string{"blocks", "hotline", "-n", ns, "-o", "json"},
			stdout: `{"number":"****0123","rule":"robocallers","since":"2026-03-04T20:41:07Z","until":"2026-03-04T21:41:07Z","pods":["hotline-callguard-a","hotline-callguard-b"]}` + "\n" +
				`{"number":"****4567","rule":"robocallers","since":"2026-03-04T20:50:00Z","until":"2026-03-04T21:50:00Z","pods":["hotline-callguard-c"]}` + "\n" +
				`{"number":"****0199","rule":"repeat-callers","since":"2026-03-04T20:45:00.5Z","until":"2026-03-05T20:45:00.5Z","pods":["hotline-callguard-a","hotline-callguard-b"]}` + "\n",
			stderrHas: warnings,
		},
		{
			name: "yaml",
			args: []string{"blocks", "quiet", "-n", ns, "-o", "yaml"},
			// No blocks: nothing on stdout.
			stderrHas: []string{"No blocks found."},
		},
		{name: "no pod answers", args: []string{"blocks", "dark", "-n", ns}, code: 1, stderrHas: []string{"warning: pod dark-callguard-a: cannot read its blocks:"}},
		{name: "no receivers", args: []string{"blocks", "lonely", "-n", ns}, stderrHas: []string{`warning: CallPolicy "lonely" has no receiver pods (Deployment "lonely-callguard"`}},
		{name: "no blockFor rule", args: []string{"blocks", "plain", "-n", ns}, stderrHas: []string{`CallPolicy "plain" has no blockFor rule: no caller is under a block.`}},
		{name: "the receiver's own error", args: []string{"blocks", "refused", "-n", ns}, code: 1, stderrHas: []string{"warning: pod refused-callguard-a: cannot read its blocks: state store: list blocks: dial tcp: connection refused (HTTP 503)"}},
		{name: "no such policy", args: []string{"blocks", "nope", "-n", ns}, code: 1, stderrHas: []string{`error: CallPolicy "nope" not found in namespace "` + ns + `"`}},
		{name: "no name", args: []string{"blocks", "-n", ns}, code: 1, stderrHas: []string{"the NAME of a CallPolicy is required", "See 'kubectl callpolicy blocks --help' for usage."}},
		{name: "two names", args: []string{"blocks", "hotline", "dark", "-n", ns}, code: 1, stderrHas: []string{`error: unexpected argument "dark"`}},
		{name: "bad output", args: []string{"blocks", "hotline", "-o", "xml"}, code: 1, stderrHas: []string{`-o must be table, wide, json or yaml, got "xml"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := kubectl(t, context.Background(), tt.args...)
			checkRun(t, code, stdout, stderr, tt.code, tt.stdout, tt.stderrHas)
		})
	}

	// YAML: one document a block.
	code, stdout, stderr := kubectl(t, context.Background(), "blocks", "hotline", "-n", ns, "-o", "yaml")
	wantYAML := "---\nnumber: '****0123'\npods:\n- hotline-callguard-a\n- hotline-callguard-b\nrule: robocallers\nsince: \"2026-03-04T20:41:07Z\"\nuntil: \"2026-03-04T21:41:07Z\"\n---\n"
	if code != 0 || !strings.HasPrefix(stdout, wantYAML) || strings.Count(stdout, "---\n") != 3 {
		t.Errorf("-o yaml: exit %d, stdout:\n%s\nwant it to start with:\n%s\nstderr: %s", code, stdout, wantYAML, stderr)
	}
}

// TestUnblock asks every running receiver pod to lift blocks and adds up
// what they lifted; whether a pod that cannot be asked is an error depends
// on where the blocks live (spec.state.redis: one store; else each pod's).
func TestUnblock(t *testing.T) {
	cluster(t)
	ip := podIP(t)
	ns := newNamespace(t)
	spec := blockingSpec(t)
	stateless, _ := sampleSpec(t)
	shared := spec.DeepCopy()
	shared.State = &v1alpha1.StateSpec{Redis: &v1alpha1.RedisSpec{Address: "redis.telephony.svc:6379"}}

	// hotline: per-replica stores, two pods that answer.
	a := serveBlocks(t, ip, "", 2, "")
	b := serveBlocks(t, ip, "", 1, "")
	callPolicy(t, ns, "hotline", spec, "", "")
	receivers(t, ns, "hotline", ip, a.port, b.port, 0)

	// partial: per-replica stores, one pod does not answer.
	p := serveBlocks(t, ip, "", 1, "")
	callPolicy(t, ns, "partial", spec, "", "")
	receivers(t, ns, "partial", ip, p.port, freePort(t, ip))

	// shared: one Redis store, one pod does not answer, one answers
	// nonsense, one lifts.
	s := serveBlocks(t, ip, "", 3, "")
	bad := serveBlocks(t, ip, "", 0, `{"lifted":1}`)
	callPolicy(t, ns, "shared", *shared, "", "")
	receivers(t, ns, "shared", ip, s.port, freePort(t, ip), bad.port)

	// sharedDark: one Redis store and no pod answers.
	callPolicy(t, ns, "shared-dark", *shared, "", "")
	receivers(t, ns, "shared-dark", ip, freePort(t, ip))
	callPolicy(t, ns, "lonely", spec, "", "")
	plain := serveBlocks(t, ip, "", 5, "")
	callPolicy(t, ns, "plain", stateless, "", "")
	receivers(t, ns, "plain", ip, plain.port)

	tests := []struct {
		name      string
		args      []string
		code      int
		stdout    string
		stderrHas []string
		// pod and body: the request pod must have received.
		pod  *blocksPod
		body string
	}{
		{
			name:      "a number, normalized, to every running pod",
			args:      []string{"unblock", "hotline", "-n", ns, "--number", "+1 (425) 555-0123"},
			stdout:    "3 blocks lifted (hotline-callguard-a: 2, hotline-callguard-b: 1)\n",
			stderrHas: []string{"warning: pod hotline-callguard-c is Pending: skipped"},
			pod:       b, body: `application/json {"number":"+14255550123"}`,
		},
		{
			name:   "an identity id, as given",
			args:   []string{"unblock", "hotline", "-n", ns, "--id", "8F2C1A3B-0000-4000-8000-000000000001"},
			stdout: "3 blocks lifted (hotline-callguard-a: 2, hotline-callguard-b: 1)\n",
			pod:    a, body: `application/json {"id":"8F2C1A3B-0000-4000-8000-000000000001"}`,
		},
		{
			name:   "all",
			args:   []string{"unblock", "hotline", "-n", ns, "--all"},
			stdout: "3 blocks lifted (hotline-callguard-a: 2, hotline-callguard-b: 1)\n",
			pod:    a, body: `application/json {"all":true}`,
		},
		{
			name:      "per-replica stores: a pod not asked keeps its blocks",
			args:      []string{"unblock", "partial", "-n", ns, "--all"},
			code:      1,
			stdout:    "1 block lifted (partial-callguard-a: 1)\n",
			stderrHas: []string{"warning: pod partial-callguard-b: cannot lift its blocks:", "error: without spec.state.redis each pod holds its own blocks"},
			pod:       p, body: `application/json {"all":true}`,
		},
		{
			name:   "shared store: one pod that answers is enough",
			args:   []string{"unblock", "shared", "-n", ns, "--all"},
			stdout: "3 blocks lifted (shared-callguard-a: 3)\n",
			stderrHas: []string{
				"warning: pod shared-callguard-b: cannot lift its blocks:",
				`warning: pod shared-callguard-c: cannot lift its blocks: not an unblock answer: "{\"lifted\":1}"`,
			},
			pod: s, body: `application/json {"all":true}`,
		},
		{
			name:      "shared store: no pod answers",
			args:      []string{"unblock", "shared-dark", "-n", ns, "--number", "+14255550123"},
			code:      1,
			stdout:    "0 blocks lifted\n",
			stderrHas: []string{"error: no receiver pod could be asked: the blocks in spec.state.redis were not lifted"},
		},
		{name: "no receivers, no store: nothing to lift", args: []string{"unblock", "lonely", "-n", ns, "--all"}, stdout: "0 blocks lifted\n", stderrHas: []string{`warning: CallPolicy "lonely" has no receiver pods`}},
		{name: "no such policy", args: []string{"unblock", "nope", "-n", ns, "--all"}, code: 1, stderrHas: []string{`error: CallPolicy "nope" not found in namespace "` + ns + `"`}},
		{name: "no blockFor rule: no pod asked", args: []string{"unblock", "plain", "-n", ns, "--all"}, stdout: "0 blocks lifted\n", stderrHas: []string{`CallPolicy "plain" has no blockFor rule: no caller is under a block.`}},
		{name: "neither flag", args: []string{"unblock", "hotline", "-n", ns}, code: 1, stderrHas: []string{"error: give exactly one of --number, --id or --all", "See 'kubectl callpolicy unblock --help' for usage."}},
		{name: "two flags", args: []string{"unblock", "hotline", "-n", ns, "--all", "--number", "+14255550123"}, code: 1, stderrHas: []string{"error: give exactly one of --number, --id or --all"}},
		{name: "number and id", args: []string{"unblock", "hotline", "-n", ns, "--id", "x", "--number", "+14255550123"}, code: 1, stderrHas: []string{"error: give exactly one of --number, --id or --all"}},
		{name: "not a number", args: []string{"unblock", "hotline", "-n", ns, "--number", "call me"}, code: 1, stderrHas: []string{`error: --number "call me" is not a phone number`}},
		{name: "no name", args: []string{"unblock", "--all"}, code: 1, stderrHas: []string{"the NAME of a CallPolicy is required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before int
			if tt.pod != nil {
				before = len(tt.pod.requests())
			}
			code, stdout, stderr := kubectl(t, context.Background(), tt.args...)
			checkRun(t, code, stdout, stderr, tt.code, tt.stdout, tt.stderrHas)
			if tt.pod != nil {
				if got := tt.pod.requests()[before:]; len(got) != 1 || got[0] != tt.body {
					t.Errorf("the pod was sent %q, want [%q]", got, tt.body)
				}
			}
		})
	}
	// Usage errors reach no pod, nor does a policy without blockFor.
	if n := len(a.requests()); n != 3 {
		t.Errorf("pod hotline-callguard-a got %d unblock requests, want 3 (--number, --id and --all)", n)
	}
	if n := len(plain.requests()); n != 0 {
		t.Errorf("the pod of a policy without blockFor got %d unblock requests", n)
	}
}

// TestBlocksHelp prints each verb's usage on stdout with its RBAC needs.
func TestBlocksHelp(t *testing.T) {
	for verb, want := range map[string][]string{
		"blocks":  {"kubectl callpolicy blocks NAME", "get on\npods/proxy", "-o, --output string", "kubectl flags:", "--namespace"},
		"unblock": {"kubectl callpolicy unblock NAME", "RBAC: create on pods/proxy", "--number string", "--id string", "--all", "kubectl flags:"},
	} {
		var stdout, stderr strings.Builder
		if code := Run([]string{verb, "--help"}, nil, &stdout, &stderr); code != 0 || stderr.Len() != 0 {
			t.Errorf("%s --help: exit %d, stderr %s", verb, code, stderr.String())
		}
		for _, w := range want {
			if !strings.Contains(stdout.String(), w) {
				t.Errorf("%s --help:\n%s\ndoes not contain %q", verb, stdout.String(), w)
			}
		}
		stdout.Reset()
		if code := Run([]string{"help", verb}, nil, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), want[0]) {
			t.Errorf("help %s: exit %d, stdout %s", verb, code, stdout.String())
		}
	}
}

// FuzzParseBlocks reads whatever a pod answers without panicking: every
// block it returns has a rule and an end, and a body it cannot read at all
// is an error.
func FuzzParseBlocks(f *testing.F) {
	f.Add([]byte(blockEarly + "\n" + blockLate + "\n"))
	f.Add([]byte(blockMiddle + "\nnot json\n{}\n"))
	f.Add([]byte(`{"number":1,"rule":"r","until":"x"}`))
	f.Add([]byte(`{"unblocked":3}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		bs, err := parseBlocks(body)
		for _, b := range bs {
			if b.Rule == "" || b.Until.IsZero() {
				t.Errorf("block without a rule or an end: %+v", b)
			}
		}
		if bs == nil && err == nil && !onlySpaceLines(body) {
			t.Errorf("%q: no block and no error", body)
		}
		if n, err := parseUnblocked(body); err == nil && n < 0 {
			t.Errorf("%q: %d blocks lifted", body, n)
		}
	})
}

func onlySpaceLines(body []byte) bool {
	for _, l := range bytes.Split(body, []byte("\n")) {
		if len(bytes.TrimSpace(l)) > 0 {
			return false
		}
	}
	return true
}

// TestBlocksRBAC checks the RBAC the help and the docs give: blocks needs
// get on pods/proxy, unblock create on it, against the API server's own
// authorizer.
func TestBlocksRBAC(t *testing.T) {
	cluster(t)
	ip := podIP(t)
	ns := newNamespace(t)
	pod := serveBlocks(t, ip, blockEarly+"\n", 1, "")
	callPolicy(t, ns, "hotline", blockingSpec(t), "", "")
	receivers(t, ns, "hotline", ip, pod.port)

	reads := []rbacv1.PolicyRule{
		{APIGroups: []string{v1alpha1.GroupVersion.Group}, Resources: []string{"callpolicies"}, Verbs: []string{"get"}},
		{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"get"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}},
	}
	proxy := func(verbs ...string) rbacv1.PolicyRule {
		return rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods/proxy"}, Verbs: verbs}
	}
	users := map[string][]rbacv1.PolicyRule{
		"viewer": append(slices.Clone(reads), proxy("get")),
		"lifter": append(slices.Clone(reads), proxy("create")),
	}
	kubeconfigs := map[string]string{}
	for user, rules := range users {
		rbac := core.RbacV1()
		if _, err := rbac.Roles(ns).Create(context.Background(), &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: user}, Rules: rules}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := rbac.RoleBindings(ns).Create(context.Background(), &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: user},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: user},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: user}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		u, err := testEnv.AddUser(envtest.User{Name: user}, nil)
		if err != nil {
			t.Fatal(err)
		}
		kubeconfigs[user] = filepath.Join(t.TempDir(), "kubeconfig")
		if err := writeKubeconfig(u.Config(), kubeconfigs[user]); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		user      string
		args      []string
		code      int
		stdoutHas string
		stderrHas string
	}{
		{"viewer", []string{"blocks", "hotline"}, 0, "****0123", ""},
		{"viewer", []string{"unblock", "hotline", "--all"}, 1, "0 blocks lifted", `warning: pod hotline-callguard-a: cannot lift its blocks: pods "http:hotline-callguard-a:` + fmt.Sprint(pod.port) + `" is forbidden: User "viewer" cannot create resource "pods/proxy"`},
		{"lifter", []string{"unblock", "hotline", "--all"}, 0, "1 block lifted (hotline-callguard-a: 1)", ""},
		{"lifter", []string{"blocks", "hotline"}, 1, "", `warning: pod hotline-callguard-a: cannot read its blocks: pods "http:hotline-callguard-a:` + fmt.Sprint(pod.port) + `" is forbidden: User "lifter" cannot get resource "pods/proxy"`},
	}
	for _, tt := range tests {
		t.Run(tt.user+" "+tt.args[0], func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := Run(append(tt.args, "-n", ns, "--kubeconfig", kubeconfigs[tt.user]), nil, &stdout, &stderr)
			if code != tt.code || !strings.Contains(stdout.String(), tt.stdoutHas) || !strings.Contains(stderr.String(), tt.stderrHas) {
				t.Errorf("exit %d, want %d\nstdout: %s\nwant it to contain %q\nstderr: %s\nwant it to contain %q", code, tt.code, stdout.String(), tt.stdoutHas, stderr.String(), tt.stderrHas)
			}
		})
	}
}
