#!/bin/bash
# edgehub against the distribution's Mosquitto, side by side, in one run (issue 6).
#
# The same edgehub-sim load runs against each broker in turn, each broker alone on the
# machine and freshly started for each phase-1 sweep and each phase-2 run, over three
# like-for-like transports:
#   ws     plain MQTT over WebSocket on loopback: edgehub's kind = "ws" listener (/mqtt,
#          anonymous) vs Mosquitto's `protocol websockets` listener;
#   mqtts  MQTT over TLS with client certificates on both: edgehub kind = "mqtts",
#          auth = ["certificate"] vs Mosquitto require_certificate +
#          use_identity_as_username;
#   wss    edgehub's native wss (client certificates) vs Mosquitto's websockets listener
#          behind stunnel terminating TLS (client certificates checked by stunnel); the
#          Mosquitto side's CPU and RSS are Mosquitto's plus stunnel's.
# and three loads (128-byte payloads):
#   fanin-q0  100 publishers -> 1 subscriber, QoS 0
#   fanin-q1  100 publishers -> 1 subscriber, QoS 1
#   fanout    1 publisher -> 100 subscribers, QoS $FANOUT_QOS (default 0)
#
# Phase 1 (skipped with FIND_MAX=0) finds each broker's maximum for each load: paced
# runs of MAX_DURATION seconds on one broker, starting at SWEEP_START_<load> publishes/s
# and SWEEP_FACTOR (2) times faster each step, until a step is not clean (a message
# lost, a disconnect, or less than 95 % of the offered rate delivered: the broker only
# queues). Unthrottled runs (--rate 0) were no use here: under that overload Mosquitto
# delivered nothing at all in some QoS 0 runs, and edgehub lost most QoS 1 messages
# (rumqttd's cursor jump). The steps are coarse (factor 2) and short: on a busy machine
# one noisy step halves a maximum, so for figures to publish lengthen and refine them.
# Phase 2 runs each load against both brokers at the same rate, half the lower of the two maxima on that transport, for DURATION seconds: latency, CPU
# and memory at that rate.
# Phase 3 (skipped with CONNECTIONS=0) measures connections on the TLS transports: full
# TLS handshakes per second (HANDSHAKES connections opened as fast as they complete, 64
# at a time, no session resumption, each with its MQTT CONNECT) and the memory of IDLE
# idle connections (the broker's VmRSS, plus stunnel's on the wss rows, held minus
# before, per connection). IDLE defaults to 10,000 where the open-file limit allows:
# edgehub and Mosquitto take one descriptor per MQTT client, stunnel two (so the wss rows'
# Mosquitto side opens what fits below `ulimit -n`, and its per-connection figure stands
# for the rest). The table at the end gives both brokers and the ratio
# edgehub / mosquitto; it is also written to $OUT.
#
#   bench/compare.sh                                 # everything, about 10 minutes
#   DURATION=30 MAX_DURATION=10 bench/compare.sh     # longer runs
#   SWEEP_FACTOR=1.5 SWEEP_STEPS=10 bench/compare.sh # finer steps in phase 1
#   DURATION=3 MAX_DURATION=2 WARMUP=1 bench/compare.sh   # a smoke test
#   TRANSPORTS="ws mqtts" LOADS="fanin-q1" bench/compare.sh
#   FIND_MAX=0 RATE_fanin_q0=20000 RATE_fanin_q1=10000 RATE_fanout=500 bench/compare.sh
#                                      # fixed rates (total publishes/s), no phase 1
#   RATE_fanout=500 bench/compare.sh   # phase 1 still runs; phase 2 uses this rate
#   MQ_INFLIGHT=20 bench/compare.sh    # Mosquitto's max_inflight_messages (default 100,
#                                      # edgehub's embedded broker's max_inflight)
#   BUILD=0 bench/compare.sh           # the binaries already in target/release (or
#                                      # EDGEHUB=... SIM=...), no cargo build
#   OUT=/tmp/compare.md bench/compare.sh   # where the table goes (default: in the
#                                      # temporary directory)
#
# Needs mosquitto, stunnel4 and python3 (apt-get install mosquitto mosquitto-clients
# stunnel4 python3). Everything runs on loopback, in a temporary directory that is kept
# for its logs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10}
MAX_DURATION=${MAX_DURATION:-2}
WARMUP=${WARMUP:-2}
FIND_MAX=${FIND_MAX:-1}
FANOUT_QOS=${FANOUT_QOS:-0}
PAYLOAD=${PAYLOAD:-128}
MQ_INFLIGHT=${MQ_INFLIGHT:-100}
TRANSPORTS=${TRANSPORTS:-"ws mqtts wss"}
LOADS=${LOADS:-"fanin-q0 fanin-q1 fanout"}
# Fixed phase-2 rates (total publishes per second) when there is no phase 1.
DEFAULT_RATE_fanin_q0=20000
DEFAULT_RATE_fanin_q1=10000
DEFAULT_RATE_fanout=500
# Phase 1: the first paced rate (total publishes/s), the step factor and the most steps.
SWEEP_START_fanin_q0=${SWEEP_START_fanin_q0:-25000}
SWEEP_START_fanin_q1=${SWEEP_START_fanin_q1:-10000}
SWEEP_START_fanout=${SWEEP_START_fanout:-500}
SWEEP_FACTOR=${SWEEP_FACTOR:-2}
CONNECTIONS=${CONNECTIONS:-1}
HANDSHAKES=${HANDSHAKES:-2000}
IDLE=${IDLE:-$(fits=$(( $(ulimit -n) - 356 )); echo $(( fits < 10000 ? fits : 10000 )))}
IDLE_STUNNEL=$(fits=$(( ($(ulimit -n) - 256) / 2 - 100 )); echo $(( fits < IDLE ? fits : IDLE )))
SWEEP_STEPS=${SWEEP_STEPS:-5}
WORK=$(mktemp -d /tmp/edgehub-compare-bench.XXXXXX)
OUT=${OUT:-$WORK/compare.md}
PORT_BROKER=18950     # the port the simulator connects to (edgehub, mosquitto or stunnel)
PORT_MQ_BACK=18951    # mosquitto's websockets listener behind stunnel
PORT_MQ_SPARE=18952   # mosquitto 2.0.11 refuses to start with websockets listeners only

