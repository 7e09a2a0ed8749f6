#!/usr/bin/env bash
# Build kube-apiserver from Debian bookworm's `kubernetes` SOURCE package (1.20.2, vendored deps),
# offline with Debian's golang-go. No kube-apiserver binary exists on PyPI/npm/Debian and the Go module
# proxy is unreachable, so this is the only way to get a real API server here.
# The source is fetched through a PRIVATE apt config (own sources.list with deb-src, own state and cache
# dirs): the host's apt config is never touched. Idempotent: the built binary is cached and reused.
set -euo pipefail

CACHE="${SENSORIUM_K8S_CACHE:-/var/cache/sensorium-k8s}"
BIN="$CACHE/bin/kube-apiserver"
# Bumped when the build changes (v2: reflect2 patched for Go >= 1.18), so an older cached binary is rebuilt.
BUILD_ID=2
if [[ -x "$BIN" ]] && [[ "$(cat "$BIN.build" 2>/dev/null)" == "$BUILD_ID" ]] && "$BIN" --version >/dev/null 2>&1; then
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

# Kubernetes 1.20 vendors modern-go/reflect2 1.0.1, whose linkname to reflect.mapiterinit has the
# pre-Go-1.18 signature: built with bookworm's Go 1.19 the apiserver segfaults when it encodes a map
# through json-iterator (every custom resource create). reflect2 1.0.2's fix, applied in place:
R2="$KSRC/vendor/github.com/modern-go/reflect2"
if grep -q 'func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer) \*hiter' "$R2/unsafe_link.go"; then
    python3 - "$R2/unsafe_link.go" "$R2/unsafe_map.go" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
s = s.replace("func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer) *hiter",
              "func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer, it *hiter)")
# The caller now allocates the iterator: it must have the runtime's full layout (Go 1.19 runtime.hiter).
full = """type hiter struct {
	key         unsafe.Pointer
	value       unsafe.Pointer
	t           unsafe.Pointer
	h           unsafe.Pointer
	buckets     unsafe.Pointer
	bptr        unsafe.Pointer
	overflow    *[]unsafe.Pointer
	oldoverflow *[]unsafe.Pointer
	startBucket uintptr
	offset      uint8
	wrapped     bool
	B           uint8
	i           uint8
	bucket      uintptr
	checkBucket uintptr
}"""
s, n = re.subn(r"type hiter struct \{.*?\n\}", full, s, flags=re.S)
assert n == 1, "reflect2 unsafe_link.go: unexpected content"
open(p, "w").write(s)
p = sys.argv[2]
s = open(p).read()
old = """	return &UnsafeMapIterator{
		hiter:      mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj)),"""
new = """	var it hiter
	mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj), &it)
	return &UnsafeMapIterator{
		hiter:      &it,"""
assert old in s, "reflect2 unsafe_map.go: unexpected content"
open(p, "w").write(s.replace(old, new))
PY
    echo "patched vendored reflect2 for Go >= 1.18"
fi
echo "building kube-apiserver in $KSRC (about 6 min on 2 cores)"
start=$(date +%s)
# GOFLAGS=-mod=vendor and no proxy: everything comes from the vendored tree.
(cd "$KSRC" && GOPROXY=off GOFLAGS=-mod=vendor GO111MODULE=on GOCACHE="$CACHE/gocache" \
    make WHAT=cmd/kube-apiserver)
out="$(find "$KSRC/_output" -type f -name kube-apiserver -perm -u+x | head -1)"
[[ -n "$out" ]] || { echo "build produced no kube-apiserver" >&2; exit 1; }
install -m 0755 "$out" "$BIN.tmp" && mv "$BIN.tmp" "$BIN" && echo "$BUILD_ID" >"$BIN.build"
echo "built $BIN in $(( $(date +%s) - start )) s: $("$BIN" --version)"
# The source tree (~1 GB with _output) is not needed any more; keep the binary only.
rm -rf "$SRCDIR" "$CACHE/gocache"
