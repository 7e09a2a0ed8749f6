#!/usr/bin/env bash
# Prepare the VM lane: QEMU, virtme-ng (own venv under .vm/) and three stock Debian kernels
# (bullseye 5.10, bookworm 6.1 and bookworm-backports 6.12), extracted -- never installed -- under
# .vm/kernels/. 5.10 is what long-term distributions and many managed node images still run.
#
# Why extract instead of installing: installing linux-image pulls udev/initramfs-tools and upgrades
# systemd on the host. Why a private apt config: backports must not be added to the host's sources,
# and the host's apt state must stay exactly as it was.
#
# Idempotent and cached: a second run finds everything in place and does nothing.
# Versions are pinned in scripts/vm/kernels.lock (written on the first run); when a pinned version
# has left the mirror, the newest one is taken instead and a warning says so.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VM="${SENSORIUM_VM_DIR:-$ROOT/.vm}"
LOCK="${SENSORIUM_VM_LOCK:-$ROOT/scripts/vm/kernels.lock}"
APTDIR="$VM/apt"
KDIR="$VM/kernels"
VNG_VENV="$VM/vng-venv"
VNG_VERSION_DEFAULT="1.42"
MIRROR="${SENSORIUM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${SENSORIUM_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

log() { printf '[vm-prepare] %s\n' "$*" >&2; }

# --- lock file: "<label> <package> <version>" lines, plus "virtme-ng <version>" -------------------
lock_get() {  # lock_get LABEL -> "package version" or nothing
    [[ -f "$LOCK" ]] || return 0
    awk -v l="$1" '$1 == l { print $2, $3; exit }' "$LOCK"
}
lock_set() {  # lock_set LABEL PACKAGE VERSION
    local tmp
    tmp="$(mktemp)"
    if [[ -f "$LOCK" ]]; then grep -v -E "^$1 " "$LOCK" > "$tmp" || true; fi
    printf '%s %s %s\n' "$1" "$2" "$3" >> "$tmp"
    if [[ ! -f "$LOCK" ]] || ! cmp -s <(sort "$tmp") <(sort "$LOCK"); then
        { echo "# Pinned by scripts/vm/prepare.sh: label package version (edit to move; delete a line to take the newest)"
          grep -v '^#' "$tmp" | sort; } > "$LOCK"
        log "pinned $1 -> $2 $3 in ${LOCK#$ROOT/}"
    fi
    rm -f "$tmp"
}

# --- host packages ---------------------------------------------------------------------------
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
[[ -x /sbin/depmod || -x /usr/sbin/depmod ]] || need_pkgs+=(kmod)
[[ -x /bin/busybox || -x /usr/bin/busybox ]] && file -L "$(command -v busybox)" | grep -q 'statically linked' \
    || need_pkgs+=(busybox-static)
