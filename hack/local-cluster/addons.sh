#!/usr/bin/env bash
# The local cluster's add-ons (see docs/local-cluster.md), each built from its
# pinned Go module, packed without Docker and imported into the cluster:
#
#   - Traefik (hack/local-cluster/traefik/go.mod) as the ingress controller:
#     IngressClass "traefik", HTTPS on 10.213.0.1:443 (a Service externalIP;
#     the node address, never another interface), terminating TLS with the
#     certificates of the Ingresses' Secrets. This script makes a CA and a
#     certificate for *.callguard.test signed by it; clients trust the CA.
#   - metrics-server (hack/local-cluster/metrics-server/go.mod) with its
#     APIService v1beta1.metrics.k8s.io (the aggregation layer's front-proxy
#     certificates are cluster.sh's), so HorizontalPodAutoscalers work.
#
#   hack/local-cluster/addons.sh up      build what is missing, import the images, deploy, wait (idempotent)
#   hack/local-cluster/addons.sh build   only build the binaries and image tarballs (no cluster needed)
#   hack/local-cluster/addons.sh env     print the export lines for clients of the ingress
#
# Nothing is downloaded but Go modules. The binaries and tarballs are cached in
# ${XDG_CACHE_HOME:-$HOME/.cache}/callguard/addons; the CA and certificates live
# in the cluster's state directory (cluster.sh down removes them).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/callguard/addons"
state="${CALLGUARD_CLUSTER_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/callguard/cluster}"
pki="${state}/addons"

node_ip=10.213.0.1
ingress_port=443
domain=callguard.test

traefik_version="$(awk '$1 == "require" && $2 == "github.com/traefik/traefik/v3" {print $3}' "${here}/traefik/go.mod")"
metrics_server_version="$(awk '$1 == "sigs.k8s.io/metrics-server" {print $2}' "${here}/metrics-server/go.mod")"
traefik_image="localhost/callguard/traefik:${traefik_version}"
metrics_server_image="localhost/callguard/metrics-server:${metrics_server_version}"

say() { echo "addons: $*" >&2; }
die() {
	say "ERROR: $*"
	exit 1
}

[[ -n "${traefik_version}" && -n "${metrics_server_version}" ]] || die "cannot read the pinned versions from ${here}/{traefik,metrics-server}/go.mod"

