#!/usr/bin/env bash
# Builds kube-apiserver and etcd for envtest from their Go modules and caches
# them outside the clone. Prints the directory to use as KUBEBUILDER_ASSETS.
# An already-set KUBEBUILDER_ASSETS is honoured as is.
set -euo pipefail

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
	echo "${KUBEBUILDER_ASSETS}"
	exit 0
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Keyed by go.mod and go.sum too, like hack/tools/install.sh: a change of any
# pin builds new binaries.
key="$(cat "${here}/go.mod" "${here}/go.sum" | sha256sum | cut -c1-12)"
dir="${XDG_CACHE_HOME:-$HOME/.cache}/callguard/envtest/k8s-v1.37.2-etcd-v3.7.0-${key}"
mkdir -p "${dir}"

cd "${here}"
# Without DWARF (debuggers' data): about a fifth less compiling, cold; the
# flags of make test's CGO_ENABLED=0 builds, so that they share the standard
# library's packages.
export CGO_ENABLED=0
flags=(-trimpath -gcflags=all=-dwarf=false)
if [[ ! -x "${dir}/etcd" ]]; then
	echo "building etcd v3.7.0 into ${dir} (about 1 minute)" >&2
	go build "${flags[@]}" -ldflags "-s -w" -o "${dir}/etcd.tmp" go.etcd.io/etcd/server/v3
	mv "${dir}/etcd.tmp" "${dir}/etcd"
fi
if [[ ! -x "${dir}/kube-apiserver" ]]; then
	echo "building kube-apiserver v1.37.2 into ${dir} (about 10 minutes cold on 2 cores)" >&2
	ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
	go build "${flags[@]}" -ldflags "${ldflags}" -o "${dir}/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
	mv "${dir}/kube-apiserver.tmp" "${dir}/kube-apiserver"
fi
echo "${dir}"
