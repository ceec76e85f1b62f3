// Package chart holds the tests of the Helm chart (dist/chart) and of the
// monitoring sources (config/prometheus): the chart renders the objects
// `kustomize build config/default` does, every value set passes a
// server-side dry-run against envtest's API server, the alerts pass their
// promtool unit tests, and every dashboard query names metrics the receiver
// registers.
//
// A module of its own, so that Prometheus' packages (the PromQL parser) do
// not enter the operator's go.mod. `make test` runs it with the pinned helm,
// promtool and kustomize from bin/ (HELM, PROMTOOL, KUSTOMIZE override them)
// and KUBEBUILDER_ASSETS set.
package chart