die() { echo "bench/compare.sh: $*" >&2; exit 1; }
trap 'echo "bench/compare.sh: failed at line $LINENO: $BASH_COMMAND (logs in $WORK)" >&2' ERR

for tool in python3; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install $tool)"
done
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
STUNNEL=$(command -v stunnel4 || command -v stunnel || echo /usr/bin/stunnel4)
[ -x "$MOSQUITTO" ] || die "mosquitto is missing (apt-get install -y mosquitto mosquitto-clients)"
case " $TRANSPORTS " in *" wss "*)
    [ -x "$STUNNEL" ] || die "stunnel is missing (apt-get install -y stunnel4)" ;;
esac
for v in DURATION MAX_DURATION WARMUP PAYLOAD MQ_INFLIGHT SWEEP_STEPS SWEEP_START_fanin_q0 \
    SWEEP_START_fanin_q1 SWEEP_START_fanout RATE_fanin_q0 RATE_fanin_q1 RATE_fanout; do
    [[ -z "${!v:-}" || "${!v}" =~ ^[0-9]+$ ]] || die "$v=${!v} is not a whole number"
done
[[ "$SWEEP_FACTOR" =~ ^[0-9]+(\.[0-9]+)?$ ]] && python3 -c "import sys; sys.exit(not $SWEEP_FACTOR > 1)" ||
    die "SWEEP_FACTOR=$SWEEP_FACTOR must be a number above 1"
case $FANOUT_QOS in 0 | 1) ;; *) die "FANOUT_QOS=$FANOUT_QOS must be 0 or 1" ;; esac
for t in $TRANSPORTS; do
    case $t in ws | mqtts | wss) ;; *) die "unknown transport '$t' (ws, mqtts, wss)" ;; esac
done
for l in $LOADS; do
    case $l in fanin-q0 | fanin-q1 | fanout) ;; *) die "unknown load '$l' (fanin-q0, fanin-q1, fanout)" ;; esac
done
for port in $PORT_BROKER $PORT_MQ_BACK $PORT_MQ_SPARE; do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
        die "port $port on 127.0.0.1 is already in use"
    fi
done

if [ "${BUILD:-1}" != 0 ]; then
    echo "== building release binaries"
    cargo build --release -q -p hub -p device-sim --manifest-path "$ROOT/Cargo.toml"
fi
EDGEHUB=${EDGEHUB:-$ROOT/target/release/edgehub}
SIM=${SIM:-$ROOT/target/release/edgehub-sim}
[ -x "$EDGEHUB" ] && [ -x "$SIM" ] || die "no $EDGEHUB or $SIM (build them, or set EDGEHUB and SIM)"

PKI=$WORK/pki
"$EDGEHUB" pki init --dir "$PKI" >"$WORK/pki.log" 2>&1 || die "edgehub pki init failed; see $WORK/pki.log"
for f in ca.crt ca.crl server.crt server.key dashboard.crt dashboard.key; do
    [ -s "$PKI/$f" ] || die "edgehub pki init wrote no $PKI/$f"
done

# ---------------------------------------------------------------------------------------
# Broker configurations, one per (broker, transport).

edgehub_config() { # transport -> $WORK/edgehub-<transport>.toml
    local t=$1 kind auth
    case $t in
        ws) kind=ws auth='["anonymous"]' ;;
        mqtts) kind=mqtts auth='["certificate"]' ;;
        wss) kind=wss auth='["certificate"]' ;;
    esac
    cat >"$WORK/edgehub-$t.toml" <<EOF
