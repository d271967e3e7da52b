#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Per-device identities from the gateway CA (EN 303 645 5.1-1, 5.4-4, 5.11-1), with real parts:
iotgwd on a private system bus, iotgwctl as the client (and `iotgwctl watch` for the signals),
a real mosquitto that trusts the gateway CA and grants topics by certificate name
(use_identity_as_username), a legacy device speaking plain MQTT with paho, and openssl checking
what iotgwd wrote.

* first start makes the CA: a fresh key, owner-only; a restart keeps it; a key readable by others
  stops the daemon;
* enrolment with upstream_identity = "issued" gives the device a certificate of its own, which
  its upstream session presents: the broker lets that name (and only it) publish;
* RemoveDevice revokes the certificate in the CRL and deletes it and its key; no file in the
  state directory names the device; a broker using the CRL refuses a saved copy of the removed
  device's certificate and still accepts another device's;
* every step is seen as a D-Bus signal.
"""
import datetime
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import (IOTGWD, check, finish, hash_password, private_bus, require_binary,  # noqa: E402
                           tmpdir, wait_port, write)
from mqttlab import Broker, Pki, Subscriber, free_port, gateway_config  # noqa: E402

IOTGWCTL = os.path.join(os.path.dirname(IOTGWD), "iotgwctl")
ROOT_MAY_OWN = ('<policy user="root"><allow own="org.iotgw.Gateway1"/>'
                '<allow send_destination="org.iotgw.Gateway1"/></policy>')


def policy(dev_id, identity):
    return f"""[device]
