#!/usr/bin/env bash
# Runs every fuzz target in the module for FUZZTIME (default 5s) each: a
# duration, or a count of executions such as 10000x. A duration can end in a
# spurious "context deadline exceeded" failure that writes no failing input
# (go.dev/issue/75804, Go 1.26); a count cannot, so make test uses one.
#
# `go test -fuzz` takes one target at a time and links the instrumented test
# binary again for each, so each package's binary is built once here
# (go test -c -fuzz) and run once per target with the flags go test would
# give it: from the package's directory (new failing inputs go to its
# testdata/fuzz), with go test's fuzz cache ($GOCACHE/fuzz/IMPORT_PATH).
#
# FUZZ_INSTRUMENT=module (make test's short runs): each binary is built with
# coverage instrumentation of the module's own packages only (the flag go test
# -fuzz gives every package, through -gcflags) and CGO_ENABLED=0. `-fuzz`
# instruments every package of the build, so each binary compiled its
# dependencies once more (client-go, controller-runtime and envtest for
# internal/receiver and internal/policycli; cel-go and the YAML readers for
# internal/policy); this way those are the CGO_ENABLED=0 packages make test's
# earlier builds (test/scale's manager and receiver, the release snapshot's
# linux/amd64 images) left in the build cache. The parsers fuzzed are the
# module's, so the fuzzer is still guided by their branches. Without
# FUZZ_INSTRUMENT (make fuzz), every package is instrumented whole, as go test
# -fuzz does.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fuzztime="${FUZZTIME:-5s}"
instrument="${FUZZ_INSTRUMENT:-all}"
root="$(pwd)"
module="$(go list -m)"
cache="$(go env GOCACHE)/fuzz"
bins="$(mktemp -d)"
trap 'rm -rf "${bins}"' EXIT
for dir in $(grep -rl --include='*_test.go' '^func Fuzz' --exclude-dir=hack . | xargs -n1 dirname | sort -u); do
	pkg="${module}/${dir#./}"
	targets="$(grep -ho '^func Fuzz[A-Za-z0-9_]*' "${dir}"/*_test.go | cut -d' ' -f2)"
	bin="${bins}/${dir//\//_}.test"
	if [[ "${instrument}" == module ]]; then
		# The same gcflags for every other package as make test's GOFLAGS
		# give them (-gcflags=all=... is replaced, not added to, per package).
		gcflags="$(go env GOFLAGS | grep -o -- '-gcflags=all=[^ ]*' | tail -1 | cut -d= -f3-)"
		echo "build ${dir}: coverage instrumentation of ${module}/... only, CGO_ENABLED=0"
		CGO_ENABLED=0 go test -c -vet=off -gcflags="${module}/...=${gcflags:+${gcflags} }-d=libfuzzer" -o "${bin}" "${dir}"
	else
		go test -c -fuzz . -o "${bin}" "${dir}"
	fi
	for target in ${targets}; do
		echo "fuzz ${dir} ${target} for ${fuzztime}"
		(cd "${root}/${dir}" && "${bin}" -test.paniconexit0 -test.run '^$' -test.fuzz "^${target}\$" \
			-test.fuzztime "${fuzztime}" -test.fuzzcachedir "${cache}/${pkg}")
	done
done
