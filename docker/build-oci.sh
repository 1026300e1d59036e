#!/usr/bin/env bash
# The image of docker/Dockerfile, built without a container engine or daemon: a Debian slim root file
# system from mmdebstrap (bookworm, with ca-certificates and libssl3 as the Dockerfile installs them, and
# the `understudy` user, uid 10001), the binary and the shipped scenarios added, packed by umoci as an OCI
# image layout with the Dockerfile's entrypoint, command, user, working directory and port. Then the smoke
# test: the image unpacked again by umoci, and `understudy demo` run inside its root file system (chroot,
# as uid 10001) must print its summary.
#
#   docker/build-oci.sh target/release/understudy target/oci      # → target/oci/image (OCI layout)
#
# Push or load it with any OCI tool: `skopeo copy oci:target/oci/image:0.1.0 docker://registry/understudy:0.1.0`.
# Needs root (mmdebstrap's root mode and chroot) and Debian's mmdebstrap and umoci, which it installs when
# they are missing; the packages come from the machine's apt sources.
set -euo pipefail

bin="$(realpath "${1:?usage: $0 BINARY OUT_DIR}")"
out="$(realpath -m "${2:?usage: $0 BINARY OUT_DIR}")"
root_dir="$(cd "$(dirname "$0")/.." && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root_dir/Cargo.toml" | head -n1)"
release="${DEBIAN_RELEASE:-bookworm}"
mirror="${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(.*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}"
mirror="${mirror:-http://deb.debian.org/debian}"

[ "$(id -u)" = 0 ] || { echo "error: $0 needs root (mmdebstrap's root mode and chroot)" >&2; exit 1; }
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v umoci >/dev/null || need+=(umoci)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

rm -rf "$out" && mkdir -p "$out"
rootfs="$out/rootfs"
step() { echo "[$(date +%T)] $*"; }

step "root file system: Debian $release (minbase) with ca-certificates and libssl3, from $mirror"
# minbase and no documentation, as debian:*-slim; no apt lists or caches left in the image.
mmdebstrap --quiet --variant=minbase --include=ca-certificates,libssl3 \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --customize-hook='chroot "$1" useradd --uid 10001 --user-group --home-dir /srv/understudy --create-home understudy' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*.log' \
  "$release" "$rootfs" "$mirror"

step "adding the binary and the scenarios"
install -D -m 0755 "$bin" "$rootfs/usr/local/bin/understudy"
cp -r "$root_dir/scenarios" "$rootfs/srv/understudy/scenarios"
chown -R 10001:10001 "$rootfs/srv/understudy"

step "packing the OCI image understudy:$version"
image="$out/image"
umoci init --layout "$image"
umoci new --image "$image:$version"
umoci insert --image "$image:$version" "$rootfs" /
umoci config --image "$image:$version" --os linux --architecture amd64 \
  --config.user 10001 --config.workingdir /srv/understudy --config.exposedports 9464/tcp \
  --config.entrypoint /usr/local/bin/understudy --config.cmd run --config.cmd=--metrics-addr --config.cmd 0.0.0.0:9464 \
  --config.label "org.opencontainers.image.title=understudy" --config.label "org.opencontainers.image.version=$version"
umoci gc --layout "$image"
rm -rf "$rootfs"

step "smoke test: the image unpacked, \`understudy demo\` in its root file system as uid 10001"
bundle="$out/bundle"
umoci unpack --image "$image:$version" "$bundle"
config="$bundle/config.json"
python3 - "$config" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))["process"]
want = (["/usr/local/bin/understudy", "run", "--metrics-addr", "0.0.0.0:9464"], 10001, "/srv/understudy")
got = (c["args"], c["user"]["uid"], c["cwd"])
assert got == want, f"the image runs {got}, not {want}"
print(f"  config: {' '.join(c['args'])} as uid {c['user']['uid']} in {c['cwd']}")
EOF
# /proc, as a container has it; where this machine refuses the mount, the demo runs without it.
if mount -t proc proc "$bundle/rootfs/proc" 2>/dev/null; then
  trap 'umount "$bundle/rootfs/proc" 2>/dev/null || true' EXIT
else
  echo "  (no /proc mount allowed here: the demo runs without /proc)"
fi
demo="$(chroot --userspec=10001:10001 "$bundle/rootfs" /bin/sh -c 'cd /srv/understudy && HOME=/srv/understudy /usr/local/bin/understudy demo' 2>&1)" || {
  echo "$demo" >&2
  echo "error: understudy demo failed inside the image" >&2
  exit 1
}
echo "$demo" | sed 's/^/  /'
umount "$bundle/rootfs/proc" 2>/dev/null || true
trap - EXIT
rm -rf "$bundle"
size="$(du -sh "$image" | cut -f1)"
step "done: $image ($size, tag $version); \`understudy demo\` ran inside it"
