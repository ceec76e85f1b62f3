package policycli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
)

// numberCallID is the id of the call --number makes up.
const numberCallID = "callpolicy-test"

const testSynopsis = `Decide calls with a CallPolicy.

Usage:
  kubectl callpolicy test -f POLICY.yaml [-f MORE.yaml ...] (--notification FILE | --number E164 | --call FILE) [--at RFC3339] [--tenant ID] [-o json|table]
  kubectl callpolicy test NAME [-n NAMESPACE] (--notification FILE | --number E164 | --call FILE) [--at RFC3339] [--tenant ID] [-o json|table]

With -f the policy comes from files holding one CallPolicy and the ConfigMaps
its numberLists name ("-" reads stdin), offline. With NAME it is the CallPolicy
NAME as it is in the cluster, with the ConfigMaps it references. Either way it
is compiled and evaluated by the same code as the receiver's, and one decision
is printed per call: every created, incoming call of a Graph notification, one
Graph call resource, or a PSTN audio call from --number.

--at is the calls' arrival time: schedules, and number list entries that end
with expires=, are judged at it. An Announce decision carries its prompt (the
sha256 of a WAV file kept in a ConfigMap, or its URL) and maxSeconds: under
"announce" in JSON and YAML, as PROMPT and MAX SECONDS in the table.

Exit status: 0 when it decided; 2 when the policy or the call cannot be read
or compiled (the reason on stderr, with the file and field path); 1 on other
errors (usage, a cluster that cannot be reached), as kubectl.
`

func runTest(s streams, args []string) int {
	c := newCommand(s, "test", testSynopsis, true)
	var (
		fs                  []string
		notification, callF string
		number, at, tenant  string
	)
	c.flags.StringArrayVarP(&fs, "filename", "f", nil, "policy file (repeatable; - is stdin)")
	c.flags.StringVar(&notification, "notification", "", "Graph commsNotifications JSON body (- is stdin)")
	c.flags.StringVar(&callF, "call", "", "one Graph call resource JSON (- is stdin)")
	c.flags.StringVar(&number, "number", "", "decide a PSTN audio call from this number")
	c.flags.StringVar(&at, "at", "", "arrival time, RFC 3339, for schedules and number list entries with expires= (default now)")
	c.flags.StringVar(&tenant, "tenant", "", "the tenant the calls arrive in, for match.tenants (default none: such rules do not match)")
	out := c.outputFlag("json", "json", "table", "yaml")
	rest, code, ok := c.parse(args)
	if !ok {
		return code
	}
	var name string
	switch {
	case len(fs) > 0 && len(rest) > 0:
		fmt.Fprintf(s.stderr, "error: unexpected argument %q\n", rest[0])
		return exitError
	case len(rest) > 1:
		fmt.Fprintf(s.stderr, "error: unexpected argument %q\n", rest[1])
		return exitError
	case len(rest) == 1:
		name = rest[0]
	case len(fs) == 0:
		c.usageError("-f is required, or the NAME of a CallPolicy in the cluster")
		return exitError
	}
	given := 0
	for _, v := range []string{notification, callF, number} {
		if v != "" {
			given++
		}
	}
	if given != 1 {
		fmt.Fprintln(s.stderr, "error: give exactly one of --notification, --number or --call")
		return exitError
	}
	if !out.check(c) {
		return exitError
	}
	when := time.Now()
	if at != "" {
		t, err := time.Parse(time.RFC3339Nano, at)
		if err != nil {
			fmt.Fprintf(s.stderr, "error: --at must be an RFC 3339 time such as 2026-03-04T19:00:00-08:00: %v\n", err)
			return exitError
		}
		when = t
	}
	if stdinUses(fs) > 1 || stdinUses(fs) == 1 && (notification == "-" || callF == "-") {
		fmt.Fprintln(s.stderr, "error: stdin (-) can be read only once")
		return exitError
	}

	var p *policy.Policy
	if name != "" {
		k, err := c.clients()
		if err != nil {
			fmt.Fprintf(s.stderr, "error: %v\n", err)
			return exitError
		}
		if p, code = k.compilePolicy(s, name); p == nil {
			return code
		}
	} else {
		var b *policy.Bundle
		if b, p, ok = load(fs, s.stdin, s.stderr); !ok {
			return exitInvalid
		}
		printProblems(s.stderr, "warning", b.Locate, p.Warnings())
	}

	if p.Stateful() {
		fmt.Fprintln(s.stderr, "note: test keeps no state: callers.repeat never holds and no caller is under a temporary block (blockFor), as for a caller's first call")
	}
	calls, ok := readCalls(s, number, notification, callF)
	if !ok {
		return exitInvalid
	}
	decisions := make([]policy.Decision, len(calls))
	for i, call := range calls {
		decisions[i] = p.DecideIn(call, when, strings.ToLower(tenant))
	}
	if err := write(s.stdout, out.value, decisions); err != nil {
		fmt.Fprintf(s.stderr, "error: write decisions: %v\n", err)
		return exitError
	}
	return exitOK
}

