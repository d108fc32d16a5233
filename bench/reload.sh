#!/usr/bin/env bash
# What a SIGHUP reload costs with N open MQTT/TLS connections that each present a client
# certificate: every session verifies its chain again (CA, expiry, CRL), its role and its
# subscriptions against the new rules.
#   1. a reload that changes nothing for them: hub CPU it takes, and everyone stays;
#   2. a reload after revoking the certificate they share: how long until all N are closed.
# Usage: bench/reload.sh [N]   (default 2000; needs nothing but this repository)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000}
cargo build --release -q -p hub -p device-sim
BIN=$PWD/target/release
dir=$(mktemp -d)
HUB=
cleanup() { [ -n "$HUB" ] && kill "$HUB" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$dir/edgehub.toml" <<EOF
[hub]
id = "bench"
data_dir = "$dir/data"
[admin]
bind = "127.0.0.1:0"
[limits]
max_connections_per_address = 20000
connection_rate = 100000
[[listeners]]
name = "mqtts"
kind = "mqtts"
bind = "127.0.0.1:$port"
auth = ["certificate"]
EOF
"$BIN/edgehub" run --config "$dir/edgehub.toml" 2> "$dir/hub.log" &
HUB=$!
until grep -q "edgehub ready" "$dir/hub.log"; do sleep 0.1; done

count() { grep -c "$1" "$dir/hub.log" || true; }
# Hub CPU time (user + system), milliseconds.
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%d", ($14 + $15) * 1000 / hz }' "/proc/$HUB/stat"; }
now_ms() { date +%s%3N; }

"$BIN/edgehub-sim" idle --url "mqtts://localhost:$port" --pki "$dir/data/pki" \
  --connections "$N" --hold 120 --connect-rate 1000 >/dev/null 2>&1 &
SIM=$!
until [ "$(count 'client connected')" -ge "$N" ]; do sleep 0.2; done
sleep 2
echo "edgehub $(git describe --always --dirty), $N idle mqtts clients with the dashboard certificate"

idle_before=$(cpu_ms); sleep 2; idle=$(( $(cpu_ms) - idle_before ))
before=$(cpu_ms); t0=$(now_ms)
kill -HUP "$HUB"
until grep -q "configuration reloaded" "$dir/hub.log"; do sleep 0.01; done
sleep 2
echo "reload, nothing revoked: $(( $(cpu_ms) - before - idle )) ms of hub CPU (2 s idle: $idle ms)," \
  "$(count 'client disconnected') clients disconnected"

"$BIN/edgehub" pki revoke --dir "$dir/data/pki" --cert "$dir/data/pki/dashboard.crt" >/dev/null
before=$(cpu_ms); t0=$(now_ms)
kill -HUP "$HUB"
until [ "$(count 'no longer allowed after a reload')" -ge "$N" ]; do sleep 0.01; done
t1=$(now_ms)
echo "reload revoking their certificate: all $N closed $(( t1 - t0 )) ms after SIGHUP," \
  "$(( $(cpu_ms) - before )) ms of hub CPU"
kill "$SIM" 2>/dev/null || true
