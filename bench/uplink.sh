#!/bin/bash
# Store-and-forward figures for BENCHMARKS.md: telemetry from WebSocket devices through
# the durable journal and the uplink to Mosquitto (ingest-to-upstream latency and
# throughput, measured at Mosquitto by edgehub-sim), then the drain of a backlog of
# RECORDS records (default 1,000,000) built while Mosquitto was down.
#
#   bench/uplink.sh                      # everything
#   RECORDS=200000 bench/uplink.sh       # a shorter drain
#   INGEST_RATES= bench/uplink.sh        # the drain only
#   MQ_INFLIGHT=100 bench/uplink.sh      # Mosquitto's Receive Maximum (default 20)
#
# Needs mosquitto and mosquitto-clients (apt-get install mosquitto mosquitto-clients)
# and python3. Everything runs on loopback, in a temporary directory.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RECORDS=${RECORDS:-1000000}
INGEST_RATES=${INGEST_RATES-"10000 25000"}
MQ_INFLIGHT=${MQ_INFLIGHT:-20}
BACKLOG_RATE=${BACKLOG_RATE:-25000}
WORK=$(mktemp -d /tmp/edgehub-uplink-bench.XXXXXX)
MQ_PORT=18830
HUB_MQTT=18831
HUB_WSS=18443
TOPIC="edgehub/bench/devices/+/telemetry"

for tool in mosquitto mosquitto_sub python3; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || {
        echo "bench/uplink.sh: $tool is missing (apt-get install mosquitto mosquitto-clients python3)" >&2
        exit 2
    }
done
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

cargo build --release -q -p hub -p device-sim --manifest-path "$ROOT/Cargo.toml"
EDGEHUB=$ROOT/target/release/edgehub
SIM=$ROOT/target/release/edgehub-sim

cat >"$WORK/mosquitto.conf" <<EOF
listener $MQ_PORT 127.0.0.1
allow_anonymous true
user root
# The consumer must not be the one that drops messages.
max_queued_messages 0
# Outgoing window, and (MQTT 5) the Receive Maximum the uplink gets in CONNACK.
max_inflight_messages $MQ_INFLIGHT
EOF

cat >"$WORK/hub.toml" <<EOF
[hub]
id = "bench"
data_dir = "$WORK/data"
stats_interval = "1s"

[devices]
message_rate = 100000

[journal]
max_bytes = 4294967296

[limits]
message_rate = 10000000
byte_rate = 1073741824
max_connections_per_address = 20000
connection_rate = 100000

[[listeners]]
name = "wss"
kind = "wss"
bind = "127.0.0.1:$HUB_WSS"
auth = ["certificate"]

[[listeners]]
name = "mqtt"
kind = "mqtt"
bind = "127.0.0.1:$HUB_MQTT"
auth = ["anonymous"]

[[uplinks]]
name = "mosquitto"
url = "mqtt://127.0.0.1:$MQ_PORT"
EOF

MQ_PID=
HUB_PID=
cleanup() {
    [ -n "$HUB_PID" ] && kill "$HUB_PID" 2>/dev/null || true
    [ -n "$MQ_PID" ] && kill "$MQ_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

start_mosquitto() {
    "$MOSQUITTO" -c "$WORK/mosquitto.conf" >>"$WORK/mosquitto.log" 2>&1 &
    MQ_PID=$!
    for _ in $(seq 50); do
        (exec 3<>/dev/tcp/127.0.0.1/$MQ_PORT) 2>/dev/null && return
        sleep 0.1
    done
    echo "mosquitto did not start; see $WORK/mosquitto.log" >&2
    exit 1
}

stop_mosquitto() {
    kill "$MQ_PID"
    wait "$MQ_PID" 2>/dev/null || true
    MQ_PID=
}

rss() { awk '/VmRSS/ {printf "%.0f MiB", $2 / 1024}' "/proc/$1/status"; }
# CPU seconds (user + system) of a process so far.
cpu() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }

# The uplink's figures from the hub's stats topic.
uplink_stats() {
    mosquitto_sub -p $HUB_MQTT -t edgehub/bench/stats -C 1 -W 5 |
        python3 -c 'import json,sys; u=json.load(sys.stdin)["uplinks"]["mosquitto"]; print(u["lag_records"], u["connected"], u["forwarded"])'
}

start_mosquitto
"$EDGEHUB" run --config "$WORK/hub.toml" >"$WORK/hub.log" 2>&1 &
HUB_PID=$!
for _ in $(seq 100); do
    grep -q "edgehub ready" "$WORK/hub.log" && break
    sleep 0.1
done

echo "== ingest to upstream: 100 wss devices -> journal -> uplink -> mosquitto -> edgehub-sim (QoS 1)"
for rate in $INGEST_RATES; do
    echo "-- $rate msgs/s"
    "$SIM" devices --url "wss://127.0.0.1:$HUB_WSS/device" --pki "$WORK/data/pki" \
        --devices 100 --total-rate "$rate" --duration 10 --id-prefix "ingest$rate" \
        --mqtt-url "mqtt://127.0.0.1:$MQ_PORT" --topic "$TOPIC" --qos 1 \
        --hub-pid "$HUB_PID" --json "$WORK/ingest-$rate.json" 2>>"$WORK/sim.log"
done

echo "== drain: a backlog of $RECORDS records built while mosquitto is down"
stop_mosquitto
seconds=$(python3 -c "print(max(1, round($RECORDS / $BACKLOG_RATE)))")
"$SIM" devices --url "wss://127.0.0.1:$HUB_WSS/device" --pki "$WORK/data/pki" \
    --devices 200 --total-rate "$BACKLOG_RATE" --duration "$seconds" --warmup 0 \
    --id-prefix backlog --mqtt-url "mqtt://127.0.0.1:$HUB_MQTT" \
    --hub-pid "$HUB_PID" >"$WORK/backlog.out" 2>>"$WORK/sim.log"
read -r lag connected _ < <(uplink_stats)
echo "backlog in the journal: $lag records (uplink connected: $connected); hub VmRSS $(rss "$HUB_PID")"
du -sh "$WORK/data/journal" | sed 's/^/journal on disk: /'

start_mosquitto
# Count what arrives at mosquitto, from a consumer subscribed before the uplink is back.
(mosquitto_sub -p $MQ_PORT -q 1 -t "$TOPIC" -C "$lag" -W 600 | wc -l >"$WORK/arrived") &
CONSUMER=$!
drain_start=$(date +%s.%N)
hub_cpu=$(cpu "$HUB_PID")
mq_cpu=$(cpu "$MQ_PID")
until grep -q "uplink backlog drained" "$WORK/hub.log"; do
    sleep 0.2
done
echo "CPU from mosquitto's restart to the end of the drain: hub $(python3 -c "print(round($(cpu "$HUB_PID") - $hub_cpu, 1))") s, mosquitto $(python3 -c "print(round($(cpu "$MQ_PID") - $mq_cpu, 1))") s; hub VmRSS $(rss "$HUB_PID")"
wait "$CONSUMER" || true
grep "uplink connected" "$WORK/hub.log" | tail -1
grep "uplink backlog drained" "$WORK/hub.log" | tail -1
echo "arrived at mosquitto: $(cat "$WORK/arrived") of $lag"
echo "wall time from mosquitto's restart (includes the reconnect backoff): $(python3 -c "import time; print(round(time.time() - $drain_start, 1))") s"
echo "hub CPU over the whole run: $(ps -o times= -p "$HUB_PID") s; VmHWM: $(grep VmHWM /proc/$HUB_PID/status | awk '{print $2, $3}')"
echo "work directory: $WORK"
