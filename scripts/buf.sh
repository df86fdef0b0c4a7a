#!/usr/bin/env bash
# Runs the buf CLI (from node_modules) with protovalidate's schema available.
# The schema comes from the Go module github.com/bufbuild/protovalidate (the registry that
# buf would normally use is not reachable from our machines); it is copied into the
# git-ignored .buf-deps/ directory so buf sees it as a workspace module.
set -euo pipefail
cd "$(dirname "$0")/.."
PROTOVALIDATE_VERSION=v1.2.2
dep=.buf-deps/protovalidate
if [ ! -f "$dep/buf/validate/validate.proto" ] || [ "$(cat "$dep/.version" 2>/dev/null)" != "$PROTOVALIDATE_VERSION" ]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "scripts/buf.sh: Go is needed to fetch protovalidate's schema (go mod download)" >&2
    exit 1
  fi
  dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "github.com/bufbuild/protovalidate@${PROTOVALIDATE_VERSION}" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).Dir))')
  rm -rf "$dep" && mkdir -p "$dep/buf/validate"
  cp "$dir/proto/protovalidate/buf/validate/validate.proto" "$dep/buf/validate/"
  chmod -R u+w "$dep"
  echo "$PROTOVALIDATE_VERSION" > "$dep/.version"
fi
exec ./node_modules/.bin/buf "$@"
