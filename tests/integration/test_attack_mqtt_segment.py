#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Who may log in, and from where, in network namespaces this test makes:

    lan (192.168.1.20, fd00:1::20) --- gw: iotgwd, a mosquitto broker on its loopback
                                       --- br-iot (192.168.50.1, fd00:50::1)
                                              |
                                       dev (192.168.50.10, fd00:50::10: the device segment)

1. the device-side MQTT listener answers only what arrives on a device-segment interface, also
   with the firewall off (iotgwd's own check), over IPv4 and IPv6: a LAN host with a device's
   login is refused, the device itself is not;
2. quarantine holds for every identity: a quarantined login-only device (no address in its
   policy) and a quarantined certificate device over the mutual-TLS listener, from the LAN, are
   refused; released, they log in again.
No namespace has a route anywhere but to the gateway."""
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import (IOTGWD, check, finish, hash_password, require_binary, tmpdir,  # noqa: E402
                           write)
from mqttlab import Broker, Pki  # noqa: E402

P = os.environ.get("IOTGW_LAB", f"iotgwm{os.getpid() % 100000}")  # the same inside and out
NS = {n: f"{P}-{n}" for n in ("gw", "dev", "lan")}
GW, DEV, LAN = "192.168.50.1", "192.168.50.10", "192.168.1.20"
GW6, DEV6, LAN6 = "fd00:50::1", "fd00:50::10", "fd00:1::20"


def sh(*args):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


def build_lab():
    for ns in NS.values():
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    gw = NS["gw"]
    sh("ip", "-n", gw, "link", "add", "br-iot", "type", "bridge")
    for host, gwif in (("dev", "gw-dev"), ("lan", "gw-lan")):
        sh("ip", "link", "add", gwif, "netns", gw, "type", "veth", "peer", "name", "eth0", "netns",
           NS[host])
        sh("ip", "-n", gw, "link", "set", gwif, "up")
    sh("ip", "-n", gw, "link", "set", "gw-dev", "master", "br-iot")
    sh("ip", "-n", gw, "link", "set", "br-iot", "up")
    sh("ip", "-n", gw, "addr", "add", f"{GW}/24", "dev", "br-iot")
    sh("ip", "-n", gw, "addr", "add", "192.168.1.1/24", "dev", "gw-lan")
    sh("ip", "-n", gw, "addr", "add", f"{GW6}/64", "dev", "br-iot", "nodad")
    sh("ip", "-n", gw, "addr", "add", "fd00:1::1/64", "dev", "gw-lan", "nodad")
    sh("ip", "-n", NS["dev"], "link", "set", "eth0", "address", "02:00:00:00:00:10")
    for host, addr, via in (("dev", f"{DEV}/24", GW), ("lan", f"{LAN}/24", "192.168.1.1")):
        sh("ip", "-n", NS[host], "addr", "add", addr, "dev", "eth0")
        sh("ip", "-n", NS[host], "link", "set", "eth0", "up")
        sh("ip", "-n", NS[host], "route", "add", "default", "via", via)
    for host, addr, via in (("dev", f"{DEV6}/64", GW6), ("lan", f"{LAN6}/64", "fd00:1::1")):
        sh("ip", "-n", NS[host], "addr", "add", addr, "dev", "eth0", "nodad")
        sh("ip", "-n", NS[host], "-6", "route", "add", "default", "via", via)


def destroy_lab():
    for ns in NS.values():
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# Logs in from another namespace; prints the CONNACK's return code, or "closed".
LOGIN = r"""
import socket, ssl, struct, sys
host, port, cid, user, pw, cert, key, ca = sys.argv[1:9]
def s(x):
    b = x.encode()
    return struct.pack("!H", len(b)) + b
flags = 0x02 | (0xC0 if user != "-" else 0)
body = s("MQTT") + bytes([4, flags]) + struct.pack("!H", 30) + s(cid)
if user != "-":
    body += s(user) + s(pw)
try:
    raw = socket.create_connection((host, int(port)), timeout=5)
except OSError:
    print("refused")
    sys.exit(0)
try:
    if cert != "-":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(ca)
        ctx.load_cert_chain(cert, key)
        ctx.check_hostname = False
        raw = ctx.wrap_socket(raw)
    raw.sendall(bytes([0x10, len(body)]) + body)
    ack = raw.recv(4)
    print(ack[3] if len(ack) == 4 and ack[0] == 0x20 else "closed")
except (OSError, ssl.SSLError):
    print("closed")
"""


def login(ns, host, port, cid, user="-", pw="-", tls=None, ca="-"):
    cert, key = tls or ("-", "-")
    cmd = ["ip", "netns", "exec", NS[ns], sys.executable, "-c", LOGIN, host, str(port), cid, user,
           pw, cert, key, ca]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    out = r.stdout.strip()
    return int(out) if out.isdigit() else out or r.stderr.strip()[-80:]


def config(root, broker, pki, firewall):
    return f"""
[daemon]
state_directory = "{root}/state"
devices_directory = "{root}/devices.d"
[device_segment]
interfaces = ["br-iot"]
subnets = ["192.168.50.0/24", "fd00:50::/64"]
[listeners.mqtt]
addresses = ["{GW}", "{GW6}"]
port = 1883
[listeners.mqtt_tls]
addresses = ["192.168.1.1"]
port = 8883
certificate = "{pki.server[0]}"
private_key = "{pki.server[1]}"
ca_file = "{pki.ca}"
[upstream]
host = "127.0.0.1"
port = {broker.port}
ca_file = "{pki.ca}"
certificate = "{pki.gateway[0]}"
private_key = "{pki.gateway[1]}"
[firewall]
enabled = {"true" if firewall else "false"}
keep_rules_on_exit = false
scan_interval_seconds = 0
[dbus]
enabled = false
[events]
target = "stderr"
burst = 100
"""


def start(root, broker, pki, firewall):
    write(os.path.join(root, "iotgw.toml"), config(root, broker, pki, firewall))
    d = subprocess.Popen([IOTGWD, "--config", os.path.join(root, "iotgw.toml")],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(root, "events"), "a"))
    deadline = time.time() + 15
    while time.time() < deadline:
        if login("dev", GW, 1883, "probe") not in ("closed", "refused") or d.poll() is not None:
            break
        time.sleep(0.1)
    return d


def stop(d):
    d.send_signal(signal.SIGTERM)
    try:
        d.wait(timeout=10)
    except subprocess.TimeoutExpired:
        d.kill()


def inside():
    root = tmpdir("iotgw-seg-")
    broker = None
    d = None
    try:
        pki = Pki(os.path.join(root, "pki"))
        broker = Broker(root, pki)
        cam = pki.leaf("cam-01", "cam-01")
        write(os.path.join(root, "devices.d", "plug-01.toml"), f"""
[device]
id = "plug-01"
[device.mqtt]
client_id = "plug-01"
username = "plug"
password_hash = "{hash_password('pw-plug')}"
[mqtt]
publish = ["devices/%c/#"]
""")
        write(os.path.join(root, "devices.d", "cam-01.toml"), """
[device]
id = "cam-01"
[device.certificate]
common_name = "cam-01"
[mqtt]
publish = ["devices/%d/#"]
""")

        print("1. the device-side listener, with the firewall off")
        d = start(root, broker, pki, firewall=False)
        check(d.poll() is None, "iotgwd runs")
        from_dev = login("dev", GW, 1883, "plug-01", "plug", "pw-plug")
        from_lan = login("lan", GW, 1883, "plug-01", "plug", "pw-plug")
        print(f"   plug-01's login from the device segment: {from_dev}; from the LAN: {from_lan}")
        check(from_dev == 0, "from the device segment it logs in")
        check(from_lan == "closed", "from the LAN the device-side listener refuses it")
        from_dev6 = login("dev", GW6, 1883, "plug-01", "plug", "pw-plug")
        from_lan6 = login("lan", GW6, 1883, "plug-01", "plug", "pw-plug")
        print(f"   over IPv6: from the device segment {from_dev6}; from the LAN {from_lan6}")
        check(from_dev6 == 0, "over IPv6 too it logs in from the device segment")
        check(from_lan6 == "closed", "and is refused from the LAN")
        check(any("device_segment.interfaces" in x for x in open(os.path.join(root, "events"))),
              "with an access-denied event naming device_segment.interfaces")
        stop(d)

        print("2. quarantine, with the firewall on")
        d = start(root, broker, pki, firewall=True)
        check(d.poll() is None, "iotgwd runs with its table")
        check(login("dev", GW, 1883, "plug-01", "plug", "pw-plug") == 0, "plug-01 logs in")
        check(login("lan", "192.168.1.1", 8883, "cam-01", tls=cam, ca=pki.ca) == 0,
              "cam-01 logs in with its certificate from the LAN")
        os.makedirs(os.path.join(root, "state", "quarantine"), exist_ok=True)
        for dev in ("plug-01", "cam-01"):
            write(os.path.join(root, "state", "quarantine", dev), "a test\n")
        d.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        plug = login("dev", GW, 1883, "plug-01", "plug", "pw-plug")
        camera = login("lan", "192.168.1.1", 8883, "cam-01", tls=cam, ca=pki.ca)
        print(f"   quarantined: plug-01 (no address in its policy) {plug}; cam-01 over TLS {camera}")
        check(plug == 5, "the quarantined login-only device is refused (not authorised)")
        check(camera == 5, "the quarantined certificate device is refused over the TLS listener")
        for dev in ("plug-01", "cam-01"):
            os.remove(os.path.join(root, "state", "quarantine", dev))
        d.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        check(login("dev", GW, 1883, "plug-01", "plug", "pw-plug") == 0, "released, plug-01 logs in")
        check(login("lan", "192.168.1.1", 8883, "cam-01", tls=cam, ca=pki.ca) == 0,
              "and cam-01 too")
        check(d.poll() is None, "iotgwd is still running")
    finally:
        if d is not None:
            stop(d)
        if broker:
            broker.stop()
        subprocess.run(["rm", "-rf", root])


def main():
    require_binary()
    if os.environ.get("IOTGW_TEST_IN_NS") == "1":
        inside()
        finish()
    if os.geteuid() != 0:
        print("needs root (network namespaces, nftables)", file=sys.stderr)
        sys.exit(2)
    build_lab()
    try:
        env = dict(os.environ, IOTGW_TEST_IN_NS="1", IOTGW_LAB=P)
        rc = subprocess.call(["ip", "netns", "exec", NS["gw"], "unshare", "-m", "--propagation",
                              "private", sys.executable] + sys.argv, env=env)
    finally:
        destroy_lab()
    sys.exit(rc)


if __name__ == "__main__":
    main()