[hub]
id = "compare"
data_dir = "$WORK/edgehub-data"
stats_interval = "10s"

[log]
level = "info"

[tls]
cert = "$PKI/server.crt"
key = "$PKI/server.key"
client_ca = ["$PKI/ca.crt"]
crl = ["$PKI/ca.crl"]

# Raised so that the hub's per-client protection does not throttle the load.
[limits]
message_rate = 10000000
byte_rate = 1073741824
max_connections_per_address = 20000
connection_rate = 100000

[[listeners]]
name = "bench"
kind = "$kind"
bind = "127.0.0.1:$PORT_BROKER"
auth = $auth

# Every bench client (the dashboard certificate, or anonymous on ws) may publish and
# subscribe the simulator's topics, and nothing else: the ACL is checked as in production.
[acl]
assign = [{ role = "bench", identity = "*" }]

[acl.roles.bench]
publish = ["devices/+/telemetry"]
subscribe = ["devices/+/telemetry"]
EOF
}

mosquitto_config() { # transport -> $WORK/mosquitto-<transport>.conf
    local t=$1
    {
        echo "# Run in the foreground by bench/compare.sh."
        echo "user root"
        echo "persistence false"
        echo "log_dest stderr"
        echo "# Unlimited: the QoS 1 subscriber's queue must not be what drops messages."
        echo "max_queued_messages 0"
        echo "max_inflight_messages $MQ_INFLIGHT"
        case $t in
            ws)
                echo "listener $PORT_BROKER 127.0.0.1"
                echo "protocol websockets"
                echo "allow_anonymous true"
                echo "# Unused: mosquitto 2.0.11 does not start with websockets listeners only."
                echo "listener $PORT_MQ_SPARE 127.0.0.1"
                ;;
            mqtts)
                echo "listener $PORT_BROKER 127.0.0.1"
                echo "cafile $PKI/ca.crt"
                echo "certfile $PKI/server.crt"
                echo "keyfile $PKI/server.key"
                echo "crlfile $PKI/ca.crl"
                echo "require_certificate true"
                echo "use_identity_as_username true"
                echo "allow_anonymous false"
                ;;
            wss)
                echo "# TLS and client certificates are stunnel's job (stunnel-wss.conf)."
                echo "listener $PORT_MQ_BACK 127.0.0.1"
                echo "protocol websockets"
                echo "allow_anonymous true"
                echo "# Unused: mosquitto 2.0.11 does not start with websockets listeners only."
                echo "listener $PORT_MQ_SPARE 127.0.0.1"
                ;;
        esac
    } >"$WORK/mosquitto-$t.conf"
}

cat >"$WORK/stunnel-wss.conf" <<EOF
; TLS in front of mosquitto's websockets listener, as a deployment would run it.
foreground = yes
pid =
debug = warning
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1

[mqtt-wss]
accept = 127.0.0.1:$PORT_BROKER
connect = 127.0.0.1:$PORT_MQ_BACK
cert = $PKI/server.crt
key = $PKI/server.key
CAfile = $PKI/ca.crt
CRLfile = $PKI/ca.crl
requireCert = yes
verifyChain = yes
EOF

for t in $TRANSPORTS; do
    edgehub_config "$t"
    mosquitto_config "$t"
    "$EDGEHUB" check-config --config "$WORK/edgehub-$t.toml" >"$WORK/check-$t.log" 2>&1 ||
        die "edgehub check-config refused $WORK/edgehub-$t.toml; see $WORK/check-$t.log"
done

# ---------------------------------------------------------------------------------------
# Processes.

BROKER_PID=   # the process the simulator's --hub-pid watches (edgehub or mosquitto)
STUNNEL_PID=
SNAP_PID=
cleanup() {
    local pid
    for pid in $SNAP_PID $STUNNEL_PID $BROKER_PID; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $SNAP_PID $STUNNEL_PID $BROKER_PID; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # port what log pid
    for _ in $(seq 100); do
        kill -0 "$4" 2>/dev/null || die "$2 exited at start; see $3"
        (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0
        sleep 0.1
    done
    die "$2 is not listening on 127.0.0.1:$1 after 10 s; see $3"
}

start_broker() { # broker transport log
    local b=$1 t=$2 log=$3
    case $b in
        edgehub)
            rm -rf "$WORK/edgehub-data"
            : >"$log"
            "$EDGEHUB" run --config "$WORK/edgehub-$t.toml" >"$log" 2>&1 &
            BROKER_PID=$!
            for _ in $(seq 100); do
                kill -0 "$BROKER_PID" 2>/dev/null || die "edgehub exited at start; see $log"
                grep -q "edgehub ready" "$log" && break
                sleep 0.1
            done
            grep -q "edgehub ready" "$log" || die "edgehub not ready after 10 s; see $log"
            wait_port $PORT_BROKER edgehub "$log" "$BROKER_PID"
            ;;
        mosquitto)
            "$MOSQUITTO" -c "$WORK/mosquitto-$t.conf" >"$log" 2>&1 &
            BROKER_PID=$!
            if [ "$t" = wss ]; then
                wait_port $PORT_MQ_BACK mosquitto "$log" "$BROKER_PID"
                "$STUNNEL" "$WORK/stunnel-wss.conf" >"${log%.log}.stunnel.log" 2>&1 &
                STUNNEL_PID=$!
                wait_port $PORT_BROKER stunnel "${log%.log}.stunnel.log" "$STUNNEL_PID"
            else
                wait_port $PORT_BROKER mosquitto "$log" "$BROKER_PID"
            fi
            ;;
    esac
}

