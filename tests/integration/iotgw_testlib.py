# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers for integration tests that drive the real iotgwd binary against real peers.

Each test is a script run by ctest. Tests that need private system services re-execute
themselves in a private mount namespace (unshare -m), where a private systemd-journald,
/dev/log or notify socket cannot disturb the host.
"""
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

IOTGWD = os.environ.get("IOTGWD", "")
WITH_SYSTEMD = os.environ.get("IOTGW_WITH_SYSTEMD", "1") in ("1", "ON", "TRUE", "true")

MESSAGE_IDS = {
    "daemon-started": "374298564b8a4ae3ada4bd102481fc30",
    "daemon-stopping": "34de99166a50412092525355db56601a",
    "config-reloaded": "b29e8957707b4045838e586f6327ea49",
    "config-rejected": "ea544e8e870e44f3ac4cde967ee935ae",
}

failures = []


def check(cond, what):
    """Records a failed expectation without stopping the test, like EXPECT_* in GoogleTest."""
    status = "ok  " if cond else "FAIL"
    print(f"  [{status}] {what}", flush=True)
    if not cond:
        failures.append(what)
    return cond


def finish():
    if failures:
        print(f"{len(failures)} expectation(s) failed:")
        for f in failures:
            print("  - " + f)
        sys.exit(1)
    print("all expectations met")
    sys.exit(0)


def debian_archive():
    """The Debian archive this machine's apt uses: its first bookworm source."""
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*")):
        try:
            text = open(path).read()
        except OSError:
            continue
        for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M):
            return m.group(1)
        for stanza in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:(.*)$", stanza, re.M)
            if uris and suites and "bookworm" in suites.group(1).split():
                return uris.group(1)
    return "http://deb.debian.org/debian"


def debootstrap(root, include, log_path):
    """A minimal Debian 12 in `root` with `include` and what they depend on, from the machine's own
    archive (the only network CI has)."""
    started = time.time()
    with open(log_path, "w") as log:
        subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(include),
                        "bookworm", root, debian_archive()], check=True, stdout=log,
                       stderr=subprocess.STDOUT)
    print(f"debootstrap: {time.time() - started:.0f} s, {len(include)} packages asked for")


def require_binary():
    if not IOTGWD or not os.access(IOTGWD, os.X_OK):
        print(f"IOTGWD={IOTGWD!r} is not an executable iotgwd", file=sys.stderr)
        sys.exit(2)


def in_private_namespaces(unshare_args, needs):
    """Re-executes this script once under `unshare UNSHARE_ARGS` (["-n"]: a network namespace of
    its own); `needs` says what it needs root for."""
    if os.environ.get("IOTGW_TEST_IN_NS") == "1":
        return
    if os.geteuid() != 0:
        print(f"this test needs root ({needs})", file=sys.stderr)
        sys.exit(2)
    env = dict(os.environ, IOTGW_TEST_IN_NS="1")
    sys.exit(subprocess.call(["unshare", *unshare_args, sys.executable] + sys.argv, env=env))


def in_private_mount_namespace():
    """Re-executes this script under `unshare -m --propagation private` once."""
    in_private_namespaces(["-m", "--propagation", "private"], "mount namespace, private services")


