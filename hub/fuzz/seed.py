#!/usr/bin/env python3
"""Writes starting corpora for the hub's fuzz targets under corpus/<target>/: valid MQTT
3.1.1 and 5 packets (and HTTP upgrade requests) laid out as each target reads its input,
for libFuzzer to mutate. Run from hub/fuzz: `python3 seed.py`. The corpora are not
committed (see .gitignore); this script is how to get them back."""

import os
import struct


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(text):
    data = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(data)) + data


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def props(*items):
    block = b"".join(items)
    return varint(len(block)) + block


def user(k, v):
    return b"\x26" + s(k) + s(v)


def connect(v5, client_id="c1", will=None, login=None, clean=True, keep_alive=30):
    flags = (0x02 if clean else 0) | (0x80 | 0x40 if login else 0)
    if will:
        flags |= 0x04 | 0x08  # will, QoS 1
    body = s("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack(">H", keep_alive)
    if v5:
        body += props(b"\x11" + struct.pack(">I", 60), b"\x21" + struct.pack(">H", 20), user("a", "b"))
    body += s(client_id)
    if will:
        if v5:
            body += props(b"\x18" + struct.pack(">I", 5), b"\x03" + s("text/plain"))
        body += s(will[0]) + s(will[1])
    if login:
        body += s(login[0]) + s(login[1])
    return packet(0x10, body)


def publish(v5, topic, payload, qos=0, pkid=1, retain=False, properties=b""):
    first = 0x30 | (qos << 1) | (1 if retain else 0)
    body = s(topic)
    if qos:
        body += struct.pack(">H", pkid)
    if v5:
        body += props(properties)
    return packet(first, body + payload)


def subscribe(v5, pkid, filters):
    body = struct.pack(">H", pkid)
    if v5:
        body += props(b"\x0b" + varint(7))
    for path, options in filters:
        body += s(path) + bytes([options])
    return packet(0x82, body)


def unsubscribe(v5, pkid, filters):
    body = struct.pack(">H", pkid) + (props() if v5 else b"")
    return packet(0xA2, body + b"".join(s(f) for f in filters))


def suback(v5, pkid, codes):
    return packet(0x90, struct.pack(">H", pkid) + (props() if v5 else b"") + bytes(codes))


def ack(first, pkid, v5=False, reason=None):
    body = struct.pack(">H", pkid)
    if v5 and reason is not None:
        body += bytes([reason]) + props(user("why", "x"))
    return packet(first, body)


def connack(v5, code=0):
    body = bytes([0, code])
    if v5:
        body += props(
            b"\x21" + struct.pack(">H", 10),
            b"\x27" + struct.pack(">I", 4096),
            b"\x13" + struct.pack(">H", 45),
            b"\x12" + s("auto-1"),
        )
    return packet(0x20, body)


def write(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/seed-{name}", "wb") as f:
        f.write(data)


def client_streams(v5):
    alias = b"\x23" + struct.pack(">H", 3)
    rich = alias + b"\x01\x01" + b"\x02" + struct.pack(">I", 60) + b"\x03" + s("json") + \
        b"\x08" + s("reply/to") + b"\x09" + s(b"\x01\x02") + user("k", "v") + b"\x0b" + varint(300)
    yield "connect", connect(v5, will=("devices/d1/status", b"offline"), login=("u", "p"))
    yield "connect-anon", connect(v5, client_id="", clean=False)
    yield "publish0", publish(v5, "devices/d1/telemetry", b'{"t":21.5}', retain=True)
    yield "publish1", publish(v5, "devices/d1/telemetry", b"x" * 200, qos=1, pkid=7)
    yield "publish2", publish(v5, "devices/d2/cmd", b"on", qos=2, pkid=9)
    if v5:
        yield "publish-props", publish(True, "devices/d1/telemetry", b"p", qos=1, properties=rich)
        yield "publish-alias", publish(True, "devices/d1/x", b"1", properties=alias) + \
            publish(True, "", b"2", properties=alias)
    yield "subscribe", subscribe(v5, 3, [("devices/d1/cmd", 1), ("devices/#", 0), ("#", 2),
                                          ("edgehub/+/stats", 1)])
    yield "unsubscribe", unsubscribe(v5, 4, ["devices/#", "#"])
    yield "acks", ack(0x40, 7, v5, 0x10) + ack(0x62, 9) + ack(0x50, 9) + ack(0x70, 9)
    yield "suback", suback(v5, 3, [0, 1, 0x80])
    yield "ping-disconnect", packet(0xC0, b"") + packet(0xE0, b"")
    yield "session", connect(v5) + subscribe(v5, 1, [("devices/d1/cmd", 1)]) + \
        publish(v5, "devices/d1/telemetry", b"{}", qos=1, pkid=2) + packet(0xE0, b"")


def broker_streams(v5):
    yield "connack", connack(v5)
    yield "connack-refused", connack(v5, 0x87 if v5 else 5)
    yield "publish0", publish(v5, "cloud/cmd", b"go")
    yield "publish1", publish(v5, "cloud/cmd", b"go" * 100, qos=1, pkid=12,
                              properties=user("msg-id", "hub:1") if v5 else b"")
    yield "acks", ack(0x40, 1) + ack(0x40, 2, v5, 0x87) + suback(v5, 5, [1, 0x80]) + packet(0xD0, b"")
    if v5:
        yield "disconnect", packet(0xE0, bytes([0x8B]) + props())


def unsuback(v5, pkid, reasons):
    return packet(0xB0, struct.pack(">H", pkid) + (props() + bytes(reasons) if v5 else b""))


def disconnect(v5, reason=0x8B):
    body = bytes([reason]) + props(b"\x11" + struct.pack(">I", 0), b"\x1f" + s("bye"),
                                   user("k", "v"), b"\x1c" + s("other:1883")) if v5 else b""
    return packet(0xE0, body)


def every_packet(v5):
    """Valid packets of all 14 types the codec models (both directions), alone."""
    rich = b"\x01\x01" + b"\x02" + struct.pack(">I", 60) + b"\x23" + struct.pack(">H", 3) + \
        b"\x08" + s("reply/to") + b"\x09" + s(b"\x01\x02") + user("k", "v") + \
        b"\x0b" + varint(300) + b"\x0b" + varint(2) + b"\x03" + s("json")
    yield "connect", connect(v5, will=("devices/d1/status", b"offline"), login=("u", "p"))
    yield "connect-bare", connect(v5, client_id="", clean=False, keep_alive=0)
    yield "connack", connack(v5)
    yield "connack-refused", connack(v5, 0x87 if v5 else 5)
    yield "publish0", publish(v5, "a/b", b"hello", retain=True)
    yield "publish1", publish(v5, "a/b", b"x" * 130, qos=1, pkid=7, properties=rich if v5 else b"")
    yield "publish2-dup", bytes([0x3C]) + publish(v5, "a/b", b"y", qos=2, pkid=9)[1:]
    yield "puback", ack(0x40, 7, v5, 0x10)
    yield "pubrec", ack(0x50, 9, v5, 0x80)
    yield "pubrel", ack(0x62, 9, v5, 0x92)
    yield "pubcomp", ack(0x70, 9)
    yield "subscribe", subscribe(v5, 3, [("a/+/c", 0x1D if v5 else 1), ("#", 0x22 if v5 else 2)])
    yield "suback", suback(v5, 3, [0, 1, 2, 0x80] + ([0x87, 0xA2] if v5 else []))
    yield "unsubscribe", unsubscribe(v5, 4, ["a/+/c", "#"])
    yield "unsuback", unsuback(v5, 4, [0x00, 0x11, 0x87])
    yield "pingreq", packet(0xC0, b"")
    yield "pingresp", packet(0xD0, b"")
    yield "disconnect", disconnect(v5)


def http(path, *headers):
    lines = [f"GET {path} HTTP/1.1", "Host: gateway:8443"] + list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


UPGRADE = ("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")


def main():
    for v5 in (False, True):
        version = "v5" if v5 else "v4"
        limit = b"\xff"
        for name, stream in client_streams(v5):
            for role in range(4):
                flags = v5 | (role << 2)
                write("mqtt_control", f"{version}-r{role}-{name}", bytes([flags]) + limit + b"\x5a" + stream)
        for name, stream in broker_streams(v5):
            first = name.startswith("connack")
            flags = v5 | (2 if first else 0)
            write("uplink_decode", f"{version}-{name}", bytes([flags]) + limit + b"\x00\x2a" + stream)
        packets = dict(every_packet(v5))
        stream = b"".join(packets.values())
        packets["stream"] = stream
        for name, data in packets.items():
            write("mqtt_decode", f"{version}-{name}", bytes([v5]) + limit + data)
            write("mqtt_roundtrip", f"{version}-{name}", bytes([v5]) + data)
        # The first packet read as a connection's first: a CONNECT fixing the version.
        session = packets["connect"] + b"".join(v for k, v in packets.items() if k != "stream")
        write("mqtt_decode", f"{version}-session", bytes([2]) + limit + session)
        write("mqtt_decode", f"{version}-session-small-limit", bytes([2]) + b"\x08" + session)
        write("mqtt_roundtrip", f"{version}-session", bytes([2]) + session)
    requests = {
        "mqtt": http("/mqtt", *UPGRADE, "Sec-WebSocket-Protocol: mqtt"),
        "mqtt-origin": http("/mqtt?x=1", *UPGRADE, "Origin: https://dash.example",
                            "Sec-WebSocket-Protocol: mqttv3.1, mqtt"),
        "device": http("/device", *UPGRADE, "Sec-WebSocket-Protocol: x, edgehub.v1"),
        "bad-origin": http("/mqtt", *UPGRADE, "Origin: https://evil.example"),
        "plain-get": http("/"),
        "post": b"POST /mqtt HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    }
    for name, request in requests.items():
        write("ws_preflight", name, b"\x00\x00" + request)
        write("ws_preflight", f"{name}-chunked", b"\x01\x03\x00\x07\x1f" + request + b"\x82\x00")


if __name__ == "__main__":
    main()
