// Command kubectl-callpolicy is the kubectl callpolicy plugin: it tests and
// lints CallPolicies offline, and against a cluster tests the live policy and
// shows its status and the receivers' recent decisions. Install it on PATH as
// kubectl-callpolicy; it also runs on its own.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/callguard/callguard/internal/policycli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := policycli.RunContext(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
