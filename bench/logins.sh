#!/usr/bin/env bash
# What failed password logins cost the hub, and how fast an attacker can guess.
#   1. spread: 300 failed logins, 8 at a time, each from its own loopback address under a
#      new name (nothing to lock): the argon2-bound rate, and the memory it leaves behind;
#   2. one address, one name: 2000 attempts, 8 at a time; how many were checked, how
#      fast the rest were refused, and the hub CPU they cost.
# Usage: bench/logins.sh [EDGEHUB_BINARY]   (default: a release build of this repository)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ]; then
  EDGEHUB=$1
else
  cargo build --release -q -p hub
  EDGEHUB=$PWD/target/release/edgehub
fi
dir=$(mktemp -d)
HUB=
cleanup() { [ -n "$HUB" ] && kill "$HUB" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
hash=$(printf '%s\n' 'right password' | "$EDGEHUB" hash-password)
cat > "$dir/edgehub.toml" <<EOF
[hub]
id = "bench"
data_dir = "$dir/data"
[admin]
bind = "127.0.0.1:0"
[[listeners]]
name = "mqtt-login"
kind = "mqtt"
bind = "127.0.0.1:$port"
auth = ["password"]
[[auth.users]]
name = "alice"
password_hash = "$hash"
role = "dashboard"
EOF
: > "$dir/hub.log"
"$EDGEHUB" run --config "$dir/edgehub.toml" 2> "$dir/hub.log" &
HUB=$!
until grep -q "edgehub ready" "$dir/hub.log"; do sleep 0.1; done

rss_mib() { awk '/VmRSS/ { printf "%d", $2 / 1024 }' "/proc/$HUB/status"; }
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%d", ($14 + $15) * 1000 / hz }' "/proc/$HUB/stat"; }

# Sends CONNECT (3.1.1) from a chosen loopback address; prints the CONNACK codes seen.
attack() {
  python3 - "$port" "$@" <<'PY'
import asyncio, collections, socket, struct, sys, time

port, mode, total = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])

def connect_packet(user, password):
    def s(b): return struct.pack("!H", len(b)) + b
    var = s(b"MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30)
    body = var + s(b"bench") + s(user.encode()) + s(password.encode())
    n, rem = len(body), b""
    while True:
        d, n = n % 128, n // 128
        rem += bytes([d | (0x80 if n else 0)])
        if not n: break
    return b"\x10" + rem + body

async def login(src, user, password):
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((src, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    r, w = await asyncio.open_connection(sock=sock)
    w.write(connect_packet(user, password))
    try:
        head = await r.readexactly(4)
    except (asyncio.IncompleteReadError, ConnectionResetError):
        # Closed without a CONNACK: the front door's per-address connection rate.
        return "closed"
    finally:
        w.close()
    return head[3]

async def main():
    codes, queue = collections.Counter(), asyncio.Queue()
    for n in range(total): queue.put_nowait(n)
    async def lane():
        while not queue.empty():
            n = queue.get_nowait()
            if mode == "spread":
                src, user = f"127.1.{n // 250}.{1 + n % 250}", f"intruder-{n}"
            else:
                src, user = "127.2.0.1", "alice"
            codes[await login(src, user, f"guess {n}")] += 1
    t0 = time.monotonic()
    await asyncio.gather(*(lane() for _ in range(8)))
    secs = time.monotonic() - t0
    right = await login("127.2.0.1", "alice", "right password")
    print(f"{total} attempts in {secs:.2f} s ({total / secs:.0f}/s); CONNACK codes "
          f"{dict(sorted(codes.items(), key=str))}; then the right password from the same "
          f"address gets {right}")
asyncio.run(main())
PY
}

echo "edgehub $(git describe --always --dirty) ($EDGEHUB)"
echo "resident at start: $(rss_mib) MiB"
before=$(cpu_ms)
echo "spread:      $(attack spread 300)"
echo "  resident after: $(rss_mib) MiB, hub CPU $(( $(cpu_ms) - before )) ms"
before=$(cpu_ms)
echo "one address: $(attack one 2000)"
echo "  resident after: $(rss_mib) MiB, hub CPU $(( $(cpu_ms) - before )) ms"
echo "log lines about locks: $(grep -c 'refused unchecked' "$dir/hub.log" || true)"
