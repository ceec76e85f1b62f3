// Command kubectl-callpolicy is the kubectl callpolicy plugin: it tests and
// lints CallPolicies offline. Install it on PATH as kubectl-callpolicy; it
// also runs on its own.
package main

import (
	"os"

	"github.com/callguard/callguard/internal/policycli"
)

func main() {
	os.Exit(policycli.Run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
