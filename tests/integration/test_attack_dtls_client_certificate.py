#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attack: get into the DTLS endpoint with a certificate that is no client certificate (issue 14,
item 9, the DTLS part).

Whoever holds the CA's key can present the CA certificate itself, and a server's certificate from
the same CA (serverAuth only) is no client identity either; OpenSSL verifies both as valid chains.
The endpoint must refuse, as client certificates, CA certificates (basicConstraints CA:TRUE) and
certificates without the clientAuth extended key usage: the handshake fails, is counted, and an
authentication-failed event names the reason. A proper client certificate still works. Checked
with coap-client-openssl against the real iotgwd, certificates made with the openssl CLI here.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import check, cleanup, finish, require_binary, tmpdir  # noqa: E402
from coaplab import (TIME_ANSWER, Certificates, Gateway, coap_client, coap_config, device_policy,  # noqa: E402
                     free_udp_port, leaf_with)


def main():
    require_binary()
    if os.geteuid() != 0:
        print("needs root (a private system bus)", file=sys.stderr)
        sys.exit(2)
    root = tmpdir("iotgw-client-cert-")
    gw, device = None, None
    try:
        certs = Certificates(os.path.join(root, "pki"))
        pki = certs.pki
        ca_itself = (pki.ca, os.path.join(pki.dir, "ca.key"))
        server_only = pki.leaf("server-only", "app.hub.local", san="DNS:app.hub.local", server=True)
        no_eku = leaf_with(pki, "no-eku", "app.hub.local",
                           "basicConstraints=CA:FALSE\nsubjectAltName=DNS:app.hub.local\n")
        sub_ca = leaf_with(pki, "sub-ca", "app.hub.local",
                           "basicConstraints=critical,CA:TRUE\nkeyUsage=keyCertSign,cRLSign,digitalSignature\n"
                           "extendedKeyUsage=clientAuth\nsubjectAltName=DNS:app.hub.local\n")
        dtls, dev_port = free_udp_port(), free_udp_port("127.0.0.2")
        devices = os.path.join(root, "devices.d")
        device_policy(devices, dev_port)
        log = open(os.path.join(root, "device.log"), "w")
        device = subprocess.Popen(["coap-server-notls", "-A", "127.0.0.2", "-p", str(dev_port), "-v", "7"],
                                  stdout=log, stderr=subprocess.STDOUT)
        conf = os.path.join(root, "iotgw.toml")
        with open(conf, "w") as f:
            f.write(coap_config(root, certs, ["127.0.0.1"], dtls, devices))
        gw = Gateway(root, conf)
        check(bool(gw.counters()), "iotgwd is up")
        url = f"coaps://127.0.0.1:{dtls}/legacy-sensor/time"

        def requests_at_device():
            log.flush()
            return sum(1 for ln in open(log.name) if ln.startswith("v:1 t:CON c:GET"))

        out = coap_client(certs, url, "-m", "get")
        check(TIME_ANSWER.fullmatch(out) is not None, f"a client certificate (clientAuth) works: {out!r}")
        seen = requests_at_device()
        for name, cert, reason in (("the CA certificate itself", ca_itself, "CA certificate"),
                                   ("a certificate with serverAuth only", server_only, ""),
                                   ("a certificate without extended key usage", no_eku, "clientAuth"),
                                   ("a CA:TRUE certificate with clientAuth", sub_ca, "CA certificate")):
            before = gw.counters()
            out = coap_client(certs, url, "-m", "get", cert=cert, wait=3)
            time.sleep(0.2)
            after = gw.counters()
            check(TIME_ANSWER.fullmatch(out) is None and ("alert" in out or "handshake" in out or "certificate" in out),
                  f"{name}: the handshake fails ({out[-90:]!r})")
            failed = after.get("coap_handshakes_failed", 0) - before.get("coap_handshakes_failed", 0)
            refused = after.get("coap_certificates_refused", 0) - before.get("coap_certificates_refused", 0)
            check(failed == 1 and refused == 1, f"{name}: counted as a failed handshake and a refused certificate "
                                                f"({failed}, {refused})")
            # OpenSSL itself refuses a certificate whose extended key usage excludes TLS clients
            # (the purpose check); the other three it takes, and iotgwd refuses.
            rule = "listeners.coap_dtls." + ("client_certificate" if reason else "ca_file")
            reason = reason or "certificate purpose"
            events = [e for e in gw.events() if "IOTGW_EVENT=authentication-failed" in e
                      and f"IOTGW_RULE={rule}" in e and reason in e]
            check(len(events) >= 1, f"{name}: an authentication-failed event names the reason: {events[-1:]}")
            check(after.get("coap_sessions", 0) == 0, f"{name}: no session")
        check(requests_at_device() == seen, "none of them reached the device")
        out = coap_client(certs, url, "-m", "get")
        check(TIME_ANSWER.fullmatch(out) is not None, f"the proper client still works: {out!r}")
        check(gw.alive(), "iotgwd is still running")
    finally:
        if gw:
            gw.stop()
        if device:
            device.terminate()
            device.wait(timeout=10)
        cleanup(root)
    finish()


if __name__ == "__main__":
    main()