# json_dir prints the "Dir" of `go mod download -json` output on stdin.
json_dir() { sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'; }

# build_traefik builds Traefik from a copy of its module's source, as its own
# main module (its go.mod replaces modules, which a dependency's build would
# ignore). Changes to the copy, all because the Go module proxy does not serve
# something Traefik's go.mod names, none in what the local cluster uses:
#   - webui/static: the dashboard's assets are built with npm upstream and are
#     not in the module; an empty page stands in (the dashboard is off here);
#   - pkg/config/dynamic/ext: a nested module of Traefik's repository (empty
#     extension types of dynamic.HTTP and dynamic.Router), not in the module
#     zip and not served; written here with the two types Traefik embeds;
#   - lego's DNS-01 providers (ACME certificates from DNS APIs) import SDKs
#     the proxy does not serve; lego is copied with the provider factory
#     answering "not in this build";
#   - Traefik's fork of github.com/abbot/go-http-auth is not served; the
#     original v0.4.0 is used, with the htpasswd check the fork exports
#     (bcrypt, {SHA}, $apr1$) written here, and a stale digest-auth nonce
#     answered like any failed digest authentication.
build_traefik() {
	local dir="${cache}/traefik-${traefik_version}"
	[[ -x "${dir}/traefik" ]] && return 0
	local src="${cache}/src/traefik-${traefik_version}"
	if [[ ! -f "${src}/.callguard-patched" ]]; then
		say "preparing Traefik ${traefik_version}'s source in ${src}"
		local mod lego_version lego
		mod="$(cd "${here}/traefik" && go mod download -json github.com/traefik/traefik/v3 | json_dir)"
		[[ -d "${mod}" ]] || die "go mod download github.com/traefik/traefik/v3 gave no directory"
		rm -rf "${src}.tmp"
		mkdir -p "$(dirname "${src}")"
		cp -r "${mod}" "${src}.tmp"
		chmod -R u+w "${src}.tmp"
		(
			cd "${src}.tmp"
			mkdir -p webui/static pkg/config/dynamic/ext
			echo '<!doctype html><title>Traefik</title><p>The dashboard is not part of this build.' >webui/static/index.html
			printf 'module github.com/traefik/traefik/dynamic/ext\n\ngo 1.24.0\n' >pkg/config/dynamic/ext/go.mod
			cat >pkg/config/dynamic/ext/ext.go <<'EOF'
// Package ext holds the extension points of Traefik's dynamic configuration:
// nothing in the open-source build.
package ext

// HTTP extends dynamic.HTTP.
type HTTP struct{}

// Router extends dynamic.Router.
type Router struct{}
EOF
			lego_version="$(awk '$1 == "github.com/go-acme/lego/v5" {print $2; exit}' go.mod)"
			lego="$(go mod download -json "github.com/go-acme/lego/v5@${lego_version}" | json_dir)"
			[[ -d "${lego}" ]] || die "go mod download github.com/go-acme/lego/v5@${lego_version} gave no directory"
			cp -r "${lego}" _lego
			chmod -R u+w _lego
			rm -f _lego/providers/dns/dns_providers_test.go
			cat >_lego/providers/dns/zz_gen_dns_providers.go <<'EOF'
// Package dns: lego's DNS-01 providers are not part of this build (their SDKs
// are not served by the Go module proxy); see hack/local-cluster/addons.sh.
package dns

import (
	"fmt"

	"github.com/go-acme/lego/v5/challenge"
)

// NewDNSChallengeProviderByName refuses every provider.
func NewDNSChallengeProviderByName(name string) (challenge.Provider, error) {
	return nil, fmt.Errorf("ACME DNS challenge provider %q: not in this build of Traefik", name)
}
EOF
			go mod edit -replace "github.com/go-acme/lego/v5=./_lego" \
				-replace "github.com/abbot/go-http-auth=github.com/abbot/go-http-auth@v0.4.0"
			cat >pkg/middlewares/auth/check_secret.go <<'EOF'
package auth

import (
	"crypto/sha1"
	"crypto/subtle"
	"encoding/base64"
	"strings"

	goauth "github.com/abbot/go-http-auth"
	"golang.org/x/crypto/bcrypt"
)

// checkSecret reports whether password matches an htpasswd secret: bcrypt,
// {SHA} or MD5-crypt ($apr1$, $1$).
func checkSecret(password, secret string) bool {
	switch {
	case strings.HasPrefix(secret, "{SHA}"):
		sum := sha1.Sum([]byte(password))
		return subtle.ConstantTimeCompare([]byte(secret[5:]), []byte(base64.StdEncoding.EncodeToString(sum[:]))) == 1
	case strings.HasPrefix(secret, "$apr1$"), strings.HasPrefix(secret, "$1$"):
		parts := strings.SplitN(secret, "$", 4)
		if len(parts) != 4 {
			return false
		}
		return subtle.ConstantTimeCompare([]byte(secret), goauth.MD5Crypt([]byte(password), []byte(parts[2]), []byte("$"+parts[1]+"$"))) == 1
	case strings.HasPrefix(secret, "$2"):
		return bcrypt.CompareHashAndPassword([]byte(secret), []byte(password)) == nil
	}
	return false
}
EOF
			sed -i 's/goauth\.CheckSecret/checkSecret/' pkg/middlewares/auth/basic_auth.go
			sed -i 's/d\.auth\.RequireAuthStale(rw, req)/d.auth.RequireAuth(rw, req)/' pkg/middlewares/auth/digest_auth.go
			touch .callguard-patched
		)
		rm -rf "${src}"
		mv "${src}.tmp" "${src}"
	fi
	say "building Traefik ${traefik_version} (first run: about 10 minutes on 2 cores, most of it downloading modules)"
	mkdir -p "${dir}"
	(cd "${src}" && CGO_ENABLED=0 nice -n 10 go build -mod=mod -trimpath \
		-ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=${traefik_version}" \
		-o "${dir}/traefik.tmp" ./cmd/traefik)
	mv "${dir}/traefik.tmp" "${dir}/traefik"
}

build_metrics_server() {
	local dir="${cache}/metrics-server-${metrics_server_version}"
	[[ -x "${dir}/metrics-server" ]] && return 0
	say "building metrics-server ${metrics_server_version} (first run: a few minutes)"
	mkdir -p "${dir}"
	# Stamped like metrics-server's Makefile stamps its releases.
	(cd "${here}/metrics-server" && CGO_ENABLED=0 nice -n 10 go build -trimpath \
		-ldflags "-s -w -X k8s.io/client-go/pkg/version.gitVersion=${metrics_server_version}" \
		-o "${dir}/metrics-server.tmp" sigs.k8s.io/metrics-server/cmd/metrics-server)
	mv "${dir}/metrics-server.tmp" "${dir}/metrics-server"
}

pack_bin() { echo "${XDG_CACHE_HOME:-$HOME/.cache}/callguard/cluster/v1.37.2/bin/pack"; }

do_build() {
	build_traefik
	build_metrics_server
	mkdir -p "${cache}/images"
	(cd "${here}" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$(pack_bin)" ./cmd/pack)
	local tar
	tar="${cache}/images/traefik-${traefik_version}.tar"
	[[ -f "${tar}" ]] || "$(pack_bin)" --tag "${traefik_image}" --out "${tar}" "${cache}/traefik-${traefik_version}/traefik" >/dev/null
	tar="${cache}/images/metrics-server-${metrics_server_version}.tar"
	[[ -f "${tar}" ]] || "$(pack_bin)" --tag "${metrics_server_image}" --out "${tar}" "${cache}/metrics-server-${metrics_server_version}/metrics-server" >/dev/null
}

# make_certs: the ingress CA and a certificate for *.callguard.test (what
# the Ingresses' TLS Secrets hold), and metrics-server's serving certificate
# signed by the cluster CA (the APIService's caBundle).
make_certs() {
	[[ -f "${pki}/done" ]] && return 0
	say "creating the ingress CA and certificates in ${pki}"
	rm -rf "${pki}"
	mkdir -p "${pki}"
	chmod 700 "${pki}"
	local key="openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256"
	${key} -out "${pki}/ingress-ca.key" 2>/dev/null
	openssl req -x509 -new -key "${pki}/ingress-ca.key" -subj "/CN=callguard-local-ingress-ca" -days 3650 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "${pki}/ingress-ca.crt" 2>/dev/null
	# sign NAME CN SANS CA: NAME.key, NAME.crt (a TLS server certificate).
	sign() {
		${key} -out "${pki}/$1.key" 2>/dev/null
		printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$3" >"${pki}/$1.ext"
		openssl req -new -key "${pki}/$1.key" -subj "/CN=$2" -out "${pki}/$1.csr" 2>/dev/null
		openssl x509 -req -in "${pki}/$1.csr" -CA "$4.crt" -CAkey "$4.key" -set_serial "0x$(openssl rand -hex 16)" \
			-days 3650 -sha256 -extfile "${pki}/$1.ext" -out "${pki}/$1.crt" 2>/dev/null
		rm -f "${pki}/$1.csr" "${pki}/$1.ext"
	}
	sign ingress "*.${domain}" "DNS:*.${domain},DNS:${domain}" "${pki}/ingress-ca"
	sign metrics-server metrics-server.kube-system.svc "DNS:metrics-server.kube-system.svc,DNS:metrics-server.kube-system.svc.cluster.local" "${state}/pki/ca"
	touch "${pki}/done"
}

import_image() {
	local tag="$1" tar="$2"
	local have
	have="$(ctr --address "${CONTAINERD_ADDRESS}" -n k8s.io images ls -q)"
	if ! grep -qxF "${tag}" <<<"${have}"; then
		say "importing ${tag}"
		ctr --address "${CONTAINERD_ADDRESS}" -n k8s.io images import "${tar}" >/dev/null
	fi
}

manifests() {
	local ca_b64 tls_crt tls_key
	ca_b64="$(base64 -w0 <"${state}/pki/ca.crt")"
	tls_crt="$(base64 -w0 <"${pki}/metrics-server.crt")"
	tls_key="$(base64 -w0 <"${pki}/metrics-server.key")"
	cat <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: traefik
  labels:
    pod-security.kubernetes.io/enforce: restricted
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: traefik, namespace: traefik}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: callguard-local-traefik}
rules:
- apiGroups: [""]
  resources: [services, secrets, nodes]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
- apiGroups: [networking.k8s.io]
  resources: [ingresses, ingressclasses]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [ingresses/status]
  verbs: [update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: callguard-local-traefik}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: callguard-local-traefik}
subjects: [{kind: ServiceAccount, name: traefik, namespace: traefik}]
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: traefik
  annotations:
    ingressclass.kubernetes.io/is-default-class: "true"
spec:
  controller: traefik.io/ingress-controller
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: traefik, namespace: traefik}
spec:
  replicas: 1
  selector: {matchLabels: {app.kubernetes.io/name: traefik}}
  template:
    metadata: {labels: {app.kubernetes.io/name: traefik}}
    spec:
      serviceAccountName: traefik
      terminationGracePeriodSeconds: 5
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: traefik
        image: ${traefik_image}
        imagePullPolicy: Never
        args:
        - --global.checkNewVersion=false
        - --global.sendAnonymousUsage=false
        - --entryPoints.websecure.address=:8443
        - --entryPoints.websecure.asDefault=true
        - --entryPoints.websecure.http.tls=true
        - --entryPoints.traefik.address=:9000
        - --ping=true
        - --providers.kubernetesIngress=true
        - --providers.kubernetesIngress.ingressEndpoint.ip=${node_ip}
        - --log.level=INFO
        - --log.noColor=true
        ports:
        - {name: websecure, containerPort: 8443}
        - {name: traefik, containerPort: 9000}
        readinessProbe:
          httpGet: {path: /ping, port: traefik}
          periodSeconds: 2
        livenessProbe:
          httpGet: {path: /ping, port: traefik}
          periodSeconds: 10
        resources:
          requests: {cpu: 50m, memory: 64Mi}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
        volumeMounts: [{name: tmp, mountPath: /tmp}]
      volumes: [{name: tmp, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: traefik, namespace: traefik}
spec:
  selector: {app.kubernetes.io/name: traefik}
  # HTTPS on the node address: kube-proxy answers ${node_ip}:${ingress_port}
  # (the bridge; reachable from this machine and its pods only).
  externalIPs: [${node_ip}]
  ports:
  - {name: websecure, port: ${ingress_port}, targetPort: websecure}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: metrics-server, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:aggregated-metrics-reader
  labels:
    rbac.authorization.k8s.io/aggregate-to-admin: "true"
    rbac.authorization.k8s.io/aggregate-to-edit: "true"
    rbac.authorization.k8s.io/aggregate-to-view: "true"
rules:
- apiGroups: [metrics.k8s.io]
  resources: [pods, nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: system:metrics-server}
rules:
- apiGroups: [""]
  resources: [nodes/metrics]
  verbs: [get]
- apiGroups: [""]
  resources: [pods, nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: system:metrics-server}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:metrics-server}