id = "{dev_id}"
[device.mqtt]
client_id = "{dev_id}"
username = "{dev_id}"
password_hash = "{hash_password('pw-' + dev_id)}"
[mqtt]
upstream_identity = "{identity}"
upstream_prefix = "home/%d/"
publish = ["telemetry/#"]
"""


ACL = ("user thermo-01\ntopic write home/thermo-01/#\n"
       "user plug-03\ntopic write home/plug-03/#\n"
       "user companion-app\ntopic read #\n")


def start_broker(root, name, pki, cafile, port, crlfile=None):
    """mosquitto that names clients by their certificate's CN and grants topics by that name:
    `cafile` decides whom it trusts, `crlfile` whom it no longer does."""
    acl = os.path.join(root, f"{name}.acl")
    write(acl, ACL)
    extra = f"use_identity_as_username true\nacl_file {acl}\n" + (f"crlfile {crlfile}\n" if crlfile else "")
    return Broker(root, pki, port=port, name=name, cafile=cafile, extra=extra)


def openssl(*args):
    r = subprocess.run(["openssl", *args], capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def main():
    require_binary()
    if os.geteuid() != 0:
        print("needs root (mosquitto's user, a private bus)", file=sys.stderr)
        sys.exit(2)
    import paho.mqtt.client as paho  # Debian's python3-paho-mqtt

    root = tmpdir("iotgw-identities-")
    procs, brokers = [], []
    d = None
    try:
        pki = Pki(os.path.join(root, "pki"))
        state = os.path.join(root, "state")
        ca_dir = os.path.join(state, "ca")
        bus, address = private_bus(root, "system", ROOT_MAY_OWN)
        procs.append(bus)
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address)

        def ctl(*args, stdin=None):
            r = subprocess.run([IOTGWCTL, *args], capture_output=True, text=True, timeout=20, env=env,
                               input=stdin)
            return r.returncode, r.stdout + r.stderr

        # The broker's port goes into iotgwd's configuration, but the broker can only start once
        # iotgwd has made the gateway CA: pick the port now, start the broker after iotgwd.
        broker_port = free_port()
        port = free_port()
        conf = os.path.join(root, "iotgw.toml")
        write(conf, gateway_config(root, type("At", (), {"port": broker_port})(), pki, port=port)
              .replace("[dbus]\nenabled = false", "[dbus]\nenabled = true"))
        os.makedirs(os.path.join(root, "devices.d"), exist_ok=True)
        err = open(os.path.join(root, "iotgwd.err"), "w")

        def start_daemon():
            p = subprocess.Popen([IOTGWD, "--config", conf], env=env, stdout=subprocess.DEVNULL, stderr=err)
            ok = wait_port(port)
            deadline = time.time() + 10
            while ok and ctl("status")[0] != 0 and time.time() < deadline:
                time.sleep(0.05)
            return p, ok

        d, ok = start_daemon()
        check(ok, "iotgwd starts and listens")

        # 1. The CA, made on first start.
        ca_pem, ca_key = os.path.join(ca_dir, "ca.pem"), os.path.join(ca_dir, "ca.key")
        check(os.path.exists(ca_pem) and os.path.exists(ca_key), "first start made ca/ca.pem and ca/ca.key")
        mode = stat.S_IMODE(os.stat(ca_key).st_mode)
        check(mode == 0o600 and os.stat(ca_key).st_uid == os.geteuid(),
              f"the CA key is owner-only (mode {mode:04o})")
        check(stat.S_IMODE(os.stat(state).st_mode) == 0o700, "the state directory is owner-only")
        rc, text = openssl("x509", "-in", ca_pem, "-noout", "-text")
        check(rc == 0 and "CA:TRUE" in text and "Certificate Sign, CRL Sign" in text
              and "ecdsa-with-SHA256" in text and "prime256v1" in text,
              "the CA certificate is a P-256 CA for certificates and CRLs")
        ca_name = re.search(r"Subject: .*CN ?= ?(iotgw gateway CA [0-9a-f]{8})", text)
        check(ca_name is not None, "the CA's name carries a random suffix: " + (ca_name.group(1) if ca_name else text[:300]))
        rc, status = ctl("--json", "status")
        s = json.loads(status) if rc == 0 else {}
        check(s.get("ca") == (ca_name.group(1) if ca_name else None) and s.get("ca_certificate") == ca_pem
              and s.get("crl") == os.path.join(ca_dir, "crl.pem"), f"GetStatus names the CA and its files: {status}")
        rc, text = openssl("crl", "-in", os.path.join(ca_dir, "crl.pem"), "-CAfile", ca_pem, "-noout")
        check(rc == 0 and "verify OK" in text, f"the first CRL is signed by the CA: {text.strip()}")

        # The broker trusts the test CA (the app, the gateway's shared certificate) and the gateway CA.
        bundle = os.path.join(root, "trusted.pem")
        write(bundle, open(pki.ca).read() + open(ca_pem).read())
        broker = start_broker(root, "broker", pki, bundle, broker_port)
        brokers.append(broker)

        # 2. Enrolment issues the device its own certificate; the signals say so.
        watch_out = os.path.join(root, "watch.txt")
        watcher = subprocess.Popen([IOTGWCTL, "--json", "watch", "--count", "5"], env=env,
                                   stdout=open(watch_out, "w"), stderr=subprocess.STDOUT)
        procs.append(watcher)
        time.sleep(0.3)  # the match rules in place before anything happens
        rc, out = ctl("enroll", "thermo-01", "-", stdin=policy("thermo-01", "issued"))
        check(rc == 0, f"iotgwctl enroll with upstream_identity = issued: {out.strip()}")
        rc, out = ctl("enroll", "lamp-02", "-", stdin=policy("lamp-02", "shared"))
        check(rc == 0, f"iotgwctl enroll with the shared identity: {out.strip()}")
        try:
            watcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watcher.kill()
        signals = [json.loads(line) for line in open(watch_out).read().splitlines() if line.startswith("{")]
        changes = [(x.get("id"), x.get("change")) for x in signals if x["signal"] == "DeviceChanged"]
        counts = [x["changed"].get("DeviceCount") for x in signals if x["signal"] == "PropertiesChanged"]
        check(changes[:2] == [("thermo-01", "identity-issued"), ("thermo-01", "enrolled")],
              f"watch saw DeviceChanged identity-issued then enrolled: {signals}")
        check(counts == [1, 2], f"watch saw DeviceCount go to 1, then 2, and nothing else: {signals}")

        cert = os.path.join(state, "identities", "thermo-01.pem")
        key = os.path.join(state, "identities", "thermo-01.key")
        check(os.path.exists(cert) and stat.S_IMODE(os.stat(key).st_mode) == 0o600,
              "identities/thermo-01.pem and an owner-only key")
        check(not os.path.exists(os.path.join(state, "identities", "lamp-02.pem")),
              "a device with the shared identity gets no certificate")
        rc, text = openssl("verify", "-CAfile", ca_pem, "-purpose", "sslclient", cert)
        check(rc == 0 and ": OK" in text, f"openssl: the device certificate chains to the gateway CA: {text.strip()}")
        rc, text = openssl("x509", "-in", cert, "-noout", "-subject", "-serial")
        serial = re.search(r"serial=([0-9A-F]+)", text)
        check("CN = thermo-01" in text and serial is not None, f"subject names the device: {text.strip()}")
        rc, shown = ctl("--json", "show", "thermo-01")
        st = json.loads(shown)["state"] if rc == 0 else {}
        check(st.get("identity") == "issued" and serial and st.get("certificate_serial") == serial.group(1).lower(),
              f"GetDevice gives the identity and serial: {st}")
        expires = st.get("certificate_expires", "")
        try:
            expires_at = datetime.datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
        except (TypeError, ValueError):
            expires_at = None
        check(expires_at is not None and abs(expires_at.timestamp() - (time.time() + 730 * 86400)) < 2 * 86400,
              f"valid for two years, in ISO 8601 UTC with --json ({expires!r})")
        rc, shown = ctl("show", "thermo-01")
        line = next((l for l in shown.splitlines() if "certificate_expires" in l), "")
        check(re.search(r"certificate_expires +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \(in 7(29|30) days\)$", line) is not None,
              f"and for a person as a date with how far away it is ({line.strip()!r})")

        # 3. The upstream presents it: the broker lets thermo-01 (and only it) publish under its name.
        sub = Subscriber(broker, "home/#", root)

        def device_publish(dev_id, topic, payload):
            c = paho.Client(client_id=dev_id, protocol=paho.MQTTv311)
            c.username_pw_set(dev_id, "pw-" + dev_id)
            c.connect("127.0.0.1", port)
            c.loop_start()
            info = c.publish(topic, payload, qos=1)
            info.wait_for_publish(timeout=5)
            time.sleep(0.3)
            c.disconnect()
            c.loop_stop()
            return info.is_published()

        check(device_publish("thermo-01", "telemetry/t", "21.5"), "thermo-01's publish is acknowledged")
        check(sub.wait_for("home/thermo-01/telemetry/t 21.5"),
              "the broker accepted it from the name thermo-01: the upstream presented the device's own certificate")
        device_publish("lamp-02", "telemetry/t", "on")
        time.sleep(1)
        check(not any("home/lamp-02" in line for line in sub.lines()),
              "the shared-identity device is the gateway at the broker, whose ACL gives it nothing")
        sub.stop()

        # 4. Another issued identity, to show the CRL is selective.
        rc, out = ctl("enroll", "plug-03", "-", stdin=policy("plug-03", "issued"))
        check(rc == 0, "plug-03 enrolled with its own identity")
        saved = os.path.join(root, "saved")
        os.makedirs(saved)
        shutil.copy(cert, saved)
        shutil.copy(key, saved)
        crl_before = open(os.path.join(ca_dir, "crl.pem")).read()

        # 5. Removal: revoked, deleted, nothing left that names the device.
        watcher = subprocess.Popen([IOTGWCTL, "watch", "--count", "3"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.3)
        rc, out = ctl("remove", "thermo-01")
        check(rc == 0, f"iotgwctl remove: {out.strip()}")
        try:
            seen, _ = watcher.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            watcher.kill()
            seen, _ = watcher.communicate()
        check("DeviceChanged thermo-01 identity-revoked" in seen and "DeviceChanged thermo-01 removed" in seen
              and "PropertiesChanged org.iotgw.Gateway1.Manager DeviceCount=2" in seen,
              f"watch saw the revocation, the removal and DeviceCount=2: {seen!r}")
        leftovers = []
        for dirpath, dirnames, filenames in os.walk(state):
            for name in dirnames + filenames:
                if "thermo-01" in name:
                    leftovers.append(os.path.join(dirpath, name))
            for name in filenames:
                p = os.path.join(dirpath, name)
                if b"thermo-01" in open(p, "rb").read():
                    leftovers.append(p + " (content)")
        check(not leftovers, f"nothing in the state directory names thermo-01: {leftovers}")
        crl = os.path.join(ca_dir, "crl.pem")
        check(open(crl).read() != crl_before, "the CRL was rewritten")
        rc, text = openssl("crl", "-in", crl, "-CAfile", ca_pem, "-noout", "-text")
        check(rc == 0 and "verify OK" in text and serial and serial.group(1) in text.replace(":", "").upper(),
              "the new CRL verifies and lists the removed device's serial")
        copy = os.path.join(saved, "thermo-01.pem")
        rc, text = openssl("verify", "-crl_check", "-CAfile", ca_pem, "-CRLfile", crl, copy)
        check(rc != 0 and "certificate revoked" in text, f"openssl: the saved copy is revoked: {text.strip()}")
        plug = os.path.join(state, "identities", "plug-03.pem")
        rc, text = openssl("verify", "-crl_check", "-CAfile", ca_pem, "-CRLfile", crl, plug)
        check(rc == 0 and ": OK" in text, f"openssl: plug-03 is not: {text.strip()}")

        # A broker that uses the CRL refuses the saved copy and accepts plug-03.
        strict = start_broker(root, "strict", pki, ca_pem, free_port(), crlfile=crl)
        brokers.append(strict)

        def pub_as(who):
            r = subprocess.run(["mosquitto_pub", *strict.tls_args(who), "-t", f"home/{os.path.basename(who[0])[:-4]}/x",
                                "-m", "1", "-q", "1"], capture_output=True, text=True, timeout=20)
            return r.stdout + r.stderr

        out = pub_as((copy, os.path.join(saved, "thermo-01.key")))
        check(re.search(r"(?i)error|refused|lost|revoked|handshake", out) is not None,
              f"mosquitto refuses the removed device's certificate: {out.strip()!r}")
        out = pub_as((plug, os.path.join(state, "identities", "plug-03.key")))
        check(out.strip() == "", f"mosquitto accepts plug-03's: {out.strip()!r}")

        # 6. A restart keeps the CA and the identities; the CRL keeps the revocation.
        ca_text, plug_text = open(ca_pem).read(), open(plug).read()
        d.terminate()
        d.wait(timeout=10)
        d, ok = start_daemon()
        check(ok, "iotgwd restarts")
        check(open(ca_pem).read() == ca_text and open(plug).read() == plug_text,
              "a restart keeps the CA and plug-03's certificate")
        rc, text = openssl("verify", "-crl_check", "-CAfile", ca_pem, "-CRLfile", crl, copy)
        check("certificate revoked" in text, "the CRL written at restart still revokes thermo-01")
        d.terminate()
        d.wait(timeout=10)

        # 7. A CA key others can read is refused.
        os.chmod(ca_key, 0o640)
        r = subprocess.run([IOTGWD, "--config", conf], env=env, capture_output=True, text=True, timeout=20)
        check(r.returncode != 0 and "readable by its owner" in r.stderr,
              f"iotgwd refuses a CA key of mode 0640: {r.stderr.strip()[-200:]}")
        os.chmod(ca_key, 0o600)
    finally:
        if d and d.poll() is None:
            d.terminate()
            d.wait(timeout=10)
        for b in brokers:
            b.stop()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=5)
        shutil.rmtree(root, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
