#!/usr/bin/env bash
# Runs every fuzz target in the module for FUZZTIME (default 5s) each.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fuzztime="${FUZZTIME:-5s}"
grep -rl --include='*_test.go' '^func Fuzz' --exclude-dir=hack . | while read -r file; do
	pkg="./$(dirname "${file#./}")"
	for target in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "${file}" | cut -d' ' -f2); do
		echo "fuzz ${pkg} ${target} for ${fuzztime}"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "${fuzztime}" "${pkg}"
	done
done
