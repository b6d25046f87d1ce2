#!/usr/bin/env bash
# Make `docker compose` usable on this host; every step is skipped when already done:
#   1. Docker engine (Debian's docker.io) if dockerd is missing
#   2. compose v2 plugin if `docker compose version` fails: the static binary from Debian
#      trixie's docker-compose .deb, fetched with a private apt config (the host's apt sources
#      are not touched) and extracted with dpkg-deb -x. The mirror is the one this machine's
#      apt configuration uses (DEBIAN_MIRROR when it has none; see docker/apt-mirror.sh)
#   3. dockerd started in the background (log: $DOCKERD_LOG) if `docker info` fails
#   4. base image debian:trixie-slim built offline (docker/offline-base.sh) if absent
#   5. Python wheels for the image pre-downloaded into docker/wheels (docker/fetch-wheels.sh),
#      so the image build needs no index access (skip with KS_SKIP_WHEELS=1)
# Run as root. Prints how long each step took.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/kernelsight-dockerd.log}
SUITE_COMPOSE=${SUITE_COMPOSE:-trixie}
PLUGIN_DIR=/usr/libexec/docker/cli-plugins

t0=$(date +%s.%N)
step() { printf 'setup-docker: %-34s %s\n' "$1" "$2"; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f s", b-a}'; }

[ "$(id -u)" = 0 ] || { echo "setup-docker: run as root" >&2; exit 1; }

# The package mirror comes only from this machine's apt configuration (or DEBIAN_MIRROR).
. "$HERE/apt-mirror.sh"

# 1. engine ------------------------------------------------------------------------------
t=$(date +%s.%N)
if command -v dockerd >/dev/null; then
    step "engine" "present ($(dockerd --version | cut -d, -f1))"
else
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >/dev/null
    step "engine" "installed docker.io in $(since "$t")"
fi
command -v docker >/dev/null || { echo "setup-docker: no docker CLI after install" >&2; exit 1; }

# 2. compose v2 plugin -------------------------------------------------------------------
t=$(date +%s.%N)
if docker compose version >/dev/null 2>&1; then
    step "compose plugin" "present ($(docker compose version --short 2>/dev/null))"
else
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/parts" "$tmp/pkg"
    mirror=$(debian_mirror)
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror" \
         "$SUITE_COMPOSE main" >"$tmp/sources.list"
    apt_opts=(-q -o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=$tmp/parts"
              -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache")
    apt-get "${apt_opts[@]}" update >/dev/null
    (cd "$tmp" && apt-get "${apt_opts[@]}" download docker-compose >/dev/null)
    dpkg-deb -x "$tmp"/docker-compose_*.deb "$tmp/pkg"
    bin="$tmp/pkg/usr/libexec/docker/cli-plugins/docker-compose"
    [ -x "$bin" ] || { echo "setup-docker: $SUITE_COMPOSE's docker-compose .deb has no" \
                            "cli plugin (is it v2?)" >&2; exit 1; }
    install -D -m 0755 "$bin" "$PLUGIN_DIR/docker-compose"
    step "compose plugin" "installed $(docker compose version --short) from" \
         "$SUITE_COMPOSE in $(since "$t")"
fi

# 3. daemon ------------------------------------------------------------------------------
t=$(date +%s.%N)
if docker info >/dev/null 2>&1; then
    step "dockerd" "running"
else
    if ! pgrep -x dockerd >/dev/null; then
        mkdir -p "$(dirname "$DOCKERD_LOG")"
        setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || {
        tail -20 "$DOCKERD_LOG" >&2
        echo "setup-docker: dockerd did not come up in 60 s; log: $DOCKERD_LOG" >&2
        exit 1
    }
    step "dockerd" "started in $(since "$t") (log: $DOCKERD_LOG)"
fi

# 4. base image --------------------------------------------------------------------------
t=$(date +%s.%N)
if docker image inspect debian:trixie-slim >/dev/null 2>&1; then
    step "base image debian:trixie-slim" "present"
else
    "$HERE/offline-base.sh"
    step "base image debian:trixie-slim" "built in $(since "$t")"
fi

# 5. wheels for the image build ----------------------------------------------------------
t=$(date +%s.%N)
if [ -n "${KS_SKIP_WHEELS:-}" ]; then
    step "wheels" "skipped (KS_SKIP_WHEELS)"
else
    "$HERE/fetch-wheels.sh"
    step "wheels" "ready in $(since "$t")"
fi

step "total" "$(since "$t0")"
