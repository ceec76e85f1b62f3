//go:build tools

// Package envtest pins the envtest binaries' sources; see build.sh.
package envtest

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