stop_broker() { # log: fails if the broker died during the run
    local log=$1 pid
    for pid in $STUNNEL_PID $BROKER_PID; do
        kill -0 "$pid" 2>/dev/null || die "the broker or stunnel (pid $pid) died during the run; see $log"
    done
    for pid in $STUNNEL_PID $BROKER_PID; do
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    done
    STUNNEL_PID=
    BROKER_PID=
    # The port must be free before the next broker starts.
    for _ in $(seq 50); do
        (exec 3<>/dev/tcp/127.0.0.1/$PORT_BROKER) 2>/dev/null || return 0
        sleep 0.1
    done
    die "port $PORT_BROKER still answers after the broker stopped"
}

# CPU ticks (user + system) and VmRSS (KiB) of a process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# stunnel's CPU over the simulator's sending window (warm-up + measurement), which starts
# when the simulator prints "publisher(s) ready": the simulator's --hub-pid watches one
# process only. Reads the simulator's stderr on stdin, passes it on, and writes
# "ticks_at_start ticks_at_end seconds rss_kib" to $1.
watch_stunnel() { # outfile window_seconds
    local out=$1 window=$2 line start
    while IFS= read -r line; do
        printf '%s\n' "$line" >&2
        case $line in
            *"publisher(s) ready"*)
                if [ -n "$STUNNEL_PID" ]; then
                    start=$(ticks "$STUNNEL_PID")
                    (sleep "$window" && echo "$start $(ticks "$STUNNEL_PID") $window $(rss_kib "$STUNNEL_PID")" >"$out") &
                    SNAP_PID=$!
                fi
                ;;
        esac
    done
    [ -z "${SNAP_PID:-}" ] || wait "$SNAP_PID" || true
}

quote() { local a out=; for a in "$@"; do out+="${out:+ }$(printf '%q' "$a")"; done; echo "$out"; }

: >"$WORK/runs.tsv"
: >"$WORK/commands.txt"

run_sim() { # phase transport load broker rate duration: one simulator run on the running broker
    local phase=$1 t=$2 load=$3 b=$4 rate=$5 dur=$6
    local name="$phase-$t-$load-$b-$rate" url pubs subs qos args
    local json=$WORK/$name.json
    case $t in
        ws) url="ws://127.0.0.1:$PORT_BROKER/mqtt" ;;
        mqtts) url="mqtts://127.0.0.1:$PORT_BROKER" ;;
        wss) url="wss://127.0.0.1:$PORT_BROKER/mqtt" ;;
    esac
    read -r pubs subs qos < <(load_shape "$load")
    args=(mqtt --url "$url" --publishers "$pubs" --subscribers "$subs" --qos "$qos"
        --payload "$PAYLOAD" --rate "$rate" --duration "$dur" --warmup "$WARMUP"
        --hub-pid "$BROKER_PID" --json "$json")
    [ "$t" = ws ] || args+=(--pki "$PKI")
    printf -- '-- %-40s %3s pub -> %3s sub, QoS %s, %7s publishes/s, %ss: ' \
        "$phase $t $load $b" "$pubs" "$subs" "$qos" "$rate" "$dur"
    echo "$(quote "$SIM" "${args[@]}")   # $phase: $b, $t, $load" >>"$WORK/commands.txt"
    rm -f "$WORK/$name.stunnel"
    echo "== $name" >>"$WORK/sim.log"
    if ! { "$SIM" "${args[@]}" 2>&1 >"$WORK/$name.out"; } |
        watch_stunnel "$WORK/$name.stunnel" "$((WARMUP + dur))" 2>>"$WORK/sim.log"; then
        echo
        tail -n 5 "$WORK/sim.log" >&2
        die "edgehub-sim failed ($name); see $WORK/sim.log and $WORK/$name.out"
    fi
    [ -s "$json" ] || die "edgehub-sim wrote no $json; see $WORK/sim.log and $WORK/$name.out"
    if [ -n "$STUNNEL_PID" ] && [ ! -s "$WORK/$name.stunnel" ]; then
        die "no stunnel CPU sample for $name (the simulator never printed 'publisher(s) ready'?)"
    fi
    local pid
    for pid in $STUNNEL_PID $BROKER_PID; do
        kill -0 "$pid" 2>/dev/null ||
            die "$(cat "/proc/$pid/comm" 2>/dev/null || echo "the broker or stunnel") (pid $pid) died during $name; see $WORK/*.log"
    done
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$phase" "$t" "$load" "$b" "$rate" "$json" \
        "$([ -s "$WORK/$name.stunnel" ] && echo "$WORK/$name.stunnel" || echo -)" >>"$WORK/runs.tsv"
    # Prints the summary and exits 0 when the run was clean: nothing lost, no disconnect,
    # and at least 95 % of the paced rate delivered (a broker that only queues is not
    # keeping up).
    python3 - "$json" "$rate" <<'PY'
