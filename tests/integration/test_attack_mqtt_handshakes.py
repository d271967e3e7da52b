#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""An attack on the mutual-TLS MQTT listener with the default limits: 64 TCP connections from 4
addresses that never send a byte, then 64 from 16 addresses that send one byte each and stop
(the whole handshake table), each opened again whenever iotgwd closes it, must not keep a valid
client out: each of several valid clients completes its handshake within 1 s."""
import os
import socket
import ssl
import threading
import time

from iotgw_testlib import (Daemon, NotifySocket, check, cleanup, finish, in_private_mount_namespace,
                           require_binary, tmpdir, wait_ready, write)
from mqttlab import Broker, Pki, free_port, gateway_config
import mqttwire as w

require_binary()
in_private_mount_namespace()

root = tmpdir()
d = None
broker = None
stop = threading.Event()
try:
    pki = Pki(os.path.join(root, "pki"))
    broker = Broker(root, pki)
    tls_port = free_port()
    conf = os.path.join(root, "iotgw.toml")
    write(conf, gateway_config(root, broker, pki, tls_port=tls_port))
    os.makedirs(os.path.join(root, "devices.d"), exist_ok=True)
    notify = NotifySocket(root)
    d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path))
    check(wait_ready(notify, tls_port), "iotgwd ready with its mutual-TLS listener")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    ctx.load_cert_chain(*pki.app)

    def handshake(source):
        """Seconds a valid client takes to complete its handshake (None: it failed)."""
        t = time.monotonic()
        try:
            raw = socket.create_connection(("127.0.0.1", tls_port), timeout=5,
                                           source_address=(source, 0))
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                return time.monotonic() - t
        except (OSError, ssl.SSLError) as e:
            print(f"    handshake from {source} failed after {time.monotonic() - t:.2f} s: {e}")
            return None

    check(handshake("127.0.7.1") is not None, "a valid client completes its handshake before the attack")

    def attack(label, subnet, nsources, per_source, first_bytes, clients):
        """Holds nsources x per_source connections that send `first_bytes` and then nothing,
        opening a new one for each iotgwd closes, while six valid clients connect."""
        held = []
        stop.clear()
        reopened = [0]

        def open_one(source):
            s = socket.socket()
            s.bind((source, 0))
            s.connect(("127.0.0.1", tls_port))
            if first_bytes:
                s.send(first_bytes)
            s.setblocking(False)
            return s

        def attacker():
            for src in w.sources(nsources, subnet):
                for _ in range(per_source):
                    held.append((src, open_one(src)))
            while not stop.is_set():
                for i, (src, s) in enumerate(held):
                    try:
                        gone = s.recv(1) == b""
                    except BlockingIOError:
                        gone = False
                    except OSError:
                        gone = True
                    if gone:
                        s.close()
                        try:
                            held[i] = (src, open_one(src))
                            reopened[0] += 1
                        except OSError:
                            pass
                time.sleep(0.05)

        t = threading.Thread(target=attacker)
        t.start()
        time.sleep(1.5)
        times = []
        for i in range(6):
            times.append(handshake(f"{clients}.{i + 1}"))
            time.sleep(1.5)
        stop.set()
        t.join()
        for _, s in held:
            s.close()
        ok = [x for x in times if x is not None]
        print(f"  {label}: valid handshakes {len(ok)} of {len(times)}, slowest "
              f"{max(ok) if ok else float('nan'):.3f} s; attacker connections reopened after "
              f"iotgwd closed them: {reopened[0]}")
        check(len(ok) == len(times) and all(x < 1.0 for x in ok),
              f"{label}: every valid client completed its handshake within 1 s")

    attack("64 silent connections from 4 addresses", "127.0.6", 4, 16, b"", "127.0.7")
    # Past the per-source bound: the whole handshake table, each holding its slot with a byte.
    attack("64 connections from 16 addresses, one byte each", "127.0.8", 16, 4, b"\x16", "127.0.9")
    check(d.alive(), "iotgwd is still running")
finally:
    stop.set()
    if d:
        d.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