// readCalls makes the calls to decide from --number, --notification or
// --call.
func readCalls(s streams, number, notification, callF string) ([]*graph.Call, bool) {
	switch {
	case number != "":
		if _, ok := policy.NormalizeNumber(number); !ok {
			fmt.Fprintf(s.stderr, "error: --number %q is not a phone number\n", number)
			return nil, false
		}
		return []*graph.Call{{
			ID:                  numberCallID,
			State:               graph.StateIncoming,
			Direction:           "incoming",
			Source:              &graph.ParticipantInfo{Identity: &graph.IdentitySet{Phone: &graph.Identity{ID: number}}},
			RequestedModalities: []string{"audio"},
		}}, true
	case notification != "":
		body, err := readInput(notification, s.stdin)
		if err != nil {
			fmt.Fprintf(s.stderr, "error: %v\n", err)
			return nil, false
		}
		n, err := graph.DecodeNotifications(body)
		if errors.Is(err, graph.ErrLegacyFormat) {
			fmt.Fprintf(s.stderr, "error: %s: not a Graph notification: %v (a JSON object with a \"value\" array is expected)\n", notification, err)
			return nil, false
		}
		if err != nil {
			fmt.Fprintf(s.stderr, "error: %s: %v\n", notification, err)
			return nil, false
		}
		var calls []*graph.Call
		for _, item := range n.Value {
			if !item.IsIncomingCall() {
				continue
			}
			c := *item.ResourceData
			if c.ID == "" {
				c.ID = item.CallID()
			}
			calls = append(calls, &c)
		}
		return calls, true
	default:
		body, err := readInput(callF, s.stdin)
		if err != nil {
			fmt.Fprintf(s.stderr, "error: %v\n", err)
			return nil, false
		}
		c, err := graph.DecodeCall(body)
		if err != nil {
			fmt.Fprintf(s.stderr, "error: %s: %v\n", callF, err)
			return nil, false
		}
		return []*graph.Call{c}, true
	}
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func qualified(src *policy.Source) string {
	if src.Namespace == "" {
		return src.Name
	}
	return src.Namespace + "/" + src.Name
}

func stdinUses(fs []string) int {
	n := 0
	for _, f := range fs {
		if f == "-" {
			n++
		}
	}
	return n
}

// load reads and compiles the policy, reporting problems on stderr.
func load(fs []string, stdin io.Reader, stderr io.Writer) (*policy.Bundle, *policy.Policy, bool) {
	b, err := policy.LoadFilesFrom(stdin, fs...)
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintf(stderr, "error: %s\n", line)
		}
		return nil, nil, false
	}
	p, ok := compile(b.Source, b.Locate, stderr)
	return b, p, ok
}

// compile compiles a policy, reporting its errors on stderr where locate
// places them.
func compile(src *policy.Source, locate func(policy.FieldError) string, stderr io.Writer) (*policy.Policy, bool) {
	p, err := policy.Compile(src)
	var ce *policy.CompileError
	if errors.As(err, &ce) {
		printProblems(stderr, "error", locate, ce.Errors)
		return nil, false
	}
	if err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return nil, false
	}
	return p, true
}

// printProblems prints compile errors or warnings as "KIND: WHERE: PATH: MESSAGE".
func printProblems(w io.Writer, kind string, locate func(policy.FieldError) string, problems []policy.FieldError) {
	for _, fe := range problems {
		fmt.Fprintf(w, "%s: %s: %s\n", kind, locate(fe), fe.Error())
	}
}

func readInput(name string, stdin io.Reader) ([]byte, error) {
	if name == "-" {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("read stdin: %w", err)
		}
		return b, nil
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read call: %w", err)
	}
	return b, nil
}

func write(w io.Writer, format string, decisions []policy.Decision) error {
	if format == "yaml" {
		if len(decisions) == 0 {
			return nil
		}
		b, err := yaml.Marshal(decisions)
		if err != nil {
			return fmt.Errorf("encode decisions: %w", err)
		}
		_, err = w.Write(b)
		return err
	}
	if format == "json" {
		enc := json.NewEncoder(w)
		for _, d := range decisions {
			if err := enc.Encode(d); err != nil {
				return err
			}
		}
		return nil
	}
	if len(decisions) == 0 {
		return nil
	}
	header := []string{"CALL ID", "ACTION", "REASON", "RULE", "MODE"}
	// The announcement's columns only when there is one to show, so that
	// the common table stays narrow.
	announce := slices.ContainsFunc(decisions, func(d policy.Decision) bool { return d.Announce != nil })
	if announce {
		header = append(header, "PROMPT", "MAX SECONDS")
	}
	rows := make([][]string, len(decisions))
	for i, d := range decisions {
		rows[i] = []string{orDash(d.CallID), string(d.Action), orDash(string(d.Reason)), ruleName(d.Rule), string(d.Mode)}
		if announce {
			prompt, maxSeconds := "-", "-"
			if a := d.Announce; a != nil {
				prompt, maxSeconds = promptName(a), strconv.Itoa(int(a.MaxSeconds))
			}
			rows[i] = append(rows[i], prompt, maxSeconds)
		}
	}
	return newTable(w, header...).print(rows)
}

// promptName is the URL of a URL prompt, or "sha256:" and the hash of the
// file of a prompt kept in a ConfigMap (the name the receivers serve it
// under).
func promptName(a *policy.Announcement) string {
	if a.PromptURL != "" {
		return a.PromptURL
	}
	return "sha256:" + a.PromptSHA256
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func ruleName(r string) string {
	if r == "" {
		return "(default)"
	}
	return r
}