import json, sys
d, rate = json.load(open(sys.argv[1])), float(sys.argv[2])
l, h = d.get("latency") or {}, d.get("hub") or {}
clean = (d["lost"] == 0 and d["disconnects"] == 0 and d["received"] > 0
         and d["received_per_s"] >= 0.95 * rate * d["subscribers"])
print(f"{d['received_per_s']:.0f} msgs/s received, lost {d['lost']} ({d['loss_pct']:.2f} %), "
      f"p50 {l.get('p50_us', 0) / 1000:.2f} ms, p99 {l.get('p99_us', 0) / 1000:.2f} ms, "
      f"broker {h.get('cores', 0):.2f} cores{'' if clean else ' [not clean]'}")
sys.exit(0 if clean else 1)
PY
}

load_shape() { # load -> "publishers subscribers qos"
    case $1 in
        fanin-q0) echo 100 1 0 ;;
        fanin-q1) echo 100 1 1 ;;
        fanout) echo 1 100 "$FANOUT_QOS" ;;
    esac
}

# Phase 1 for one (transport, load, broker): paced runs at SWEEP_START, then
# SWEEP_FACTOR times more each step, on one broker, until a run is not clean or after
# SWEEP_STEPS runs. The maximum is the highest clean step.
sweep() { # transport load broker
    local t=$1 load=$2 b=$3 var rate steps=0
    var="SWEEP_START_${load//-/_}"
    rate=${!var}
    start_broker "$b" "$t" "$WORK/sweep-$t-$load-$b.broker.log"
    while [ "$steps" -lt "$SWEEP_STEPS" ]; do
        steps=$((steps + 1))
        run_sim sweep "$t" "$load" "$b" "$rate" "$MAX_DURATION" || break
        rate=$(python3 -c "print(round($rate * $SWEEP_FACTOR))")
    done
    stop_broker "$WORK/sweep-$t-$load-$b.broker.log"
}

# The phase-2 rate of (transport, load): RATE_<load> if set; else half the lower of the
# two brokers' maxima on that transport (half the first step if a broker had no clean
# step); else (FIND_MAX=0) the fixed default.
phase2_rate_for() { # transport load
    local var="RATE_${2//-/_}" def="DEFAULT_RATE_${2//-/_}" start="SWEEP_START_${2//-/_}"
    if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
    if [ "$FIND_MAX" = 0 ]; then echo "${!def}"; return; fi
    python3 - "$WORK/runs.tsv" "$1" "$2" "${!start}" <<'PY'
import json, sys
from math import floor, log10
best = {}
for line in open(sys.argv[1]):
    phase, t, load, b, rate, path, _ = line.rstrip("\n").split("\t")
    if phase == "sweep" and t == sys.argv[2] and load == sys.argv[3]:
        d = json.load(open(path))
        clean = (d["lost"] == 0 and d["disconnects"] == 0 and d["received"] > 0
                 and d["received_per_s"] >= 0.95 * float(rate) * d["subscribers"])
        best.setdefault(b, 0.0)
        if clean:
            best[b] = max(best[b], float(rate))
if len(best) != 2:
    sys.exit(f"phase 1 has no runs of both brokers for {sys.argv[2]} {sys.argv[3]}")
rate = (min(best.values()) or float(sys.argv[4])) / 2
print(max(1, int(round(rate, -int(floor(log10(rate))) + 1))) if rate >= 1 else 1)
PY
}

started=$(date +%s)
if [ "$FIND_MAX" != 0 ]; then
    echo "== phase 1: the highest clean rate of each broker (paced steps of ${MAX_DURATION}s)"
    for t in $TRANSPORTS; do
        for load in $LOADS; do
            for b in edgehub mosquitto; do
                sweep "$t" "$load" "$b"
            done
        done
    done
fi

echo "== phase 2: both brokers at the same rate (half the lower maximum), ${DURATION}s each"
for t in $TRANSPORTS; do
    for load in $LOADS; do
        rate=$(phase2_rate_for "$t" "$load")
        for b in edgehub mosquitto; do
            start_broker "$b" "$t" "$WORK/half-$t-$load-$b.broker.log"
            run_sim half "$t" "$load" "$b" "$rate" "$DURATION" || true
            stop_broker "$WORK/half-$t-$load-$b.broker.log"
        done
    done
