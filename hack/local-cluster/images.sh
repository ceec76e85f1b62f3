#!/usr/bin/env bash
# Builds the operator/receiver image and the Graph emulator image without
# Docker and imports them into the local cluster's containerd
# (hack/local-cluster/cluster.sh). Used by `make images`.
#
#   hack/local-cluster/images.sh [OPERATOR_TAG] [EMULATOR_TAG]
#
# Defaults: callguard:dev and callguard-graph-emulator:dev. It also packs
# localhost/callguard/redis:local, Debian's redis-server (the demo's and the
# e2e's state store): the binary of the redis-server package with the loader
# and the shared libraries ldd names, each at its own path. The Go binaries are
# built like the Dockerfile builds them (CGO_ENABLED=0, -trimpath,
# -ldflags="-s -w"), so both ways give the same binaries. The image tarballs
# are kept in ${XDG_CACHE_HOME:-$HOME/.cache}/callguard/cluster/v1.37.2/images.
# With LOCAL_CLUSTER_NO_IMPORT=1 only the tarballs are written (no cluster needed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
operator_tag="${1:-callguard:dev}"
emulator_tag="${2:-callguard-graph-emulator:dev}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/callguard/cluster/v1.37.2"
no_import="${LOCAL_CLUSTER_NO_IMPORT:-}"

say() { echo "images: $*" >&2; }

if [[ -z "${no_import}" ]]; then
	if ! "${here}/cluster.sh" status >/dev/null 2>&1; then
		say "the local cluster is not up (or not healthy): run 'make cluster-up' first"
		say "(hack/local-cluster/cluster.sh status shows which component is missing)"
		exit 1
	fi
	eval "$("${here}/cluster.sh" env)"
fi

out="${cache}/images"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
mkdir -p "${out}" "${cache}/bin"

(cd "${here}" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${cache}/bin/pack" ./cmd/pack)

# build NAME: ./cmd/NAME -> work/NAME, exactly as the Dockerfile builds it.
failed=()
build() {
	local name="$1"
	if [[ ! -d "${root}/cmd/${name}" ]]; then
		say "cannot build ${name}: ${root}/cmd/${name} does not exist (yet)"
		failed+=("${name}")
		return 0
	fi
	say "building ./cmd/${name}"
	if ! (cd "${root}" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "${work}/${name}" "./cmd/${name}" 2>"${work}/${name}.err"); then
		say "cannot build ./cmd/${name}:"
		sed 's/^/    /' "${work}/${name}.err" >&2
		failed+=("${name}")
	fi
}
build manager
build receiver
build graph-emulator
if [[ ${#failed[@]} -gt 0 ]]; then
	say "FAILED: could not build ${failed[*]}; no image was packed or imported"
	exit 1
fi

say "packing ${operator_tag} (/manager, /receiver)"
"${cache}/bin/pack" --tag "${operator_tag}" --out "${out}/operator.tar" --entrypoint /manager "${work}/manager" "${work}/receiver"
say "packing ${emulator_tag} (/graph-emulator)"
"${cache}/bin/pack" --tag "${emulator_tag}" --out "${out}/graph-emulator.tar" --entrypoint /graph-emulator "${work}/graph-emulator"

redis_tag=localhost/callguard/redis:local
if [[ ! -x /usr/bin/redis-server ]]; then
	say "installing Debian's redis-server package (its binary goes into ${redis_tag})"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server >/dev/null
fi
# Every library ldd resolves (lines "name => /path (addr)") and the loader
# (a line "/path (addr)"); linux-vdso has no file.
mapfile -t redis_files < <(ldd /usr/bin/redis-server | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
if [[ ${#redis_files[@]} -eq 0 ]]; then
	say "ldd /usr/bin/redis-server named no library"
	exit 1
fi
say "packing ${redis_tag} (/redis-server $(dpkg-query -W -f='${Version}' redis-server 2>/dev/null), ${#redis_files[@]} shared libraries)"
"${cache}/bin/pack" --tag "${redis_tag}" --out "${out}/redis.tar" --entrypoint /redis-server \
	$(printf -- '--file %s ' "${redis_files[@]}") /usr/bin/redis-server

if [[ -n "${no_import}" ]]; then
	say "LOCAL_CLUSTER_NO_IMPORT set: tarballs in ${out}, nothing imported"
	exit 0
fi
for tar in operator graph-emulator redis; do
	say "importing ${out}/${tar}.tar"
	ctr --address "${CONTAINERD_ADDRESS}" -n k8s.io images import "${out}/${tar}.tar" >/dev/null
done
ctr --address "${CONTAINERD_ADDRESS}" -n k8s.io images ls | awk -v a="${operator_tag}" -v b="${emulator_tag}" \
	-v c="${redis_tag}" 'NR == 1 {print $1, $3, $4; next} index($1, a) || index($1, b) || index($1, c) {print $1, $3, $4 $5}'
say "use them with imagePullPolicy: IfNotPresent (or Never); the cluster pulls nothing"
