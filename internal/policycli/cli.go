// Package policycli is the logic of the kubectl callpolicy plugin: it decides
// calls and lints policies offline with the same compiler and evaluator the
// receiver runs, and, against a cluster, tests the live policy, shows its
// status and the receivers' recent decisions (docs/operating.md).
package policycli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/pflag"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
)

// Exit codes.
const (
	exitOK = 0
	// exitError is kubectl's status for every error: a usage error, a
	// policy that does not exist, a cluster that cannot be reached, output
	// that cannot be written; and for status, a policy that is not Ready.
	exitError = 1
	// exitInvalid is for test and lint only: the policy or the call cannot
	// be read or compiled, so that a script tells a bad policy from a
	// failing cluster.
	exitInvalid = 2
)

const usage = `kubectl callpolicy: test, lint and watch callguard CallPolicies.

Usage:
  kubectl callpolicy test -f POLICY.yaml [-f MORE.yaml ...] (--notification FILE | --number E164 | --call FILE) [--at RFC3339] [--tenant ID] [-o json|table]
  kubectl callpolicy test NAME [-n NAMESPACE] (--notification FILE | --number E164 | --call FILE) [--at RFC3339] [--tenant ID] [-o json|table]
  kubectl callpolicy lint -f POLICY.yaml [-f MORE.yaml ...] [--ca-file FILE] [--offline]
  kubectl callpolicy status NAME [-n NAMESPACE] [-o table|json|yaml]
  kubectl callpolicy decisions NAME [-n NAMESPACE] [--since 10m] [--follow] [-o table|json|yaml]
  kubectl callpolicy blocks NAME [-n NAMESPACE] [-o table|wide|json|yaml]
  kubectl callpolicy unblock NAME [-n NAMESPACE] (--number E164 | --all)
  kubectl callpolicy version

test decides calls with a CallPolicy: every created, incoming call of a Graph
notification (--notification), one Graph call resource (--call), or a PSTN
audio call from a number (--number). It prints one decision per call. With -f
it reads the policy from files, offline; with NAME it reads the CallPolicy and
the ConfigMaps its numberLists name from the cluster.
lint compiles the policy and prints its errors and warnings; it fetches and
checks the prompt URLs of Announce rules unless --offline.
status shows a CallPolicy's conditions, its receiver pods with the policy each
runs, and the receivers' counters; it exits 0 when the policy is Ready.
decisions prints the receivers' recent decisions, merged by time.
blocks lists the callers under a temporary block (blockFor); unblock lifts
blocks before they end.

-f takes files holding one CallPolicy and the ConfigMaps its numberLists name;
"-" reads stdin. Exit status: 0 on success; 1 on an error, as kubectl; 2 from
test and lint when the policy or the call could not be read or compiled.
Run "kubectl callpolicy VERB --help" for a verb's flags, including kubectl's
own (-n, --context, --kubeconfig, ...) on the verbs that reach a cluster.
`

// Run runs the plugin with the arguments after the program name and returns
// the exit status.
func Run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return RunContext(context.Background(), args, stdin, stdout, stderr)
}

// RunContext is Run with a context whose end stops a running command
// (decisions --follow runs until then).
func RunContext(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitError
	}
	io := streams{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr}
	switch args[0] {
	case "test":
		return runTest(io, args[1:])
	case "lint":
		return runLint(io, args[1:])
	case "status":
		return runStatus(io, args[1:])
	case "decisions":
		return runDecisions(io, args[1:])
	case "blocks":
		return runBlocks(io, args[1:])
	case "unblock":
		return runUnblock(io, args[1:])
	case "version":
		return runVersion(io, args[1:])
	case "help", "-h", "-help", "--help":
		if len(args) > 1 && args[1] != "help" {
			if _, ok := verbs[args[1]]; ok {
				return RunContext(ctx, []string{args[1], "--help"}, stdin, stdout, stderr)
			}
		}
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "error: unknown command %q\n\n%s", args[0], usage)
	return exitError
}

// verbs are the commands that take flags, for "help VERB".
var verbs = map[string]bool{"test": true, "lint": true, "status": true, "decisions": true, "blocks": true, "unblock": true, "version": true}

// streams are a command's context and standard streams.
type streams struct {
	ctx            context.Context
	stdin          io.Reader
	stdout, stderr io.Writer
}