done

# Phase 3: handshakes per second and idle memory, TLS transports only.
: >"$WORK/conns.tsv"
# Passes the simulator's stderr on and, once every connection is open ("holding for"),
# writes stunnel's VmRSS (KiB) to $1.
watch_hold() { # outfile
    local line
    while IFS= read -r line; do
        printf '%s\n' "$line" >&2
        case $line in
            *"holding for"*) [ -z "$STUNNEL_PID" ] || rss_kib "$STUNNEL_PID" >"$1" ;;
        esac
    done
}
run_idle() { # transport broker what connections rate hold -> json path
    local t=$1 b=$2 what=$3 n=$4 rate=$5 hold=$6 url json args
    json=$WORK/conns-$what-$t-$b.json
    case $t in
        mqtts) url="mqtts://127.0.0.1:$PORT_BROKER" ;;
        wss) url="wss://127.0.0.1:$PORT_BROKER/mqtt" ;;
    esac
    args=(idle --url "$url" --pki "$PKI" --connections "$n" --connect-rate "$rate"
        --connect-concurrency 64 --hold "$hold" --hub-pid "$BROKER_PID" --json "$json")
    echo "$(quote "$SIM" "${args[@]}")   # phase 3: $b, $t, $what" >>"$WORK/commands.txt"
    echo "== conns-$what-$t-$b" >>"$WORK/sim.log"
    { "$SIM" "${args[@]}" 2>&1 >"$WORK/conns-$what-$t-$b.out"; } |
        watch_hold "$WORK/conns-$what-$t-$b.stunnel" 2>>"$WORK/sim.log" || true
    [ -s "$json" ] || die "edgehub-sim wrote no $json; see $WORK/sim.log"
    echo "$json"
}
if [ "$CONNECTIONS" != 0 ]; then
    echo "== phase 3: full TLS handshakes per second ($HANDSHAKES connections) and $IDLE idle connections"
    for t in $TRANSPORTS; do
        [ "$t" = ws ] && continue
        for b in edgehub mosquitto; do
            start_broker "$b" "$t" "$WORK/conns-hs-$t-$b.broker.log"
            hs=$(run_idle "$t" "$b" handshakes "$HANDSHAKES" 0 1) || die "phase 3 failed; see $WORK/sim.log"
            stop_broker "$WORK/conns-hs-$t-$b.broker.log"
            start_broker "$b" "$t" "$WORK/conns-idle-$t-$b.broker.log"
            st0=$([ -n "$STUNNEL_PID" ] && rss_kib "$STUNNEL_PID" || echo 0)
            n=$IDLE
            [ "$t/$b" = wss/mosquitto ] && n=$IDLE_STUNNEL
            idle=$(run_idle "$t" "$b" idle "$n" 500 3) || die "phase 3 failed; see $WORK/sim.log"
            st1=$(cat "$WORK/conns-idle-$t-$b.stunnel" 2>/dev/null || echo 0)
            stop_broker "$WORK/conns-idle-$t-$b.broker.log"
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$b" "$hs" "$idle" "$st0" "$st1" >>"$WORK/conns.tsv"
            python3 - "$hs" "$idle" <<'PY'
import json, sys
h, i = (json.load(open(p)) for p in sys.argv[1:3])
r = i.get("hub_rss") or {}
print(f"-- {h['url']}: {h['connected'] / h['connect_s']:.0f} handshakes/s ({h['failed']} failed); "
      f"{i['connected']} idle: {r.get('per_connection_bytes', 0) / 1024:.1f} KiB each (broker only)")
PY
        done
    done
fi

# ---------------------------------------------------------------------------------------
# The table.
python3 - "$WORK/runs.tsv" "$WORK/commands.txt" "$OUT" "$MOSQUITTO" "$STUNNEL" \
    "$WORK" "$(( $(date +%s) - started ))" "$FANOUT_QOS" "$PAYLOAD" "$TRANSPORTS" \
    "$WORK/conns.tsv" <<'PY'
import json, os, subprocess, sys
(runs_path, commands_path, out_path, mosquitto, stunnel, work, elapsed, fanout_qos, payload,
 used, conns_path) = sys.argv[1:]
used = used.split()

runs = {}
for line in open(runs_path):
    phase, t, load, b, rate, path, stun = line.rstrip("\n").split("\t")
    d = json.load(open(path))
    extra = None
    if stun != "-":
        s0, s1, secs, rss = open(stun).read().split()
        tick = 100.0  # USER_HZ
        extra = {"cores": (float(s1) - float(s0)) / tick / float(secs), "rss": int(rss) * 1024}
    runs.setdefault((phase, t, load, b), []).append((int(rate), d, extra))

def clean(rate, d):
    return (d["lost"] == 0 and d["disconnects"] == 0 and d["received"] > 0
            and d["received_per_s"] >= 0.95 * rate * d["subscribers"])