subjects: [{kind: ServiceAccount, name: metrics-server, namespace: kube-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "metrics-server:system:auth-delegator"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator"}
subjects: [{kind: ServiceAccount, name: metrics-server, namespace: kube-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: metrics-server-auth-reader, namespace: kube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: extension-apiserver-authentication-reader}
subjects: [{kind: ServiceAccount, name: metrics-server, namespace: kube-system}]
---
apiVersion: v1
kind: Secret
metadata: {name: metrics-server-tls, namespace: kube-system}
type: kubernetes.io/tls
data:
  tls.crt: ${tls_crt}
  tls.key: ${tls_key}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: metrics-server, namespace: kube-system}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: metrics-server}}
  template:
    metadata: {labels: {k8s-app: metrics-server}}
    spec:
      serviceAccountName: metrics-server
      priorityClassName: system-cluster-critical
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: metrics-server
        image: ${metrics_server_image}
        imagePullPolicy: Never
        args:
        - --secure-port=4443
        - --cert-dir=/tmp
        - --tls-cert-file=/tls/tls.crt
        - --tls-private-key-file=/tls/tls.key
        - --kubelet-preferred-address-types=InternalIP
        - --kubelet-use-node-status-port
        # The kubelet's serving certificate is signed by the cluster CA.
        - --kubelet-certificate-authority=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt
        # Scrape every 10 s (default 15 s) so the HPA sees load sooner; the
        # kubelet request must time out before the next scrape.
        - --metric-resolution=10s
        - --kubelet-request-timeout=5s
        ports:
        - {name: https, containerPort: 4443}
        readinessProbe:
          httpGet: {path: /readyz, port: https, scheme: HTTPS}
          periodSeconds: 5
        livenessProbe:
          httpGet: {path: /livez, port: https, scheme: HTTPS}
          periodSeconds: 10
        resources:
          requests: {cpu: 20m, memory: 64Mi}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
        volumeMounts:
        - {name: tmp, mountPath: /tmp}
        - {name: tls, mountPath: /tls, readOnly: true}
      volumes:
      - {name: tmp, emptyDir: {}}
      - {name: tls, secret: {secretName: metrics-server-tls}}
