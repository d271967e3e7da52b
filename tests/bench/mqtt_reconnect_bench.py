#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Reconnect after an iotgwd restart, with persistent sessions: N devices (1,000; 200 with
--quick), each from its own address with clean session 0, subscribe at QoS 1 and stay connected;
iotgwd is killed (SIGKILL); one QoS 1 message per device is published at the broker while it is
down; iotgwd is started again and every device reconnects at once. Measured: the time from iotgwd
ready until every device has its CONNACK with session-present 1 and the message queued for it
(each acknowledged), and how many arrived. The peer in the same run: the same clients straight
to mosquitto (plaintext listener), dropping and reconnecting their persistent sessions with a
message queued for each. Through iotgwd every device also gets its own upstream session over
mutual TLS, so the gateway's figure includes N TLS handshakes with the broker.

usage: mqtt_reconnect_bench.py BUILD_DIR [--quick]
"""
import os
import resource
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from iotgw_testlib import NotifySocket, wait_ready  # noqa: E402
from mqttlab import Broker, Pki, free_port, gateway_config  # noqa: E402
import mqttwire as w  # noqa: E402

build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build/default")
quick = "--quick" in sys.argv
IOTGWD = os.path.join(build, "daemon", "iotgwd")
N = 200 if quick else 1000


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def source(i):
    return f"127.1.{i // 250}.{i % 250 + 1}"


class Fleet:
    """N MQTT clients on raw non-blocking sockets, driven together from one selector."""

    def __init__(self, port, ids, sources):
        self.port, self.ids, self.sources = port, ids, sources

    def connect_all(self, clean):
        """Opens every connection and sends CONNECT; returns the sockets."""
        self.socks = []
        for cid, src in zip(self.ids, self.sources):
            s = socket.socket()
            s.bind((src, 0))
            s.connect(("127.0.0.1", self.port))
            s.sendall(w.connect(cid, clean=clean, keepalive=120))
            s.setblocking(False)
            self.socks.append(s)

    def run(self, on_packet, done, timeout=120):
        """Feeds each socket's packets to on_packet(i, header, body) until done() or timeout."""
        sel = selectors.DefaultSelector()
        bufs = [b""] * len(self.socks)
        for i, s in enumerate(self.socks):
            sel.register(s, selectors.EVENT_READ, i)
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                i = key.data
                try:
                    chunk = self.socks[i].recv(65536)
                except (BlockingIOError, ConnectionResetError):
                    continue
                if not chunk:
                    sel.unregister(self.socks[i])
                    continue
                bufs[i] += chunk
                while True:
                    p = w.parse_frame(bufs[i])
                    if p is None:
                        break
                    header, body, used = p
                    bufs[i] = bufs[i][used:]
                    on_packet(i, header, body)
        sel.close()

    def close_all(self):
        for s in self.socks:
            s.close()


def subscribe_all(fleet, topics):
    """Persistent sessions with one QoS 1 subscription each; returns how many were subscribed."""
    fleet.connect_all(clean=False)
    subscribed = set()

    def on(i, header, body):
        if header == 0x20 and body[1] == 0:
            fleet.socks[i].sendall(w.subscribe(1, [topics[i]], qos=1))
        elif header == 0x90 and body[2] == 1:
            subscribed.add(i)
    fleet.run(on, lambda: len(subscribed) == len(fleet.socks))
    return len(subscribed)


def resume_all(fleet, started):
    """Reconnects every client; seconds until each has session-present 1 and its message."""
    fleet.connect_all(clean=False)
    resumed, delivered = set(), set()
    finished = [None]

    def on(i, header, body):
        if header == 0x20 and body[1] == 0 and body[0] & 1:
            resumed.add(i)
        elif header >> 4 == 3:
            n = struct.unpack("!H", body[:2])[0]
            pid = struct.unpack("!H", body[2 + n:4 + n])[0]
            fleet.socks[i].sendall(w.packet(0x40, struct.pack("!H", pid)))
            delivered.add(i)
        if finished[0] is None and len(resumed) == len(delivered) == len(fleet.socks):
            finished[0] = time.monotonic()
    fleet.run(on, lambda: finished[0] is not None)
    end = finished[0] or time.monotonic()
    return end - started, len(resumed), len(delivered)


