#!/usr/bin/env bash
# Runs every fuzz target in the module for FUZZTIME (default 5s) each.
#
# `go test -fuzz` takes one target at a time and links the instrumented test
# binary again for each, so each package's binary is built once here
# (go test -c -fuzz) and run once per target with the flags go test would
# give it: from the package's directory (new failing inputs go to its
# testdata/fuzz), with go test's fuzz cache ($GOCACHE/fuzz/IMPORT_PATH).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fuzztime="${FUZZTIME:-5s}"
root="$(pwd)"
module="$(go list -m)"
cache="$(go env GOCACHE)/fuzz"
bins="$(mktemp -d)"
trap 'rm -rf "${bins}"' EXIT
for dir in $(grep -rl --include='*_test.go' '^func Fuzz' --exclude-dir=hack . | xargs -n1 dirname | sort -u); do
	pkg="${module}/${dir#./}"
	targets="$(grep -ho '^func Fuzz[A-Za-z0-9_]*' "${dir}"/*_test.go | cut -d' ' -f2)"
	bin="${bins}/${dir//\//_}.test"
	go test -c -fuzz . -o "${bin}" "${dir}"
	for target in ${targets}; do
		echo "fuzz ${dir} ${target} for ${fuzztime}"
		(cd "${root}/${dir}" && "${bin}" -test.paniconexit0 -test.run '^$' -test.fuzz "^${target}\$" \
			-test.fuzztime "${fuzztime}" -test.fuzzcachedir "${cache}/${pkg}")
	done
done
