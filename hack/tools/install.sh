#!/usr/bin/env bash
# Builds pinned tools from a tools module (hack/tools or one below it) into a
# cache outside the clone, keyed by the module's go.mod, go.sum, build tags
# and CGO_ENABLED when it is set, and links them into bin/. A fresh clone of
# the same pins only links.
#
#   hack/tools/install.sh MODULE_DIR TAGS PACKAGE...
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
module="$1" tags="$2"
shift 2
key="$(cat "${root}/${module}/go.mod" "${root}/${module}/go.sum" <(echo "${tags}"; [[ -z "${CGO_ENABLED:-}" ]] || echo "CGO_ENABLED=${CGO_ENABLED}") | sha256sum | cut -c1-16)"
dir="${XDG_CACHE_HOME:-$HOME/.cache}/callguard/tools/${key}"
mkdir -p "${dir}" "${root}/bin"

missing=()
for pkg in "$@"; do
	name="$(basename "${pkg}")"
	[[ "${name}" =~ ^v[0-9]+$ ]] && name="$(basename "$(dirname "${pkg}")")"
	[[ -x "${dir}/${name}" ]] || missing+=("${pkg}")
done
if ((${#missing[@]})); then
	# make test's compile flags, so that its builds and the tools' share
	# compiled packages.
	read -ra flags < <(grep -v '^#' "${root}/hack/compile-flags")
	(cd "${root}/${module}" && GOBIN="${dir}" go install "${flags[@]}" -ldflags="-s -w" \
		${tags:+-tags "${tags}"} "${missing[@]}")
fi
for pkg in "$@"; do
	name="$(basename "${pkg}")"
	[[ "${name}" =~ ^v[0-9]+$ ]] && name="$(basename "$(dirname "${pkg}")")"
	ln -sfn "${dir}/${name}" "${root}/bin/${name}"
	touch -h "${root}/bin/${name}"
done
