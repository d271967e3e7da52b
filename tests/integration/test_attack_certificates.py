#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Certificates that try to pass for a device at the mutual-TLS MQTT listener. The device is
known by a DNS name and a URI; a certificate from the gateway's own CA that carries the device's
DNS name as an e-mail address or a URI, its URI as a DNS name, or a wildcard, logs in as nobody;
the CA certificate itself, another CA certificate with the device's name, and leaf certificates
without the clientAuth extended key usage (serverAuth only, none, anyExtendedKeyUsage) fail the
handshake, each a failed TLS handshake with its authentication-failed event. The genuine
certificates (DNS name in any case, URI) log in."""
import os
import re
import signal
import subprocess
import time

from iotgw_testlib import Daemon, NotifySocket, check, cleanup, finish, require_binary, tmpdir, write, wait_ready
from mqttlab import Broker, Pki, Subscriber, free_port, gateway_config, openssl

require_binary()

DEVICE_DNS = "dev-s.hub.local"
DEVICE_URI = "urn:dev:dev-s"


def certificate(pki, name, extensions, ca="ca"):
    """A P-256 certificate signed by `ca` with exactly the given extension lines."""
    d = pki.dir
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=d)
    openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr", cwd=d)
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write("\n".join(extensions) + "\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    return (os.path.join(d, f"{name}.crt"), os.path.join(d, f"{name}.key"))


def leaf(pki, name, san, eku="clientAuth"):
    lines = ["basicConstraints=critical,CA:FALSE", f"subjectAltName={san}"]
    if eku:
        lines.append(f"extendedKeyUsage={eku}")
    return certificate(pki, name, lines)


root = tmpdir()
broker = sub = d = None
try:
    pki = Pki(os.path.join(root, "pki"))
    genuine = {
        "DNS name": leaf(pki, "genuine-dns", f"DNS:{DEVICE_DNS}"),
        "DNS name in capitals": leaf(pki, "genuine-caps", f"DNS:{DEVICE_DNS.upper()}"),
        "URI": leaf(pki, "genuine-uri", f"URI:{DEVICE_URI}"),
    }
    # Handshake completes, but no name of the right type names the device.
    wrong_type = {
        "e-mail address with the DNS name": leaf(pki, "email-san", f"email:{DEVICE_DNS}"),
        "URI with the DNS name": leaf(pki, "uri-san", f"URI:{DEVICE_DNS}"),
        "DNS name with the URI": leaf(pki, "dns-uri-san", f"DNS:{DEVICE_URI}"),
        "wildcard DNS name": leaf(pki, "wildcard-san", "DNS:*.hub.local"),
    }
    # Not client certificates at all: refused in the handshake.
    not_clients = {
        "the CA certificate itself": (pki.ca, os.path.join(pki.dir, "ca.key"), "CA"),
        "a CA certificate with the device's name": (*certificate(pki, "sub-ca", [
            "basicConstraints=critical,CA:TRUE", "keyUsage=keyCertSign,cRLSign,digitalSignature",
            "extendedKeyUsage=clientAuth", f"subjectAltName=DNS:{DEVICE_DNS}"]), "CA"),
        "a serverAuth-only leaf": (*leaf(pki, "server-only", f"DNS:{DEVICE_DNS}", eku="serverAuth"), ""),
        "a leaf without extended key usage": (*leaf(pki, "no-eku", f"DNS:{DEVICE_DNS}", eku=None), "clientAuth"),
        "an anyExtendedKeyUsage leaf": (*leaf(pki, "any-eku", f"DNS:{DEVICE_DNS}", eku="anyExtendedKeyUsage"),
                                        "clientAuth"),
    }

    broker = Broker(root, pki)
    port = free_port()
    conf = os.path.join(root, "iotgw.toml")
    write(conf, gateway_config(root, broker, pki, tls_port=port, extra='[events]\ntarget = "stderr"\nburst = 1000\n'))
    write(os.path.join(root, "devices.d", "dev-s.toml"), f"""
[device]
id = "dev-s"
[device.certificate]
subject_alt_names = ["{DEVICE_DNS}", "URI:{DEVICE_URI}"]
[mqtt]
publish = ["devices/dev-s/#"]
""")
    events = open(os.path.join(root, "iotgwd.err"), "w")
    notify = NotifySocket(root)
    d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path), stderr=events)
    check(wait_ready(notify, port), "iotgwd ready with the mutual-TLS listener")
    sub = Subscriber(broker, "devices/#", root)

    def log():
        events.flush()
        return open(events.name).read()

    def publish(cert, message):
        return subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "--cafile", pki.ca,
                               "--cert", cert[0], "--key", cert[1], "-t", "devices/dev-s/telemetry",
                               "-m", message, "-q", "1"], capture_output=True, text=True, timeout=20)

    def new_events(before, rule):
        return [l for l in log().splitlines()[before:] if f"IOTGW_RULE={rule}" in l]

    handshakes_before = len(re.findall(r"IOTGW_RULE=tls\.handshake", log()))

    print("genuine certificates")
    for what, cert in genuine.items():
        tag = "genuine-" + re.sub(r"\W+", "-", what)
        r = publish(cert, tag)
        check(r.returncode == 0 and sub.wait_for(tag), f"{what}: logs in as dev-s ({r.stderr.strip()})")

    print("names of the wrong type")
    for what, cert in wrong_type.items():
        tag = "wrong-type-" + re.sub(r"\W+", "-", what)
        before = len(log().splitlines())
        r = publish(cert, tag)
        time.sleep(0.3)
        denied = new_events(before, "default-deny")
        check(r.returncode != 0 and denied and "IOTGW_EVENT=authentication-failed" in denied[0],
              f"{what}: no device, login refused with an authentication-failed event ({(r.stderr or r.stdout).strip()})")

    print("certificates that are not client certificates")
    for what, (crt, key, reason) in not_clients.items():
        tag = "not-client-" + re.sub(r"\W+", "-", what)
        before = len(log().splitlines())
        r = publish((crt, key), tag)
        time.sleep(0.3)
        refused = new_events(before, "tls.handshake")
        check(r.returncode != 0 and len(refused) == 1 and "IOTGW_EVENT=authentication-failed" in refused[0]
              and reason in refused[0],
              f"{what}: handshake refused, one authentication-failed event naming '{reason}' "
              f"({refused[0].split('TLS handshake failed: ')[-1].split(' [')[0] if refused else 'no event'})")

    time.sleep(0.5)
    leaked = [l for l in sub.lines() if "wrong-type-" in l or "not-client-" in l]
    check(not leaked, f"nothing of theirs reached the broker ({leaked})")
    # (The readiness probe's bare connect before them was a failed handshake of its own.)
    handshakes = len(re.findall(r"IOTGW_RULE=tls\.handshake", log())) - handshakes_before
    check(handshakes == len(not_clients), f"failed handshakes counted: {handshakes} of {len(not_clients)}")

    d.signal(signal.SIGTERM)
    check(d.stop() == 0, "iotgwd exits cleanly")
finally:
    if sub:
        sub.stop()
    if d and d.alive():
        d.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
