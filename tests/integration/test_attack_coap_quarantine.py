#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attack: a quarantined device goes on using CoAP (issue 15, item 5, the CoAP part).

Quarantine (5.3-15) must hold for every identity and protocol. The table cuts the device off on
the network; iotgwd checks again itself, and ends what the device had going:

* its pushes are refused (5.03) and never published;
* a client's request waiting at the device when it is quarantined is answered 5.03 at once, and
  the device's late answer is not relayed; nothing more is sent to the device;
* a client's observation of the device ends, and the client hears of it (a 5.03 notification);
* the device as a DTLS client (its own certificate names it): its session is closed and a new
  handshake fails, so it reaches no other device through the proxy either.

The test runs in a network namespace of its own, with the firewall on (quarantine is the
firewall's state). thermo's CoAP server and DTLS client are on loopback addresses, where the
table does not reach, so that what is tested is iotgwd's own check; its pushes come from a
namespace of their own on the device segment (a veth named br-iot, with thermo's MAC), as the
table keeps loopback away from the device-side listeners: after the quarantine the table may
drop them before iotgwd sees them, or iotgwd refuses them (5.03); either way nothing is
published. thermo is a scripted device (coaplab.FakeDevice), the other device
coap-server-notls, the broker a real mosquitto.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import in_private_namespaces, check, cleanup, finish, require_binary, tmpdir, write  # noqa: E402
from coaplab import (IOTGWCTL, PROBE, Certificates, FakeDevice, Gateway, Probe, code_of,  # noqa: E402
                     coap_config, device_policy, free_udp_port, options, request)
from mqttlab import Broker, Pki, Subscriber  # noqa: E402

GET, POST = 1, 2
SLOW = 3.0
SEGMENT_GW, SEGMENT_THERMO = "192.168.77.1", "192.168.77.6"
THERMO_NS = f"iotgw-q-thermo-{os.getpid()}"


def path(*segments):
    return [(11, s.encode()) for s in segments]


class As:
    """Certificates seen as another client (coaplab.Probe takes .ca and .app)."""

    def __init__(self, certs, cert):
        self.ca, self.app = certs.ca, cert


def inside():
    root = tmpdir("iotgw-coap-quarantine-")
    gw, broker, sub, fake, legacy, probes = None, None, None, None, None, []
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        # The device segment: br-iot here, thermo's end in a namespace of its own, with its MAC.
        subprocess.run(["ip", "netns", "add", THERMO_NS], check=True)
        for cmd in (["ip", "link", "add", "br-iot", "type", "veth", "peer", "name", "th0", "netns", THERMO_NS],
                    ["ip", "addr", "add", f"{SEGMENT_GW}/24", "dev", "br-iot"],
                    ["ip", "link", "set", "br-iot", "up"],
                    ["ip", "netns", "exec", THERMO_NS, "ip", "link", "set", "th0", "address", "02:00:00:00:00:66"],
                    ["ip", "netns", "exec", THERMO_NS, "ip", "addr", "add", f"{SEGMENT_THERMO}/24", "dev", "th0"],
                    ["ip", "netns", "exec", THERMO_NS, "ip", "link", "set", "th0", "up"],
                    ["ip", "netns", "exec", THERMO_NS, "ip", "link", "set", "lo", "up"]):
            subprocess.run(cmd, check=True)
        certs = Certificates(os.path.join(root, "pki"))
        thermo_cert = certs.pki.leaf("thermo-dtls", "thermo.hub.local", san="DNS:thermo.hub.local")
        broker = Broker(root, Pki(os.path.join(root, "broker-pki")))
        dtls, devep = free_udp_port(), free_udp_port()
        legacy_port, thermo_port = free_udp_port("127.0.0.2"), free_udp_port("127.0.0.6")
        devices = os.path.join(root, "devices.d")
        device_policy(devices, legacy_port)
        write(os.path.join(devices, "thermo.toml"), f"""[device]
id = "thermo"
mac = "02:00:00:00:00:66"
addresses = ["127.0.0.6", "{SEGMENT_THERMO}"]
[device.certificate]
common_name = "thermo.hub.local"
[coap]
port = {thermo_port}
max_payload_bytes = 64
[[coap.rule]]
methods = ["GET"]
path = "/**"
[[coap.push]]
path = "/readings/*"
topic = "sensors/%d/%p"
""")
        legacy = subprocess.Popen(["coap-server-notls", "-A", "127.0.0.2", "-p", str(legacy_port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fake = FakeDevice("127.0.0.6", thermo_port, slow=SLOW)
        conf = os.path.join(root, "iotgw.toml")
        bp = broker.pki
        write(conf, coap_config(root, certs, ["127.0.0.1"], dtls, devices, extra=f"""
[listeners.coap]
addresses = ["{SEGMENT_GW}"]
port = {devep}
""").replace("[firewall]\nenabled = false", """[firewall]
keep_rules_on_exit = false
scan_interval_seconds = 0
telemetry_interval_seconds = 0""").replace("[device_segment]\nsubnets = [\"127.0.0.0/8\"]",
                       '[device_segment]\ninterfaces = ["br-iot"]\nsubnets = ["127.0.0.0/8", "192.168.77.0/24"]')
              .replace("[upstream]\nenabled = false", f"""[upstream]
host = "127.0.0.1"
port = {broker.port}
ca_file = "{bp.ca}"
certificate = "{bp.gateway[0]}"
private_key = "{bp.gateway[1]}"
"""))
        gw = Gateway(root, conf)
        check(bool(gw.counters()), "iotgwd is up, with its firewall")
        sub = Subscriber(broker, "sensors/#", root)

        def push(value):
            r = subprocess.run(["ip", "netns", "exec", THERMO_NS, "coap-client-notls", "-B", "5", "-m", "post",
                                "-e", value, f"coap://{SEGMENT_GW}:{devep}/readings/temp"],
                               capture_output=True, text=True, timeout=20)
            return (r.stdout + r.stderr).strip()

        def probe(who=None, wait_ms=300):
            p = Probe(dtls, who or certs, wait_ms)
            probes.append(p)
            return p

        print("before the quarantine")
        out = push("20")
        check("5." not in out and "4." not in out, f"thermo's push is acknowledged ({out!r})")
        check(sub.wait_for("sensors/thermo/readings/temp 20", 5), f"and published ({sub.lines()})")
        observer = probe(wait_ms=300)  # shorter than the gap between notifications
        r = observer.send(request(GET, options((6, b""), *path("thermo", "obs")), mid=1, token=b"\x0b"))
        check(any(code_of(x) == "2.05" for x in r), f"a client observes thermo ({[code_of(x) for x in r]})")
        waiting = probe(wait_ms=1500)
        r = waiting.burst([request(GET, options(*path("thermo", "slow")), mid=1, token=b"\x5a")])
        check(r == [], f"another client's request waits at thermo ({r})")
        as_thermo = probe(As(certs, thermo_cert))
        check(as_thermo.connected, "thermo, with its own certificate, is a DTLS client of the proxy")
        r = as_thermo.send(request(GET, options(*path("legacy-sensor", "time")), mid=1, token=b"\x71"))
        check([code_of(x) for x in r] == ["2.05"], f"and reaches another device through it ({[code_of(x) for x in r]})")

        print("quarantine")
        before = gw.counters()
        asked_before = fake.requests
        t0 = time.time()
        q = subprocess.run([IOTGWCTL, "quarantine", "thermo", "--reason", "test"], capture_output=True, text=True,
                           env=gw.env, timeout=20)
        check(q.returncode == 0, f"iotgwctl quarantine thermo ({q.stderr.strip()})")
        r = waiting.burst([])
        codes = [code_of(x) for x in r]
        check(codes == ["5.03"], f"the waiting request is answered 5.03 at once, not by thermo's late answer ({codes})")
        r = observer.burst([])
        codes = [code_of(x) for x in r]
        check("5.03" in codes, f"the observation ends with a 5.03 notification ({codes})")
        c = gw.counters()
        check(c.get("coap_observing") == 0, f"no relationship is left ({c.get('coap_observing')})")
        r = as_thermo.send(request(GET, options(*path("legacy-sensor", "time")), mid=2, token=b"\x72"))
        check(not any(code_of(x) == "2.05" for x in r), f"thermo's own session reaches nothing any more ({[code_of(x) for x in r]})")
        again = Probe(dtls, As(certs, thermo_cert), 300)
        probes.append(again)
        reached = again.connected and any(
            code_of(x) == "2.05" for x in again.send(request(GET, options(*path("legacy-sensor", "time")), mid=3,
                                                             token=b"\x73")))
        check(not again.connected, f"a new handshake with thermo's certificate fails (connected: {again.connected}, "
                                   f"reached another device: {reached})")
        out = push("99")
        refused = "5.03" in out
        check(refused or not out, f"thermo's push is refused (5.03), or dropped by the table ({out!r})")
        time.sleep(SLOW)
        check(not any(" 99" in line for line in sub.lines()), f"and never published ({sub.lines()})")
        after = gw.counters()
        if refused:
            check(after.get("coap_pushes_denied", 0) - before.get("coap_pushes_denied", 0) == 1, "the refusal counted")
        sent_after = [entry for entry in fake.log if entry[0] > t0]
        check(sent_after == [], f"nothing was sent to thermo after its quarantine ({sent_after})")
        events = [e for e in gw.events() if "IOTGW_RULE=quarantine" in e]
        check(any("IOTGW_DEVICE=thermo" in e or "quarantined device thermo" in e for e in events),
              f"the refusals are events naming thermo ({len(events)})")
        r = probe().send(request(GET, options(*path("legacy-sensor", "time")), mid=4, token=b"\x74"))
        check([code_of(x) for x in r] == ["2.05"], "other clients reach other devices as before")
        print(f"  thermo was asked {fake.requests - asked_before} times after the quarantine")
        check(gw.alive(), "iotgwd is still running")
    finally:
        for p in probes:
            p.close()
        if sub:
            sub.stop()
        if gw:
            gw.stop()
        if broker:
            broker.stop()
        if fake:
            fake.stop()
        if legacy:
            legacy.terminate()
            legacy.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", THERMO_NS], capture_output=True)
        cleanup(root)


def main():
    require_binary()
    if not PROBE:
        print("needs COAP_DTLS_PROBE", file=sys.stderr)
        sys.exit(2)
    in_private_namespaces(["-n"], "a network namespace, nftables, a private bus")
    inside()
    finish()


if __name__ == "__main__":
    main()
