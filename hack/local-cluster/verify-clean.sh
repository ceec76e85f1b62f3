#!/usr/bin/env bash
# Checks that the local cluster left nothing behind (run it after
# `cluster.sh down`): no process, mount, iptables chain or rule, bridge, veth,
# network namespace, kubepods cgroup, listening port or file outside the
# kept logs. Prints each leftover; exits 1 if there is any, 0 when clean.
set -uo pipefail

cache="${XDG_CACHE_HOME:-$HOME/.cache}/callguard/cluster/v1.37.2"
bin_dir="${cache}/bin"
state_dir="${CALLGUARD_CLUSTER_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/callguard/cluster}"
bridge=callguard0
pod_cidr_prefix=10.213.0.

problems=0
bad() {
	echo "LEFTOVER $*"
	problems=$((problems + 1))
}
ok() { echo "ok: $*"; }

# Processes: our binaries (not kubectl), containerd or shims for our state
# dir, runc, anything in a kubepods cgroup.
n=0
for p in /proc/[0-9]*; do
	p="${p#/proc/}"
	exe="$(readlink "/proc/${p}/exe" 2>/dev/null)" || continue
	cmd="$(tr '\0' ' ' <"/proc/${p}/cmdline" 2>/dev/null)"
	case "${exe}" in
	"${bin_dir}/kubectl"*) continue ;;
	"${bin_dir}/"* | */containerd | */containerd-shim* | */runc)
		if [[ "${exe}" == "${bin_dir}/"* || "${cmd}" == *"${state_dir}"* || "${exe}" == */containerd-shim* || "${exe}" == */runc ]]; then
			bad "process ${p}: ${cmd}"
			n=$((n + 1))
		fi
		;;
	esac
	if grep -q kubepods "/proc/${p}/cgroup" 2>/dev/null; then
		bad "process ${p} in a kubepods cgroup: ${cmd}"
		n=$((n + 1))
	fi
done
[[ ${n} -eq 0 ]] && ok "no cluster process (kube-*, etcd, containerd, shims, runc, containers)"

# Mounts under the state dir, and any overlay/nsfs/shm mount of containerd or the kubelet.
m="$(awk -v s="${state_dir}" 'index($2, s) == 1 || $2 ~ /kubelet|containerd|kubepods|cni-/ || ($3 == "nsfs" && $2 ~ /netns/) {print $1, $2, $3}' /proc/mounts)"
if [[ -n "${m}" ]]; then
	while read -r line; do bad "mount: ${line}"; done <<<"${m}"
else
	ok "no mount under ${state_dir} and no kubelet/containerd/netns mount"
fi

# iptables: chains and rules of kube-proxy, the kubelet, CNI and ours, in
# iptables and ip6tables (nft and, if in use, legacy).
n=0
variants=()
for v in iptables ip6tables; do
	command -v "${v}" >/dev/null && variants+=("${v}")
done
# Legacy x_tables only when in use (/proc files have size 0: read them).
[[ -n "$(cat /proc/net/ip_tables_names 2>/dev/null)" ]] && command -v iptables-legacy >/dev/null && variants+=(iptables-legacy)
[[ -n "$(cat /proc/net/ip6_tables_names 2>/dev/null)" ]] && command -v ip6tables-legacy >/dev/null && variants+=(ip6tables-legacy)
for v in "${variants[@]}"; do
	for t in filter nat mangle raw; do
		out="$("${v}" -w -t "${t}" -S 2>/dev/null | grep -E -- '(KUBE-|CNI-|CALLGUARD-)|10\.213\.0\.|10\.96\.' || true)"
		if [[ -n "${out}" ]]; then
			while read -r line; do bad "${v} -t ${t}: ${line}"; done <<<"${out}"
			n=$((n + 1))
		fi
	done
done
if command -v nft >/dev/null; then
	if nft list tables 2>/dev/null | grep -E 'kube-proxy|kubelet'; then
		bad "nftables tables of kube-proxy/kubelet"
		n=$((n + 1))
	fi