def publish_at_broker(port, topics):
    """One QoS 1 message per topic, each acknowledged by the broker."""
    c = w.Client(port)
    c.connack(w.connect("bench-publisher"))
    for k, t in enumerate(topics):
        c.send(w.publish(t, f"queued-{k}", qos=1, packet_id=k % 65535 + 1))
    acked = 0
    while acked < len(topics):
        p = c.read_packet()
        if p is None:
            break
        acked += p[0] == 0x40
    c.close()
    return acked


raise_fd_limit()
root = tempfile.mkdtemp(prefix="iotgw-bench-")
broker = gw = None
try:
    pki = Pki(os.path.join(root, "pki"))
    plain = free_port()
    broker = Broker(root, pki, extra=f"listener {plain} 127.0.0.1\nmax_queued_messages 10\n"
                                     "max_inflight_messages 20\n")
    port = free_port()
    devices = os.path.join(root, "devices.d")
    os.makedirs(devices)
    ids = [f"rc-{i:04d}" for i in range(N)]
    for i, dev in enumerate(ids):
        with open(os.path.join(devices, f"{dev}.toml"), "w") as f:
            f.write(f'[device]\nid = "{dev}"\nmac = "02:00:01:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"\n'
                    f'addresses = ["{source(i)}"]\n[mqtt]\nsubscribe = ["bench/r/%d"]\nmax_qos = 1\n')
    conf = os.path.join(root, "iotgw.toml")
    with open(conf, "w") as f:
        f.write(gateway_config(root, broker, pki, port=port, devices=devices, extra="""
[limits]
max_connections = 10000
max_connections_per_source = 16
max_devices = 10000
[events]
target = "stderr"
"""))

    def start(name):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        notify = NotifySocket(os.path.join(root, name))
        p = subprocess.Popen([IOTGWD, "--config", conf], stderr=subprocess.DEVNULL,
                             env=dict(os.environ, NOTIFY_SOCKET=notify.path), preexec_fn=raise_fd_limit)
        if not wait_ready(notify, port, 60):
            raise RuntimeError("iotgwd did not start")
        return p

    topics = [f"bench/r/{d}" for d in ids]
    gw = start("first")
    fleet = Fleet(port, ids, [source(i) for i in range(N)])
    subscribed = subscribe_all(fleet, topics)
    gw.kill()
    gw.wait()
    fleet.close_all()
    time.sleep(1.0)  # the broker sees the upstream connections go
    queued = publish_at_broker(plain, topics)
    gw = start("again")
    ready = time.monotonic()
    g_time, g_resumed, g_delivered = resume_all(fleet, ready)
    fleet.close_all()

    direct_ids = [f"direct-{i:04d}" for i in range(N)]
    direct_topics = [f"bench/d/{d}" for d in direct_ids]
    peer = Fleet(plain, direct_ids, ["127.0.0.1"] * N)
    d_subscribed = subscribe_all(peer, direct_topics)
    peer.close_all()
    time.sleep(1.0)
    d_queued = publish_at_broker(plain, direct_topics)
    began = time.monotonic()
    d_time, d_resumed, d_delivered = resume_all(peer, began)
    peer.close_all()

    print(f"\nMQTT reconnect after an iotgwd restart ({'quick' if quick else 'full'}), N = {N}, "
          f"{os.cpu_count()} cores, loopback")
    print(f"{'':<44} {'gateway':>10} {'direct':>10} {'ratio':>7}")
    print(f"{'subscribed with clean session 0':<44} {subscribed:>10} {d_subscribed:>10}")
    print(f"{'queued at the broker meanwhile':<44} {queued:>10} {d_queued:>10}")
    print(f"{'resumed (session-present 1)':<44} {g_resumed:>10} {d_resumed:>10}")
    print(f"{'queued messages delivered':<44} {g_delivered:>10} {d_delivered:>10}")
    print(f"{'seconds until all resumed and delivered':<44} {g_time:>10.2f} {d_time:>10.2f} "
          f"{g_time / max(d_time, 1e-6):>7.1f}   (gateway: from ready, incl. {N} upstream TLS handshakes)")
finally:
    if gw:
        gw.kill()
        gw.wait()
    if broker:
        broker.stop()
    shutil.rmtree(root, ignore_errors=True)
