#!/usr/bin/env bash
# Builds a release of callguard into OUT (default dist/release):
#
#   images/callguard/           the operator image (manager and receiver), an
#                               OCI image layout: one index, linux/amd64 and
#                               linux/arm64
#   images/callguard-receiver/  the receiver alone, the same way
#   kubectl-callpolicy_OS_ARCH.tar.gz (.zip for windows)  the plugin
#   callguard-X.Y.Z.tgz         the Helm chart, its default image the release's
#   install.yaml                config/default with the release's image, by digest
#   callpolicy.yaml             the krew manifest (plugins/callpolicy.yaml with
#                               the version, URIs and the archives' sha256)
#   checksums.txt               sha256 of every file above but the images
#
#   hack/release.sh VERSION [--snapshot]
#
# With --snapshot nothing leaves the machine: ko pushes to a throwaway local
# registry only (make release-snapshot; test/release checks the result).
# Without it ko pushes IMAGE_REPO/callguard:VERSION and
# IMAGE_REPO/callguard-receiver:VERSION (log in first); the workflow
# .github/workflows/release.yaml uploads the rest to the GitHub release.
#
# Environment: IMAGE_REPO (ghcr.io/callguard), OUT, PLUGIN_PLATFORMS (the six
# os/arch pairs of the krew manifest; a snapshot may build fewer, and the
# manifest then lists only those), IMAGE_PLATFORMS (linux/amd64,linux/arm64),
# KO, CRANE, HELM, KUSTOMIZE (bin/…; `make release-snapshot` builds them).
#
# Why ko against a local registry: ko builds each Go main into an image on a
# base it pulls from a registry (the default base, distroless, lives on
# gcr.io). Here only the Go module proxy is reachable, and a release should
# not depend on a base nobody pinned either, so the base is assembled from
# files (/etc/passwd with the nonroot user 65532, the CA bundle, /tmp) with
# crane and served, with everything ko builds on it, by `crane registry serve`
# on 127.0.0.1. The snapshot and the release run the same commands; only
# KO_DOCKER_REPO differs. The receiver is built first; the operator image is
# the manager built on the receiver's image, so it holds both binaries as the
# Dockerfile's does (the operator starts receivers from its own image). ko
# puts binaries at /ko-app/NAME; the base links /manager and /receiver there,
# the commands config/manager and the operator give (in the receiver-only
# image /manager dangles).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"