fi
[[ ${n} -eq 0 ]] && ok "no KUBE-*/CNI-*/CALLGUARD-* chain or rule (${variants[*]})"

# Network: bridge, veths, addresses, network namespaces.
n=0
if ip link show "${bridge}" >/dev/null 2>&1; then
	bad "bridge ${bridge}: $(ip -br link show "${bridge}")"
	n=$((n + 1))
fi
while read -r line; do
	[[ -n "${line}" ]] || continue
	bad "veth: ${line}"
	n=$((n + 1))
done < <(ip -br link show type veth 2>/dev/null | grep -E '^veth[0-9a-f]{8}' || true)
if ip -4 -br addr | grep -qF "${pod_cidr_prefix}"; then
	bad "address in the pod network: $(ip -4 -br addr | grep -F "${pod_cidr_prefix}")"
	n=$((n + 1))
fi
if ip route | grep -qF "${pod_cidr_prefix}"; then
	bad "route to the pod network: $(ip route | grep -F "${pod_cidr_prefix}")"
	n=$((n + 1))
fi
if ip netns list 2>/dev/null | grep -q '^cni-'; then
	bad "network namespaces: $(ip netns list | grep '^cni-' | tr '\n' ' ')"
	n=$((n + 1))
fi
[[ ${n} -eq 0 ]] && ok "no bridge ${bridge}, no CNI veth, no ${pod_cidr_prefix}x address or route, no cni- netns"

# cgroups.
c="$(ls -d /sys/fs/cgroup/*/kubepods* /sys/fs/cgroup/kubepods* 2>/dev/null || true)"
if [[ -n "${c}" ]]; then
	while read -r line; do bad "cgroup ${line}"; done <<<"${c}"
else
	ok "no kubepods cgroup"
fi

# Listening ports of the components.
ports='6443|12379|12380|10248|10249|10250|10256|10257|10259'
l="$(ss -Hltn 2>/dev/null | awk '{print $4}' | grep -E ":(${ports})\$" || true)"
if [[ -n "${l}" ]]; then
	while read -r line; do bad "listening: ${line}"; done <<<"${l}"
else
	ok "nothing listens on ${ports//|/, }"
fi

# Files outside the state dir, and the state dir itself (only logs may stay).
n=0
for s in /run/containerd/s/*; do
	[[ -e "${s}" ]] || continue
	bad "shim socket ${s}"
	n=$((n + 1))
done
if [[ -d /var/log/containers ]] && [[ -n "$(find /var/log/containers -maxdepth 1 -lname "${state_dir}/*" 2>/dev/null)" ]]; then
	bad "container log links in /var/log/containers"
	n=$((n + 1))
fi
if compgen -G '/var/lib/cni/*/callguard*' >/dev/null || compgen -G '/var/lib/cni/results/callguard-*' >/dev/null; then
	bad "CNI state in /var/lib/cni: $(find /var/lib/cni -name 'callguard*' | tr '\n' ' ')"
	n=$((n + 1))
fi
if [[ -d "${HOME}/.kube/cache/discovery/10.213.0.1_6443" ]]; then
	bad "kubectl discovery cache ${HOME}/.kube/cache/discovery/10.213.0.1_6443"
	n=$((n + 1))
fi
if [[ -d "${state_dir}" ]]; then
	extra="$(find "${state_dir}" -mindepth 1 -maxdepth 1 ! -name logs ! -name logs.previous)"
	if [[ -n "${extra}" ]]; then
		while read -r line; do bad "state: ${line}"; done <<<"${extra}"
		n=$((n + 1))
	fi
fi
[[ ${n} -eq 0 ]] && ok "no shim socket, container log link or CNI state; ${state_dir} holds only logs"

if [[ ${problems} -gt 0 ]]; then
	echo "verify-clean: ${problems} leftover(s)"
	exit 1
fi
echo "verify-clean: clean"