// command is one verb's flags: its own, and kubectl's when it reaches a
// cluster.
type command struct {
	streams
	name     string
	synopsis string
	flags    *pflag.FlagSet
	kube     *genericclioptions.ConfigFlags
	kubeSet  *pflag.FlagSet
}

func newCommand(s streams, name, synopsis string, cluster bool) *command {
	c := &command{streams: s, name: name, synopsis: synopsis}
	c.flags = pflag.NewFlagSet(name, pflag.ContinueOnError)
	c.flags.SetOutput(io.Discard)
	c.flags.Usage = func() {}
	c.flags.SortFlags = false
	if cluster {
		c.kube = genericclioptions.NewConfigFlags(false).
			WithWarningPrinter(genericiooptions.IOStreams{In: s.stdin, Out: s.stdout, ErrOut: s.stderr})
		c.kubeSet = pflag.NewFlagSet("kubectl", pflag.ContinueOnError)
		c.kube.AddFlags(c.kubeSet)
	}
	return c
}

// parse parses the arguments and returns the positional ones. When it
// returns false the command is over with the code given: --help printed the
// usage on stdout (0), or a usage error was reported on stderr (1).
func (c *command) parse(args []string) ([]string, int, bool) {
	if c.kubeSet != nil {
		c.flags.AddFlagSet(c.kubeSet)
	}
	err := c.flags.Parse(args)
	if errors.Is(err, pflag.ErrHelp) {
		fmt.Fprint(c.stdout, c.help())
		return nil, exitOK, false
	}
	if err != nil {
		c.usageError("%s", flagError(err))
		return nil, exitError, false
	}
	return c.flags.Args(), exitOK, true
}

// flagError words an unknown flag as Go's flag package does, as the plugin
// always has.
func flagError(err error) string {
	var ne *pflag.NotExistError
	if errors.As(err, &ne) {
		if name := ne.GetSpecifiedName(); name != "" {
			return "flag provided but not defined: -" + name
		}
		return "flag provided but not defined: -" + ne.GetSpecifiedShortnames()
	}
	return err.Error()
}

// parseNoArgs parses a verb that takes no positional arguments.
func (c *command) parseNoArgs(args []string) (int, bool) {
	rest, code, ok := c.parse(args)
	if !ok {
		return code, false
	}
	if len(rest) > 0 {
		fmt.Fprintf(c.stderr, "error: unexpected argument %q\n", rest[0])
		return exitError, false
	}
	return exitOK, true
}

func (c *command) usageError(format string, args ...any) {
	fmt.Fprintf(c.stderr, "error: "+format+"\n", args...)
	fmt.Fprintf(c.stderr, "See 'kubectl callpolicy %s --help' for usage.\n", c.name)
}

func (c *command) help() string {
	var b strings.Builder
	b.WriteString(c.synopsis)
	own := pflag.NewFlagSet(c.name, pflag.ContinueOnError)
	own.SortFlags = false
	c.flags.VisitAll(func(f *pflag.Flag) {
		if c.kubeSet == nil || c.kubeSet.Lookup(f.Name) == nil {
			own.AddFlag(f)
		}
	})
	if own.HasAvailableFlags() {
		b.WriteString("\nFlags:\n")
		b.WriteString(own.FlagUsages())
	}
	if c.kubeSet != nil {
		b.WriteString("\nkubectl flags:\n")
		b.WriteString(c.kubeSet.FlagUsages())
	}
	return b.String()
}

// output is the -o/--output flag with the formats a verb accepts.
type output struct {
	value   string
	allowed []string
}

func (c *command) outputFlag(dflt string, allowed ...string) *output {
	o := &output{value: dflt, allowed: allowed}
	c.flags.StringVarP(&o.value, "output", "o", dflt, "output format: "+strings.Join(allowed, ", "))
	return o
}

// check reports a format the verb does not print.
func (o *output) check(c *command) bool {
	for _, a := range o.allowed {
		if o.value == a {
			return true
		}
	}
	quoted := make([]string, len(o.allowed))
	copy(quoted, o.allowed)
	last := len(quoted) - 1
	list := strings.Join(quoted[:last], ", ") + " or " + quoted[last]
	fmt.Fprintf(c.stderr, "error: -o must be %s, got %q\n", list, o.value)
	return false
}
