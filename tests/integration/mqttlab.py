# SPDX-License-Identifier: GPL-3.0-or-later
"""A real mosquitto broker with a mutual-TLS listener, and certificates made at test time."""
import os
import socket
import subprocess
import time

from iotgw_testlib import wait_port, write


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class Pki:
    """A CA, a broker certificate for 127.0.0.1, client certificates, and a rogue CA."""

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self._ca("ca")
        self._ca("rogue-ca")
        self.server = self._leaf("broker", "ca", "localhost", san="DNS:localhost,IP:127.0.0.1", server=True)
        self.gateway = self._leaf("gateway", "ca", "iotgw-gateway")
        self.app = self._leaf("app", "ca", "companion-app")
        self.rogue = self._leaf("rogue", "rogue-ca", "companion-app")
        self.ca = os.path.join(directory, "ca.crt")
        self.crl = None

    def leaf(self, name, cn, san=None, ca="ca", server=False):
        """Another certificate from the CA (or from "rogue-ca")."""
        return self._leaf(name, ca, cn, san=san, server=server)

    def revoke(self, *names):
        """Writes ca.crl revoking the named certificates (openssl ca with a throw-away database)."""
        d = self.dir
        open(os.path.join(d, "index.txt"), "w").close()
        with open(os.path.join(d, "ca.cnf"), "w") as f:
            f.write(f"""[ca]
default_ca = demo
[demo]
database = {d}/index.txt
crlnumber = {d}/crlnumber
default_md = sha256
default_crl_days = 2
""")
        with open(os.path.join(d, "crlnumber"), "w") as f:
            f.write("01\n")
        for n in names:
            openssl("ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt", "-revoke", f"{n}.crt", cwd=d)
        openssl("ca", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt", "-gencrl", "-out", "ca.crl.new", cwd=d)
        os.replace(os.path.join(d, "ca.crl.new"), os.path.join(d, "ca.crl"))
        self.crl = os.path.join(d, "ca.crl")
        return self.crl

    def _ca(self, name):
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=self.dir)
        openssl("req", "-x509", "-new", "-key", f"{name}.key", "-sha256", "-days", "2", "-subj",
                f"/CN={name}", "-out", f"{name}.crt", cwd=self.dir)

    def _leaf(self, name, ca, cn, san=None, server=False):
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=self.dir)
        openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-out", f"{name}.csr", cwd=self.dir)
        ext = os.path.join(self.dir, f"{name}.ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\n")
            f.write(f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}\n")
            if san:
                f.write(f"subjectAltName={san}\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-days", "2", "-sha256", "-extfile", ext, "-out", f"{name}.crt", cwd=self.dir)
        return (os.path.join(self.dir, f"{name}.crt"), os.path.join(self.dir, f"{name}.key"))


class Broker:
    """mosquitto with one listener on 127.0.0.1 that requires client certificates: from `cafile`
    (the test CA by default), with `extra` settings appended (an ACL, a crlfile, ...)."""

    def __init__(self, directory, pki, port=None, server=None, name="mosquitto", cafile=None, extra=""):
        self.dir = directory
        self.pki = pki
        self.port = port or free_port()
        server = server or pki.server
        self.conf = os.path.join(directory, f"{name}.conf")
        self.logname = os.path.join(directory, f"{name}.log")
        with open(self.conf, "w") as f:
            f.write(f"""per_listener_settings false
user root
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
listener {self.port} 127.0.0.1
cafile {cafile or pki.ca}
certfile {server[0]}
keyfile {server[1]}
require_certificate true
tls_version tlsv1.2
""" + extra)
        self.proc = None
        self.start()

    def start(self):
        self.log = open(self.logname, "a")
        self.proc = subprocess.Popen(["mosquitto", "-c", self.conf], stdout=self.log, stderr=self.log)
        if not wait_port(self.port):
            raise RuntimeError("mosquitto did not start: " + open(self.log.name).read())

    def stop(self, sig=None):
        if self.proc and self.proc.poll() is None:
            if sig:
                self.proc.send_signal(sig)
            else:
                self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()

    def tls_args(self, who=None):
        cert, key = who or self.pki.app
        return ["-h", "127.0.0.1", "-p", str(self.port), "--cafile", self.pki.ca, "--cert", cert, "--key", key]


class Subscriber:
    """mosquitto_sub at the broker (over mutual TLS), collecting `topic payload` lines."""

    def __init__(self, broker, topic, directory, qos=1):
        self.out = os.path.join(directory, f"sub-{time.time_ns()}.txt")
        self.f = open(self.out, "w")
        self.proc = subprocess.Popen(["mosquitto_sub", *broker.tls_args(), "-t", topic, "-v", "-q", str(qos)],
                                     stdout=self.f, stderr=subprocess.STDOUT)
        time.sleep(0.5)  # let the SUBSCRIBE reach the broker

    def lines(self):
        self.f.flush()
        return open(self.out).read().splitlines()

    def wait_for(self, text, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(text in line for line in self.lines()):
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=5)
        self.f.close()


def gateway_config(root, broker, pki, port=None, tls_port=None, devices=None, extra=""):
    """iotgwd's configuration for these tests: a device-side listener on 127.0.0.1 (the device
    segment is 127.0.0.0/8) and/or a mutual-TLS listener, the broker as upstream."""
    text = f"""
[daemon]
state_directory = "{root}/state"
devices_directory = "{devices or os.path.join(root, 'devices.d')}"
[device_segment]
subnets = ["127.0.0.0/8"]
[firewall]
enabled = false
[dbus]
enabled = false
"""
    if port:
        text += f"""[listeners.mqtt]
addresses = ["127.0.0.1"]
port = {port}
"""
    if tls_port:
        text += f"""[listeners.mqtt_tls]
addresses = ["127.0.0.1"]
port = {tls_port}
certificate = "{pki.server[0]}"
private_key = "{pki.server[1]}"
ca_file = "{pki.ca}"
""" + (f'crl_file = "{pki.crl}"\n' if pki.crl else "")
    text += f"""[upstream]
host = "127.0.0.1"
port = {broker.port}
ca_file = "{pki.ca}"
certificate = "{pki.gateway[0]}"
private_key = "{pki.gateway[1]}"
"""
    return text + extra


def password_device(devices, name, password_hash, extra=""):
    """A device policy in `devices`: logs in as `name` with a password, publishes under
    devices/<its id>/ at up to QoS 2; `extra` goes into its [mqtt] table."""
    write(os.path.join(devices, f"{name}.toml"), f"""[device]
id = "{name}"
[device.mqtt]
username = "{name}"
password_hash = "{password_hash}"
[mqtt]
publish = ["devices/%d/#"]
max_qos = 2
{extra}""")
