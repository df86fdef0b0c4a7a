#!/usr/bin/env bash
# buf breaking against a git ref (default: main). The ref's tree lacks the git-ignored
# .buf-deps/, so it is exported to a temporary directory, completed, and built to an image.
set -euo pipefail
cd "$(dirname "$0")/.."
ref="${1:-main}"
bash scripts/buf.sh --version >/dev/null   # makes sure .buf-deps/ is present
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git archive "$ref" proto buf.yaml | tar -x -C "$tmp"
mkdir -p "$tmp/.buf-deps" && cp -r .buf-deps/protovalidate "$tmp/.buf-deps/"
(cd "$tmp" && "$OLDPWD/node_modules/.bin/buf" build --path proto/kilocode -o "$tmp/against.binpb")
./node_modules/.bin/buf breaking --against "$tmp/against.binpb"
echo "no breaking changes against $ref"
