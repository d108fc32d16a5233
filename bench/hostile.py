#!/usr/bin/env python3
"""Hostile input against a running edgehub: the hub's memory and log before and after
each kind of flood, and whether a good client is still served afterwards.

    cargo build --release -p hub
    python3 bench/hostile.py                      # every flood, about two minutes
    EDGEHUB=target/debug/edgehub python3 bench/hostile.py tls alias
    OUT=/tmp/hostile.md python3 bench/hostile.py  # also write the table there

Floods (names to pick some on the command line):
    random   2,000 connections to plain MQTT, each sending 1 KiB of random bytes
    server   1,000 MQTT 5 clients sending a CONNACK, then 1,000 sending an UNSUBACK
    wild     1,000 MQTT 5 clients publishing to a topic with a wildcard
    alias    one MQTT 5 client binding 6,000 topic aliases to 60 kB topics
    login    300 failed logins for an unknown user, 8 at a time
    tls      2,000 TLS handshakes with garbage, 2,000 with no client certificate
    stalled  2,000 TCP peers that open the TLS port and say nothing (held, then closed)
    cbor     500 devices sending malformed CBOR (5 messages each, the violation limit)
    serial   64 MiB of random bytes on a serial line (a pseudo-terminal)

Only the standard library; everything on loopback, in a temporary directory kept for
the hub's log. The figures are the hub's VmRSS (/proc/PID/status) before the flood,
right after it, and 5 s later, and the log lines and bytes the flood caused.
"""

import os
import random
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EDGEHUB = os.environ.get("EDGEHUB", os.path.join(ROOT, "target/release/edgehub"))
PASSWORD = "correct horse battery staple"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def packet(kind_flags, body):
    return bytes([kind_flags]) + varint(len(body)) + body


