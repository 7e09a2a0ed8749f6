#!/bin/bash
# A private rsyslog for exporter tests: UDP, TCP and a unix socket on loopback, RFC 5424 messages
# written byte for byte (%rawmsg%) to <dir>/messages.log. Never touches the system's /dev/log.
#
#   scripts/peers/rsyslog.sh start <dir> <udp_port> <tcp_port>   (idempotent: a running one is kept)
#   scripts/peers/rsyslog.sh stop <dir>
#   scripts/peers/rsyslog.sh status <dir>
set -eu

cmd=${1:?usage: rsyslog.sh start|stop|status <dir> [udp_port tcp_port]}
dir=${2:?directory}
pidfile="$dir/rsyslogd.pid"
# The address to listen on: loopback unless set (the cluster test binds the node's bridge address, which
# its pods reach).
ADDR=${SENSORIUM_PEER_ADDRESS:-127.0.0.1}

running() {
    [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

case "$cmd" in
start)
    udp=${3:?udp port}
    tcp=${4:?tcp port}
    if running; then
        echo "rsyslogd already running (pid $(cat "$pidfile"))"
        exit 0
    fi
    if ! command -v rsyslogd >/dev/null 2>&1 && [ ! -x /usr/sbin/rsyslogd ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q rsyslog >/dev/null
    fi
    rsyslogd=$(command -v rsyslogd || echo /usr/sbin/rsyslogd)
    mkdir -p "$dir/work"
    chmod 0700 "$dir"
    cat >"$dir/rsyslog.conf" <<CONF
global(workDirectory="$dir/work" maxMessageSize="256k")
module(load="imudp")
module(load="imtcp" MaxSessions="100")
module(load="imuxsock" SysSock.Use="off")
input(type="imudp" address="$ADDR" port="$udp")
input(type="imtcp" address="$ADDR" port="$tcp" SupportOctetCountedFraming="on")
input(type="imuxsock" Socket="$dir/log.sock" CreatePath="on" UseSpecialParser="off" ParseHostname="on" UseSysTimeStamp="off")
template(name="raw" type="string" string="%rawmsg%\n")
action(type="omfile" file="$dir/messages.log" template="raw" flushOnTXEnd="on" asyncWriting="off")
CONF
    rm -f "$pidfile"
    "$rsyslogd" -n -f "$dir/rsyslog.conf" -i "$pidfile" >"$dir/rsyslogd.out" 2>&1 &
    # Ready when the pidfile is written and the TCP port accepts connections.
    i=0
    while [ $i -lt 100 ]; do
        if running && (exec 3<>"/dev/tcp/$ADDR/$tcp") 2>/dev/null; then
            echo "rsyslogd started (pid $(cat "$pidfile")) udp=$udp tcp=$tcp unix=$dir/log.sock"
            exit 0
        fi
        i=$((i + 1))
        sleep 0.05
    done
    echo "rsyslogd did not come up; its output:" >&2
    cat "$dir/rsyslogd.out" >&2
    exit 1
    ;;
stop)
    if running; then
        pid=$(cat "$pidfile")
        kill "$pid"
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    ;;
status)
    if running; then echo "running (pid $(cat "$pidfile"))"; else echo "stopped"; exit 1; fi
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
