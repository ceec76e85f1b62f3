#!/usr/bin/env bash
# Regenerates the prometheus-operator CRDs test/chart installs in envtest, from
# the pinned Go module (MONITORING_VERSION) with the pinned controller-gen.
set -euo pipefail
MONITORING_VERSION=${MONITORING_VERSION:-v0.95.2}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../../.." && pwd)
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
printf 'module crdgen\n\ngo 1.26.0\n' > go.mod
printf 'package x\n\nimport _ "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"\n' > x.go
go get "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring@$MONITORING_VERSION"
go mod tidy
"$root/bin/controller-gen" crd:maxDescLen=0 paths=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1 output:crd:dir="$tmp/out"
for k in servicemonitors podmonitors prometheusrules; do
	{
		echo "# Generated, not edited: controller-gen crd:maxDescLen=0 (sigs.k8s.io/controller-tools, hack/tools)"
		echo "# from the Go types of github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring"
		echo "# $MONITORING_VERSION (monitoring/v1), the way prometheus-operator builds its own CRDs; descriptions dropped."
		echo "# Only for test/chart: envtest validates the chart's monitors and rules against it."
		echo "# Regenerate: test/chart/testdata/crds/generate.sh"
		sed '/^---$/d' "out/monitoring.coreos.com_$k.yaml"
	} > "$here/monitoring.coreos.com_$k.yaml"
done
