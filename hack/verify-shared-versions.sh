#!/usr/bin/env bash
# Fails when modules that make test builds twice drift to different versions.
#
# The Go build cache shares a compiled package between two modules' builds
# only when its version, its flags and the versions of everything it imports
# are the same. envtest's kube-apiserver and make test's CGO_ENABLED=0 builds
# of the manager and the receiver (test/scale, the release snapshot, the fuzz
# smoke) and helm (built after kube-apiserver, CGO_ENABLED=0 like them) all
# compile client-go and its dependencies; promtool and test/chart
# both compile Prometheus's and client-go's. With the versions below kept
# equal, a cold make test compiles those packages once instead of twice.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

failed=0
# check DIR_A DIR_B MODULE...: each MODULE has the same selected version in both.
check() {
	local a="$1" b="$2"
	shift 2
	local va vb
	va="$(cd "$a" && go list -m -f '{{.Path}} {{.Version}}' "$@")"
	vb="$(cd "$b" && go list -m -f '{{.Path}} {{.Version}}' "$@")"
	if [[ "$va" != "$vb" ]]; then
		echo "versions differ between ${a}/go.mod and ${b}/go.mod (set the same ones; see hack/verify-shared-versions.sh):"
		diff <(echo "$va") <(echo "$vb") | grep '^[<>]' || true
		failed=1
	fi
}

shared=(k8s.io/api k8s.io/apimachinery k8s.io/apiserver k8s.io/client-go k8s.io/component-base
	golang.org/x/net golang.org/x/oauth2 golang.org/x/text golang.org/x/crypto golang.org/x/sys
	golang.org/x/term golang.org/x/sync google.golang.org/protobuf github.com/google/gnostic-models
	go.yaml.in/yaml/v3 github.com/go-logr/logr)
check . hack/envtest "${shared[@]}"
check . hack/tools/helm "${shared[@]}"
check test/chart hack/tools/promtool \
	k8s.io/api k8s.io/apimachinery k8s.io/client-go \
	golang.org/x/net google.golang.org/protobuf \
	github.com/google/gnostic-models go.yaml.in/yaml/v3 \
	github.com/Azure/azure-sdk-for-go/sdk/azcore
exit "${failed}"
