//go:build tools

// Package tools pins controller-gen; the Makefile builds it into bin/.
package tools

import _ "sigs.k8s.io/controller-tools/cmd/controller-gen"
