#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""An attack on the mutual-TLS MQTT listener with the default limits: 64 TCP connections from 4
addresses that never send a byte (and are opened again whenever iotgwd closes them) must not
keep a valid client out: each of several valid clients completes its handshake within 1 s."""
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

    idle = []
    lock = threading.Lock()
    reopened = [0]

    def open_idle(source):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", tls_port))
        return s

    def attacker():
        """Holds 64 silent connections from 4 addresses, opening a new one for each closed."""
        with lock:
            for src in w.sources(4, "127.0.6"):
                for _ in range(16):
                    idle.append(open_idle(src))
        while not stop.is_set():
            with lock:
                for i, s in enumerate(idle):
                    s.setblocking(False)
                    try:
                        gone = s.recv(1) == b""
                    except BlockingIOError:
                        gone = False
                    except OSError:
                        gone = True
                    if gone:
                        s.close()
                        try:
                            idle[i] = open_idle(f"127.0.6.{i // 16 + 1}")
                            reopened[0] += 1
                        except OSError:
                            pass
            time.sleep(0.05)

    t = threading.Thread(target=attacker)
    t.start()
    time.sleep(1.0)
    times = []
    for i in range(6):
        times.append(handshake(f"127.0.7.{i + 2}"))
        time.sleep(1.5)
    stop.set()
    t.join()
    ok = [x for x in times if x is not None]
    print(f"  valid handshakes during the attack: {len(ok)} of {len(times)}, "
          f"slowest {max(ok) if ok else float('nan'):.3f} s; attacker connections reopened after "
          f"iotgwd closed them: {reopened[0]}")
    check(len(ok) == len(times), "every valid client completed its handshake during the attack")
    check(all(x < 1.0 for x in ok), "each within 1 s")
    check(d.alive(), "iotgwd is still running")
finally:
    stop.set()
    if d:
        d.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
