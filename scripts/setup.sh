#!/usr/bin/env bash
# Install what KernelSight needs on a Debian/Ubuntu host (root), idempotently:
# apt packages (Redis, BCC, kernel headers or the fallback, stress-ng, sqlite3, chromium for
# the analysis HTML test, PostgreSQL for the fleet store and its tests) and the
# virtualenv in .venv (system site packages, for Debian's bcc module).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# systemd: for `systemd-analyze verify` of deploy/systemd (tests; it need not be PID 1).
# bpfcc-tools: bcc's syscount/runqlat, which `make bench` compares ours with (peers.py).
for p in python3 python3-venv python3-pip python3-bpfcc redis-server redis-tools stress-ng \
         sqlite3 iproute2 procps util-linux chromium systemd bpfcc-tools postgresql; do
  have "$p" || need+=("$p")
done
arch=$(dpkg --print-architecture)
if [ ! -e "/lib/modules/$(uname -r)/build" ] && ! ls -d /usr/src/linux-headers-*-"$arch" >/dev/null 2>&1; then
  need+=("HEADERS")
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages (${need[*]}); run as root (sudo make ...)" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  pkgs=()
  for p in "${need[@]}"; do
    if [ "$p" = HEADERS ]; then
      # The running kernel's own headers when the archive has them, else the distribution's
      # generic ones (BCC's tracepoint programs work with another version's headers).
      if apt-cache show "linux-headers-$(uname -r)" >/dev/null 2>&1; then
        pkgs+=("linux-headers-$(uname -r)")
      else
        pkgs+=("linux-headers-$arch")
      fi
    else
      pkgs+=("$p")
    fi
  done
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

stamp=.venv/.ks-installed
want=$(sha256sum services/pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating .venv"
  /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/pip install -q --disable-pip-version-check -e 'services[test,analysis,postgres]' hiredis
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import bcc, kernelsight" || {
  echo "setup: the venv cannot import bcc; is python3-bpfcc installed for /usr/bin/python3?" >&2
  exit 1
}

# promtool, for the test that lints /metrics (`promtool check metrics`): only that binary,
# taken from Debian's prometheus package, so no Prometheus server is installed or started.
if [ ! -x .venv/bin/promtool ] && ! command -v promtool >/dev/null 2>&1; then
  echo "setup: installing promtool (from Debian's prometheus package) into .venv/bin"
  tmp=$(mktemp -d)
  chmod 755 "$tmp"  # apt-get download runs as the _apt user when it can
  if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
    apt-get update -qq && (cd "$tmp" && apt-get download prometheus >/dev/null)
  fi
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  install -m 755 "$tmp/root/usr/bin/promtool" .venv/bin/promtool
  rm -rf "$tmp"
fi
