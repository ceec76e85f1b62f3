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
# The compile flags and CGO_ENABLED=0 of make test's builds of the manager
# and the receiver, so that those reuse kube-apiserver's packages.
export CGO_ENABLED=0
read -ra flags < <(grep -v '^#' "${here}/../compile-flags")
# build NAME LDFLAGS PACKAGE: each build writes a file of its own and renames
# it into place, so that make test runs in two clones at once (sharing this
# cache) cannot take each other's half-written or moved binary.
build() {
	local tmp
	tmp="$(mktemp "${dir}/$1.XXXXXX")"
	go build "${flags[@]}" -ldflags "$2" -o "${tmp}" "$3"
	mv -f "${tmp}" "${dir}/$1"
}
if [[ ! -x "${dir}/etcd" ]]; then
	echo "building etcd v3.7.0 into ${dir} (about 1 minute)" >&2
	build etcd "-s -w" go.etcd.io/etcd/server/v3
fi
if [[ ! -x "${dir}/kube-apiserver" ]]; then
	echo "building kube-apiserver v1.37.2 into ${dir} (about 10 minutes cold on 2 cores)" >&2
	build kube-apiserver "-s -w -X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37" \
		k8s.io/kubernetes/cmd/kube-apiserver
fi
echo "${dir}"