usage() { echo "usage: hack/release.sh VERSION [--snapshot]   (VERSION: vX.Y.Z[-pre])" >&2; exit 2; }
version="${1:-}"
snapshot=""
[[ $# -ge 1 ]] || usage
[[ $# -le 2 ]] || usage
if [[ $# -eq 2 ]]; then [[ "$2" == --snapshot ]] || usage; snapshot=1; fi
[[ "${version}" =~ ^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] || usage

repo="${IMAGE_REPO:-ghcr.io/callguard}"
out="${OUT:-${root}/dist/release}"
plugin_platforms="${PLUGIN_PLATFORMS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64}"
image_platforms="${IMAGE_PLATFORMS:-linux/amd64,linux/arm64}"
ko="${KO:-${root}/bin/ko}" crane="${CRANE:-${root}/bin/crane}"
helm="${HELM:-${root}/bin/helm}" kustomize="${KUSTOMIZE:-${root}/bin/kustomize}"
for t in "${ko}" "${crane}" "${helm}" "${kustomize}"; do
	[[ -x "${t}" ]] || { echo "release: ${t} missing (make release-snapshot builds the tools)" >&2; exit 1; }
done
say() { echo "release: $*" >&2; }

work="$(mktemp -d)"
# ko parses --oci-layout-path as a repository name (lower case only), so its
# layouts go to a path relative to the root first (dist/ is ignored by git).
layouts="dist/ko-layouts-$$"
registry_pid=""
cleanup() {
	[[ -z "${registry_pid}" ]] || kill "${registry_pid}" 2>/dev/null || true
	rm -rf "${work}" "${root:?}/${layouts}"
}
trap cleanup EXIT
rm -rf "${out}"
mkdir -p "${out}/images"

# The throwaway registry, on a port the kernel picks.
"${crane}" registry serve --address 127.0.0.1:0 2>"${work}/registry.log" &
registry_pid=$!
for _ in $(seq 100); do
	port="$(sed -n 's/.*serving on port \([0-9]*\).*/\1/p' "${work}/registry.log")"
	[[ -n "${port}" ]] && break
	sleep 0.1
done
[[ -n "${port}" ]] || { cat "${work}/registry.log" >&2; say "the local registry did not start"; exit 1; }
local_repo="127.0.0.1:${port}"
push_repo="${repo}"
[[ -z "${snapshot}" ]] || push_repo="${local_repo}"

# The base: the same layer for every platform, a config per platform.
say "base image"
base="${work}/base"
mkdir -p "${base}/etc/ssl/certs" "${base}/tmp"
chmod 1777 "${base}/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"${base}/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"${base}/etc/group"
cp /etc/ssl/certs/ca-certificates.crt "${base}/etc/ssl/certs/ca-certificates.crt"
ln -s /ko-app/manager "${base}/manager"
ln -s /ko-app/receiver "${base}/receiver"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu -C "${base}" -cf "${work}/base.tar" .
"${crane}" append --oci-empty-base -f "${work}/base.tar" -t "${local_repo}/base:layer" >/dev/null
manifests=()
IFS=, read -ra platforms <<<"${image_platforms}"
for p in "${platforms[@]}"; do
	manifests+=(-m "$("${crane}" mutate "${local_repo}/base:layer" --set-platform "${p}" --user 65532:65532 \
		-t "${local_repo}/base:${p//\//-}")")
done
base_ref="$("${crane}" index append "${manifests[@]}" -t "${local_repo}/base:index")"

# ko: the mains with -s -w like the Dockerfile's; SBOMs left out.
mkdir -p "${work}/ko"
cat >"${work}/ko/.ko.yaml" <<EOF
builds:
- id: manager
  main: ./cmd/manager
  ldflags: ["-s", "-w"]
- id: receiver
  main: ./cmd/receiver
  ldflags: ["-s", "-w"]
EOF
kobuild() { # NAME BASE: prints the pushed image's reference by digest
	say "image ${1} (${image_platforms}) on ${2}"
	KO_CONFIG_PATH="${work}/ko" KO_DOCKER_REPO="${push_repo}/${1}" KO_DEFAULTBASEIMAGE="${2}" \
		"${ko}" build --bare --sbom=none --platform="${image_platforms}" --tags="${version}" \
		--oci-layout-path="${layouts}/${1}" "./cmd/${3}"
	mv "${layouts}/${1}" "${out}/images/${1}"
}
receiver_ref="$(kobuild callguard-receiver "${base_ref}" receiver)"
manager_ref="$(kobuild callguard "${receiver_ref}" manager)"
image="${repo}/callguard:${version}@${manager_ref##*@}"

# The plugin, one archive per platform.
for p in ${plugin_platforms}; do
	os="${p%/*}" arch="${p#*/}" exe=""
	[[ "${os}" != windows ]] || exe=.exe
	say "plugin ${os}/${arch}"
	dir="${work}/plugin/${os}_${arch}"
	CGO_ENABLED=0 GOOS="${os}" GOARCH="${arch}" go build -trimpath \
		-ldflags "-s -w -X github.com/callguard/callguard/internal/policycli.version=${version}" \
		-o "${dir}/kubectl-callpolicy${exe}" ./cmd/kubectl-callpolicy
	touch -d 2000-01-01T00:00:00Z "${dir}/kubectl-callpolicy${exe}"
	if [[ "${os}" == windows ]]; then
		(cd "${dir}" && zip -qX "${out}/kubectl-callpolicy_${os}_${arch}.zip" "kubectl-callpolicy${exe}")
	else
		tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "${dir}" -cf - kubectl-callpolicy |
			gzip -9n >"${out}/kubectl-callpolicy_${os}_${arch}.tar.gz"
	fi
done

# The chart: its default image the release's (tag: the appVersion).
say "chart"
cp -r dist/chart "${work}/chart"
sed -i "0,/^  repository: callguard\$/s||  repository: ${repo}/callguard|" "${work}/chart/values.yaml"
grep -q "^  repository: ${repo}/callguard\$" "${work}/chart/values.yaml" || { say "dist/chart/values.yaml: image.repository not found"; exit 1; }
"${helm}" lint --strict "${work}/chart" >/dev/null
"${helm}" package "${work}/chart" --version "${version#v}" --app-version "${version}" --destination "${out}" >/dev/null

# install.yaml: config/default with the manager image (and so RECEIVER_IMAGE)
# set to the release's, by digest.
say "install.yaml"
cp -r config "${work}/config"
(cd "${work}/config/manager" && "${kustomize}" edit set image "controller=${image}")
"${kustomize}" build "${work}/config/default" >"${out}/install.yaml"

# The krew manifest: the template's {{VERSION}} and each platform's
# {{SHA256}} (of the archive its uri names) filled in, its comments replaced
# by one line; platforms whose archive was not built (a snapshot's) left out.
say "krew manifest"
(cd "${out}" && sha256sum kubectl-callpolicy_*) >"${work}/archives.sha256"
awk -v version="${version}" -v sums="${work}/archives.sha256" '
	BEGIN { while ((getline line < sums) > 0) { split(line, f, /  /); sum[f[2]] = f[1] } }
	function flush() { if (item != "" && keep) printf "%s", item; item = "" }
	!body && /^#/ { next }
	!body { body = 1; print "# kubectl callpolicy " version " (krew plugin manifest; rendered by hack/release.sh from plugins/callpolicy.yaml)" }
	{ gsub(/\{\{VERSION\}\}/, version) }
	/^    - selector:/ { flush(); item = $0 "\n"; keep = 0; next }
	item != "" && /^    [^ ]/ { flush() }
	item == "" { print; next }
	/^ *uri: / { file = $2; sub(/.*\//, "", file); keep = (file in sum) }
	/\{\{SHA256\}\}/ { if (!keep) { item = item $0 "\n"; next }; gsub(/\{\{SHA256\}\}/, sum[file]) }
	{ item = item $0 "\n" }
	END { flush() }
' plugins/callpolicy.yaml >"${out}/callpolicy.yaml"
if grep -q '{{' "${out}/callpolicy.yaml"; then say "callpolicy.yaml: a placeholder left"; exit 1; fi
for p in ${plugin_platforms}; do
	grep -q "/kubectl-callpolicy_${p%/*}_${p#*/}\." "${out}/callpolicy.yaml" ||
		{ say "plugins/callpolicy.yaml has no entry for ${p}"; exit 1; }
done

(cd "${out}" && sha256sum kubectl-callpolicy_* callguard-*.tgz install.yaml callpolicy.yaml) >"${out}/checksums.txt"
printf '%s\n' "${image}" "${repo}/callguard-receiver:${version}@${receiver_ref##*@}" >"${out}/images.txt"
say "done: ${out}"
cat "${out}/images.txt"
