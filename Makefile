# callguard — run `make help` for the targets.

IMG ?= callguard:dev
EMULATOR_IMG ?= callguard-graph-emulator:dev
# Every fuzz target runs TEST_FUZZTIME during `make test` (a smoke run from the
# checked-in seed corpora) and FUZZTIME in `make fuzz` (results: docs/benchmarks.md).
# make test's fuzz binaries instrument only the module's own packages
# (hack/fuzz.sh, FUZZ_INSTRUMENT=module), so that they reuse the dependencies
# make test's CGO_ENABLED=0 builds compiled.
# make test's budget is a count of executions: Go 1.26's fuzzer can end a
# duration budget with a spurious "context deadline exceeded" failure and no
# failing input (go.dev/issue/75804, fixed in Go 1.27), which a count, having no
# deadline, cannot. 50000 executions take 0-3 s per target here, 24 s for all
# 15 (more inputs than 5 s each gave most targets with every package
# instrumented).
TEST_FUZZTIME ?= 50000x
FUZZTIME ?= 5m

BIN := $(CURDIR)/bin
CONTROLLER_GEN := $(BIN)/controller-gen
KUSTOMIZE := $(BIN)/kustomize
HELM := $(BIN)/helm
PROMTOOL := $(BIN)/promtool
CRD_REF_DOCS := $(BIN)/crd-ref-docs
KO := $(BIN)/ko
CRANE := $(BIN)/crane
ENVTEST_ASSETS = $$(hack/envtest/build.sh)
GO ?= go

# Generated files; `make test` fails when regenerating them changes anything.
# dist/chart/files holds the chart's copies of config/ files (chart-files).
GENERATED := api/v1alpha1/zz_generated.deepcopy.go config/crd/bases config/rbac/role.yaml dist/chart/files docs/api.md

# render builds a kustomization with the manager image set to IMG, in a
# scratch copy of config/ so the tree is never edited.
define render
tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && cp -r config "$$tmp/" && \
	(cd "$$tmp/config/manager" && $(KUSTOMIZE) edit set image controller=$(IMG)) && \
	$(KUSTOMIZE) build "$$tmp/$(1)"
endef

