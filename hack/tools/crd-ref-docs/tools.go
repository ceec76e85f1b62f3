//go:build tools

// Package tools pins crd-ref-docs, which writes docs/api.md from the API's Go
// types (make api-docs; make test checks it is current); a module of its
// own, like helm's and promtool's.
package tools

import (
	_ "github.com/elastic/crd-ref-docs"
)
