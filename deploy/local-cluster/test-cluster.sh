#!/usr/bin/env bash
# `npm run test:cluster`: the cluster tier. Brings the project's own cluster up (building
# Kubernetes once per version), builds and loads the sandbox image (cached by content
# hash), runs vitest.cluster.config.ts, and always tears the cluster down again.
#
#   npm run test:cluster                       # everything
#   npm run test:cluster -- deploy/test/cluster/driver.cluster.test.ts   # one file
#   KEEP_CLUSTER=1 npm run test:cluster        # leave it running (then: cluster.sh down)
set -euo pipefail
cd "$(dirname "$0")/../.."
C=deploy/local-cluster/cluster.sh
log() { echo "[test:cluster $(date +%T)] $*" >&2; }
t0=$SECONDS

node --import tsx scripts/ensure-services.ts
teardown() {
  local rc=$?
  [ -n "${image_pid:-}" ] && kill "$image_pid" 2>/dev/null || true
  if [ "${KEEP_CLUSTER:-0}" = 1 ]; then log "cluster kept: $C down to remove it"
  else bash $C down || rc=1; fi
  log "done in $((SECONDS - t0)) s (rc=$rc)"
  exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM

# The sandbox image builds (or comes from the cache) while the cluster comes up; both use
# the Debian packages (debootstrap among them), fetched first.
bash $C fetch
image_env=$(mktemp)
bash deploy/local-cluster/sandbox-image.sh > "$image_env" &
image_pid=$!
bash $C up > /dev/null
eval "$(bash $C env)"
wait "$image_pid" || { log "the sandbox image did not build"; exit 1; }
image_pid=
# shellcheck disable=SC1090
. "$image_env"; rm -f "$image_env"
bash $C load "$SANDBOX_IMAGE_TAR"
export KUBECONFIG K8S_ROOT K8S_KUBECTL K8S_BRIDGE_IP SANDBOX_IMAGE
log "cluster ready after $((SECONDS - t0)) s; image $SANDBOX_IMAGE"
npx vitest run --config vitest.cluster.config.ts "$@"
