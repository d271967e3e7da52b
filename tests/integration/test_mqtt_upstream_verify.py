#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The upstream leg verifies the broker: a broker whose certificate comes from another CA, or
names another host, never receives a device's messages; the genuine broker does. With
[store] acknowledge = "broker" the device gets no PUBACK for them; with the default ("durable")
it gets its PUBACK once the reading is in its outbox on disk, where it stays."""
import os
import subprocess
import time

from iotgw_testlib import Daemon, NotifySocket, check, cleanup, finish, hash_password, require_binary, tmpdir, write, wait_ready
from mqttlab import Broker, Pki, Subscriber, free_port, gateway_config, wait_port

require_binary()

root = tmpdir()
brokers = []
subs = []
daemons = []
try:
    pki = Pki(os.path.join(root, "pki"))
    impostors = {
        "another CA": pki.leaf("impostor-ca", "localhost", san="DNS:localhost,IP:127.0.0.1", ca="rogue-ca", server=True),
        "another host name": pki.leaf("impostor-name", "broker.example", san="DNS:broker.example", server=True),
        "the genuine broker": pki.server,
    }
    for case, server in impostors.items():
        broker = Broker(root, pki, server=server, name=f"broker-{len(brokers)}")
        brokers.append(broker)
        port = free_port()
        conf = os.path.join(root, f"iotgw-{port}.toml")
        ack = "broker" if case == "another CA" else "durable"
        write(conf, gateway_config(root, broker, pki, port=port,
                                   extra=f'[events]\ntarget = "stderr"\n[store]\nacknowledge = "{ack}"\n')
              .replace(f"{root}/state", f"{root}/state-{port}"))
        outbox = os.path.join(root, f"state-{port}", "outbox", "thermo-01.queue")
        write(os.path.join(root, "devices.d", "thermo-01.toml"), f"""
[device]
id = "thermo-01"
[device.mqtt]
username = "thermo"
password_hash = "{hash_password('s3cret')}"
[mqtt]
publish = ["t/#"]
""")
        os.makedirs(os.path.join(root, f"n{port}"))
        notify = NotifySocket(os.path.join(root, f"n{port}"))
        d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path), stderr=subprocess.DEVNULL)
        daemons.append(d)
        check(wait_ready(notify, port), f"{case}: iotgwd ready")
        sub = Subscriber(broker, "t/#", root)
        subs.append(sub)
        r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-i", "thermo-01", "-u", "thermo",
                            "-P", "s3cret", "-t", "t/x", "-m", f"secret-reading-{len(brokers)}", "-q", "1"],
                           capture_output=True, text=True, timeout=8) if case == "the genuine broker" else None
        if case == "the genuine broker":
            check(r.returncode == 0 and sub.wait_for(f"secret-reading-{len(brokers)}"),
                  "the genuine broker gets the reading and the device its PUBACK")
        else:
            try:
                r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-i", "thermo-01", "-u", "thermo",
                                    "-P", "s3cret", "-t", "t/x", "-m", f"secret-reading-{len(brokers)}", "-q", "1"],
                                   capture_output=True, text=True, timeout=4)
                acked = r.returncode == 0
            except subprocess.TimeoutExpired:
                acked = False
            if ack == "broker":
                check(not acked, f"{case}, acknowledge = broker: the device gets no PUBACK")
            else:
                stored = open(outbox, "rb").read() if os.path.exists(outbox) else b""
                check(acked and f"secret-reading-{len(brokers)}".encode() in stored,
                      f"{case}, acknowledge = durable: the device gets its PUBACK, the reading waits in the outbox")
            time.sleep(0.5)
            log = open(broker.logname).read()
            check("OpenSSL Error" in log, f"{case}: the impostor saw the gateway abort the handshake")
            check(not any("secret-reading" in l for l in sub.lines()), f"{case}: the impostor never sees the reading")
finally:
    for s in subs:
        s.stop()
    for d in daemons:
        d.stop()
    for b in brokers:
        b.stop()
    cleanup(root)
finish()