def version(cmd, match=""):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        lines = (r.stdout + r.stderr).strip().splitlines()
        return next((l for l in lines if l.startswith(match)), lines[0])
    except Exception as e:  # noqa: BLE001
        return f"? ({e})"

def rate_s(x):
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"

def ms(us):
    return "—" if us is None else f"{us / 1000:.2f} ms" if us < 100_000 else f"{us / 1000:.0f} ms"

def loss(d):
    return f"{d['lost']} ({d['loss_pct']:.2f} %)" if d["lost"] else "0"

def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"

def broker(d, extra):
    h = d.get("hub") or {}
    cores, rss = h.get("cores"), h.get("rss_bytes")
    if extra is not None and cores is not None:
        cores, rss = cores + extra["cores"], rss + extra["rss"]
    return cores, rss

transports = {"ws": "ws ↔ ws", "mqtts": "mqtts ↔ mqtts (mTLS)", "wss": "wss ↔ stunnel + ws (mTLS)"}
loads = {"fanin-q0": "fan-in 100→1, QoS 0", "fanin-q1": "fan-in 100→1, QoS 1",
         "fanout": f"fan-out 1→100, QoS {fanout_qos}"}

head = ("| transport | load | broker | max msgs/s | first step not kept up | rate (pub/s) | msgs/s "
        "| loss | p50 | p99 | broker cores | broker RSS |")
rows = [head, "|" + "---|" * (head.count("|") - 1)]
notes = []
for t in transports:
    for load in loads:
        half = {b: (runs.get(("half", t, load, b)) or [None])[-1] for b in ("edgehub", "mosquitto")}
        if not any(half.values()):
            continue
        vals = {}
        for b in ("edgehub", "mosquitto"):
            h, steps = half[b], runs.get(("sweep", t, load, b), [])
            v = {"max": None, "maxnote": "—"}
            good = [s for s in steps if clean(s[0], s[1])]
            bad = [s for s in steps if not clean(s[0], s[1])]
            if good:
                v["max"] = max(good, key=lambda s: s[0])[1]["received_per_s"]
            if bad:
                r, d, _ = bad[0]
                v["maxnote"] = (f"{r}/s: {rate_s(d['received_per_s'])} msgs/s, lost {loss(d)}"
                                + (f", {d['disconnects']} disconnects" if d["disconnects"] else ""))
            elif steps:
                v["maxnote"] = f"none in {len(steps)} steps (SWEEP_STEPS): a lower bound"
                v["lower_bound"] = True
            if steps and not good:
                v["maxnote"] = "first step not clean: " + v["maxnote"]
            v["rate"] = h[0]
            v["msgs"] = h[1]["received_per_s"]
            v["loss"] = loss(h[1])
            lat = h[1].get("latency") or {}
            v["p50"], v["p99"] = lat.get("p50_us"), lat.get("p99_us")
            v["cores"], v["rss"] = broker(h[1], h[2])
            if h[2] is not None:
                notes.append(f"{transports[t]}, {loads[load]}: stunnel {h[2]['cores']:.2f} cores, "
                             f"{h[2]['rss'] / 2**20:.1f} MiB")
            vals[b] = v
        for b in ("edgehub", "mosquitto"):
            v = vals[b]
            rows.append(f"| {transports[t]} | {loads[load]} | {b} | "
                        f"{'≥ ' if v.get('lower_bound') else ''}"
                        f"{rate_s(v['max']) if v['max'] is not None else '—'} | {v['maxnote']} | "
                        f"{v['rate']} | {rate_s(v['msgs'])} | {v['loss']} | {ms(v['p50'])} | "
                        f"{ms(v['p99'])} | {v['cores']:.2f} | {v['rss'] / 2**20:.1f} MiB |")
        e, m = vals["edgehub"], vals["mosquitto"]
        bound = "≥ " if e.get("lower_bound") and not m.get("lower_bound") else \
                "≤ " if m.get("lower_bound") and not e.get("lower_bound") else \
                "~" if e.get("lower_bound") else ""
        rmax = ratio(e["max"], m["max"])
        rows.append(f"| {transports[t]} | {loads[load]} | **edgehub / mosquitto** | "
                    f"**{bound if rmax != '—' else ''}{rmax}** | | | {ratio(e['msgs'], m['msgs'])} | | "
                    f"**{ratio(e['p50'], m['p50'])}** | **{ratio(e['p99'], m['p99'])}** | "
                    f"**{ratio(e['cores'], m['cores'])}** | **{ratio(e['rss'], m['rss'])}** |")

conn_rows = []
conns = {}
for line in open(conns_path):
    t, b, hs, idle, st0, st1 = line.rstrip("\n").split("\t")
    h, i = json.load(open(hs)), json.load(open(idle))
    r = i.get("hub_rss") or {}
    n = max(i["connected"], 1)
    extra = (int(st1) - int(st0)) * 1024 if int(st1) > 0 else 0
    per = (r.get("after_bytes", 0) - r.get("before_bytes", 0) + extra) / n
    conns[(t, b)] = {"hs": h["connected"] / h["connect_s"], "hs_failed": h["failed"],
                     "idle": i["connected"], "idle_failed": i["failed"], "per": per,
                     "total": r.get("after_bytes", 0) + (int(st1) * 1024 if int(st1) > 0 else 0)}
