#!/usr/bin/env bash
# The README's run command and the end-to-end tests, on the local cluster.
#
#   hack/demo.sh demo    cluster up (if none), images, add-ons (ingress controller, metrics-server),
#                        operator from dist/install.yaml, then the demo
#   hack/demo.sh e2e     the same, the operator installed with helm from dist/chart, then
#                        go test -tags e2e ./test/e2e/... (which upgrades and uninstalls it)
#   hack/demo.sh down    stop the emulator and tear the cluster down
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"
state="${XDG_STATE_HOME:-$HOME/.local/state}/callguard/demo"
img="${IMG:-callguard:dev}"

say() { echo "==> $*"; }

# setup brings the cluster up, builds the images and installs the operator:
# from dist/install.yaml (the demo), or with helm from dist/chart (the e2e,
# which then upgrades and uninstalls the release).
setup() {
	local how="$1" t0=$SECONDS
	say "local cluster (first run builds Kubernetes from source: about 15-25 minutes on 2 cores)"
	hack/local-cluster/cluster.sh up
	eval "$(hack/local-cluster/cluster.sh env)"
	say "images ${img} and callguard-graph-emulator:dev, built without Docker"
	hack/local-cluster/images.sh "${img}" callguard-graph-emulator:dev
	say "add-ons: Traefik (ingress controller, TLS for *.callguard.test on 10.213.0.1:443) and metrics-server, built from their Go modules"
	hack/local-cluster/addons.sh up
	eval "$(hack/local-cluster/addons.sh env)"
	make --no-print-directory build-installer IMG="${img}" >/dev/null
	if [[ "${how}" == helm ]]; then
		make --no-print-directory "${root}/bin/helm" >/dev/null
		if ! bin/helm status callguard -n callguard-system >/dev/null 2>&1; then
			# An install made by the demo (kubectl apply) owns the same objects.
			kubectl delete --ignore-not-found --wait -f dist/install.yaml >/dev/null 2>&1 || true
		fi
		say "installing the operator with helm from dist/chart"
		bin/helm upgrade --install callguard dist/chart -n callguard-system --create-namespace \
			--set image.repository="${img%:*}" --set image.tag="${img##*:}" --wait --timeout 3m >/dev/null
	else
		if [[ -x bin/helm ]] && bin/helm status callguard -n callguard-system >/dev/null 2>&1; then
			bin/helm uninstall callguard -n callguard-system --wait >/dev/null
		fi
		say "installing the operator from dist/install.yaml (make build-installer)"
		kubectl apply --server-side --force-conflicts -f dist/install.yaml >/dev/null
	fi
	# The image tag stays the same while its content changes: restart so the
	# operator runs what was just built.
	kubectl -n callguard-system rollout restart deployment/callguard-controller-manager >/dev/null
	kubectl -n callguard-system rollout status deployment/callguard-controller-manager --timeout=180s
	CGO_ENABLED=0 go build -o bin/graph-emulator ./cmd/graph-emulator
	say "set-up took $((SECONDS - t0)) s"
}

case "${1:-}" in
demo)
	setup kustomize
	# Receivers of an earlier run keep the old image; restart them too.
	if kubectl get namespace callguard-demo >/dev/null 2>&1; then
		kubectl -n callguard-demo rollout restart deployment/hotline-callguard >/dev/null 2>&1 || true
	fi
	# "What did it do with my calls?": the plugin, through kubectl's own
	# credentials and the API server's pod proxy (the demo runs it too).
	CGO_ENABLED=0 go build -o bin/kubectl-callpolicy ./cmd/kubectl-callpolicy
	export PATH="${root}/bin:${PATH}"
	go run ./hack/demo --kubeconfig "${KUBECONFIG}" --state-dir "${state}/emulator"
	say "kubectl callpolicy status hotline -n callguard-demo"
	kubectl callpolicy status hotline -n callguard-demo || true
	say "kubectl callpolicy decisions hotline -n callguard-demo -o wide   (TENANT: the tenant each call arrived in)"
	kubectl callpolicy decisions hotline -n callguard-demo -o wide
	;;
e2e)
	setup helm
	# The demo's receivers would take the CPU the e2e's need on the 2-core node.
	if kubectl get namespace callguard-demo >/dev/null 2>&1; then
		say "deleting the demo's namespace callguard-demo (its receivers would crowd the node)"
		kubectl delete namespace callguard-demo --wait=true --timeout=3m >/dev/null
	fi
	mkdir -p "${state}"
	E2E_STATE_DIR="${state}" E2E_FIGURES="${state}/e2e-figures.txt" E2E_HELM="${root}/bin/helm" \
		go test -tags e2e -count=1 -v -timeout 30m ./test/e2e/...
	say "figures: ${state}/e2e-figures.txt"
	;;
down)
	if [[ -f "${state}/emulator/pid" ]]; then
		kill "$(cat "${state}/emulator/pid")" 2>/dev/null || true
		rm -f "${state}/emulator/pid" "${state}/emulator/url"
	fi
	hack/local-cluster/cluster.sh down
	;;
*)
	echo "usage: $0 demo|e2e|down" >&2
	exit 2
	;;
esac
