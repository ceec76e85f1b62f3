#!/usr/bin/env bash
# Checks that the running local cluster (cluster.sh up) does what the
# operator needs:
#   1. a Deployment of 2 pause pods under the restricted Pod Security profile
#      (runAsNonRoot, readOnlyRootFilesystem, drop ALL, seccomp RuntimeDefault)
#      becomes Available;
#   2. a Service's ClusterIP reaches a pod (an HTTP server packed here), from
#      the host (kube-proxy's OUTPUT rules);
#   3. a pod reaches the API server through the kubernetes Service with its
#      service-account token (GET /version, POST a SelfSubjectReview), and
#      reaches the same HTTP Service by ClusterIP (kube-proxy's PREROUTING
#      rules, over the bridge);
#   4. the kubernetes Service has its endpoint and kube-proxy's iptables rules.
# Leaves nothing behind unless KEEP=1.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/callguard/cluster/v1.37.2"
ns=callguard-smoke
image=localhost/callguard/testserver:local

say() { echo "smoke-test: $*" >&2; }
fail() {
	say "FAILED: $*"
	kubectl get all -n "${ns}" -o wide >&2 || true
	kubectl get events -n "${ns}" --sort-by=.lastTimestamp >&2 || true
	exit 1
}

if ! "${here}/cluster.sh" status >/dev/null 2>&1; then
	say "the local cluster is not up: run 'make cluster-up' first"
	exit 1
fi
eval "$("${here}/cluster.sh" env)"
start=${SECONDS}

say "packing and importing ${image}"
mkdir -p "${cache}/images" "${cache}/bin"
(
	cd "${here}"
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${cache}/bin/pack" ./cmd/pack
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${cache}/images/testserver" ./cmd/testserver
)
"${cache}/bin/pack" --tag "${image}" --out "${cache}/images/testserver.tar" --ca-bundle "" "${cache}/images/testserver" >/dev/null
ctr --address "${CONTAINERD_ADDRESS}" -n k8s.io images import "${cache}/images/testserver.tar" >/dev/null

cleanup() {
	if [[ -z "${KEEP:-}" ]]; then
		kubectl delete namespace "${ns}" --ignore-not-found --wait=false >/dev/null 2>&1 || true
	fi
}
trap cleanup EXIT

kubectl delete namespace "${ns}" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "${ns}" >/dev/null
kubectl label namespace "${ns}" pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest >/dev/null

# Security contexts satisfying the restricted profile.
pod_sc='
      securityContext:
        runAsNonRoot: true
        seccompProfile: {type: RuntimeDefault}'
container_sc='
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}'

kubectl apply -n "${ns}" -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: pause}
spec:
  replicas: 2
  selector: {matchLabels: {app: pause}}
  template:
    metadata: {labels: {app: pause}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1${pod_sc}
      containers:
      - name: pause
        image: localhost/callguard/pause:local
        imagePullPolicy: Never${container_sc}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1${pod_sc}
      containers:
      - name: web
        image: ${image}
        imagePullPolicy: Never
        args: [serve, -addr, ":8080"]
        ports: [{containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1${container_sc}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: ClusterIP
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
YAML

say "1. Deployment of 2 restricted pause pods"
kubectl wait -n "${ns}" --for=condition=Available deployment/pause --timeout=120s >/dev/null || fail "deployment/pause not Available"
kubectl get deployment pause -n "${ns}"
kubectl get pods -n "${ns}" -l app=pause -o wide
kubectl get pod -n "${ns}" -l app=pause -o jsonpath='{range .items[*]}{.metadata.name}: runAsNonRoot={.spec.securityContext.runAsNonRoot} seccomp={.spec.securityContext.seccompProfile.type} readOnlyRootFilesystem={.spec.containers[0].securityContext.readOnlyRootFilesystem} drop={.spec.containers[0].securityContext.capabilities.drop}{"\n"}{end}'

say "2. Service ClusterIP -> pod, from the host"
kubectl wait -n "${ns}" --for=condition=Available deployment/web --timeout=120s >/dev/null || fail "deployment/web not Available"
ip="$(kubectl get service web -n "${ns}" -o jsonpath='{.spec.clusterIP}')"
kubectl get service web -n "${ns}"
say "   GET http://${ip}/"
"${cache}/images/testserver" get -expect "testserver web-" -timeout 30s "http://${ip}/" || fail "the host could not reach Service web at ${ip}"

say "3. pod -> kubernetes Service -> API server, and pod -> Service web"
kubectl wait -n "${ns}" --for=jsonpath='{.metadata.name}'=default serviceaccount/default --timeout=60s >/dev/null ||
	fail "no default service account"
kubectl apply -n "${ns}" -f - >/dev/null <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: apicheck}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never${pod_sc}
      containers:
      - name: apicheck
        image: ${image}
        imagePullPolicy: Never
        args: [apicheck, -get, "http://${ip}/", -expect, "testserver web-"]${container_sc}
YAML
if ! kubectl wait -n "${ns}" --for=condition=Complete job/apicheck --timeout=120s >/dev/null; then
	kubectl logs -n "${ns}" job/apicheck >&2 || true
	fail "job/apicheck did not complete"
fi
kubectl logs -n "${ns}" job/apicheck

say "4. the kubernetes Service: endpoint and kube-proxy rules"
kubectl get service kubernetes -n default
kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes
iptables -w -t nat -S KUBE-SERVICES | grep -F 'default/kubernetes:https' || fail "no KUBE-SERVICES rule for default/kubernetes"

say "all checks passed in $((SECONDS - start))s"
