//go:build tools

// Package tools pins promtool (rule unit tests: make test-rules); it is a
// module of its own so that Prometheus' many dependencies do not move the
// versions controller-gen and kustomize build with.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