.DEFAULT_GOAL := help
SHELL := /usr/bin/env bash -o pipefail

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  %-18s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate the CRD and RBAC manifests (and the chart's copies of them).
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./api/...;./controllers/..." output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	@$(MAKE) --no-print-directory chart-files

.PHONY: chart-files
chart-files: ## Copy config/'s CRDs, manager role, alerts and dashboard into dist/chart/files.
	@mkdir -p dist/chart/files/crds
	@rm -f dist/chart/files/crds/*.yaml && cp config/crd/bases/*.yaml dist/chart/files/crds/
	@cp config/rbac/role.yaml dist/chart/files/manager-role.yaml
	@cp config/prometheus/rules.yaml dist/chart/files/prometheus-rules.yaml
	@cp config/prometheus/dashboard.json dist/chart/files/dashboard.json

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: api-docs
api-docs: $(CRD_REF_DOCS) ## Write the API reference (docs/api.md) from the Go types' comments.
	$(CRD_REF_DOCS) --log-level ERROR --source-path api/v1alpha1 --config hack/crd-ref-docs.yaml --renderer markdown --output-path docs/api.md

.PHONY: fmt
fmt: ## Run gofmt over the code.
	gofmt -l -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet.
	$(GO) vet ./...

.PHONY: verify-generated
verify-generated: ## Fail when the committed generated files are stale.
	@before=$$(find $(GENERATED) -type f | sort | xargs sha256sum); \
	$(MAKE) --no-print-directory generate manifests api-docs >/dev/null; \
	after=$$(find $(GENERATED) -type f | sort | xargs sha256sum); \
	if [[ "$$before" != "$$after" ]]; then \
		echo "generated files were stale (now regenerated; review and commit them):"; \
		diff <(echo "$$before") <(echo "$$after") || true; exit 1; \
	fi

.PHONY: envtest
envtest: ## Build (once, cached) kube-apiserver and etcd for envtest.
	@hack/envtest/build.sh >/dev/null

# The tools `make test` needs. test-tools-first is what the checks of generated
# files and `go test` need, built side by side (make -j3), envtest's
# kube-apiserver (the longest) first: on a cold machine one build's module
# downloads and single-threaded link overlap another's compiling instead of
# queueing behind it. test-tools-late (only test-chart and test-release use
# them) then builds during `go test -race` (test-background); helm, built
# after kube-apiserver with the same dependency versions and CGO_ENABLED=0,
# reuses its client-go.
.PHONY: test-tools-first test-tools-late
test-tools-first: envtest $(CONTROLLER_GEN) $(KUSTOMIZE) $(CRD_REF_DOCS)
test-tools-late: $(HELM) $(PROMTOOL) $(KO) $(CRANE)

# The Go flags of `make test`'s builds (docs/benchmarks.md, "Cold CI"): the
# compile flags in hack/compile-flags, which envtest and the tools are built
# with too, so that test/scale's build of the manager and the receiver
# (CGO_ENABLED=0) is the release snapshot's linux/amd64 one and the snapshot
# only links it.
TEST_GOFLAGS = $(strip $(shell $(GO) env GOFLAGS) $(shell grep -v '^\#' hack/compile-flags) -ldflags=-w)

# `go test -vet=all` runs every analyzer `go vet` runs, on the same packages,
# on the build the tests use, instead of `go vet` compiling every dependency
# once more.
.PHONY: test
test: ## Run every test against a real API server (envtest), the chart's and the alerts' tests, plus short fuzz runs.
	@$(MAKE) --no-print-directory -j3 test-tools-first
	@$(MAKE) --no-print-directory verify-generated
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	@hack/verify-shared-versions.sh
	@nice -n 19 $(MAKE) --no-print-directory -j3 test-background & background=$$!; \
	echo '$(GO) test -race -vet=all -count=1 ./... (test-background building beside it at nice 19)'; \
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" GOFLAGS="$(TEST_GOFLAGS)" $(GO) test -race -vet=all -count=1 ./...; rc=$$?; \
	wait $$background || exit 1; exit $$rc
	@GOFLAGS="$(TEST_GOFLAGS)" $(MAKE) --no-print-directory test-chart
	@GOFLAGS="$(TEST_GOFLAGS)" $(MAKE) --no-print-directory test-release
	FUZZTIME=$(TEST_FUZZTIME) FUZZ_INSTRUMENT=module GOFLAGS="$(TEST_GOFLAGS)" hack/fuzz.sh

# What make test builds at nice 19 while `go test -race` runs, on the CPU the
# tests leave idle while they wait: the tools only test-chart and test-release
# need, then test-chart's test binary, compiled and vetted with test-chart's
# flags so that test-chart finds both in the build cache.
.PHONY: test-background
test-background: test-tools-late
	cd test/chart && GOFLAGS="$(TEST_GOFLAGS)" $(GO) test -mod=mod -vet=all -c -o /dev/null .

# test/chart is a module of its own (Prometheus' parser stays out of go.mod);
# -mod=mod lets it follow the main module's requirements as they change.
.PHONY: test-chart
test-chart: $(HELM) $(PROMTOOL) $(KUSTOMIZE) ## Test the Helm chart, alerts and dashboard: helm lint, parity with config/, envtest dry-runs, promtool test rules, dashboard queries.
	assets="$(ENVTEST_ASSETS)" && cd test/chart && KUBEBUILDER_ASSETS="$$assets" HELM=$(HELM) PROMTOOL=$(PROMTOOL) KUSTOMIZE=$(KUSTOMIZE) \
		$(GO) test -mod=mod -vet=all -count=1 ./...

# test/release runs hack/release.sh --snapshot into a temporary directory
# (the images, and the plugin, for linux/amd64 and linux/arm64 only) and
# checks what it wrote; it has the build tag release, so `go test ./...` leaves it out.
.PHONY: test-release
test-release: $(KO) $(CRANE) $(HELM) $(KUSTOMIZE) ## Test a release snapshot: OCI layouts, archives, checksums, krew manifest, chart, install.yaml.
	KO=$(KO) CRANE=$(CRANE) HELM=$(HELM) KUSTOMIZE=$(KUSTOMIZE) $(GO) test -tags release -vet=all -count=1 -timeout 30m ./test/release/

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME (default 5m; e.g. FUZZTIME=30m, or a count: FUZZTIME=2000000x).
	FUZZTIME=$(FUZZTIME) hack/fuzz.sh

.PHONY: bench
bench: ## Run the benchmarks (figures go to docs/benchmarks.md).
	KUBEBUILDER_ASSETS="$$(hack/envtest/build.sh)" $(GO) test -run '^$$' -bench . -benchmem ./...

##@ Build

.PHONY: build
build: ## Build the binaries into bin/.
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ ./cmd/...

.PHONY: run
run: ## Run the operator against the current kubeconfig.
	$(GO) run ./cmd/manager --receiver-image=$(IMG)

.PHONY: docker-build
docker-build: ## Build the operator/receiver image with Docker.
	docker build -t $(IMG) .

.PHONY: build-installer
build-installer: manifests $(KUSTOMIZE) ## Render dist/install.yaml (CRD, RBAC, manager).
	mkdir -p dist
	$(call render,config/default) > dist/install.yaml

.PHONY: helm-package
helm-package: manifests $(HELM) ## Package the Helm chart into dist/ (callguard-<version>.tgz).
	$(HELM) lint --strict dist/chart
	$(HELM) package dist/chart --destination dist

.PHONY: release-tools
release-tools: $(KO) $(CRANE) $(HELM) $(KUSTOMIZE) ## Build the tools hack/release.sh runs.

.PHONY: release-snapshot
release-snapshot: release-tools ## Build a release of VERSION (default v0.0.0-snapshot) into dist/release without publishing it.
	hack/release.sh $(or $(VERSION),v0.0.0-snapshot) --snapshot

##@ Deployment

.PHONY: install
install: manifests $(KUSTOMIZE) ## Install the CRD into the current cluster.
	$(KUSTOMIZE) build config/crd | kubectl apply --server-side -f -

.PHONY: uninstall
uninstall: manifests $(KUSTOMIZE) ## Remove the CRD from the current cluster.
	$(KUSTOMIZE) build config/crd | kubectl delete --ignore-not-found -f -

.PHONY: deploy
deploy: manifests $(KUSTOMIZE) ## Deploy the operator to the current cluster.
	$(call render,config/default) | kubectl apply --server-side -f -

.PHONY: undeploy
undeploy: $(KUSTOMIZE) ## Remove the operator from the current cluster.
	$(KUSTOMIZE) build config/default | kubectl delete --ignore-not-found -f -

##@ Tools

# Each tool is built from its pinned module into a cache outside the clone
# (${XDG_CACHE_HOME:-~/.cache}/callguard/tools, keyed by the pins) and linked
# into bin/ (hack/tools/install.sh). One recipe makes controller-gen and
# kustomize (a grouped target), so that make -j runs it once.
$(CONTROLLER_GEN) $(KUSTOMIZE) &: hack/tools/go.mod hack/tools/go.sum
	hack/tools/install.sh hack/tools "" sigs.k8s.io/controller-tools/cmd/controller-gen sigs.k8s.io/kustomize/kustomize/v5

# helm and promtool are modules of their own so that their dependencies do not
# move controller-gen's; promtool without the cloud service discoveries it
# does not need here (remove_all_sd: about 2 min cold instead of 10). helm has
# envtest's and the operator's versions of client-go and what it imports
# (hack/verify-shared-versions.sh) and is built like them, CGO_ENABLED=0, so
# that after kube-apiserver it compiles only its own packages.
$(HELM): hack/tools/helm/go.mod hack/tools/helm/go.sum
	CGO_ENABLED=0 hack/tools/install.sh hack/tools/helm "" helm.sh/helm/v3/cmd/helm

$(PROMTOOL): hack/tools/promtool/go.mod hack/tools/promtool/go.sum
	hack/tools/install.sh hack/tools/promtool remove_all_sd github.com/prometheus/prometheus/cmd/promtool

$(CRD_REF_DOCS): hack/tools/crd-ref-docs/go.mod hack/tools/crd-ref-docs/go.sum
	hack/tools/install.sh hack/tools/crd-ref-docs "" github.com/elastic/crd-ref-docs

# ko builds the release's images, crane (the go-containerregistry ko pins)
# serves the registry they are built against (hack/release.sh).
$(KO) $(CRANE) &: hack/tools/ko/go.mod hack/tools/ko/go.sum
	hack/tools/install.sh hack/tools/ko "" github.com/google/ko github.com/google/go-containerregistry/cmd/crane

##@ Local cluster

.PHONY: cluster-up
cluster-up: ## Start a real single-node Kubernetes v1.37.2 on this machine (Linux, root; see docs/local-cluster.md).
	hack/local-cluster/cluster.sh up

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and remove everything it left on the machine.
	hack/local-cluster/cluster.sh down

.PHONY: images
images: ## Build the IMG and EMULATOR_IMG images without Docker; import them into the local cluster.
	hack/local-cluster/images.sh $(IMG) $(EMULATOR_IMG)

##@ Demo and end-to-end tests (Linux, root; see docs/local-cluster.md)

.PHONY: demo
demo: ## Run callguard on a local cluster with the Graph emulator and show it deciding calls.
	hack/demo.sh demo

.PHONY: demo-down
demo-down: ## Stop the demo's emulator and tear the local cluster down.
	hack/demo.sh down

.PHONY: e2e
e2e: ## End-to-end tests on the local cluster (go test -tags e2e ./test/e2e/...).
	hack/demo.sh e2e
