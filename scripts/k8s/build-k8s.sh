#!/usr/bin/env bash
# Build the Kubernetes binaries from Debian bookworm's `kubernetes` SOURCE package (1.20.2, vendored deps),
# offline with Debian's golang-go. No Kubernetes server binary exists on PyPI/npm/Debian and the Go module
# proxy is unreachable, so this is the only way to get real ones here.
#
#   build-k8s.sh [COMPONENT...]   default: kube-apiserver kubelet kube-scheduler kube-controller-manager
#
# Each binary is cached in $CACHE/bin with its own build id (<bin>.build); only the missing or outdated ones
# are built, all in ONE `make WHAT=...` so they share the compile of the common packages (on a fresh machine
# the four cost little more than the apiserver alone). The source is fetched through a PRIVATE apt config
# (own sources.list with deb-src, own state and cache dirs): the host's apt config is never touched.
# The build runs under `nice` (other work on the machine goes first) with SENSORIUM_K8S_BUILD_JOBS parallel
# compiles (default: one per core; a fresh `make test` has its whole budget to keep). Idempotent; the source
# tree and Go cache are removed after a build.
set -euo pipefail

CACHE="${SENSORIUM_K8S_CACHE:-/var/cache/sensorium-k8s}"
JOBS="${SENSORIUM_K8S_BUILD_JOBS:-$(nproc)}"
# Bumped per binary when its build changes in a way the cache cannot see, so an older binary is rebuilt.
# kube-apiserver 2: reflect2 patched for Go >= 1.18.
declare -A BUILD_ID=([kube-apiserver]=2 [kubelet]=1 [kube-scheduler]=1 [kube-controller-manager]=1)
(($#)) || set -- kube-apiserver kubelet kube-scheduler kube-controller-manager
mkdir -p "$CACHE/bin"

cached() {  # component -> 0 when its binary is there, of the current build id, and runs
    local bin="$CACHE/bin/$1"
    [[ -x "$bin" ]] && [[ "$(cat "$bin.build" 2>/dev/null)" == "${BUILD_ID[$1]}" ]] && "$bin" --version >/dev/null 2>&1
}

# One build at a time on this machine (two sessions' setups may start together); re-check under the lock.
exec 9>"$CACHE/build.lock"
flock 9
todo=()
for c in "$@"; do
    [[ -n "${BUILD_ID[$c]:-}" ]] || { echo "build-k8s.sh: unknown component $c" >&2; exit 2; }
    if cached "$c"; then echo "$c cached: $CACHE/bin/$c ($("$CACHE/bin/$c" --version 2>&1 | head -1))"
    else todo+=("$c"); fi
done
((${#todo[@]})) || exit 0

export DEBIAN_FRONTEND=noninteractive
need=()
for p in golang-go rsync dpkg-dev make gcc libc6-dev; do
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
# through json-iterator (every custom resource create), and every other binary shares the package.
# reflect2 1.0.2's fix, applied in place:
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

what=()
for c in "${todo[@]}"; do what+=("cmd/$c"); done
echo "building ${todo[*]} in $KSRC ($JOBS parallel compile(s), nice 10; the apiserver alone is ~6 min on 2 idle cores)"
start=$(date +%s)
# GOFLAGS=-mod=vendor and no proxy: everything comes from the vendored tree. GOFLAGS must stay one word
# (hack/lib/golang.sh pastes it into -tags); GOMAXPROCS bounds the go command's parallel compiles instead.
(cd "$KSRC" && GOPROXY=off GOFLAGS=-mod=vendor GO111MODULE=on GOCACHE="$CACHE/gocache" GOMAXPROCS="$JOBS" \
    nice -n 10 make WHAT="${what[*]}")
for c in "${todo[@]}"; do
    out="$(find "$KSRC/_output" -type f -name "$c" -perm -u+x | head -1)"
    [[ -n "$out" ]] || { echo "build produced no $c" >&2; exit 1; }
    bin="$CACHE/bin/$c"
    install -m 0755 "$out" "$bin.tmp" && mv "$bin.tmp" "$bin" && echo "${BUILD_ID[$c]}" >"$bin.build"
    echo "built $bin: $("$bin" --version 2>&1 | head -1)"
done
echo "built ${todo[*]} in $(( $(date +%s) - start )) s"
# The source tree (~1 GB with _output) and the Go cache are not needed any more; keep the binaries only.
rm -rf "$SRCDIR" "$CACHE/gocache"
