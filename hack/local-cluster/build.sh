#!/usr/bin/env bash
# Builds the Kubernetes v1.37.2 binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl) and etcd from their Go modules
# (this directory's go.mod) into a cache outside the clone, once. Prints the
# directory that holds them. Progress goes to stderr.
#
#   hack/local-cluster/build.sh            # build what is missing, print the dir
#
# etcd is taken from envtest's cache when hack/envtest/build.sh has built it
# already; kube-apiserver is not, because envtest's lacks the client-go
# version stamps.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s_version="v1.37.2"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/callguard"
bindir="${cache}/cluster/${k8s_version}/bin"
mkdir -p "${bindir}"

say() { echo "local-cluster: $*" >&2; }

# Runs "$@" while printing a line every 30 s so a long build is visibly alive.
with_heartbeat() {
	local what="$1"
	shift
	local start=${SECONDS}
	"$@" &
	local pid=$!
	while kill -0 "${pid}" 2>/dev/null; do
		for _ in $(seq 1 30); do
			sleep 1
			kill -0 "${pid}" 2>/dev/null || break
		done
		if kill -0 "${pid}" 2>/dev/null; then
			say "  ... still building ${what} ($((SECONDS - start))s)"
		fi
	done
	local rc=0
	wait "${pid}" || rc=$?
	if [[ ${rc} -ne 0 ]]; then
		say "building ${what} failed (exit ${rc})"
		return "${rc}"
	fi
	say "  built ${what} in $((SECONDS - start))s"
}

major="${k8s_version#v}"
major="${major%%.*}"
minor="${k8s_version#v*.}"
minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X ${pkg}.gitVersion=${k8s_version} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
	ldflags+=" -X ${pkg}.gitTreeState=clean"
done

cd "${here}"
export CGO_ENABLED=0

# Ordered so the slowest first-run step is announced with its estimate.
components=(kubelet kube-proxy kube-controller-manager kube-scheduler kubectl kube-apiserver)
missing=()
for c in "${components[@]}"; do
	[[ -x "${bindir}/${c}" ]] || missing+=("${c}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
	say "building ${missing[*]} ${k8s_version} into ${bindir}"
	say "(first run about 15-25 minutes on 2 cores with a cold Go build cache; later runs use the cache)"
	i=0
	for c in "${missing[@]}"; do
		i=$((i + 1))
		say "building ${c} (${i}/${#missing[@]})..."
		with_heartbeat "${c}" go build -trimpath -ldflags "${ldflags}" -o "${bindir}/${c}.tmp" "k8s.io/kubernetes/cmd/${c}"
		mv "${bindir}/${c}.tmp" "${bindir}/${c}"
	done
fi

if [[ ! -x "${bindir}/etcd" ]]; then
	envtest_etcd=""
	for f in "${cache}"/envtest/k8s-v1.37.2-etcd-v3.7.0-*/etcd; do
		[[ -x "${f}" ]] && envtest_etcd="${f}" && break
	done
	if [[ -n "${envtest_etcd}" ]]; then
		say "reusing envtest's etcd (${envtest_etcd})"
		cp "${envtest_etcd}" "${bindir}/etcd.tmp"
	else
		say "building etcd..."
		with_heartbeat etcd go build -trimpath -ldflags "-s -w" -o "${bindir}/etcd.tmp" go.etcd.io/etcd/server/v3
	fi
	mv "${bindir}/etcd.tmp" "${bindir}/etcd"
fi

echo "${bindir}"
