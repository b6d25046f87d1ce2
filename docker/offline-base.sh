#!/usr/bin/env bash
# Build the base image debian:<suite>-slim offline (no container registry needed):
# debootstrap a minbase Debian from the apt mirror, trim it like the official slim images,
# and `docker import` it. Idempotent: does nothing if the image exists (FORCE=1 rebuilds).
#
#   docker/offline-base.sh                 # debian:trixie-slim
#   SUITE=bookworm docker/offline-base.sh  # debian:bookworm-slim
#   DEBIAN_MIRROR=http://<mirror>/debian docker/offline-base.sh  # when apt has no Debian mirror
set -euo pipefail

SUITE=${SUITE:-trixie}
TAG=${TAG:-debian:${SUITE}-slim}

if [ -z "${FORCE:-}" ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "offline-base: $TAG already present"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "offline-base: run as root (debootstrap needs it)" >&2
    exit 1
fi

# The mirror this machine's apt uses (deb822 or one-line format), else DEBIAN_MIRROR.
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/apt-mirror.sh"
MIRROR=$(debian_mirror)
SECURITY=$(debian_security_mirror "$MIRROR")

command -v debootstrap >/dev/null || {
    echo "offline-base: installing debootstrap"
    apt-get install -y -q debootstrap >/dev/null
}

start=$(date +%s)
root=$(mktemp -d /var/tmp/ks-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "offline-base: debootstrap --variant=minbase $SUITE from $MIRROR (about 30-60 s)"
debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || {
    tail -20 "$root.log" >&2
    echo "offline-base: debootstrap failed; full log in $root.log" >&2
    exit 1
}
rm -f "$root.log"

# Like the official -slim images: no docs/man/locales from later installs, no apt cache.
mkdir -p "$root/etc/dpkg/dpkg.cfg.d" "$root/etc/apt/apt.conf.d"
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
CFG
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
       "$root"/var/log/*.log "$root"/tmp/* 2>/dev/null || true
: >"$root/etc/hostname"
: >"$root/etc/resolv.conf"

tar -C "$root" --numeric-owner -c . |
    docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' - "$TAG" >/dev/null
echo "offline-base: built $TAG in $(( $(date +%s) - start )) s" \
     "($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%d MB", $1/1e6}'))"
