//go:build tools

// Package tools pins helm (chart lint and rendering: make test-chart); a
// module of its own, like promtool's.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
