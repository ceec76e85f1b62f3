// Package policycli is the logic of the kubectl callpolicy plugin: it decides
// calls and lints policies offline with the same compiler and evaluator the
// receiver runs (see shared/design/cli.md).
package policycli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/callguard/callguard/internal/graph"
	"github.com/callguard/callguard/internal/policy"
)

// Exit codes.
const (
	exitOK = 0
	// exitFailed is for output that could not be written.
	exitFailed = 1
	// exitBad is for a policy or call that cannot be read or compiled, and
	// for usage errors.
	exitBad = 2
)

// numberCallID is the id of the call --number makes up.
const numberCallID = "callpolicy-test"

const usage = `Usage:
  kubectl callpolicy test -f POLICY.yaml [-f MORE.yaml ...] (--notification FILE | --number E164 | --call FILE) [--at RFC3339] [-o json|table]
  kubectl callpolicy lint -f POLICY.yaml [-f MORE.yaml ...]

test decides calls with a CallPolicy, offline: every created, incoming call of
a Graph notification (--notification), one Graph call resource (--call), or a
PSTN audio call from a number (--number). It prints one decision per call.
lint compiles the policy and prints its errors and warnings.

-f takes files holding one CallPolicy and the ConfigMaps its numberLists name;
"-" reads stdin. Exit status 2 means the policy or the call could not be read.
`

// Run runs the plugin with the arguments after the program name and returns
// the exit status.
func Run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitBad
	}
	switch args[0] {
	case "test":
		return runTest(args[1:], stdin, stdout, stderr)
	case "lint":
		return runLint(args[1:], stdin, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "error: unknown command %q\n\n%s", args[0], usage)
	return exitBad
}

// files is the repeatable -f flag.
type files []string

func (f *files) String() string { return strings.Join(*f, ",") }

func (f *files) Set(v string) error {
	*f = append(*f, v)
	return nil
}

func newFlagSet(name string, stderr io.Writer, fs *files) *flag.FlagSet {
	set := flag.NewFlagSet(name, flag.ContinueOnError)
	set.SetOutput(stderr)
	set.Usage = func() { fmt.Fprint(stderr, usage) }
	set.Var(fs, "f", "policy file (repeatable; - is stdin)")
	set.Var(fs, "filename", "same as -f")
	return set
}

func parse(set *flag.FlagSet, args []string, fs *files, stderr io.Writer) bool {
	if err := set.Parse(args); err != nil {
		return false
	}
	if set.NArg() > 0 {
		fmt.Fprintf(stderr, "error: unexpected argument %q\n", set.Arg(0))
		return false
	}
	if len(*fs) == 0 {
		fmt.Fprintln(stderr, "error: -f is required")
		return false
	}
	return true
}

