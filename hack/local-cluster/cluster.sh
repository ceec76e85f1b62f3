#!/usr/bin/env bash
# A real single-node Kubernetes v1.37.2 cluster on this Linux machine, built
# from Go modules (build.sh) and Debian packages (containerd, runc, CNI
# plugins, iptables). See docs/local-cluster.md.
#
#   hack/local-cluster/cluster.sh up       start it (idempotent); prints the KUBECONFIG export line
#   hack/local-cluster/cluster.sh down     stop it and remove every trace (idempotent)
#   hack/local-cluster/cluster.sh status   show the components; exit 0 when all are healthy
#   hack/local-cluster/cluster.sh env      print the export lines (KUBECONFIG, PATH, CONTAINERD_ADDRESS)
#
# Linux and root only. Everything the cluster writes lives under STATE_DIR
# (default ${XDG_STATE_HOME:-$HOME/.local/state}/callguard/cluster, override
# with CALLGUARD_CLUSTER_DIR); the binaries are cached under
# ${XDG_CACHE_HOME:-$HOME/.cache}/callguard/cluster/v1.37.2/bin.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION="v1.37.2"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/callguard/cluster/${K8S_VERSION}"
BIN_DIR="${CACHE_DIR}/bin"
STATE_DIR="${CALLGUARD_CLUSTER_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/callguard/cluster}"
LOG_V="${CALLGUARD_CLUSTER_V:-1}"

# Network layout (see docs/local-cluster.md). Nothing here routes off the machine.
NODE_NAME="callguard-node"
BRIDGE="callguard0"
POD_CIDR="10.213.0.0/24"
NODE_IP="10.213.0.1" # the bridge's own address: API server, kubelet, pods' gateway
SERVICE_CIDR="10.96.0.0/16"
API_SERVICE_IP="10.96.0.1"
API_PORT=6443
ETCD_CLIENT_PORT=12379 # below the ephemeral range, away from envtest's random ports
ETCD_PEER_PORT=12380
SANDBOX_IMAGE="localhost/callguard/pause:local"

# Layout of the state directory.
PKI="${STATE_DIR}/pki"
KCFG="${STATE_DIR}/kubeconfigs"
ADMIN_KUBECONFIG="${STATE_DIR}/kubeconfig"
CONF="${STATE_DIR}/config"
RUN="${STATE_DIR}/run"
LOGS="${STATE_DIR}/logs"
CTRD="${STATE_DIR}/containerd"
CTRD_SOCK="${CTRD}/containerd.sock"
KUBELET_DIR="${STATE_DIR}/kubelet"
SAVED_SYSCTLS="${STATE_DIR}/saved-sysctls"
CREATED_PATHS="${STATE_DIR}/created-host-paths"

# Start order; down stops them in the reverse order (kubelet first, see do_down).
COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

# Sysctls that the kubelet, kube-proxy or the CNI bridge plugin may change;
# saved by `up` before anything runs and restored by `down`.
SYSCTLS=(
	net.ipv4.ip_forward
	net.ipv4.conf.all.accept_redirects
	net.bridge.bridge-nf-call-iptables
	net.bridge.bridge-nf-call-ip6tables
	net.ipv4.conf.all.route_localnet
	vm.overcommit_memory
	vm.panic_on_oom
	kernel.panic
	kernel.panic_on_oops
	kernel.keys.root_maxkeys
	kernel.keys.root_maxbytes
	net.netfilter.nf_conntrack_max
	net.netfilter.nf_conntrack_tcp_timeout_established
	net.netfilter.nf_conntrack_tcp_timeout_close_wait
)

say() { echo "local-cluster: $*" >&2; }
die() {
	say "ERROR: $*"
	exit 1
}

# ---------------------------------------------------------------------------
# Preconditions

preflight() {
	if [[ "$(uname -s)" != "Linux" ]]; then
		say "this cluster runs only on Linux (this is $(uname -s))"
		exit 2
	fi
	if [[ ${EUID} -ne 0 ]]; then
		say "this cluster must be run as root (it runs containerd, the kubelet and iptables); try: sudo $0 $*"
		exit 2
	fi
	if [[ ! -d /sys/fs/cgroup ]]; then
		say "no /sys/fs/cgroup: the kubelet needs cgroups"
		exit 2
	fi
}

