# syntax=docker/dockerfile:1.7
# The services image: one image, four entrypoints (the Helm chart picks one per
# Deployment with `node --import tsx services/<name>/src/main.ts`).
#
# The repository runs its TypeScript through tsx and has no build step, so the image does
# the same: production dependencies (tsx is one) plus the sources. tsx transforms each file
# once per process start and keeps its cache in /tmp (an emptyDir in the chart, whose root
# filesystem is read-only).
#
#   docker build -t kilo-cloud-agent:dev .
#   docker run --rm kilo-cloud-agent:dev node --import tsx services/gateway/src/main.ts

ARG NODE_VERSION=20.19

FROM node:${NODE_VERSION}-bookworm-slim AS deps
WORKDIR /app
# Manifests first: the dependency layer is rebuilt only when they change.
COPY package.json package-lock.json .npmrc ./
COPY packages/common/package.json packages/common/
COPY packages/proto/package.json packages/proto/
COPY packages/sdk/package.json packages/sdk/
COPY packages/cli/package.json packages/cli/
COPY packages/testing/package.json packages/testing/
COPY services/gateway/package.json services/gateway/
COPY services/session/package.json services/session/
COPY services/sandbox-manager/package.json services/sandbox-manager/
COPY services/token/package.json services/token/
# `npm install`, not `npm ci`: the lock file may lack other platforms' optional packages
# (see .ci/run). Dev dependencies (vitest, biome, buf, the test fixtures) stay out.
RUN --mount=type=cache,target=/root/.npm \
    npm install --omit=dev --no-audit --no-fund \
 && npm cache clean --force >/dev/null 2>&1 || true

FROM node:${NODE_VERSION}-bookworm-slim AS runtime
ENV NODE_ENV=production \
    NODE_OPTIONS=--enable-source-maps
WORKDIR /app
# A user of our own (uid/gid 10001, as the chart's podSecurityContext says), no shell, no home.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin app
COPY --from=deps --chown=root:root /app/node_modules ./node_modules
COPY --chown=root:root package.json tsconfig.json tsconfig.base.json ./
COPY --chown=root:root packages ./packages
COPY --chown=root:root services ./services
# Workspace packages' own node_modules (nested versions), after the sources.
COPY --from=deps --chown=root:root /app/packages ./packages
COPY --from=deps --chown=root:root /app/services ./services
USER 10001:10001
EXPOSE 8080 8081 8082 8083
CMD ["node", "--import", "tsx", "services/gateway/src/main.ts"]