if conns:
    head2 = ("| transport | broker | full TLS handshakes/s | idle connections held | "
             "memory per idle connection | broker RSS with them |")
    conn_rows = [head2, "|" + "---|" * (head2.count("|") - 1)]
    for t in transports:
        if (t, "edgehub") not in conns:
            continue
        for b in ("edgehub", "mosquitto"):
            c = conns[(t, b)]
            failed = f" ({c['hs_failed']} failed)" if c["hs_failed"] else ""
            ifailed = f" ({c['idle_failed']} failed)" if c["idle_failed"] else ""
            conn_rows.append(f"| {transports[t]} | {b} | {c['hs']:.0f}{failed} | {c['idle']}{ifailed} | "
                             f"{c['per'] / 1024:.1f} KiB | {c['total'] / 2**20:.1f} MiB |")
        e, m = conns[(t, "edgehub")], conns[(t, "mosquitto")]
        conn_rows.append(f"| {transports[t]} | **edgehub / mosquitto** | **{ratio(e['hs'], m['hs'])}** | | "
                         f"**{ratio(e['per'], m['per'])}** | **{ratio(e['total'], m['total'])}** |")

cmds = open(commands_path).read().rstrip("\n")
edgehub_bin = None
for line in cmds.splitlines():
    edgehub_bin = line.split()[0].replace("edgehub-sim", "edgehub")
    break
text = []
text.append("# edgehub vs Mosquitto, side by side (bench/compare.sh)\n")
text.append(f"- edgehub: {version([edgehub_bin, '--version']) if edgehub_bin else '?'}; "
            f"mosquitto: {version([mosquitto, '-h'])}; stunnel: {version([stunnel, '-version'], 'stunnel ')}")
text.append(f"- machine: {version(['nproc'])} CPUs, {version(['uname', '-srm'])}; "
            f"{elapsed} s in all; a freshly started broker, alone on the machine, for each "
            f"phase-1 sweep and each phase-2 run")
text.append(f"- payload {payload} B; configurations and logs in {work}\n")
text.append("Commands, in the order run (a broker is started before each phase-1 sweep and each "
            "phase-2 run, and stopped after it; --hub-pid is the broker of that run):\n")
text.append("```sh")
text.append(f"edgehub pki init --dir {work}/pki")
text.append(f"edgehub run --config {work}/edgehub-<transport>.toml")
text.append(f"{mosquitto} -c {work}/mosquitto-<transport>.conf")
text.append(f"{stunnel} {work}/stunnel-wss.conf   # wss rows, in front of mosquitto")
text.append(cmds)
text.append("```\n")
text.append("\n".join(rows))
text.append("""
- max msgs/s: messages delivered per second in the fastest clean step of phase 1 (paced
  steps, each SWEEP_FACTOR times the last: nothing lost, no disconnect, at least 95 % of
  the paced rate delivered); the next column is the step that was not clean (publishes/s
  offered, what was delivered, what was lost). Fan-out counts every delivery (100 per
  publish). The true maximum lies between the two.
- rate (pub/s): the rate both brokers get in the latency run, total publishes per second:
  half the lower of the two maxima on that transport (or RATE_<load>). msgs/s, loss, p50,
  p99 (publish to receipt, HDR histogram), broker cores (CPU while sending) and broker
  RSS (VmRSS at the end) are from that run.
- ratio: edgehub / mosquitto; below 1× means edgehub is lower (faster for latency,
  cheaper for CPU and RSS, slower for msgs/s).""")
if conn_rows:
    text.append("\nConnections (phase 3): full TLS handshakes (no session resumption, each "
                "with its MQTT CONNECT) per second, 64 at a time; memory of idle connections "
                "held open, VmRSS with them minus before (mosquitto + stunnel on wss):\n")
    text.append("\n".join(conn_rows))
if notes:
    text.append("- mosquitto side of the wss rows = mosquitto + stunnel; stunnel's share "
                "(its CPU over the same sending window, its VmRSS at the end):\n" +
                "\n".join(f"  - {n}" for n in notes))
text.append("\nConfigurations:\n")
for name in sorted(os.listdir(work)):
    if name.endswith((".toml", ".conf")) and name.rsplit(".", 1)[0].rsplit("-", 1)[-1] in used:
        lang = "toml" if name.endswith(".toml") else "ini"
        text.append(f"{name}:\n```{lang}\n{open(os.path.join(work, name)).read().rstrip()}\n```")
doc = "\n".join(text) + "\n"
open(out_path, "w").write(doc)
print(doc)
PY
echo "written to $OUT"