ensure_packages() {
	local missing=()
	command -v containerd >/dev/null || missing+=(containerd)
	command -v ctr >/dev/null || missing+=(containerd)
	command -v runc >/dev/null || missing+=(runc)
	[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/portmap && -x /usr/lib/cni/loopback ]] || missing+=(containernetworking-plugins)
	command -v iptables >/dev/null || missing+=(iptables)
	command -v openssl >/dev/null || missing+=(openssl)
	command -v curl >/dev/null || missing+=(curl)
	command -v go >/dev/null || die "go is needed to build the Kubernetes binaries and is not on PATH"
	if [[ ${#missing[@]} -gt 0 ]]; then
		say "installing Debian packages: ${missing[*]}"
		if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >"${STATE_DIR}/apt.log" 2>&1; then
			DEBIAN_FRONTEND=noninteractive apt-get update >>"${STATE_DIR}/apt.log" 2>&1 || true
			DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>"${STATE_DIR}/apt.log" 2>&1 ||
				die "apt-get install ${missing[*]} failed; see ${STATE_DIR}/apt.log"
		fi
	fi
}

# ---------------------------------------------------------------------------
# Processes

# our_pids prints the pids of every process of this cluster, found by what
# they are rather than by pid files: the binaries in BIN_DIR (but not a
# user's kubectl), containerd and its shims for this state directory, and
# every process in a kubepods cgroup (the containers).
our_pids() {
	local p exe cmd
	for p in /proc/[0-9]*; do
		p="${p#/proc/}"
		exe="$(readlink "/proc/${p}/exe" 2>/dev/null)" || continue
		case "${exe}" in
		"${BIN_DIR}/kubectl"*) ;;
		"${BIN_DIR}/"*) echo "${p}" ;;
		*/containerd | */containerd-shim*)
			cmd="$(tr '\0' ' ' <"/proc/${p}/cmdline" 2>/dev/null)" || continue
			[[ "${cmd}" == *"${STATE_DIR}/"* ]] && echo "${p}"
			;;
		esac
	done
	pod_pids
}

# pod_pids prints the pids in the kubelet's kubepods cgroups (cgroupfs driver).
pod_pids() {
	local d
	for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
		[[ -d "${d}" ]] || continue
		find "${d}" -name cgroup.procs -exec cat {} + 2>/dev/null || true
	done | sort -un
}

pid_of() {
	local f="${RUN}/$1.pid" pid
	[[ -f "${f}" ]] || return 1
	pid="$(cat "${f}")"
	[[ -n "${pid}" && -e "/proc/${pid}" ]] || return 1
	# Guard against a recycled pid: it must still be the same binary.
	local exe
	exe="$(readlink "/proc/${pid}/exe" 2>/dev/null)" || return 1
	[[ "${exe}" == "$(binary_of "$1")"* ]] || return 1
	echo "${pid}"
}

binary_of() {
	case "$1" in
	containerd) command -v containerd || echo /usr/bin/containerd ;;
	*) echo "${BIN_DIR}/$1" ;;
	esac
}

# start NAME ARGS...: runs the component detached, logging to LOGS/NAME.log.
start() {
	local name="$1"
	shift
	local bin
	bin="$(binary_of "${name}")"
	say "starting ${name} (log: ${LOGS}/${name}.log)"
	# fd 9 holds the up/down lock: the daemons must not inherit it.
	setsid "${bin}" "$@" >>"${LOGS}/${name}.log" 2>&1 </dev/null 9>&- &
	echo $! >"${RUN}/${name}.pid"
}

# healthy NAME: the component answers its health check.
healthy() {
	case "$1" in
	containerd) [[ -S "${CTRD_SOCK}" ]] && ctr --address "${CTRD_SOCK}" version >/dev/null 2>&1 ;;
	etcd) curl -sf --max-time 2 "http://127.0.0.1:${ETCD_CLIENT_PORT}/health" 2>/dev/null | grep -q '"health":"true"' ;;
	kube-apiserver) api_get /readyz | grep -qx ok ;;
	kube-controller-manager) curl -sfk --max-time 2 https://127.0.0.1:10257/healthz 2>/dev/null | grep -qx ok ;;
	kube-scheduler) curl -sfk --max-time 2 https://127.0.0.1:10259/healthz 2>/dev/null | grep -qx ok ;;
	kubelet) curl -sf --max-time 2 http://127.0.0.1:10248/healthz 2>/dev/null | grep -qx ok ;;
	kube-proxy) curl -sf --max-time 2 -o /dev/null http://127.0.0.1:10256/livez 2>/dev/null ;;
	*) return 1 ;;
	esac
}

api_get() {
	curl -sf --max-time 3 --cacert "${PKI}/ca.crt" --cert "${PKI}/admin.crt" --key "${PKI}/admin.key" \
		"https://${NODE_IP}:${API_PORT}$1" 2>/dev/null
}

kubectl() { "${BIN_DIR}/kubectl" --kubeconfig "${ADMIN_KUBECONFIG}" --cache-dir "${STATE_DIR}/kube-cache" "$@"; }

