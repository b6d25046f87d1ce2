# Sourced by setup-docker.sh and offline-base.sh: the Debian mirror this machine's apt already
# uses. No mirror host name is written in the repository; set DEBIAN_MIRROR (and optionally
# DEBIAN_SECURITY_MIRROR) when the apt configuration has none.

# URIs in deb822 *.sources and one-line *.list files (skipping "[option=...]" blocks), in order.
apt_uris() {
    grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | sed 's/^URIs://' | tr ' \t' '\n\n'
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
        sed -E 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' | awk '{print $1}'
}

# The first URI ending in /debian (DEBIAN_MIRROR wins); exits with one line when none.
debian_mirror() {
    local m=${DEBIAN_MIRROR:-}
    [ -n "$m" ] || m=$(apt_uris | grep -m1 -E '/debian/?$' || true)
    if [ -z "$m" ]; then
        echo "$(basename "$0"): no Debian mirror in this machine's apt configuration" \
             "(/etc/apt/sources.list, /etc/apt/sources.list.d/*.sources|*.list):" \
             "set DEBIAN_MIRROR=<URL of a Debian archive mirror, ending in /debian>" >&2
        exit 1
    fi
    echo "${m%/}"
}

# The security archive: DEBIAN_SECURITY_MIRROR, else the apt configuration's URI ending in
# /debian-security, else MIRROR-security (the layout of most mirrors).
debian_security_mirror() {
    local m=${DEBIAN_SECURITY_MIRROR:-}
    [ -n "$m" ] || m=$(apt_uris | grep -m1 -E '/debian-security/?$' || true)
    [ -n "$m" ] || m="$1-security"
    echo "${m%/}"
}