def connect(client_id, v5=True, user=None, password=None):
    flags = 0x02
    payload = string(client_id)
    if user is not None:
        flags |= 0x80
        payload += string(user)
    if password is not None:
        flags |= 0x40
        payload += string(password)
    body = string("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack(">H", 30)
    if v5:
        body += b"\x00"
    return packet(0x10, body + payload)


def publish_v5(topic, payload, alias=None):
    props = b""
    if alias is not None:
        props = b"\x23" + struct.pack(">H", alias)
    return packet(0x30, string(topic) + varint(len(props)) + props + payload)


def read_some(sock, timeout=2.0):
    sock.settimeout(timeout)
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def mqtt_session(port, first=None, v5=True, client_id=None, user=None, password=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(connect(client_id or "h%d" % random.getrandbits(48), v5, user, password))
    connack = read_some(s)
    if first:
        s.sendall(first)
    return s, connack


class Hub:
    def __init__(self, workdir):
        self.dir = workdir
        self.ports = {n: free_port() for n in ("wss", "mqtts", "mqtt", "login", "admin")}
        master, slave = os.openpty()
        self.pty_master = master
        self.pty_path = os.ttyname(slave)
        self.pty_slave = slave
        hashed = subprocess.run(
            [EDGEHUB, "hash-password"], input=PASSWORD + "\n" + PASSWORD + "\n",
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
        hashed = hashed.split('"')[1] if '"' in hashed else hashed
        p = self.ports
        config = f"""
[hub]
id = "hostile"
data_dir = "{workdir}/data"

[limits]
connection_rate = 1000000
max_connections_per_address = 20000

[[listeners]]
name = "wss"
kind = "wss"
bind = "127.0.0.1:{p['wss']}"
auth = ["certificate"]

[[listeners]]
name = "mqtts"
kind = "mqtts"
bind = "127.0.0.1:{p['mqtts']}"
auth = ["certificate"]

[[listeners]]
name = "mqtt"
kind = "mqtt"
bind = "127.0.0.1:{p['mqtt']}"
auth = ["anonymous"]

[[listeners]]
name = "login"
kind = "mqtt"
bind = "127.0.0.1:{p['login']}"
auth = ["password"]

[admin]
bind = "127.0.0.1:{p['admin']}"

[[auth.users]]
name = "alice"
password_hash = "{hashed}"
role = "dashboard"

[[serial]]
path = "{self.pty_path}"
baud = 115200
"""
        self.config = os.path.join(workdir, "edgehub.toml")
        with open(self.config, "w") as f:
            f.write(config)
        self.log_path = os.path.join(workdir, "edgehub.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [EDGEHUB, "run", "--config", self.config], stdout=self.log, stderr=self.log
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if b"edgehub ready" in open(self.log_path, "rb").read():
                break
            if self.proc.poll() is not None:
                sys.exit("edgehub exited:\n" + open(self.log_path).read())
            time.sleep(0.1)
        else:
            sys.exit("edgehub did not get ready:\n" + open(self.log_path).read())
        self.pki = os.path.join(workdir, "data", "pki")

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def log_size(self):
        self.log.flush()
        data = open(self.log_path, "rb").read()
        return data.count(b"\n"), len(data)

    def tls(self, cert=None):
        ctx = ssl.create_default_context(cafile=os.path.join(self.pki, "ca.crt"))
        ctx.check_hostname = False
        if cert:
            ctx.load_cert_chain(
                os.path.join(self.pki, cert + ".crt"), os.path.join(self.pki, cert + ".key")
            )
        return ctx

    def metric(self, name):
        """The sum of a metric's samples on the admin endpoint."""
        with socket.create_connection(("127.0.0.1", self.ports["admin"]), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        total = 0.0
        for line in data.decode(errors="replace").splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self.pty_master)
        os.close(self.pty_slave)


def parallel(n, work, threads=8):
    """Runs work(i) for i in range(n) on `threads` threads; errors are the flood's own."""
    counter = iter(range(n))
    lock = threading.Lock()

    def run():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            try:
                work(i)
            except OSError:
                pass

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def still_served(hub):
    """A subscriber and a publisher on plain MQTT exchange one message."""
    sub, _ = mqtt_session(hub.ports["mqtt"], v5=False)
    sub.sendall(packet(0x82, struct.pack(">H", 1) + string("devices/check/cmd") + b"\x00"))
    read_some(sub)
    pub, _ = mqtt_session(hub.ports["mqtt"], v5=False)
    pub.sendall(packet(0x30, string("devices/check/cmd") + b"ping"))
    got = b""
    deadline = time.time() + 5
    while b"ping" not in got and time.time() < deadline:
        got += read_some(sub, 1)
    sub.close()
    pub.close()
    return b"ping" in got


def flood_random(hub):
    def one(_):
        with socket.create_connection(("127.0.0.1", hub.ports["mqtt"]), timeout=5) as s:
            s.sendall(os.urandom(1024))
            read_some(s, 0.5)

    parallel(2000, one)


def flood_server(hub):
    for kind in (b"\x20\x03\x00\x00\x00", b"\xb0\x03\x00\x01\x00"):
        def one(_, kind=kind):
            s, _ = mqtt_session(hub.ports["mqtt"], first=kind)
            read_some(s, 0.5)
            s.close()

        parallel(1000, one)


def flood_wild(hub):
    def one(i):
        s, _ = mqtt_session(hub.ports["mqtt"], first=publish_v5("devices/+/cmd", b"x"))
        read_some(s, 0.5)
        s.close()

    parallel(1000, one)


def flood_alias(hub):
    s, _ = mqtt_session(hub.ports["mqtt"])
    s.settimeout(5)
    topic_tail = "x" * 60_000
    try:
        for alias in range(1, 6001):
            s.sendall(publish_v5("denied/%d/%s" % (alias, topic_tail), b"", alias=alias))
    except OSError:
        pass
    read_some(s, 1)
    s.close()


def flood_login(hub):
    def one(i):
        s, connack = mqtt_session(
            hub.ports["login"], v5=False, user="nobody%d" % i, password="wrong"
        )
        s.close()

    parallel(300, one)


def flood_tls(hub):
    def garbage(_):
        with socket.create_connection(("127.0.0.1", hub.ports["mqtts"]), timeout=5) as s:
            s.sendall(os.urandom(512))
            read_some(s, 0.5)

    def no_cert(_):
        with socket.create_connection(("127.0.0.1", hub.ports["mqtts"]), timeout=5) as raw:
            with hub.tls().wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(connect("nocert", v5=False))
                read_some(s, 0.5)

    parallel(2000, garbage)
    parallel(2000, no_cert)


def flood_stalled(hub):
    held = []
    for _ in range(2000):
        try:
            held.append(socket.create_connection(("127.0.0.1", hub.ports["mqtts"]), timeout=5))
        except OSError:
            break
    time.sleep(1)
    print("    with %d stalled peers held: %.1f MiB" % (len(held), hub.rss_mib()))
    for s in held:
        s.close()


def ws_frame(payload):
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes([0x82])
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    return head + mask + masked


def flood_cbor(hub):
    def one(i):
        with socket.create_connection(("127.0.0.1", hub.ports["wss"]), timeout=5) as raw:
            ctx = hub.tls("devices/device-0001")
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(
                    b"GET /device HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: edgehub.v1\r\n\r\n"
                )
                read_some(s, 2)
                for _ in range(5):
                    s.sendall(ws_frame(os.urandom(64)))
                read_some(s, 0.5)

    parallel(500, one)


def flood_serial(hub):
    # Blocking writes: a pseudo-terminal buffers a few KiB, so this goes as fast as the
    # hub reads.
    chunk = os.urandom(1 << 20)
    for _ in range(64):
        view = memoryview(chunk)
        while view:
            view = view[os.write(hub.pty_master, view[:4096]):]
    deadline = time.time() + 30
    while hub.metric("edgehub_serial_read_bytes_total") < 64 << 20 and time.time() < deadline:
        time.sleep(0.2)
    print("    the hub read %d bytes of serial noise, %d frame errors"
          % (hub.metric("edgehub_serial_read_bytes_total"),
             hub.metric("edgehub_serial_frame_errors_total")))


FLOODS = {
    "random": flood_random,
    "server": flood_server,
    "wild": flood_wild,
    "alias": flood_alias,
    "login": flood_login,
    "tls": flood_tls,
    "stalled": flood_stalled,
    "cbor": flood_cbor,
    "serial": flood_serial,
}


def main():
    chosen = sys.argv[1:] or list(FLOODS)
    workdir = tempfile.mkdtemp(prefix="edgehub-hostile-")
    hub = Hub(workdir)
    rows = []
    print("edgehub %s, work in %s" % (EDGEHUB, workdir))
    print("idle: %.1f MiB" % hub.rss_mib())
    try:
        for name in chosen:
            before = hub.rss_mib()
            lines0, bytes0 = hub.log_size()
            start = time.time()
            FLOODS[name](hub)
            took = time.time() - start
            after = hub.rss_mib()
            time.sleep(5)
            settled = hub.rss_mib()
            lines1, bytes1 = hub.log_size()
            alive = hub.proc.poll() is None
            served = alive and still_served(hub)
            rows.append((name, before, after, settled, lines1 - lines0, bytes1 - bytes0,
                         took, served))
            print("%-8s %6.1f -> %6.1f MiB (%6.1f after 5 s), %5d log lines (%d bytes), "
                  "%.1f s, good client served: %s"
                  % (name, before, after, settled, lines1 - lines0, bytes1 - bytes0, took,
                     "yes" if served else "NO"))
            if not alive:
                break
    finally:
        hub.stop()
    table = ["| flood | RSS before | right after | 5 s later | log lines | log bytes | took | good client served |",
             "|---|---|---|---|---|---|---|---|"]
    for name, before, after, settled, lines, nbytes, took, served in rows:
        table.append("| %s | %.1f MiB | %.1f MiB | %.1f MiB | %d | %d | %.1f s | %s |"
                     % (name, before, after, settled, lines, nbytes, took,
                        "yes" if served else "**no**"))
    print("\n".join(table))
    if os.environ.get("OUT"):
        with open(os.environ["OUT"], "w") as f:
            f.write("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
