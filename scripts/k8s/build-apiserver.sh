#!/usr/bin/env bash
# Build kube-apiserver from Debian bookworm's `kubernetes` SOURCE package (1.20.2, vendored deps),
# offline with Debian's golang-go. No kube-apiserver binary exists on PyPI/npm/Debian and the Go module
# proxy is unreachable, so this is the only way to get a real API server here.
# The source is fetched through a PRIVATE apt config (own sources.list with deb-src, own state and cache
# dirs): the host's apt config is never touched. Idempotent: the built binary is cached and reused.
set -euo pipefail

CACHE="${SENSORIUM_K8S_CACHE:-/var/cache/sensorium-k8s}"
BIN="$CACHE/bin/kube-apiserver"
if [[ -x "$BIN" ]] && "$BIN" --version >/dev/null 2>&1; then
    echo "kube-apiserver cached: $BIN ($("$BIN" --version))"
    exit 0
fi
mkdir -p "$CACHE/bin"

export DEBIAN_FRONTEND=noninteractive
need=()
for p in golang-go rsync dpkg-dev make; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
    apt-get -o DPkg::Lock::Timeout=900 update -qq
    apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${need[@]}"
fi

# Private apt: only deb-src lines, own lists/cache so the host's state stays as it was.
APT="$CACHE/apt"
mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$APT/etc/sources.list.d" "$APT/etc/preferences.d"
cat >"$APT/etc/sources.list" <<SRC
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
SRC
APTOPTS=(
    -o "Dir::Etc::sourcelist=$APT/etc/sources.list"
    -o "Dir::Etc::sourceparts=$APT/etc/sources.list.d"
    -o "Dir::Etc::preferencesparts=$APT/etc/preferences.d"
    -o "Dir::State=$APT"
    -o "Dir::State::lists=$APT/lists"
    -o "Dir::State::status=/var/lib/dpkg/status"
    -o "Dir::Cache=$APT"
    -o "Dir::Cache::archives=$APT/archives"
    -o "APT::Get::Only-Source=true"
)
SRCDIR="$CACHE/src"
if ! ls -d "$SRCDIR"/kubernetes-*/ >/dev/null 2>&1; then
    apt-get "${APTOPTS[@]}" update -qq
    rm -rf "$SRCDIR" && mkdir -p "$SRCDIR"
    (cd "$SRCDIR" && apt-get "${APTOPTS[@]}" source kubernetes)
fi
KSRC="$(ls -d "$SRCDIR"/kubernetes-*/ | head -1)"
echo "building kube-apiserver in $KSRC (about 6 min on 2 cores)"
start=$(date +%s)
# GOFLAGS=-mod=vendor and no proxy: everything comes from the vendored tree.
(cd "$KSRC" && GOPROXY=off GOFLAGS=-mod=vendor GO111MODULE=on GOCACHE="$CACHE/gocache" \
    make WHAT=cmd/kube-apiserver)
out="$(find "$KSRC/_output" -type f -name kube-apiserver -perm -u+x | head -1)"
[[ -n "$out" ]] || { echo "build produced no kube-apiserver" >&2; exit 1; }
install -m 0755 "$out" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
echo "built $BIN in $(( $(date +%s) - start )) s: $("$BIN" --version)"
# The source tree (~1 GB with _output) is not needed any more; keep the binary only.
rm -rf "$SRCDIR" "$CACHE/gocache"
