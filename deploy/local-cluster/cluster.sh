#!/usr/bin/env bash
# The project's own single-node Kubernetes cluster, for machines without Docker: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, a real kubelet, containerd + runc
# and bridge CNI, from package registries only (see README.md beside this file):
#   * Kubernetes: k8s.io/kubernetes from the Go module proxy, built here (~7 min on 2 cores,
#     once per version: the binaries are cached in $CACHE/k8s/v$K8S_VERSION/bin).
#   * containerd 1.6, runc 1.1, etcd 3.4, CNI plugins, debootstrap: Debian packages, fetched
#     with `apt-get download` and unpacked with `dpkg -x` into the cache (nothing installed).
#   * images: packed without Docker (mkimage.py) and loaded with `ctr images import`.
#
# Usage (as root):
#   cluster.sh up        fetch + build (when not cached) + PKI + start everything; prints env
#   cluster.sh load T..  import docker-archive tarballs into the node's containerd
#   cluster.sh down      delete the pods, stop everything, undo every host change
#   cluster.sh status    what runs
#   cluster.sh fetch | build   only the cached parts
#
# Environment:
#   K8S_VERSION   default 1.34.4 (kubelet >= 1.38 needs containerd >= 2.0, which Debian 12 lacks)
#   K8S_ROOT      the running cluster's state, created by `up` and removed by `down`
#                 (default /var/tmp/kilo-cloud-k8s)
#   KILO_CLOUD_CACHE  the cache (default ${XDG_CACHE_HOME:-~/.cache}/kilo-cloud)
#
# After `up`: KUBECONFIG=$K8S_ROOT/etc/admin.kubeconfig (system:masters); API server
# https://127.0.0.1:16443. Every listener binds 127.0.0.1. Pods live on the bridge kck8s0
# (10.88.0.0/16) whose host side is 10.88.0.1 (BRIDGE_IP): no default route, no NAT, and
# net.ipv4.ip_forward stays as it is, so a pod reaches other pods and sockets bound to the
# bridge address, nothing else.
#
# Host changes outside $K8S_ROOT, all recorded by `up` and undone by `down`: the bridge and
# veths, cgroups /sys/fs/cgroup/*/kubepods, /run/containerd, /var/lib/kubelet,
# /var/log/containers, and the sysctls the kubelet sets. One cluster per machine (fixed
# ports 10248-10259, 12379-12381, 16443).
#
# Fixes for these machines (see README.md): go.mod replace directives dropped for the
# published k8s.io/* modules; containerd restrict_oom_score_adj (no CAP_SYS_RESOURCE);
# kubelet failCgroupV1: false and cgroupfs (cgroup v1); the kubelet serves on 127.0.0.1 and
# is reached by its Hostname; the pause image is compiled from the tree's pause.c.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
V=${K8S_VERSION:-1.34.4}
MINOR=${V#*.}; MINOR=${MINOR%%.*}
ROOT=${K8S_ROOT:-/var/tmp/kilo-cloud-k8s}
CACHE=${KILO_CLOUD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kilo-cloud}
KC=$CACHE/k8s/v$V                         # per Kubernetes version: bin/, pause.tar
B=$KC/bin
DEBS_LIST="containerd runc etcd-server containernetworking-plugins debootstrap"
DEB=$CACHE/k8s/debian-$(echo "$DEBS_LIST" | sha256sum | cut -c1-12)  # debs/ and root/
U=$DEB/root
E=$ROOT/etc P=$ROOT/pki R=$ROOT/run L=$ROOT/logs D=$ROOT/data
SOCK=$R/containerd/containerd.sock
# containerd finds its shim (containerd-shim-runc-v2) on PATH
export PATH=$B:$U/usr/bin:$U/usr/sbin:$PATH
BRIDGE=kck8s0 BRIDGE_IP=10.88.0.1 POD_CIDR=10.88.0.0/16
API=https://127.0.0.1:16443
KUBECTL="$B/kubectl --kubeconfig=$E/admin.kubeconfig"
CTR="$U/usr/bin/ctr -a $SOCK"
SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"

log() { echo "[cluster $(date +%T)] $*" >&2; }
die() { log "$*"; exit 1; }

fetch() {
  [ -f "$DEB/.done" ] && return 0
  log "fetch: Debian packages $DEBS_LIST (apt-get download + dpkg -x into $DEB)"
  rm -rf "$DEB"; mkdir -p "$DEB/debs" "$U"
  (cd "$DEB/debs" && apt-get download $DEBS_LIST 2>&1 | grep -v 'Download is performed unsandboxed' || true)
  local f
  for f in "$DEB"/debs/*.deb; do dpkg -x "$f" "$U"; done
  [ -x "$U/usr/bin/containerd" ] && [ -x "$U/usr/sbin/runc" ] && [ -x "$U/usr/bin/etcd" ] ||
    die "fetch: a package is missing from $DEB/debs"
  touch "$DEB/.done"
}

k8s_source() { # the module's directory in the Go module cache
  GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@v$V" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'
}

build() {
  if [ -x "$B/kubelet" ] && [ -x "$B/kubectl" ] && [ -x "$B/kube-apiserver" ] &&
     [ -x "$B/kube-controller-manager" ] && [ -x "$B/kube-scheduler" ]; then return 0; fi
  command -v go >/dev/null || die "build: Go is needed to build Kubernetes v$V"
  log "build: k8s.io/kubernetes@v$V from the Go module proxy (once; ~7 min on 2 cores)"
  local src=$KC/src ld="-s -w" k m
  rm -rf "$src"; mkdir -p "$KC" "$B.tmp"
  cp -r "$(k8s_source)" "$src"; chmod -R u+w "$src"
  (
    cd "$src"
    rm -f go.work go.work.sum
    # `replace k8s.io/api => ./staging/...`: staging/ is not in the module zip.
    for m in $(sed -n '/^replace (/,/^)/p' go.mod | awk '/=>/{print $1}'); do
      go mod edit -dropreplace="$m" -require="$m@v0.${V#1.}"
    done
    for k in "gitVersion=v$V" gitMajor=1 "gitMinor=$MINOR" gitTreeState=clean; do
      ld+=" -X k8s.io/component-base/version.$k -X k8s.io/client-go/pkg/version.$k"
    done
    GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags="$ld" -o "$B.tmp/" \
      ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler ./cmd/kubelet ./cmd/kubectl
  )
  rm -rf "$B" "$src"; mv "$B.tmp" "$B"
}

pause_image() { # registry.k8s.io/pause:3.10 from the tree's pause.c (no registry here)
  [ -f "$KC/pause.tar" ] && return 0
  log "image: pause (gcc -static of build/pause/linux/pause.c)"
  local t; t=$(mktemp -d)
  gcc -Os -static -o "$t/pause" "$(k8s_source)/build/pause/linux/pause.c"
  python3 "$HERE/mkimage.py" "$KC/pause.tar.tmp" registry.k8s.io/pause:3.10 "$t" '["/pause"]'
  mv "$KC/pause.tar.tmp" "$KC/pause.tar"; rm -rf "$t"
}

pki() {
  log "pki: CA, serving and client certificates, service-account key, kubeconfigs"
  mkdir -p "$P" "$E"
  (
    cd "$P"
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -x509 -new -key ca.key -days 30 -subj "/CN=kilo-cloud-local-ca" -out ca.crt
    sign() { # name CN O SAN (with a SAN: server and client, else client only)
      local subj="/CN=$2"; [ -n "$3" ] && subj="/O=$3/CN=$2"
      openssl genrsa -out "$1.key" 2048 2>/dev/null
      openssl req -new -key "$1.key" -subj "$subj" -out "$1.csr"
      { echo "basicConstraints=CA:FALSE"; echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [ -n "$4" ]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$4"
        else echo "extendedKeyUsage=clientAuth"; fi; } > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    sign apiserver kube-apiserver "" "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1"
    sign admin admin system:masters ""
    sign apiserver-kubelet-client kube-apiserver-kubelet-client system:masters ""
    sign kubelet system:node:localhost system:nodes ""
    sign kubelet-serving localhost "" "DNS:localhost,IP:127.0.0.1"
    sign scheduler system:kube-scheduler "" ""
    sign controller-manager system:kube-controller-manager "" ""
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
  local who f
  for who in admin kubelet scheduler controller-manager; do
    f=$E/$who.kubeconfig
    "$B/kubectl" config --kubeconfig="$f" set-cluster local --server=$API \
      --certificate-authority="$P/ca.crt" --embed-certs=true >/dev/null
    "$B/kubectl" config --kubeconfig="$f" set-credentials "$who" --client-certificate="$P/$who.crt" \
      --client-key="$P/$who.key" --embed-certs=true >/dev/null
    "$B/kubectl" config --kubeconfig="$f" set-context default --cluster=local --user="$who" >/dev/null
    "$B/kubectl" config --kubeconfig="$f" use-context default >/dev/null
  done
}

write_configs() {
  mkdir -p "$ROOT/cni/net.d" "$D/pod-logs" "$D/kubelet"
  sed -e "s|@ROOT@|$ROOT|g" -e "s|@U@|$U|g" -e "s|@SOCK@|$SOCK|g" \
    "$HERE/config/containerd.toml" > "$E/containerd.toml"
  sed -e "s|@ROOT@|$ROOT|g" -e "s|@BRIDGE@|$BRIDGE|g" -e "s|@POD_CIDR@|$POD_CIDR|g" -e "s|@BRIDGE_IP@|$BRIDGE_IP|g" \
    "$HERE/config/cni.conflist" > "$ROOT/cni/net.d/10-kilo-cloud.conflist"
  sed -e "s|@P@|$P|g" -e "s|@D@|$D|g" -e "s|@SOCK@|$SOCK|g" \
    "$HERE/config/kubelet.yaml" > "$E/kubelet.yaml"
}

start() { # name cmd...: in the background, pid in $R/name.pid, log in $L/name.log
  local name=$1; shift
  nohup "$@" > "$L/$name.log" 2>&1 &
  echo $! > "$R/$name.pid"
}

wait_for() { # seconds what cmd...
  local n=$1 what=$2 t0=$SECONDS; shift 2
  while ((SECONDS - t0 < n)); do
    "$@" >/dev/null 2>&1 && { log "$what after $((SECONDS - t0)) s"; return 0; }
    sleep 0.25
  done
  die "timed out waiting for $what (logs: $L)"
}

record_host_state() { # so that `down` undoes exactly what this cluster changed
  local p s
  for p in /var/lib/kubelet /var/log/containers /run/containerd; do [ -e "$p" ] || echo "$p"; done > "$R/created-paths"
  for s in $SYSCTLS; do echo "$s=$(sysctl -n "$s")"; done > "$R/sysctl.before"
}

bridge_up() { # made here (not by the CNI plugin) so the host address exists before any pod
  ip link add "$BRIDGE" type bridge
  ip addr add "$BRIDGE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

up() {
  [ "$(id -u)" = 0 ] || die "up needs root (containerd, the kubelet and the bridge)"
  if [ -f "$R/apiserver.pid" ] && kill -0 "$(cat "$R/apiserver.pid")" 2>/dev/null; then
    log "already up"; env_out; return 0
  fi
  curl -s -o /dev/null --max-time 1 -k $API/ && die "port 16443 is taken: another cluster runs on this machine"
  ip link show "$BRIDGE" >/dev/null 2>&1 && die "bridge $BRIDGE exists: run '$0 down' first"
  local t0=$SECONDS
  fetch; build; pause_image
  rm -rf "$ROOT"; mkdir -p "$E" "$P" "$R" "$L" "$D"
  pki; write_configs; record_host_state; bridge_up
  log "up: etcd, containerd"
  start etcd "$U/usr/bin/etcd" --name local --data-dir "$D/etcd" \
    --listen-client-urls http://127.0.0.1:12379 --advertise-client-urls http://127.0.0.1:12379 \
    --listen-peer-urls http://127.0.0.1:12380 --initial-advertise-peer-urls http://127.0.0.1:12380 \
    --initial-cluster local=http://127.0.0.1:12380 --listen-metrics-urls http://127.0.0.1:12381
  start containerd "$U/usr/bin/containerd" --config "$E/containerd.toml"
  wait_for 30 "etcd" curl -sf http://127.0.0.1:12379/health
  wait_for 30 "containerd" $CTR version
  $CTR -n k8s.io images import "$KC/pause.tar" >/dev/null
  log "up: kube-apiserver"
  start apiserver "$B/kube-apiserver" --etcd-servers=http://127.0.0.1:12379 \
    --bind-address=127.0.0.1 --secure-port=16443 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
    --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" --client-ca-file="$P/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction,PodSecurity,ServiceAccount,LimitRanger,ResourceQuota \
    --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$P/ca.crt" --kubelet-preferred-address-types=Hostname \
    --allow-privileged=false --profiling=false
  wait_for 90 "kube-apiserver" curl -sf --cacert "$P/ca.crt" $API/readyz
  log "up: controller-manager, scheduler, kubelet"
  start controller-manager "$B/kube-controller-manager" --kubeconfig="$E/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$E/controller-manager.kubeconfig" --authorization-kubeconfig="$E/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
    --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" --profiling=false
  start scheduler "$B/kube-scheduler" --kubeconfig="$E/scheduler.kubeconfig" \
    --authentication-kubeconfig="$E/scheduler.kubeconfig" --authorization-kubeconfig="$E/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false --profiling=false
  start kubelet "$B/kubelet" --config="$E/kubelet.yaml" --kubeconfig="$E/kubelet.kubeconfig" \
    --root-dir="$D/kubelet" --hostname-override=localhost --v=1
  wait_for 120 "node Ready" $KUBECTL wait --for=condition=Ready node/localhost --timeout=2s
  wait_for 60 "the default ServiceAccount" $KUBECTL -n default get sa default
  log "cluster up in $((SECONDS - t0)) s"
  env_out
}

load() {
  local t
  for t in "$@"; do
    log "load: $t"
    $CTR -n k8s.io images import "$t" >/dev/null
  done
}

env_out() {
  echo "export KUBECONFIG=$E/admin.kubeconfig K8S_ROOT=$ROOT K8S_KUBECTL=$B/kubectl K8S_BRIDGE_IP=$BRIDGE_IP"
}

stop_containers() {
  local ns id
  for ns in $($CTR namespaces ls -q 2>/dev/null); do
    for id in $($CTR -n "$ns" tasks ls -q 2>/dev/null); do $CTR -n "$ns" tasks kill -s SIGKILL "$id" 2>/dev/null || true; done
    sleep 1
    for id in $($CTR -n "$ns" tasks ls -q 2>/dev/null); do $CTR -n "$ns" tasks delete -f "$id" >/dev/null 2>&1 || true; done
    for id in $($CTR -n "$ns" containers ls -q 2>/dev/null); do $CTR -n "$ns" containers delete "$id" >/dev/null 2>&1 || true; done
  done
}

alive() { [ -f "$R/$1.pid" ] && kill -0 "$(cat "$R/$1.pid")" 2>/dev/null; }

down() {
  [ -d "$ROOT" ] || { log "down: nothing to do"; return 0; }
  log "down"
  if alive apiserver && alive kubelet; then
    timeout 60 $KUBECTL delete pods --all -A --grace-period=1 --timeout=50s >/dev/null 2>&1 || true
  fi
  local n pid m c
  for n in kubelet scheduler controller-manager apiserver etcd; do
    alive "$n" && kill "$(cat "$R/$n.pid")" 2>/dev/null || true
  done
  sleep 2
  if alive containerd; then stop_containers; kill "$(cat "$R/containerd.pid")" 2>/dev/null || true; sleep 2; fi
  for n in kubelet scheduler controller-manager apiserver etcd containerd; do
    alive "$n" && kill -9 "$(cat "$R/$n.pid")" 2>/dev/null || true
  done
  # shims started by this containerd outlive it: found by the socket they were given
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $SOCK" || true); do kill -9 "$pid" 2>/dev/null || true; done
  grep " $ROOT/" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  for c in /sys/fs/cgroup/*/kubepods; do [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  [ -f "$R/sysctl.before" ] && while IFS== read -r k v; do sysctl -qw "$k=$v" || true; done < "$R/sysctl.before"
  [ -f "$R/created-paths" ] && while read -r p; do rm -rf "$p"; done < "$R/created-paths"
  local before; before=$(cat "$R/sysctl.before" 2>/dev/null || true)
  rm -rf "$ROOT"
  verify_clean "$before"
}

verify_clean() { # sysctl-before-lines: fails, naming them, when host changes are left behind
  local left=() s pid
  ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("bridge $BRIDGE")
  [ -e "$ROOT" ] && left+=("$ROOT")
  grep -q " $ROOT/" /proc/mounts && left+=("mounts under $ROOT")
  for s in /sys/fs/cgroup/*/kubepods; do [ -d "$s" ] && left+=("cgroup $s"); done
  for pid in $(pgrep -f "$ROOT/|containerd-shim-runc-v2 .*-address $SOCK|$B/kube" || true); do
    [ "$pid" != $$ ] && left+=("process $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | cut -c1-80)")
  done
  while IFS== read -r k v; do
    [ -n "$k" ] && [ "$(sysctl -n "$k")" != "$v" ] && left+=("sysctl $k=$(sysctl -n "$k") (was $v)")
  done <<< "$1"
  if [ ${#left[@]} -gt 0 ]; then
    log "down: left behind:"; printf '  %s\n' "${left[@]}" >&2; return 1
  fi
  log "down done: no process, mount, cgroup, bridge or sysctl of the cluster left"
}

status() {
  local n
  for n in etcd containerd apiserver controller-manager scheduler kubelet; do
    if alive "$n"; then echo "$n: running"; else echo "$n: stopped"; fi
  done
  alive apiserver && $KUBECTL get nodes,pods -A -o wide 2>/dev/null || true
}

cmd=${1:-}; [ $# -gt 0 ] && shift
case "$cmd" in
  up) up ;; down) down ;; load) load "$@" ;; status) status ;; env) env_out ;;
  fetch) fetch ;; build) build ;;
  *) sed -n '2,36p' "$0"; exit 2 ;;
esac