func runTest(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var (
		fs                   files
		notification, callF  string
		number, at, outputFm string
	)
	set := newFlagSet("test", stderr, &fs)
	set.StringVar(&notification, "notification", "", "Graph commsNotifications JSON body")
	set.StringVar(&callF, "call", "", "one Graph call resource JSON")
	set.StringVar(&number, "number", "", "decide a PSTN audio call from this number")
	set.StringVar(&at, "at", "", "arrival time for schedules, RFC 3339 (default now)")
	set.StringVar(&outputFm, "o", "json", "output format: json or table")
	if !parse(set, args, &fs, stderr) {
		return exitBad
	}
	given := 0
	for _, v := range []string{notification, callF, number} {
		if v != "" {
			given++
		}
	}
	if given != 1 {
		fmt.Fprintln(stderr, "error: give exactly one of --notification, --number or --call")
		return exitBad
	}
	if outputFm != "json" && outputFm != "table" {
		fmt.Fprintf(stderr, "error: -o must be json or table, got %q\n", outputFm)
		return exitBad
	}
	when := time.Now()
	if at != "" {
		t, err := time.Parse(time.RFC3339Nano, at)
		if err != nil {
			fmt.Fprintf(stderr, "error: --at must be an RFC 3339 time such as 2026-03-04T19:00:00-08:00: %v\n", err)
			return exitBad
		}
		when = t
	}
	if stdinUses(fs) > 1 || stdinUses(fs) == 1 && (notification == "-" || callF == "-") {
		fmt.Fprintln(stderr, "error: stdin (-) can be read only once")
		return exitBad
	}

	b, p, ok := load(fs, stdin, stderr)
	if !ok {
		return exitBad
	}
	printProblems(stderr, "warning", b, p.Warnings())

	var calls []*graph.Call
	switch {
	case number != "":
		if _, ok := policy.NormalizeNumber(number); !ok {
			fmt.Fprintf(stderr, "error: --number %q is not a phone number\n", number)
			return exitBad
		}
		calls = []*graph.Call{{
			ID:                  numberCallID,
			State:               graph.StateIncoming,
			Direction:           "incoming",
			Source:              &graph.ParticipantInfo{Identity: &graph.IdentitySet{Phone: &graph.Identity{ID: number}}},
			RequestedModalities: []string{"audio"},
		}}
	case notification != "":
		body, err := readInput(notification, stdin)
		if err != nil {
			fmt.Fprintf(stderr, "error: %v\n", err)
			return exitBad
		}
		n, err := graph.DecodeNotifications(body)
		if errors.Is(err, graph.ErrLegacyFormat) {
			fmt.Fprintf(stderr, "error: %s: not a Graph notification: %v (a JSON object with a \"value\" array is expected)\n", notification, err)
			return exitBad
		}
		if err != nil {
			fmt.Fprintf(stderr, "error: %s: %v\n", notification, err)
			return exitBad
		}
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
	default:
		body, err := readInput(callF, stdin)
		if err != nil {
			fmt.Fprintf(stderr, "error: %v\n", err)
			return exitBad
		}
		c, err := graph.DecodeCall(body)
		if err != nil {
			fmt.Fprintf(stderr, "error: %s: %v\n", callF, err)
			return exitBad
		}
		calls = []*graph.Call{c}
	}

	decisions := make([]policy.Decision, len(calls))
	for i, c := range calls {
		decisions[i] = p.Decide(c, when)
	}
	if err := write(stdout, outputFm, decisions); err != nil {
		fmt.Fprintf(stderr, "error: write decisions: %v\n", err)
		return exitFailed
	}
	return exitOK
}

func runLint(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var fs files
	set := newFlagSet("lint", stderr, &fs)
	if !parse(set, args, &fs, stderr) {
		return exitBad
	}
	if stdinUses(fs) > 1 {
		fmt.Fprintln(stderr, "error: stdin (-) can be read only once")
		return exitBad
	}
	b, p, ok := load(fs, stdin, stderr)
	if !ok {
		return exitBad
	}
	printProblems(stderr, "warning", b, p.Warnings())
	if _, err := fmt.Fprintf(stdout, "%s: %s, %s\n", qualified(b.Source), plural(p.Rules(), "rule"), plural(len(p.Warnings()), "warning")); err != nil {
		return exitFailed
	}
	return exitOK
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

func stdinUses(fs files) int {
	n := 0
	for _, f := range fs {
		if f == "-" {
			n++
		}
	}
	return n
}

// load reads and compiles the policy, reporting problems on stderr.
func load(fs files, stdin io.Reader, stderr io.Writer) (*policy.Bundle, *policy.Policy, bool) {
	b, err := policy.LoadFilesFrom(stdin, fs...)
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintf(stderr, "error: %s\n", line)
		}
		return nil, nil, false
	}
	p, err := policy.Compile(b.Source)
	var ce *policy.CompileError
	if errors.As(err, &ce) {
		printProblems(stderr, "error", b, ce.Errors)
		return nil, nil, false
	}
	if err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return nil, nil, false
	}
	return b, p, true
}

// printProblems prints compile errors or warnings as "KIND: FILE:LINE: PATH: MESSAGE".
func printProblems(w io.Writer, kind string, b *policy.Bundle, problems []policy.FieldError) {
	for _, fe := range problems {
		fmt.Fprintf(w, "%s: %s: %s\n", kind, b.Locate(fe), fe.Error())
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
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CALL ID\tACTION\tREASON\tRULE\tMODE")
	for _, d := range decisions {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", orDash(d.CallID), d.Action, orDash(string(d.Reason)), ruleName(d.Rule), d.Mode)
	}
	return tw.Flush()
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