def tmpdir(prefix="iotgw-it-"):
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)
    return d


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def hash_password(password):
    out = subprocess.run([IOTGWD, "--hash-password"], input=password + "\n", capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


class Journald:
    """A private systemd-journald; call only inside a private mount namespace."""

    def __init__(self):
        for d in ("/run/systemd", "/run/log"):
            os.makedirs(d, exist_ok=True)
            subprocess.check_call(["mount", "-t", "tmpfs", "tmpfs", d])
        if os.path.isdir("/var/log/journal"):
            subprocess.check_call(["mount", "-t", "tmpfs", "tmpfs", "/var/log/journal"])
        os.makedirs("/run/systemd/journal", exist_ok=True)
        self.proc = subprocess.Popen(["/lib/systemd/systemd-journald"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while not os.path.exists("/run/systemd/journal/socket"):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("systemd-journald did not start")
            time.sleep(0.05)

    def entries(self, message_id, expect=1, timeout=5.0):
        """JSON entries with MESSAGE_ID, waiting until at least `expect` are there."""
        deadline = time.time() + timeout
        while True:
            subprocess.call(["journalctl", "--flush"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out = subprocess.run(["journalctl", "--no-pager", "-o", "json", f"MESSAGE_ID={message_id}"],
                                 capture_output=True, text=True).stdout
            found = [json.loads(line) for line in out.splitlines() if line.strip()]
            if len(found) >= expect or time.time() > deadline:
                return found
            time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class NotifySocket:
    """The service manager's end of sd_notify: a datagram socket the daemon writes to."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []

    def wait_for(self, text, timeout=5.0):
        """Returns the first message (after those already consumed) containing `text`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.time()))
            try:
                msg = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            self.messages.append(msg)
            if text in msg:
                return msg
        return None

    def drain(self, seconds):
        got = []
        deadline = time.time() + seconds
        while time.time() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.time()))
            try:
                got.append(self.sock.recv(4096).decode())
            except socket.timeout:
                break
        self.messages.extend(got)
        return got


def wait_port(port, timeout=10.0):
    """Whether something accepts TCP connections on 127.0.0.1:port within `timeout`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def wait_ready(notify, port, timeout=10.0):
    """Readiness: READY=1 where the build has sd_notify, and the listener accepting."""
    if WITH_SYSTEMD and notify.wait_for("READY=1", timeout) is None:
        return False
    return wait_port(port, timeout)


class Daemon:
    def __init__(self, args, env=None, stderr=None):
        self.proc = subprocess.Popen([IOTGWD] + args, env=env, stdout=subprocess.PIPE,
                                     stderr=stderr if stderr is not None else subprocess.PIPE, text=True)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=10):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None


DEVICE_TEMPLATE = """[device]
id = "{id}"
mac = "{mac}"
addresses = ["{address}"]
model = "legacy sensor"

[mqtt]
publish = ["devices/%d/telemetry/#"]
"""


def device_policy(dev_id, n):
    return DEVICE_TEMPLATE.format(id=dev_id, mac=f"02:00:00:00:00:{n:02x}", address=f"192.168.50.{n}")


def config_text(root, target="auto"):
    return f"""# written by an integration test
[daemon]
state_directory = "{root}/state"
devices_directory = "{root}/devices.d"

[device_segment]
interfaces = ["br-iot"]
subnets = ["192.168.50.0/24"]

[firewall]
enabled = false  # the firewall's own tests run in network namespaces they make

[dbus]
enabled = false  # test_dbus.py runs a private bus

[events]
target = "{target}"
burst = 50
"""


def cleanup(path):
    shutil.rmtree(path, ignore_errors=True)


def remove_namespaces(names):
    """Kills whatever still runs in each network namespace, then deletes it (missing ones too)."""
    for ns in names:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        for pid in pids.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


PRIVATE_BUS_CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "system-bus.conf.in")


def terminate(proc, timeout=20):
    """SIGTERM, and SIGKILL if it has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def check_stopped_cleanly(proc, lines):
    """A non-zero exit of iotgwd, or a sanitizer's report among its output `lines`, is a failed
    expectation."""
    reports = [e for e in lines if "Sanitizer" in e or "runtime error:" in e]
    check(proc.returncode == 0 and not reports,
          f"iotgwd stopped cleanly (exit {proc.returncode}){': ' + reports[0] if reports else ''}")


def private_bus(directory, name, extra):
    """A system-like dbus-daemon on a socket in `directory`, with `extra` policy appended (for
    example the project's org.iotgw.Gateway1.conf). Returns (process, address)."""
    sock = os.path.join(directory, f"{name}.sock")
    conf = os.path.join(directory, f"{name}.conf")
    template = open(PRIVATE_BUS_CONF).read()
    write(conf, template.replace("@SOCKET@", sock).replace("@EXTRA@", extra))
    p = subprocess.Popen(["dbus-daemon", "--config-file", conf, "--nofork", "--print-address"],
                         stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip()
