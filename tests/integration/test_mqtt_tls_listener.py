#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The mutual-TLS MQTT listener (WolfSSL): TLS 1.2/1.3 and AEAD suites only (sslscan), the key
exchange groups X25519, P-256 and P-384 alone in both versions, a client certificate from the
configured CA required (none, another CA, a revoked one: refused), identity from the certificate
mapped to a policy, the CRL reloaded on SIGHUP without dropping sessions."""
import os
import re
import signal
import subprocess
import time

from iotgw_testlib import Daemon, NotifySocket, check, cleanup, finish, require_binary, tmpdir, write, wait_ready
from mqttlab import Broker, Pki, Subscriber, free_port, gateway_config, wait_port
import tls_groups

require_binary()

root = tmpdir()
broker = sub = d = None
keeper = None
try:
    pki = Pki(os.path.join(root, "pki"))
    cam = pki.leaf("cam", "cam-01")
    app2 = pki.leaf("app2", "companion-app-2")
    revoked = pki.leaf("lost-phone", "companion-app-3")
    crl = pki.revoke("lost-phone")
    broker = Broker(root, pki)
    port = free_port()
    conf = os.path.join(root, "iotgw.toml")
    write(conf, gateway_config(root, broker, pki, tls_port=port, extra='[events]\ntarget = "stderr"\nburst = 1000\n'))
    for name, cn, topics in [("companion-app", "companion-app", "devices/#"),
                             ("companion-app-2", "companion-app-2", "devices/#"),
                             ("companion-app-3", "companion-app-3", "devices/#"),
                             ("cam-01", "cam-01", "devices/%d/#")]:
        write(os.path.join(root, "devices.d", f"{name}.toml"), f"""
