#!/usr/bin/env bash
# End-to-end test on a kind cluster: builds both images, loads them into kind, installs
# the chart, and runs the V2 flow (prepare, initiate, stream until complete) against the
# gateway, with a scripted model server and a git server on this machine.
#
# Needs a Docker engine (kind runs its nodes as containers), so it runs on a developer
# laptop or a CI runner with Docker, not on the project's Docker-less build machines.
# Needs: docker, kind (go install sigs.k8s.io/kind@v0.27.0), kubectl, Node 20, openssl,
# and helm (node --import tsx scripts/ensure-services.ts builds it).
#
#   deploy/kind/e2e.sh            # create (or reuse) the cluster, test, keep the cluster
#   KEEP_CLUSTER=0 deploy/kind/e2e.sh   # delete the cluster afterwards
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-kilo-cloud-agent}
RELEASE=${RELEASE:-kca}
NAMESPACE=${NAMESPACE:-kilo}
SANDBOX_NAMESPACE=${SANDBOX_NAMESPACE:-kilo-sandboxes}
TAG=${TAG:-e2e-$(git rev-parse --short HEAD 2>/dev/null || echo dev)}
MODEL_PORT=${MODEL_PORT:-18090}
GIT_PORT=${GIT_PORT:-18091}
GATEWAY_PORT=${GATEWAY_PORT:-18080}
KEEP_CLUSTER=${KEEP_CLUSTER:-1}
HELM=${HELM_BIN:-$(node --import tsx -e 'import("./scripts/ensure-services.ts").then(m => console.log(m.ensureHelm()))')}

log() { printf '\n== %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null || { echo "e2e: $1 is required" >&2; exit 2; }; }
need docker; need kind; need kubectl; need node; need openssl
docker info >/dev/null 2>&1 || { echo "e2e: no Docker engine reachable (this test needs one)" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
  if [ "$KEEP_CLUSTER" = 0 ]; then kind delete cluster --name "$CLUSTER" || true; fi
}
trap cleanup EXIT

log "cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config deploy/kind/cluster.yaml --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

log "images (tag $TAG)"
docker build -t "kilo-cloud-agent:$TAG" -f Dockerfile .
docker build -t "kilo-cloud-agent-sandbox:$TAG" -f Dockerfile.sandbox .
kind load docker-image --name "$CLUSTER" "kilo-cloud-agent:$TAG" "kilo-cloud-agent-sandbox:$TAG"

# The pods reach this machine (model and git servers) through the kind network's gateway.
HOST_IP=$(docker network inspect kind -f '{{range .IPAM.Config}}{{if .Gateway}}{{.Gateway}} {{end}}{{end}}' | tr ' ' '\n' | grep -E '^[0-9.]+$' | head -1)
API_IP=$(docker inspect "$CLUSTER-control-plane" -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}')
log "host as seen from pods: $HOST_IP; API server: $API_IP"

log "secrets"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
openssl genpkey -algorithm ed25519 -out "$work/service.pem" 2>/dev/null
openssl pkey -in "$work/service.pem" -pubout -out "$work/service.pub"
for who in session sandbox; do
  openssl genpkey -algorithm ed25519 -out "$work/$who.pem" 2>/dev/null
  openssl pkey -in "$work/$who.pem" -pubout -out "$work/$who.pub"
done
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/agent-env.pem" 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/github-app.pem" 2>/dev/null
HS256=$(openssl rand -hex 32)
INTERNAL=$(openssl rand -hex 24)
kubectl -n "$NAMESPACE" create secret generic "$RELEASE-secrets" --dry-run=client -o yaml \
  --from-literal=internal-api-secret="$INTERNAL" \
  --from-file=service-token-private-key="$work/service.pem" \
  --from-file=service-token-public-key="$work/service.pub" \
  --from-file=session-service-token-private-key="$work/session.pem" \
  --from-file=session-service-token-public-key="$work/session.pub" \
  --from-file=sandbox-service-token-private-key="$work/sandbox.pem" \
  --from-file=sandbox-service-token-public-key="$work/sandbox.pub" \
  --from-literal=stream-ticket-secret="$(openssl rand -hex 32)" \
  --from-literal=auth-hs256-secret="$HS256" \
  --from-literal=session-sealing-keys="e2e1:$(openssl rand -base64 32)" \
  --from-literal=token-sealing-keys="e2e1:$(openssl rand -base64 32)" \
  --from-file=agent-env-vars-private-key="$work/agent-env.pem" \
  --from-file=github-app-private-key="$work/github-app.pem" \
  --from-literal=postgres-password="$(openssl rand -hex 16)" \
  | kubectl apply -f -

log "helm install"
"$HELM" upgrade --install "$RELEASE" deploy/helm/kilo-cloud-agent \
  --namespace "$NAMESPACE" --wait --timeout 10m \
  --set secrets.existingSecret="$RELEASE-secrets" \
  --set image.repository=kilo-cloud-agent --set image.tag="$TAG" --set image.pullPolicy=Never \
  --set sandbox.image.repository=kilo-cloud-agent-sandbox --set sandbox.image.tag="$TAG" \
  --set sandbox.image.pullPolicy=Never \
  --set sandbox.namespace="$SANDBOX_NAMESPACE" \
  --set sandbox.idleTimeoutMinutes=5 \
  --set-string sandbox.nodeSelector.kilo\\.ai/pool=sandboxes \
  --set kiloProvider.kind=openai-compatible \
  --set kiloProvider.baseUrl="http://$HOST_IP:$MODEL_PORT" --set kiloProvider.id=mock \
  --set-string 'services.sandbox-manager.env.GIT_ALLOW_INSECURE=true' \
  --set-string 'services.session.env.GIT_ALLOW_INSECURE=true' \
  --set "services.sandbox-manager.env.GITHUB_GIT_BASE_URL=http://$HOST_IP:$GIT_PORT" \
  --set "sandbox.networkPolicy.allowedCIDRs[0].cidr=$HOST_IP/32" \
  --set "sandbox.networkPolicy.allowedCIDRs[0].ports={$MODEL_PORT,$GIT_PORT}" \
  --set "networkPolicy.apiServerCIDRs={$API_IP/32}" \
  --set "networkPolicy.externalEgressCIDRs={$HOST_IP/32}" \
  --set "networkPolicy.externalEgressPorts={443,$GIT_PORT}"

log "gateway on localhost:$GATEWAY_PORT"
kubectl -n "$NAMESPACE" port-forward "svc/$RELEASE-kilo-cloud-agent-gateway" "$GATEWAY_PORT:8080" >"$work/pf.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do curl -fsS "http://127.0.0.1:$GATEWAY_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.2; done

log "V2 flow"
GATEWAY_URL="http://127.0.0.1:$GATEWAY_PORT" AUTH_HS256_SECRET="$HS256" INTERNAL_API_SECRET="$INTERNAL" \
  HOST_IP="$HOST_IP" MODEL_PORT="$MODEL_PORT" GIT_PORT="$GIT_PORT" \
  SANDBOX_NAMESPACE="$SANDBOX_NAMESPACE" \
  node --import tsx deploy/test/kind-flow.ts

log "e2e passed"