command -v file >/dev/null || need_pkgs+=(file)
command -v strings >/dev/null || need_pkgs+=(binutils)
command -v zstd >/dev/null || need_pkgs+=(zstd)
command -v llvm-objcopy >/dev/null || need_pkgs+=(llvm)
if ((${#need_pkgs[@]})); then
    log "installing host packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"

# --- virtme-ng in its own venv (not the project's .venv: it is a tool, not a dependency) ----------
vng_version="$(awk '$1 == "virtme-ng" { print $2; exit }' "$LOCK" 2>/dev/null || true)"
vng_version="${vng_version:-$VNG_VERSION_DEFAULT}"
if [[ ! -x "$VNG_VENV/bin/vng" ]] || [[ "$(cat "$VNG_VENV/.version" 2>/dev/null)" != "$vng_version" ]]; then
    log "installing virtme-ng $vng_version into ${VNG_VENV#$ROOT/}"
    rm -rf "$VNG_VENV"
    python3 -m venv "$VNG_VENV"
    if ! "$VNG_VENV/bin/pip" install -q "virtme-ng==$vng_version"; then
        log "virtme-ng $vng_version unavailable; taking the newest"
        "$VNG_VENV/bin/pip" install -q virtme-ng
        vng_version="$("$VNG_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("virtme-ng"))')"
    fi
    echo "$vng_version" > "$VNG_VENV/.version"
fi
if ! grep -q '^virtme-ng ' "$LOCK" 2>/dev/null || [[ "$(awk '$1=="virtme-ng"{print $2}' "$LOCK")" != "$vng_version" ]]; then
    tmp="$(mktemp)"; { grep -v '^virtme-ng ' "$LOCK" 2>/dev/null || true; echo "virtme-ng $vng_version"; } > "$tmp"
    mv "$tmp" "$LOCK"
fi

# --- kernels ----------------------------------------------------------------------------------
# label -> (suites, space-separated; regex of the unsigned image package name). Bullseye's newest 5.10
# builds are in its security suite (long-term support), so both are searched.
declare -A SUITE=( [bookworm]=bookworm [backports]=bookworm-backports [bullseye]="bullseye bullseye-security" )
declare -A PKG_RE=( [bookworm]='^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$'
                    [backports]='^linux-image-6\.12\.[0-9]+\+(bpo|deb12)-amd64-unsigned$'
                    [bullseye]='^linux-image-5\.10\.0-[0-9]+-amd64-unsigned$' )
LABELS=(bullseye bookworm backports)

kernel_ready() {  # kernel_ready LABEL PACKAGE VERSION
    local link="$KDIR/$1"
    [[ -L "$link" && -f "$link/.ready" ]] && [[ "$(cat "$link/.ready")" == "$2 $3" ]]
}

apt_ready=0
private_apt() {
    # A private apt: own sources, state, cache and (empty) dpkg status, so the host's apt is untouched.
    mkdir -p "$APTDIR"/{lists/partial,cache/archives/partial,sources.list.d,preferences.d}
    : > "$APTDIR/status.empty"
    cat > "$APTDIR/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $SECURITY_MIRROR bullseye-security main
SRC
    APT_OPTS=(-o "Dir::Etc::SourceList=$APTDIR/sources.list" -o "Dir::Etc::SourceParts=$APTDIR/sources.list.d"
              -o "Dir::Etc::Preferences=$APTDIR/preferences" -o "Dir::Etc::PreferencesParts=$APTDIR/preferences.d"
              -o "Dir::State=$APTDIR" -o "Dir::State::Lists=$APTDIR/lists"
              -o "Dir::State::status=$APTDIR/status.empty" -o "Dir::Cache=$APTDIR/cache"
              -o "APT::Architecture=amd64" -o "APT::Architectures::=amd64" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
    if ((apt_ready == 0)); then
        log "updating the private apt lists (bookworm, bookworm-backports, bullseye, bullseye-security)"
        apt-get "${APT_OPTS[@]}" update -qq
        apt_ready=1
    fi
}

newest_in_suite() {  # newest_in_suite LABEL -> "package version"
    local label="$1" suites="${SUITE[$1]}" best_pkg="" best_ver="" p v
    while read -r p; do
        [[ -n "$p" ]] || continue
        # versions of $p available from the label's suites (madison's third column: "<suite>/main amd64 ...")
        while read -r v; do
            [[ -n "$v" ]] || continue
            if [[ -z "$best_ver" ]] || dpkg --compare-versions "$v" gt "$best_ver"; then best_pkg="$p"; best_ver="$v"; fi
        done < <(apt-cache "${APT_OPTS[@]}" madison "$p" | awk -F'|' -v ss="$suites" '
            BEGIN { n = split(ss, want, " ") }
            { m = split($3, f, " "); ok = 0
              for (j = 1; j <= m; j++) for (i = 1; i <= n; i++) if (f[j] == want[i] "/main") ok = 1
              if (ok) { gsub(/ /, "", $2); print $2 } }')
    done < <(apt-cache "${APT_OPTS[@]}" pkgnames linux-image- | grep -E "${PKG_RE[$label]}" | sort -u)
    [[ -n "$best_pkg" ]] || { log "no package matching ${PKG_RE[$label]} in $suites"; exit 1; }
    echo "$best_pkg $best_ver"
}

extract_btf() {  # extract_btf VMLINUZ OUT: decompress the bzImage payload, copy its .BTF section
    local img="$1" out="$2" tmp
    tmp="$(mktemp -d)"
    python3 - "$img" "$tmp/vmlinux" <<'PY' || { rm -rf "$tmp"; return 1; }
import gzip, lzma, subprocess, sys
img = open(sys.argv[1], "rb").read()
# bzImage: a setup stub, then the compressed kernel; try every magic at every offset it appears.
magics = [(b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x1f\x8b\x08", "gzip")]
for magic, kind in magics:
    at = img.find(magic)
    while at >= 0:
        blob = img[at:]
        try:
            if kind == "xz":
                data = lzma.LZMADecompressor().decompress(blob)
            elif kind == "gzip":
                data = gzip.GzipFile(fileobj=__import__("io").BytesIO(blob)).read1(1 << 31)
            else:  # zstd: the CLI stops with an error at the trailing bytes but has written the frame
                data = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True).stdout
        except Exception:
            data = b""
        if data[:4] == b"\x7fELF":
            open(sys.argv[2], "wb").write(data)
            sys.exit(0)
        at = img.find(magic, at + 1)
sys.exit(1)
PY
    llvm-objcopy --dump-section ".BTF=$out" "$tmp/vmlinux" "$tmp/discard" 2>/dev/null \
        || { rm -rf "$tmp"; return 1; }
    rm -rf "$tmp"
    [[ -s "$out" ]]
}

fetch_kernel() {  # fetch_kernel LABEL
    local label="$1" pinned pkg ver deb rel dest
    pinned="$(lock_get "$label")"
    if [[ -n "$pinned" ]] && kernel_ready "$label" $pinned; then
        local k; k="$(readlink -f "$KDIR/$label")"
        if [[ ! -s "$k/vmlinux.btf" ]]; then
            extract_btf "$k/boot/vmlinuz-$(basename "$k")" "$k/vmlinux.btf" || log "WARNING: no BTF from $k"
        fi
        log "kernel $label ($pinned) already extracted"
        return 0
    fi
    private_apt
    if [[ -n "$pinned" ]]; then
        read -r pkg ver <<< "$pinned"
        if ! apt-cache "${APT_OPTS[@]}" madison "$pkg" | awk -F'|' '{gsub(/ /,"",$2); print $2}' | grep -qxF "$ver"; then
            log "WARNING: pinned $pkg $ver is gone from the mirror; taking the newest (update ${LOCK#$ROOT/})"
            read -r pkg ver <<< "$(newest_in_suite "$label")"
        fi
    else
        read -r pkg ver <<< "$(newest_in_suite "$label")"
    fi
    mkdir -p "$VM/debs" "$KDIR"
    deb="$(ls "$VM/debs/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -1 || true)"
    if [[ -z "$deb" ]]; then
        log "downloading $pkg $ver"
        (cd "$VM/debs" && apt-get "${APT_OPTS[@]}" download -qq "$pkg=$ver")
        deb="$(ls "$VM/debs/${pkg}_"*.deb | head -1)"
    fi
    rel="${pkg#linux-image-}"; rel="${rel%-unsigned}"
    dest="$KDIR/$rel"
    log "extracting $(basename "$deb") into ${dest#$ROOT/}"
    rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
    dpkg -x "$deb" "$dest.tmp"
    # Debian bookworm ships /lib/modules, newer packages /usr/lib/modules: vng looks for <root>/lib/modules.
    if [[ ! -d "$dest.tmp/lib/modules" && -d "$dest.tmp/usr/lib/modules" ]]; then
        mkdir -p "$dest.tmp/lib"; mv "$dest.tmp/usr/lib/modules" "$dest.tmp/lib/modules"
    fi
    depmod -b "$dest.tmp" "$rel"
    [[ -f "$dest.tmp/boot/vmlinuz-$rel" ]] || { log "no boot/vmlinuz-$rel in $deb"; return 1; }
    # The kernel's BTF, taken out of the image on the host, lets the lane build the probes for this
    # kernel with the host's clang (scripts/vm/prebuild.py) instead of clang under emulation.
    extract_btf "$dest.tmp/boot/vmlinuz-$rel" "$dest.tmp/vmlinux.btf" \
        || log "WARNING: could not extract BTF from vmlinuz-$rel; probes will be built inside the guest"
    echo "$pkg $ver" > "$dest.tmp/.ready"
    rm -rf "$dest"; mv "$dest.tmp" "$dest"
    ln -sfn "$rel" "$KDIR/$label"
    rm -f "$deb"   # the extracted tree is the cache; the .deb is 60-100 MB we do not need twice
    lock_set "$label" "$pkg" "$ver"
}

for label in "${LABELS[@]}"; do fetch_kernel "$label"; done
log "ready: $(for l in "${LABELS[@]}"; do printf '%s=%s ' "$l" "$(readlink "$KDIR/$l")"; done)"