[device]
id = "{name}"
[device.certificate]
common_name = "{cn}"
[mqtt]
publish = ["{topics}"]
subscribe = ["{topics}"]
max_qos = 1
""")
    events = open(os.path.join(root, "iotgwd.err"), "w")
    notify = NotifySocket(root)
    d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path), stderr=events)
    check(wait_ready(notify, port), "iotgwd ready with the mutual-TLS listener")
    sub = Subscriber(broker, "devices/#", root)

    def pub(who, topic, message, extra=()):
        args = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "--cafile", pki.ca, "-t", topic,
                "-m", message, "-q", "1", *extra]
        if who:
            args += ["--cert", who[0], "--key", who[1]]
        return subprocess.run(args, capture_output=True, text=True, timeout=20)

    def log():
        events.flush()
        return open(events.name).read()

    print("identity from the certificate")
    r = pub(pki.app, "devices/thermo-01/cmd/setpoint", "app-says-20")
    check(r.returncode == 0 and sub.wait_for("app-says-20"), f"the app's message reaches the broker ({r.stderr.strip()})")
    r = pub(cam, "devices/cam-01/status", "cam-online", extra=("-i", "cam-01", "-u", "companion-app", "-P", "x"))
    check(r.returncode == 0 and sub.wait_for("cam-online"), "cam-01 publishes under its own certificate identity")
    pub(cam, "devices/thermo-01/cmd/unlock", "cam-impersonation", extra=("-i", "cam-01", "-u", "companion-app"))
    time.sleep(0.5)
    check(not any("cam-impersonation" in l for l in sub.lines()),
          "a user name in CONNECT cannot lend cam-01 the app's rights")

    print("refused clients")
    r = pub(None, "devices/x", "no-cert")
    check(r.returncode != 0, f"no client certificate: refused ({(r.stderr or r.stdout).strip()!r})")
    r = pub(pki.rogue, "devices/x", "rogue")
    check(r.returncode != 0, "certificate from another CA: refused")
    r = pub(revoked, "devices/x", "revoked")
    check(r.returncode != 0, "revoked certificate: refused")
    time.sleep(0.3)
    check(not any(x in l for l in sub.lines() for x in ("no-cert", "rogue", "revoked")), "none of them reached the broker")
    fails = re.findall(r"IOTGW_RULE=tls\.handshake", log())
    check(len(fails) >= 3, f"handshake failures are events ({len(fails)})")

    def s_client(*args, cert=pki.app):
        cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", pki.ca, *args]
        if cert:
            cmd += ["-cert", cert[0], "-key", cert[1]]
        return subprocess.run(cmd, input="", capture_output=True, text=True, timeout=20)

    r = s_client("-tls1_3")
    check("Protocol  : TLSv1.3" in r.stdout or "TLSv1.3" in r.stdout, "openssl s_client TLS 1.3 with a certificate: handshake")
    r = s_client("-tls1_2")
    check("TLSv1.2" in r.stdout and "Cipher is" in r.stdout and "(NONE)" not in r.stdout,
          "openssl s_client TLS 1.2 with a certificate: handshake")
    r = s_client("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    check("Cipher is (NONE)" in r.stdout or r.returncode != 0, "TLS 1.1: refused")
    before = log().count("IOTGW_RULE=tls.handshake")
    s_client("-tls1_2", cert=pki.rogue)
    time.sleep(0.3)
    after = log()
    check(after.count("IOTGW_RULE=tls.handshake") == before + 1 and "-188" in after.splitlines()[-1],
          "s_client with a certificate from another CA: refused, ASN_NO_SIGNER_E (-188) in the event")

    print("sslscan")
    # sslscan 2.0.7's TLS 1.3 probe sends an X25519 key share of rand() bytes seeded with
    # time(NULL); WolfSSL refuses about half of such keys (-352 Bad ECC Peer Key), and then the scan
    # misses TLS 1.3 for the whole second. Scan again with a new second's seed until one lands.
    accepted = []
    scans = []
    for attempt in range(10):
        if attempt:
            time.sleep(1.1)
        r = subprocess.run(["sslscan", "--no-colour", f"--certs={pki.app[0]}", f"--pk={pki.app[1]}",
                            f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
        scans.append(r.stdout)
        accepted += re.findall(r"^(?:Preferred|Accepted)\s+(TLSv[\d.]+|SSLv\d)\s+\d+ bits\s+(\S+)", r.stdout, re.M)
        if accepted:
            break
    versions = {v for v, _ in accepted}
    if not check(len(accepted) > 0, f"sslscan lists the suites ({len(accepted)} in {len(scans)} scans)"):
        print(scans[-1])
    check(versions <= {"TLSv1.2", "TLSv1.3"} and versions, f"only TLS 1.2/1.3: {sorted(versions)}")
    check(all(("GCM" in c or "CHACHA20" in c) for _, c in accepted), f"only AEAD suites: {[c for _, c in accepted]}")
    # sslscan sees TLS 1.3 only (tls_groups.py says why), so TLS 1.2's suites are checked here.
    for suite in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA", "AES128-GCM-SHA256"):
        r = s_client("-tls1_2", "-cipher", suite)
        check("Cipher is (NONE)" in r.stdout or r.returncode != 0, f"TLS 1.2 {suite}: refused")
    for old in ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"):
        check(all(re.search(rf"^{re.escape(old)}\s+disabled", out, re.M) for out in scans), f"sslscan: {old} disabled")

    print("key exchange groups")
    # One ClientHello per group, offering it alone, like sslscan's group test; sslscan's own
    # "Server Key Exchange Group(s)" section is blind here (tls_groups.py says why): it never
    # sees TLS 1.2 on WolfSSL, and it takes WolfSSL's empty HelloRetryRequests for acceptance.
    for tls13, version in ((False, "TLS 1.2"), (True, "TLS 1.3")):
        groups = tls_groups.server_groups(port, tls13)
        check(sorted(groups) == ["P-256", "P-384", "X25519"],
              f"{version}: the server uses exactly X25519, P-256 and P-384 ({groups})")

    def handshake_group(*args):
        """The group of a whole s_client handshake ("X25519", "prime256v1"), or None."""
        r = s_client(*args)
        key = re.search(r"(?:Server|Peer) Temp Key: (?:ECDH, )?([^,\n]+)", r.stdout)
        done = "Cipher is" in r.stdout and "Cipher is (NONE)" not in r.stdout
        return key.group(1) if key and done else None

    # Whole handshakes: of the groups a client offers, only the three are ever used.
    check(handshake_group("-tls1_2", "-groups", "X25519:P-256") == "X25519",
          "TLS 1.2 handshake over X25519")
    check(handshake_group("-tls1_2", "-groups", "P-521:X448:brainpoolP256r1:P-256") == "prime256v1",
          "TLS 1.2 offered P-521, X448, brainpoolP256r1 and P-256: the handshake uses P-256")
    check(handshake_group("-tls1_3", "-groups", "P-521:X448:X25519") == "X25519",
          "TLS 1.3 offered P-521, X448 and X25519: the handshake uses X25519")

    print("CRL reload on SIGHUP without dropping sessions")
    import paho.mqtt.client as paho
    import ssl
    keeper = paho.Client(client_id="keeper", protocol=paho.MQTTv311)
    keeper.tls_set(ca_certs=pki.ca, certfile=app2[0], keyfile=app2[1], tls_version=ssl.PROTOCOL_TLS_CLIENT)
    keeper.connect("127.0.0.1", port, keepalive=30)
    keeper.loop_start()
    time.sleep(0.5)
    before = keeper.publish("devices/keeper", "before-reload", qos=1)
    before.wait_for_publish(5)
    check(before.is_published() and sub.wait_for("before-reload"), "the session publishes before the reload")
    pki.revoke("lost-phone", "app2")
    d.signal(signal.SIGHUP)
    deadline = time.time() + 10
    while time.time() < deadline and "IOTGW_EVENT=config-reloaded" not in log():
        time.sleep(0.05)
    check("IOTGW_EVENT=config-reloaded" in log(), "reload done")
    info = keeper.publish("devices/keeper", "after-reload", qos=1)
    info.wait_for_publish(5)
    check(info.is_published() and sub.wait_for("after-reload"), "the established session keeps working after the reload")
    r = pub(app2, "devices/x", "app2-new-session")
    check(r.returncode != 0, "a new session with the newly revoked certificate is refused")
    r = pub(pki.app, "devices/y", "app-still-ok")
    check(r.returncode == 0 and sub.wait_for("app-still-ok"), "unrevoked certificates still work")
    keeper.loop_stop()
    keeper.disconnect()
    keeper = None

    d.signal(signal.SIGTERM)
    check(d.stop() == 0, "iotgwd exits cleanly")
finally:
    if keeper:
        keeper.loop_stop()
    if sub:
        sub.stop()
    if d and d.alive():
        d.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
