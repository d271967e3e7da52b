# SPDX-License-Identifier: GPL-3.0-or-later
"""MQTT on the wire for the attack tests: packets built byte by byte, clients on raw sockets bound
to chosen loopback source addresses, and a sampler of a process's resident memory."""
import socket
import struct
import threading
import time


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def packet(header, body):
    return bytes([header]) + varint(len(body)) + body


def connect(client_id, username=None, password=None, version=4, clean=True, keepalive=60,
            will=None):
    """CONNECT for 3.1 (version 3, "MQIsdp"), 3.1.1 (4) or 5.0 (5); will = (topic, payload)."""
    flags = 0x02 if clean else 0
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    if will is not None:
        flags |= 0x04
    body = utf8("MQIsdp" if version == 3 else "MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == 5:
        body += b"\x00"  # no properties
    body += utf8(client_id)
    if will is not None:
        if version == 5:
            body += b"\x00"
        body += utf8(will[0]) + utf8(will[1])
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += utf8(password)
    return packet(0x10, body)


def publish(topic, payload, qos=0, packet_id=1, version=4, dup=False):
    """PUBLISH; `dup` marks it a resend (MQTT-3.3.1-1)."""
    body = utf8(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    if version == 5:
        body += b"\x00"
    return packet(0x30 | (0x08 if dup else 0) | (qos << 1),
                  body + (payload.encode() if isinstance(payload, str) else payload))


def pubrel(packet_id):
    """PUBREL (no reason code: success in 5.0 too)."""
    return struct.pack("!BBH", 0x62, 2, packet_id)


def subscribe(packet_id, filters, qos=0, version=4):
    body = struct.pack("!H", packet_id) + (b"\x00" if version == 5 else b"")
    for f in filters:
        body += utf8(f) + bytes([qos])
    return packet(0x82, body)


def parse_frame(buf):
    """(header byte, body, bytes used) of the first whole packet in `buf`, or None."""
    if len(buf) < 2:
        return None
    n, mult, i = 0, 1, 1
    while i < len(buf):
        b = buf[i]
        n += (b & 0x7F) * mult
        mult *= 128
        i += 1
        if not b & 0x80:
            break
    else:
        return None
    if len(buf) < i + n:
        return None
    return buf[0], buf[i:i + n], i + n


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"


class Client:
    """A blocking MQTT client on a raw socket from `source` (an address on lo; IPv4 or IPv6, as
    `host` is)."""

    def __init__(self, port, source="127.0.0.1", host="127.0.0.1", timeout=10.0):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def read_packet(self):
        """(header byte, body), or None when the gateway closed the connection (or said nothing
        within the socket's timeout)."""
        return self.read_packet_nowait() or None

    def read_packet_nowait(self):
        """(header byte, body); None when no whole packet is there within the socket's timeout;
        False when the gateway closed the connection."""
        while True:
            p = parse_frame(self.buf)
            if p is not None:
                header, body, used = p
                self.buf = self.buf[used:]
                return header, body
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                return None
            except OSError:
                return False
            if not chunk:
                return False
            self.buf += chunk

    def connack(self, connect_packet):
        """Sends CONNECT; returns the CONNACK's reason code (None: closed without one)."""
        self.send(connect_packet)
        p = self.read_packet()
        if p is None or p[0] != 0x20:
            return None
        return p[1][1]

    def ping_rtt(self):
        """Seconds from PINGREQ to PINGRESP (None: no answer)."""
        start = time.monotonic()
        self.send(PINGREQ)
        while True:
            p = self.read_packet()
            if p is None:
                return None
            if p[0] == 0xD0:
                return time.monotonic() - start

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def measurable_env(env):
    """`env` with AddressSanitizer's quarantine of freed memory (256 MiB by default) made small, so
    that a sanitizer build's RSS shows what iotgwd holds. No effect on other builds."""
    asan = (env.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=1").lstrip(":")
    return dict(env, ASAN_OPTIONS=asan)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """Samples a process's VmRSS every 50 ms in a thread; `peak` is the largest seen."""

    def __init__(self, pid):
        self.pid = pid
        self.base = rss_kib(pid)
        self.peak = self.base
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                return
            time.sleep(0.05)

    def stop(self):
        self.running = False
        self.thread.join()
        return self.peak - self.base


def sources(count, subnet="127.0.1"):
    """`count` loopback source addresses (the whole of 127.0.0.0/8 is local on lo)."""
    return [f"{subnet}.{i + 1}" for i in range(count)]