---
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec:
  selector: {k8s-app: metrics-server}
  ports:
  - {name: https, port: 443, targetPort: https}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  group: metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  service: {name: metrics-server, namespace: kube-system, port: 443}
  caBundle: ${ca_b64}
EOF
}

node_metrics() { kubectl get --raw /apis/metrics.k8s.io/v1beta1/nodes 2>/dev/null | grep -q '"usage"'; }

# ingress_serves: Traefik answers HTTPS on the node address (404 for a name
# no Ingress routes; its own default certificate, hence -k).
ingress_serves() {
	[[ "$(curl -sk --max-time 2 -o /dev/null -w '%{http_code}' "https://${node_ip}:${ingress_port}/" 2>/dev/null)" == 404 ]]
}

wait_until() {
	local timeout="$1" what="$2"
	shift 2
	local start=${SECONDS}
	until "$@"; do
		((SECONDS - start < timeout)) || die "timed out after ${timeout}s waiting for ${what}"
		sleep 1
	done
}

do_up() {
	local t0=${SECONDS}
	"${here}/cluster.sh" status >/dev/null 2>&1 || die "the local cluster is not up (hack/local-cluster/cluster.sh up)"
	eval "$("${here}/cluster.sh" env)"
	# A cluster started by an older cluster.sh scales in only after 5 minutes.
	local kcm
	if kcm="$(cat "${state}/run/kube-controller-manager.pid" 2>/dev/null)" &&
		! tr '\0' ' ' <"/proc/${kcm}/cmdline" 2>/dev/null | grep -q -- '--horizontal-pod-autoscaler-downscale-stabilization'; then
		say "warning: kube-controller-manager runs without cluster.sh's HPA flags (scale-in after 30 s);"
		say "         restart the cluster to get them: hack/local-cluster/cluster.sh down && hack/local-cluster/cluster.sh up"
	fi
	do_build
	make_certs
	import_image "${traefik_image}" "${cache}/images/traefik-${traefik_version}.tar"
	import_image "${metrics_server_image}" "${cache}/images/metrics-server-${metrics_server_version}.tar"
	local out
	if ! out="$(manifests | kubectl apply --server-side --force-conflicts --field-manager callguard-local-addons -f - 2>&1)"; then
		echo "${out}" >&2
		die "applying the add-ons failed"
	fi
	# (kubectl warns that Service externalIPs are deprecated: kube-proxy here implements them.)
	grep -v -e ' serverside-applied$' -e 'spec.externalIPs is deprecated' <<<"${out}" >&2 || true
	kubectl -n traefik rollout status deployment/traefik --timeout=120s >/dev/null
	kubectl -n kube-system rollout status deployment/metrics-server --timeout=120s >/dev/null
	wait_until 60 "Traefik to answer on https://*.${domain}:${ingress_port} (${node_ip})" ingress_serves
	kubectl wait apiservice/v1beta1.metrics.k8s.io --for=condition=Available --timeout=60s >/dev/null
	wait_until 90 "the first node metrics (kubectl top node)" node_metrics
	say "Traefik ${traefik_version} (https://*.${domain} on ${node_ip}:${ingress_port}) and metrics-server ${metrics_server_version} ready in $((SECONDS - t0))s"
}

do_env() {
	echo "export CALLGUARD_INGRESS_DOMAIN=${domain}"
	echo "export CALLGUARD_INGRESS_ADDRESS=${node_ip}:${ingress_port}"
	echo "export CALLGUARD_INGRESS_CA=${pki}/ingress-ca.crt"
	echo "export CALLGUARD_INGRESS_TLS_CERT=${pki}/ingress.crt"
	echo "export CALLGUARD_INGRESS_TLS_KEY=${pki}/ingress.key"
}

case "${1:-}" in
up) do_up ;;
build) do_build ;;
env) do_env ;;
*)
	echo "usage: $0 up|build|env" >&2
	exit 2
	;;
esac