node_ready() {
	[[ "$(kubectl get node "${NODE_NAME}" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == "True" ]]
}

# wait_until SECONDS WHAT LOG CMD...: polls CMD every second; on time-out shows
# the end of LOG and fails.
wait_until() {
	local timeout="$1" what="$2" log="$3"
	shift 3
	local start=${SECONDS} next=${SECONDS}
	until "$@"; do
		if ((SECONDS - start >= timeout)); then
			say "timed out after ${timeout}s waiting for ${what}"
			if [[ -n "${log}" && -f "${log}" ]]; then
				say "last lines of ${log}:"
				tail -n 25 "${log}" >&2
			fi
			return 1
		fi
		if ((SECONDS >= next + 15)); then
			say "  ... still waiting for ${what} ($((SECONDS - start))s)"
			next=${SECONDS}
		fi
		sleep 1
	done
}

# cluster_state prints "running" (every component up and healthy, node
# Ready), "stopped" (nothing of ours runs) or "partial".
cluster_state() {
	local c up=0
	for c in "${COMPONENTS[@]}"; do
		if pid_of "${c}" >/dev/null && healthy "${c}"; then
			up=$((up + 1))
		fi
	done
	if ((up == ${#COMPONENTS[@]})) && [[ -f "${ADMIN_KUBECONFIG}" ]] && node_ready; then
		echo running
	elif ((up == 0)) && [[ -z "$(our_pids)" ]]; then
		echo stopped
	else
		echo partial
	fi
}

# ---------------------------------------------------------------------------
# Host changes (all undone by do_down)

save_sysctls() {
	[[ -f "${SAVED_SYSCTLS}" ]] && return 0
	local k f
	: >"${SAVED_SYSCTLS}.tmp"
	for k in "${SYSCTLS[@]}"; do
		f="/proc/sys/${k//.//}"
		[[ -f "${f}" ]] && echo "${k}=$(cat "${f}")" >>"${SAVED_SYSCTLS}.tmp"
	done
	mv "${SAVED_SYSCTLS}.tmp" "${SAVED_SYSCTLS}"
}

restore_sysctls() {
	[[ -f "${SAVED_SYSCTLS}" ]] || return 0
	local k v f
	while IFS='=' read -r k v; do
		f="/proc/sys/${k//.//}"
		[[ -f "${f}" ]] || continue
		if [[ "$(cat "${f}")" != "${v}" ]]; then
			if echo "${v}" >"${f}" 2>/dev/null; then
				say "restored ${k}=${v}"
			else
				say "could not restore ${k}=${v}"
			fi
		fi
	done <"${SAVED_SYSCTLS}"
	rm -f "${SAVED_SYSCTLS}"
}

# note_created PATH: remember a host directory that up created, for down to remove.
note_created() {
	if [[ ! -e "$1" ]]; then
		mkdir -p "$1"
		echo "$1" >>"${CREATED_PATHS}"
	fi
}

setup_network() {
	if ! ip link show "${BRIDGE}" >/dev/null 2>&1; then
		ip link add "${BRIDGE}" type bridge
	fi
	echo 1 >"/proc/sys/net/ipv6/conf/${BRIDGE}/disable_ipv6" 2>/dev/null || true
	if ! ip -4 addr show dev "${BRIDGE}" | grep -q "inet ${NODE_IP}/"; then
		ip addr add "${NODE_IP}/${POD_CIDR#*/}" dev "${BRIDGE}"
	fi
	ip link set "${BRIDGE}" up
	# Pods reach Services on their own bridge only if bridged traffic passes
	# iptables; the bridge plugin turns on forwarding anyway.
	[[ -f /proc/sys/net/bridge/bridge-nf-call-iptables ]] || modprobe br_netfilter 2>/dev/null || true
	echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
	echo 1 >/proc/sys/net/ipv4/ip_forward

	# Isolation: nothing from the pod network leaves through another
	# interface, and nothing from another interface reaches the pod network
	# or the node IP (the API server and the kubelet listen there). In the
	# mangle table, which runs before the filter table where kube-proxy puts
	# its ACCEPT rules first.
	local t
	for t in CALLGUARD-FORWARD CALLGUARD-INPUT; do
		iptables -w -t mangle -N "${t}" 2>/dev/null || iptables -w -t mangle -F "${t}"
	done
	iptables -w -t mangle -A CALLGUARD-FORWARD -s "${POD_CIDR}" ! -o "${BRIDGE}" -m comment --comment "callguard: pods stay on the bridge" -j DROP
	iptables -w -t mangle -A CALLGUARD-FORWARD -d "${POD_CIDR}" ! -i "${BRIDGE}" -m comment --comment "callguard: pods only from the bridge" -j DROP
	iptables -w -t mangle -A CALLGUARD-INPUT -i lo -j RETURN
	iptables -w -t mangle -A CALLGUARD-INPUT -i "${BRIDGE}" -j RETURN
	iptables -w -t mangle -A CALLGUARD-INPUT -d "${POD_CIDR}" -m comment --comment "callguard: node IP only from the bridge and lo" -j DROP
	iptables -w -t mangle -C FORWARD -j CALLGUARD-FORWARD 2>/dev/null || iptables -w -t mangle -I FORWARD 1 -j CALLGUARD-FORWARD
	iptables -w -t mangle -C INPUT -j CALLGUARD-INPUT 2>/dev/null || iptables -w -t mangle -I INPUT 1 -j CALLGUARD-INPUT
	# The node's own traffic to a ClusterIP that kube-proxy has not (yet)
	# translated would follow the default route off the machine; refuse it
	# here. The filter table's OUTPUT runs after kube-proxy's DNAT, so a
	# translated packet no longer has a Service address and passes.
	iptables -w -t filter -N CALLGUARD-OUTPUT 2>/dev/null || iptables -w -t filter -F CALLGUARD-OUTPUT
	iptables -w -t filter -A CALLGUARD-OUTPUT -d "${SERVICE_CIDR}" -m comment --comment "callguard: untranslated ClusterIPs stay on the node" -j REJECT
	iptables -w -t filter -C OUTPUT -j CALLGUARD-OUTPUT 2>/dev/null || iptables -w -t filter -I OUTPUT 1 -j CALLGUARD-OUTPUT
}

# iptables_variants prints the iptables commands whose tables may hold our chains.
iptables_variants() {
	local v
	for v in iptables ip6tables; do
		command -v "${v}" >/dev/null && echo "${v}"
		# Legacy (x_tables) tables exist only once something used them.
		if command -v "${v}-legacy" >/dev/null; then
			# (/proc files have size 0: read them.)
			if [[ ${v} == iptables && -n "$(cat /proc/net/ip_tables_names 2>/dev/null)" ]] ||
				[[ ${v} == ip6tables && -n "$(cat /proc/net/ip6_tables_names 2>/dev/null)" ]]; then
				echo "${v}-legacy"
			fi
		fi
	done
}

# Chains of the kube-proxy, the kubelet, the CNI plugins and ours.
OUR_CHAINS_RE='^(KUBE-|CNI-|CALLGUARD-)'

cleanup_iptables() {
	local ipt table line chain
	for ipt in $(iptables_variants); do
		for table in filter nat mangle raw; do
			"${ipt}" -w -t "${table}" -S >/dev/null 2>&1 || continue
			# Rules in built-in chains that jump to our chains.
			while IFS= read -r line; do
				eval "\"${ipt}\" -w -t ${table} -D ${line#-A }" 2>/dev/null || true
			done < <("${ipt}" -w -t "${table}" -S 2>/dev/null | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) ' | grep -E -- '-j (KUBE-|CNI-|CALLGUARD-)' || true)
			local chains
			chains="$("${ipt}" -w -t "${table}" -S 2>/dev/null | awk '$1 == "-N" {print $2}' | grep -E "${OUR_CHAINS_RE}" || true)"
			for chain in ${chains}; do "${ipt}" -w -t "${table}" -F "${chain}" 2>/dev/null || true; done
			for chain in ${chains}; do "${ipt}" -w -t "${table}" -X "${chain}" 2>/dev/null || true; done
		done
	done
}

# ---------------------------------------------------------------------------
# Files: PKI, kubeconfigs, component configs

gen_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# sign NAME SUBJECT EKU [SANS]: NAME.key/NAME.crt signed by the cluster CA.
sign() {
	local name="$1" subj="$2" eku="$3" sans="${4:-}"
	gen_key "${PKI}/${name}.key"
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=${eku}"
		[[ -n "${sans}" ]] && echo "subjectAltName=${sans}"
	} >"${PKI}/${name}.ext"
	openssl req -new -key "${PKI}/${name}.key" -subj "${subj}" -out "${PKI}/${name}.csr" 2>/dev/null
	openssl x509 -req -in "${PKI}/${name}.csr" -CA "${PKI}/${CA:-ca}.crt" -CAkey "${PKI}/${CA:-ca}.key" \
		-set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 -extfile "${PKI}/${name}.ext" \
		-out "${PKI}/${name}.crt" 2>/dev/null
	rm -f "${PKI}/${name}.csr" "${PKI}/${name}.ext"
}

make_pki() {
	[[ -f "${PKI}/done" ]] && return 0
	say "creating the cluster PKI in ${PKI}"
	rm -rf "${PKI}"
	mkdir -p "${PKI}"
	chmod 700 "${PKI}"
	gen_key "${PKI}/ca.key"
	openssl req -x509 -new -key "${PKI}/ca.key" -subj "/CN=callguard-local-ca" -days 3650 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "${PKI}/ca.crt" 2>/dev/null
	sign apiserver "/CN=kube-apiserver" serverAuth \
		"DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:${API_SERVICE_IP},IP:${NODE_IP}"
	sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
	sign admin "/O=system:masters/CN=callguard-admin" clientAuth
	sign controller-manager "/CN=system:kube-controller-manager" clientAuth
	sign scheduler "/CN=system:kube-scheduler" clientAuth
	sign kubelet "/O=system:nodes/CN=system:node:${NODE_NAME}" clientAuth
	sign kubelet-serving "/CN=${NODE_NAME}" serverAuth "DNS:${NODE_NAME},DNS:localhost,IP:${NODE_IP},IP:127.0.0.1"
	sign kube-proxy "/CN=system:kube-proxy" clientAuth
	# The aggregation layer's front proxy has a CA of its own.
	gen_key "${PKI}/front-proxy-ca.key"
	openssl req -x509 -new -key "${PKI}/front-proxy-ca.key" -subj "/CN=callguard-local-front-proxy-ca" -days 3650 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "${PKI}/front-proxy-ca.crt" 2>/dev/null
	CA=front-proxy-ca sign front-proxy-client "/CN=front-proxy-client" clientAuth
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "${PKI}/sa.key" 2>/dev/null
	openssl pkey -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub" 2>/dev/null
	touch "${PKI}/done"
}

# kubeconfig FILE CERT: a kubeconfig for the client certificate PKI/CERT.{crt,key}.
kubeconfig() {
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: callguard-local
  cluster:
    server: https://${NODE_IP}:${API_PORT}
    certificate-authority-data: $(base64 -w0 <"${PKI}/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 <"${PKI}/$2.crt")
    client-key-data: $(base64 -w0 <"${PKI}/$2.key")
contexts:
- name: callguard-local
  context:
    cluster: callguard-local
    user: $2
current-context: callguard-local
EOF
	chmod 600 "$1"
}

write_configs() {
	mkdir -p "${KCFG}" "${CONF}/cni" "${KUBELET_DIR}"
	kubeconfig "${ADMIN_KUBECONFIG}" admin
	local c
	for c in controller-manager scheduler kubelet kube-proxy; do
		kubeconfig "${KCFG}/${c}.kubeconfig" "${c}"
	done

	cat >"${CONF}/containerd.toml" <<EOF
# containerd for the callguard local cluster: its own root, state and socket.
version = 2
root = "${CTRD}/root"
state = "${CTRD}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "${CTRD_SOCK}"

[plugins."io.containerd.internal.v1.opt"]
  path = "${CTRD}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${SANDBOX_IMAGE}"
  # The VM withholds CAP_SYS_RESOURCE: runc cannot lower oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "${CTRD}/runc"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${CONF}/cni"
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".registry]
    # Images come from 'ctr images import'; any pull goes to a closed local port.
    config_path = "${CTRD}/certs.d"
EOF
	# Every registry (_default) and docker.io (which has a built-in default)
	# resolve to a closed local port: an image that was not imported fails
	# to pull without any traffic leaving the machine, not even a DNS query.
	# (containerd 1.6 ignores a hosts.toml without a host table.)
	local reg
	for reg in _default docker.io; do
		mkdir -p "${CTRD}/certs.d/${reg}"
		cat >"${CTRD}/certs.d/${reg}/hosts.toml" <<EOF
server = "https://127.0.0.1:1"

[host."https://127.0.0.1:1"]
  capabilities = ["pull", "resolve"]
EOF
	done

	cat >"${CONF}/cni/10-callguard.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "callguard",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${STATE_DIR}/cni-ipam",
        "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${NODE_IP}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "snat": false, "capabilities": {"portMappings": true}}
  ]
}
EOF

	cat >"${CONF}/kube-scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: ${KCFG}/scheduler.kubeconfig
leaderElection:
  leaderElect: false
EOF

	cat >"${CONF}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The machine has cgroup v1 and no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://${CTRD_SOCK}
address: ${NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: ${PKI}/ca.crt
authorization:
  mode: Webhook
tlsCertFile: ${PKI}/kubelet-serving.crt
tlsPrivateKeyFile: ${PKI}/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
# No cluster DNS: pods get an empty resolv.conf rather than the host's.
resolvConf: ""
clusterDomain: cluster.local
podLogsDir: ${LOGS}/pods
# Lowering oom_score_adj needs CAP_SYS_RESOURCE, which the VM withholds.
oomScoreAdj: 0
failSwapOn: false
# Never garbage-collect the imported images (they cannot be pulled again).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
EOF

	cat >"${CONF}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: ${KCFG}/kube-proxy.kubeconfig
hostnameOverride: ${NODE_NAME}
clusterCIDR: ${POD_CIDR}
detectLocalMode: ClusterCIDR
bindAddress: ${NODE_IP}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts only on the node IP (the bridge), never on other interfaces.
nodePortAddresses: ["${NODE_IP}/32"]
oomScoreAdj: 0
# Leave the conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
EOF
}

# ---------------------------------------------------------------------------
# Images

# build_tools builds pack and pause (cheap when cached).
build_tools() {
	(cd "${HERE}" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${BIN_DIR}/pack" ./cmd/pack)
	(cd "${HERE}" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${CACHE_DIR}/images/pause" ./cmd/pause)
}

import_pause_image() {
	mkdir -p "${CACHE_DIR}/images"
	build_tools
	"${BIN_DIR}/pack" --tag "${SANDBOX_IMAGE}" --out "${CACHE_DIR}/images/pause.tar" --ca-bundle "" \
		"${CACHE_DIR}/images/pause" >/dev/null
	ctr --address "${CTRD_SOCK}" -n k8s.io images import "${CACHE_DIR}/images/pause.tar" >/dev/null
}

# ---------------------------------------------------------------------------
# up

do_up() {
	local t0=${SECONDS}
	trap 'say "up failed; logs: ${LOGS}; \"hack/local-cluster/cluster.sh down\" (make cluster-down) removes what was started"' ERR
	case "$(cluster_state)" in
	running)
		say "the cluster is already running and healthy (state: ${STATE_DIR})"
		print_access
		return 0
		;;
	partial)
		say "the cluster is partly running; tearing it down to start afresh"
		do_down
		;;
	stopped)
		if [[ -d "${RUN}" ]]; then
			# An earlier up whose processes were killed without a down: its
			# mounts, iptables rules, cgroups and sysctls may still be there.
			say "cleaning up after an earlier run that was not taken down"
			do_down
		fi
		;;
	esac

	mkdir -p "${STATE_DIR}"
	# Keep the previous run's logs for a post-mortem.
	if [[ -d "${LOGS}" ]]; then
		rm -rf "${STATE_DIR}/logs.previous"
		mv "${LOGS}" "${STATE_DIR}/logs.previous"
	fi
	mkdir -p "${RUN}" "${LOGS}/pods" "${CTRD}"

	ensure_packages
	"${HERE}/build.sh" >/dev/null

	save_sysctls
	# Host paths the kubelet and containerd create outside the state directory.
	note_created /var/log/containers
	note_created /run/containerd
	note_created /var/lib/cni
	setup_network
	make_pki
	write_configs

	start containerd --config "${CONF}/containerd.toml"
	wait_until 60 containerd "${LOGS}/containerd.log" healthy containerd
	say "importing the sandbox image ${SANDBOX_IMAGE}"
	import_pause_image

	mkdir -p "${STATE_DIR}/etcd"
	start etcd --name callguard --data-dir "${STATE_DIR}/etcd" \
		--listen-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORT}" \
		--advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORT}" \
		--listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
		--initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
		--initial-cluster "callguard=http://127.0.0.1:${ETCD_PEER_PORT}" \
		--unsafe-no-fsync --log-level warn
	wait_until 60 etcd "${LOGS}/etcd.log" healthy etcd

	start kube-apiserver \
		--advertise-address "${NODE_IP}" --bind-address "${NODE_IP}" --secure-port "${API_PORT}" \
		--etcd-servers "http://127.0.0.1:${ETCD_CLIENT_PORT}" \
		--service-cluster-ip-range "${SERVICE_CIDR}" \
		--client-ca-file "${PKI}/ca.crt" \
		--tls-cert-file "${PKI}/apiserver.crt" --tls-private-key-file "${PKI}/apiserver.key" \
		--kubelet-client-certificate "${PKI}/apiserver-kubelet-client.crt" \
		--kubelet-client-key "${PKI}/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority "${PKI}/ca.crt" \
		--kubelet-preferred-address-types InternalIP \
		--requestheader-client-ca-file "${PKI}/front-proxy-ca.crt" \
		--requestheader-allowed-names front-proxy-client \
		--requestheader-username-headers X-Remote-User \
		--requestheader-group-headers X-Remote-Group \
		--requestheader-extra-headers-prefix X-Remote-Extra- \
		--proxy-client-cert-file "${PKI}/front-proxy-client.crt" \
		--proxy-client-key-file "${PKI}/front-proxy-client.key" \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--service-account-key-file "${PKI}/sa.pub" \
		--service-account-signing-key-file "${PKI}/sa.key" \
		--authorization-mode Node,RBAC \
		--enable-admission-plugins NodeRestriction \
		--allow-privileged=true \
		--profiling=false \
		--v "${LOG_V}"
	wait_until 120 kube-apiserver "${LOGS}/kube-apiserver.log" healthy kube-apiserver

	# HorizontalPodAutoscalers every 5 s (default 15 s) and scale-in after 30 s
	# of lower recommendations (default 5 min), so that the e2e's autoscaling
	# run sees receivers scale out and back in within minutes.
	start kube-controller-manager \
		--kubeconfig "${KCFG}/controller-manager.kubeconfig" \
		--authentication-kubeconfig "${KCFG}/controller-manager.kubeconfig" \
		--authorization-kubeconfig "${KCFG}/controller-manager.kubeconfig" \
		--bind-address 127.0.0.1 --secure-port 10257 \
		--leader-elect=false \
		--use-service-account-credentials=true \
		--service-account-private-key-file "${PKI}/sa.key" \
		--root-ca-file "${PKI}/ca.crt" \
		--cluster-signing-cert-file "${PKI}/ca.crt" --cluster-signing-key-file "${PKI}/ca.key" \
		--service-cluster-ip-range "${SERVICE_CIDR}" \
		--cluster-name callguard-local \
		--controllers '*' \
		--horizontal-pod-autoscaler-sync-period 5s \
		--horizontal-pod-autoscaler-downscale-stabilization 30s \
		--profiling=false \
		--v "${LOG_V}"
	start kube-scheduler --config "${CONF}/kube-scheduler.yaml" \
		--authentication-kubeconfig "${KCFG}/scheduler.kubeconfig" \
		--authorization-kubeconfig "${KCFG}/scheduler.kubeconfig" \
		--bind-address 127.0.0.1 --secure-port 10259 \
		--profiling=false \
		--v "${LOG_V}"
	start kubelet --config "${CONF}/kubelet.yaml" \
		--kubeconfig "${KCFG}/kubelet.kubeconfig" \
		--root-dir "${KUBELET_DIR}" --cert-dir "${STATE_DIR}/kubelet-pki" \
		--volume-plugin-dir "${STATE_DIR}/kubelet-volume-plugins" \
		--hostname-override "${NODE_NAME}" --node-ip "${NODE_IP}" \
		--v "${LOG_V}"
	start kube-proxy --config "${CONF}/kube-proxy.yaml" --v "${LOG_V}"

	local c
	for c in kube-controller-manager kube-scheduler kubelet kube-proxy; do
		wait_until 120 "${c}" "${LOGS}/${c}.log" healthy "${c}"
	done
	wait_until 180 "node ${NODE_NAME} to be Ready" "${LOGS}/kubelet.log" node_ready
	run_check_pod
	say "cluster up in $((SECONDS - t0))s"
	print_access
}

# run_check_pod runs one pod of the sandbox image and waits for it to run.
run_check_pod() {
	say "running a check pod (the pause image) in namespace default"
	# The service-account controller creates 'default' shortly after start.
	wait_until 60 "the default service account" "${LOGS}/kube-controller-manager.log" default_sa_exists
	kubectl delete pod cluster-up-check -n default --ignore-not-found --wait=true >/dev/null
	kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: cluster-up-check
  namespace: default
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: pause
    image: ${SANDBOX_IMAGE}
    imagePullPolicy: Never
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
EOF
	if ! wait_until 120 "the check pod to run" "${LOGS}/kubelet.log" check_pod_running; then
		kubectl describe pod cluster-up-check -n default >&2 || true
		return 1
	fi
	kubectl delete pod cluster-up-check -n default --wait=false >/dev/null
}

default_sa_exists() { kubectl get serviceaccount default -n default -o name >/dev/null 2>&1; }

check_pod_running() {
	[[ "$(kubectl get pod cluster-up-check -n default -o 'jsonpath={.status.phase}' 2>/dev/null)" == Running ]]
}

print_access() {
	echo
	echo "export KUBECONFIG=${ADMIN_KUBECONFIG}"
	echo "export PATH=${BIN_DIR}:\$PATH   # kubectl ${K8S_VERSION}: ${BIN_DIR}/kubectl"
	echo "containerd: ctr --address ${CTRD_SOCK} -n k8s.io images ls"
	echo
	kubectl get nodes -o wide
}

# ---------------------------------------------------------------------------
# down

# stop_pids SIGNAL-WAIT PIDS...: TERM, wait up to N seconds, then KILL.
stop_pids() {
	local wait_s="$1"
	shift
	[[ $# -gt 0 ]] || return 0
	kill -TERM "$@" 2>/dev/null || true
	local i p alive
	for ((i = 0; i < wait_s * 10; i++)); do
		alive=()
		for p in "$@"; do [[ -e /proc/${p} ]] && [[ "$(awk '{print $3}' "/proc/${p}/stat" 2>/dev/null)" != Z ]] && alive+=("${p}"); done
		[[ ${#alive[@]} -eq 0 ]] && return 0
		sleep 0.1
	done
	kill -KILL "${alive[@]}" 2>/dev/null || true
}

stop_component() {
	local pid
	if pid="$(pid_of "$1")"; then
		say "stopping $1 (pid ${pid})"
		stop_pids 10 "${pid}"
	fi
	rm -f "${RUN}/$1.pid"
}

# unmount_under DIR: every mount at or below DIR, innermost first.
unmount_under() {
	local dir="$1" mp left
	for _ in 1 2 3 4 5; do
		left=0
		while read -r mp; do
			left=1
			umount "${mp}" 2>/dev/null || umount -l "${mp}" 2>/dev/null || true
		done < <(mounts_under "${dir}" | tac)
		[[ ${left} -eq 0 ]] && return 0
	done
	return 0
}

mounts_under() {
	local m
	awk '{print $2}' /proc/mounts | while read -r m; do
		m="$(printf '%b' "${m}")"
		if [[ "${m}" == "$1" || "${m}" == "$1/"* ]]; then
			echo "${m}"
		fi
	done
}

remove_cgroups() {
	local d
	for _ in 1 2 3; do
		for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
			[[ -d "${d}" ]] || continue
			find "${d}" -depth -type d -exec rmdir {} \; 2>/dev/null || true
		done
		compgen -G '/sys/fs/cgroup/*/kubepods' >/dev/null || return 0
		sleep 1
	done
}

do_down() {
	say "tearing down the cluster (state: ${STATE_DIR})"
	# 1. The kubelet first, so that nothing restarts; then the control plane
	#    that could schedule or create anything.
	stop_component kubelet
	stop_component kube-scheduler
	stop_component kube-controller-manager

	# 2. Every container: all processes in the kubepods cgroups.
	local i pids
	for i in 1 2 3 4 5; do
		pids="$(pod_pids)"
		[[ -z "${pids}" ]] && break
		# shellcheck disable=SC2086
		kill -KILL ${pids} 2>/dev/null || true
		sleep 0.5
	done

	# 3. containerd and its shims, then the rest.
	stop_component containerd
	stop_component kube-proxy
	stop_component kube-apiserver
	stop_component etcd
	# Anything of ours the pid files missed (e.g. a crashed earlier run).
	pids="$(our_pids)"
	if [[ -n "${pids}" ]]; then
		say "stopping leftover processes: ${pids//$'\n'/ }"
		# shellcheck disable=SC2086
		stop_pids 5 ${pids}
	fi

	# 4. Mounts: kubelet volumes, container root filesystems, sandbox /dev/shm,
	#    network namespaces (all under the state directory).
	unmount_under "${STATE_DIR}"

	# 5. Network: the bridge (the pods' veths went with their namespaces) and
	#    every KUBE-*, CNI-* and CALLGUARD-* iptables chain.
	if ip link show "${BRIDGE}" >/dev/null 2>&1; then
		ip link del "${BRIDGE}"
	fi
	local v
	for v in $(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^veth[0-9a-f]{8}$' || true); do
		if [[ "$(ip -o link show "${v}" 2>/dev/null)" == *"master ${BRIDGE}"* ]]; then
			ip link del "${v}" 2>/dev/null || true
		fi
	done
	if command -v iptables >/dev/null; then
		cleanup_iptables
	fi

	# 6. The kubelet's cgroups, the sysctls, files outside the state directory.
	remove_cgroups
	restore_sysctls
	if [[ -d /run/containerd/s ]]; then
		# Sockets of shims that are gone (no live socket has the path).
		local s
		for s in /run/containerd/s/*; do
			[[ -S "${s}" ]] || continue
			grep -qF " ${s}" /proc/net/unix || rm -f "${s}"
		done
	fi
	# containerd's CNI result cache.
	local r id
	for r in /var/lib/cni/results/callguard-*; do
		[[ -e "${r}" ]] || continue
		id="${r#/var/lib/cni/results/callguard-}"
		id="${id%-*}"
		rm -f "${r}" "/var/lib/cni/results/cni-loopback-${id}-lo"
	done
	# kubectl's discovery cache for this API server.
	rm -rf "${HOME}/.kube/cache/discovery/${NODE_IP}_${API_PORT}"
	if [[ -d /var/log/containers ]]; then
		find /var/log/containers -maxdepth 1 -type l -lname "${LOGS}/*" -delete 2>/dev/null || true
	fi
	if [[ -f "${CREATED_PATHS}" ]]; then
		local p
		for p in $(tac "${CREATED_PATHS}"); do
			case "${p}" in
			/run/containerd) rmdir /run/containerd/s 2>/dev/null || true ;;
			/var/lib/cni) rmdir /var/lib/cni/results 2>/dev/null || true ;;
			esac
			rmdir "${p}" 2>/dev/null || true
		done
	fi

	# 7. The state directory, except the logs (kept for a post-mortem).
	if [[ -d "${STATE_DIR}" ]]; then
		local left
		left="$(mounts_under "${STATE_DIR}")"
		if [[ -n "${left}" ]]; then
			die "mounts remain under ${STATE_DIR}, not removing it:"$'\n'"${left}"
		fi
		find "${STATE_DIR}" -mindepth 1 -maxdepth 1 ! -name logs ! -name logs.previous -exec rm -rf --one-file-system {} +
	fi
	say "cluster down (logs kept in ${LOGS})"
}

# ---------------------------------------------------------------------------
# status

do_status() {
	local c pid all=0 any=0
	printf '%-24s %-8s %s\n' COMPONENT PID STATE
	for c in "${COMPONENTS[@]}"; do
		if pid="$(pid_of "${c}")"; then
			any=1
			if healthy "${c}"; then
				printf '%-24s %-8s %s\n' "${c}" "${pid}" healthy
			else
				printf '%-24s %-8s %s\n' "${c}" "${pid}" "running, not healthy"
				all=1
			fi
		else
			printf '%-24s %-8s %s\n' "${c}" - stopped
			all=1
		fi
	done
	echo "state dir: ${STATE_DIR}"
	if healthy kube-apiserver 2>/dev/null; then
		kubectl get nodes -o wide || true
		node_ready || all=1
	fi
	if [[ ${any} -eq 0 ]]; then
		echo "the cluster is not running (hack/local-cluster/cluster.sh up)"
		return 3
	fi
	return "${all}"
}

do_env() {
	echo "export KUBECONFIG=${ADMIN_KUBECONFIG}"
	echo "export PATH=${BIN_DIR}:\$PATH"
	echo "export KUBECACHEDIR=${STATE_DIR}/kube-cache"
	echo "export CONTAINERD_ADDRESS=${CTRD_SOCK}"
}

main() {
	local cmd="${1:-}"
	case "${cmd}" in
	up | down | status) ;;
	env)
		do_env
		return 0
		;;
	*)
		echo "usage: $0 up|down|status|env" >&2
		exit 2
		;;
	esac
	preflight "${cmd}"
	if [[ ${cmd} == status ]]; then
		do_status
		return
	fi
	# One up or down at a time.
	mkdir -p "$(dirname "${STATE_DIR}")"
	exec 9>"$(dirname "${STATE_DIR}")/.$(basename "${STATE_DIR}").lock"
	if ! flock -n 9; then
		say "another up or down of this cluster is running; waiting for it"
		flock 9
	fi
	case "${cmd}" in
	up) do_up ;;
	down) do_down ;;
	esac
}

main "$@"
