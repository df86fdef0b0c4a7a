#!/usr/bin/env bash
# Regenerates packages/proto/src/gen from proto/. With --check, fails when the checked-in
# generated code differs from what the protos produce.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"
bash scripts/buf.sh generate --path proto/kilocode
if [ "${1:-}" = "--check" ]; then
  if [ -n "$(git status --porcelain -- packages/proto/src/gen)" ]; then
    echo "Generated code is out of date: run 'npm run generate' and commit the result." >&2
    git status --porcelain -- packages/proto/src/gen >&2
    exit 1
  fi
fi
