# SPDX-License-Identifier: GPL-3.0-or-later
"""The Debian package, installed in a Debian 12 that boots under real systemd.

A root made with debootstrap from the machine's own Debian archive is booted with
`systemd-nspawn --register=no --keep-unit --private-network -b` (its own network namespace: its
nftables table never touches this machine's) and entered with `nsenter -a`. Inside it the
package is installed with apt as an administrator would, and the test checks what the service
is under its own unit: active as user iotgw with exactly CAP_NET_ADMIN and CAP_NET_BIND_SERVICE,
its security score, iotgwctl over the container's system bus for root, an iotgw-admin member, a
reader and nobody, its events with their catalog text, a reload that applies a changed policy, the
watchdog, no own-change loop of the drift monitor, an upgrade that keeps policies, the gateway CA
and the configuration, and a purge that leaves nothing behind.

usage: booted_package_test.py DEB_DIR WORK_DIR      (run as root; WORK_DIR is emptied first)
"""
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import check, debootstrap, finish  # noqa: E402

CAP_NET_BIND_SERVICE, CAP_NET_ADMIN = 10, 12
CAPS = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_BIND_SERVICE)
README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "README.md")


def runtime_packages(deb):
    """The package's Depends and Recommends, first alternative each, without versions: what apt
    installs with it, given to debootstrap (the container has no network of its own)."""
    fields = subprocess.run(["dpkg-deb", "-f", deb, "Depends", "Recommends"], check=True,
                            capture_output=True, text=True).stdout
    relations = ",".join(line.partition(":")[2] for line in fields.splitlines())
    names = []
    for alt in relations.split(","):
        name = alt.split("|")[0].split("(")[0].strip()
        if name and not name.startswith("dbus-system-bus"):
            names.append(name)
    return names


class Container:
    def __init__(self, root):
        self.root = root
        self.log = open(os.path.join(os.path.dirname(root), "nspawn.log"), "w")
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "--register=no", "--keep-unit", "--private-network", "-q",
             "-D", root, "-b"], stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid1 = None
        deadline = time.time() + 90
        state = ""
        while time.time() < deadline:
            if self.nspawn.poll() is not None:
                raise SystemExit(f"systemd-nspawn exited with {self.nspawn.returncode}; see nspawn.log")
            if self.pid1 is None:
                kids = subprocess.run(["pgrep", "-P", str(self.nspawn.pid)], capture_output=True,
                                      text=True).stdout.split()
                if kids and open(f"/proc/{kids[0]}/comm").read().strip() == "systemd":
                    self.pid1 = int(kids[0])
            if self.pid1 is not None:
                state = self.sh("systemctl is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.5)
        raise SystemExit(f"the container did not boot in 90 s (state {state!r}); see nspawn.log")

    def sh(self, cmd, user=None, check=True, timeout=180):
        argv = ["nsenter", "-t", str(self.pid1), "-a", "--"]
        argv += ["runuser", "-u", user, "--"] if user else []
        r = subprocess.run(argv + ["sh", "-c", cmd], capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise SystemExit(f"in the container, {cmd!r} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        return r

    def out(self, cmd, **kw):
        return self.sh(cmd, **kw).stdout.strip()

    def stop(self):
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)  # nspawn powers the container off
            try:
                self.nspawn.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait()


def wait_for(what, predicate, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return check(False, f"{what} (waited {timeout:.0f} s)")


def status_of(c, pid):
    fields = {}
    for line in c.out(f"cat /proc/{pid}/status").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def upgraded_deb(deb, work):
    """The same package as version 0.1.0+1: what an upgrade installs over the first."""
    tree = os.path.join(work, "repack")
    subprocess.run(["dpkg-deb", "-R", deb, tree], check=True)
    control = os.path.join(tree, "DEBIAN", "control")
    text = re.sub(r"^Version: .*$", "Version: 0.1.0+1", open(control).read(), flags=re.M)
    open(control, "w").write(text)
    out = os.path.join(work, "iotgw_0.1.0+1_amd64.deb")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", tree, out], check=True,
                   capture_output=True)
    return out


PLUG = """[device]
id = "plug-01"
mac = "02:00:00:00:00:21"
addresses = ["{address}"]
[network]
services = ["80/tcp"]
"""

CAMERA = """[device]
id = "cam-01"
mac = "02:00:00:00:00:31"
addresses = ["192.168.50.31"]
"""


def guide_blocks():
    """The shell blocks of the README's "Protect your first device", as an administrator types them."""
    text = open(README).read()
    section = text.split("\n## Protect your first device\n", 1)[1].split("\n## ", 1)[0]
    return [textwrap.dedent(body) for _, body in re.findall(r"^( *)```sh\n(.*?)^\1```", section, re.M | re.S)]


def queued(c):
    r = c.sh("iotgwctl --json show thermo-01", check=False)
    return json.loads(r.stdout)["state"].get("queued_messages") if r.returncode == 0 else None


def first_device(c):
    """The README's walk-through, its commands run as written: the thermostat's readings reach the
    hub's mosquitto over TLS, under the certificate the gateway's CA issued it."""
    blocks = guide_blocks()
    check(len(blocks) == 3, f"the README's first-device guide has its three command blocks ({len(blocks)})")
    # Step 1, the segment, is br-iot above; the thermostat sits on a port of it with the example
    # policy's MAC and address. An anonymous loopback listener lets the test see the broker's side.
    c.sh("ip netns add thermo && ip link add thermo0 type veth peer name eth0 netns thermo"
         " && ip link set thermo0 master br-iot up && ip -n thermo link set lo up"
         " && ip -n thermo link set eth0 address 02:00:00:00:00:10"
         " && ip -n thermo addr add 192.168.50.10/24 dev eth0 && ip -n thermo link set eth0 up")
    c.sh("printf 'listener 1884 127.0.0.1\\nallow_anonymous true\\n' > /etc/mosquitto/conf.d/zz-test.conf")
    for n, block in enumerate(blocks, 2):
        r = c.sh("set -e; cd /root\n" + block, check=False, timeout=120)
        said = (r.stdout + r.stderr).strip()
        shown = said.splitlines()[-1] if r.returncode == 0 and said else said[-600:]
        check(r.returncode == 0, f"step {n} of the guide runs as written ({shown})")
    check(wait_for("iotgwd active with the example configuration",
                   lambda: c.out("systemctl is-active iotgwd", check=False) == "active"),
          "iotgwd is active with the example configuration")
    st = json.loads(c.out("iotgwctl --json show thermo-01"))["state"]
    check(st.get("identity") == "issued", f"thermo-01 is enrolled with its own certificate ({st.get('identity')})")
    sub = subprocess.Popen(["nsenter", "-t", str(c.pid1), "-a", "--", "mosquitto_sub", "-h", "127.0.0.1",
                            "-p", "1884", "-i", "app", "-c", "-q", "1", "-t", "devices/#", "-v", "-C", "1",
                            "-W", "30"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.5)
    r = c.sh("ip netns exec thermo mosquitto_pub -h 192.168.50.1 -i thermo-01 -q 1"
             " -t devices/thermo-01/telemetry/temp -m '{\"t\":20}'", check=False, timeout=30)
    check(r.returncode == 0, f"the thermostat publishes a reading to 192.168.50.1 ({r.stderr.strip()})")
    out = sub.communicate(timeout=40)[0].strip()
    check(out == 'devices/thermo-01/telemetry/temp {"t":20}',
          f"it reaches the hub's mosquitto, through its ACL for user thermo-01 ({out!r})")
    c.sh("ip netns exec thermo mosquitto_pub -h 192.168.50.1 -i thermo-01 -q 1"
         " -t devices/thermo-01/telemetry/temp -m '{\"t\":200}'", check=False, timeout=30)
    rejected = lambda: c.out("journalctl --no-pager -o verbose IOTGW_EVENT=payload-rejected", check=False)
    found = wait_for("a payload-rejected event", lambda: "IOTGW_DEVICE=thermo-01" in rejected())
    check(found, "a reading out of range is refused: a payload-rejected event for thermo-01 in the journal"
          + ("" if found else "; the journal ends:\n" + c.out("journalctl -u iotgwd --no-pager | tail -15")))


def main():
    deb_dir, work = sys.argv[1], sys.argv[2]
    debs = [d for d in glob.glob(os.path.join(deb_dir, "iotgw_*.deb"))]
    if len(debs) != 1:
        raise SystemExit(f"expected one iotgw_*.deb in {deb_dir}, found {debs}")
    deb = debs[0]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    root = os.path.join(work, "root")
    include = ["systemd", "systemd-sysv", "dbus", "nftables", "openssl", "procps", "iproute2",
               "mosquitto", "mosquitto-clients"]
    include += runtime_packages(deb)
    debootstrap(root, include, os.path.join(work, "debootstrap.log"))
    shutil.copy(deb, os.path.join(root, "var/tmp/iotgw.deb"))
    shutil.copy(upgraded_deb(deb, work), os.path.join(root, "var/tmp/iotgw-upgrade.deb"))

    c = Container(root)
    try:
        run_checks(c)
    finally:
        c.stop()
    if not os.environ.get("IOTGW_KEEP_ROOT"):
        shutil.rmtree(work, ignore_errors=True)
    finish()


def run_checks(c):
    print("booted:", c.out("systemctl is-system-running"), "| systemd",
          c.out("systemctl --version | head -1"))

    print("installing the package with apt")
    c.sh("apt-get install -y -q /var/tmp/iotgw.deb")
    check(wait_for("iotgwd is active after installation",
                   lambda: c.out("systemctl is-active iotgwd", check=False) == "active"),
          "apt-get install starts iotgwd: systemctl is-active iotgwd = active")
    check(c.out("systemctl show -p SubState --value iotgwd") == "running", "its sub-state is running")

    # Who it runs as, with what.
    pid = c.out("systemctl show -p MainPID --value iotgwd")
    st = status_of(c, pid)
    uid = c.out("id -u iotgw")
    check(st["Uid"].split()[0] == uid and uid != "0", f"iotgwd runs as user iotgw (uid {uid}): Uid {st['Uid']}")
    check(c.out(f"stat -c %U /proc/{pid}") == "iotgw", "its process belongs to iotgw")
    for cap in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        check(int(st[cap], 16) == CAPS,
              f"{cap} = {st[cap]}: exactly CAP_NET_ADMIN and CAP_NET_BIND_SERVICE ({CAPS:016x})")
    check(st["NoNewPrivs"] == "1", "NoNewPrivs is set")

    # The installed unit's score, as systemd on the running system computes it.
    sec = c.out("systemd-analyze security --no-pager iotgwd")
    m = re.search(r"Overall exposure level for iotgwd\.service: ([0-9.]+)", sec)
    score = float(m.group(1)) if m else 99.0
    print(f"systemd-analyze security iotgwd: {score}")
    check(score <= 2.0, f"systemd-analyze security iotgwd on the installed unit: {score} <= 2.0")

    # The configuration: the shipped conffile runs the built-in default; give it a segment.
    check(c.sh("iotgwd --check-config", check=False).returncode == 0,
          "the shipped configuration passes iotgwd --check-config")
    check(c.sh("grep -v '^#' /etc/iotgw/iotgw.toml | grep -q .", check=False).returncode != 0,
          "the shipped /etc/iotgw/iotgw.toml is all comments (the built-in default)")
    c.sh("ip link add br-iot type bridge && ip addr add 192.168.50.1/24 dev br-iot "
         "&& ip link set br-iot up")
    c.sh("printf '\\n[device_segment]\\ninterfaces = [\"br-iot\"]\\nsubnets = [\"192.168.50.0/24\"]\\n'"
         " >> /etc/iotgw/iotgw.toml")
    check(c.sh("iotgwd --check-config", check=False).returncode == 0,
          "the edited configuration passes iotgwd --check-config")
    c.sh("systemctl restart iotgwd")

    # The control API over the container's real system bus.
    c.sh("useradd -m -G iotgw-admin alice && useradd -m -G iotgw carol && useradd -m bob")
    check(c.sh("iotgwctl status").returncode == 0, "root: iotgwctl status works")
    r = c.sh("iotgwctl --json status", user="alice", check=False)
    check(r.returncode == 0 and json.loads(r.stdout or "{}"), "alice (iotgw-admin): iotgwctl --json status works")
    c.sh(f"printf '%s' '{CAMERA}' > /tmp/cam-01.toml && chmod 0644 /tmp/cam-01.toml")
    r = c.sh("iotgwctl enroll cam-01 /tmp/cam-01.toml", user="alice", check=False)
    check(r.returncode == 0, f"alice enrols cam-01 over D-Bus ({r.stdout.strip()}{r.stderr.strip()})")
    check(c.sh("iotgwctl status", user="carol", check=False).returncode == 0,
          "carol (iotgw, a reader): iotgwctl status works")
    r = c.sh("iotgwctl remove cam-01", user="carol", check=False)
    check(r.returncode == 3, f"carol may not remove a device: exit {r.returncode} ({r.stderr.strip()})")
    r = c.sh("iotgwctl status", user="bob", check=False)
    check(r.returncode == 3, f"bob (no group): iotgwctl status refused, exit {r.returncode} ({r.stderr.strip()})")

    # Events in the container's journal, with their catalog text.
    journal = c.out("journalctl -x -u iotgwd --no-pager")
    check("Subject: iotgwd started" in journal and "Devices not enrolled are denied by default" in journal,
          "journalctl -x shows the started event with its catalog text")

    # A reload applies a changed policy.
    c.sh("printf '%s' '" + PLUG.format(address="192.168.50.21") + "' > /etc/iotgw/devices.d/plug-01.toml")
    c.sh("systemctl reload iotgwd")
    wait_for("plug-01 enrolled after systemctl reload",
             lambda: "plug-01" in c.out("iotgwctl devices", check=False))
    c.sh("printf '%s' '" + PLUG.format(address="192.168.50.22") + "' > /etc/iotgw/devices.d/plug-01.toml")
    c.sh("systemctl reload iotgwd")
    check(wait_for("the changed address after the second reload",
                   lambda: "192.168.50.22" in c.out("iotgwctl show plug-01", check=False)),
          "systemctl reload applies the changed policy (plug-01 now at 192.168.50.22)")
    check("192.168.50.22" in c.out("nft list table inet iotgw"), "and the firewall names its new address")
    check(c.out("systemctl is-active iotgwd") == "active", "iotgwd is still active after the reloads")

    # No loop of the drift monitor over its own changes (the pid namespace of a container).
    pid = c.out("systemctl show -p MainPID --value iotgwd")
    ticks = lambda: sum(int(x) for x in c.out(f"cat /proc/{pid}/stat").split(")")[1].split()[11:13])
    before = ticks()
    time.sleep(3)
    cpu = (ticks() - before) / os.sysconf("SC_CLK_TCK")
    check(cpu < 0.3, f"idle iotgwd used {cpu:.2f} s of CPU in 3 s (no re-apply loop)")
    check("re-applied" not in c.out("journalctl -u iotgwd --no-pager"),
          "the journal has no 're-applied' event: its own changes are not taken for drift")

    # The watchdog is armed: stopped, iotgwd is killed and started again.
    check(c.out("systemctl show -p WatchdogUSec --value iotgwd") == "30s", "WatchdogUSec = 30s")
    c.sh("mkdir -p /run/systemd/system/iotgwd.service.d && printf '[Service]\\nWatchdogSec=2s\\n'"
         " > /run/systemd/system/iotgwd.service.d/watchdog.conf && systemctl daemon-reload"
         " && systemctl restart iotgwd")
    pid = c.out("systemctl show -p MainPID --value iotgwd")
    c.sh(f"kill -STOP {pid}")
    check(wait_for("a watchdog restart",
                   lambda: c.out("systemctl show -p MainPID --value iotgwd") not in (pid, "0")
                   and c.out("systemctl is-active iotgwd", check=False) == "active", timeout=30),
          "a stopped iotgwd is restarted by the watchdog")
    check("Watchdog timeout" in c.out("journalctl -u iotgwd --no-pager"),
          "the journal says 'Watchdog timeout'")
    c.sh("rm -r /run/systemd/system/iotgwd.service.d && systemctl daemon-reload && systemctl restart iotgwd")

    first_device(c)

    # An upgrade keeps the policies, the gateway CA, the edited configuration and what is queued:
    # with the broker stopped, the thermostat's readings are acknowledged from its outbox.
    c.sh("systemctl stop mosquitto")
    for k in range(1, 4):
        r = c.sh(f"ip netns exec thermo mosquitto_pub -h 192.168.50.1 -i thermo-01 -q 1"
                 f" -t devices/thermo-01/telemetry/temp -m '{{\"t\":{20 + k}}}'", check=False, timeout=30)
        check(r.returncode == 0, f"reading {k} acknowledged while the broker is stopped ({r.stderr.strip()})")
    check(wait_for("3 queued messages", lambda: queued(c) == 3), "iotgwctl show thermo-01 counts 3 queued")
    ca = c.out("sha256sum /var/lib/iotgw/ca/ca.pem /var/lib/iotgw/ca/ca.key")
    c.sh("apt-get install -y -q /var/tmp/iotgw-upgrade.deb")
    check(c.out("dpkg-query -W -f '${Version}' iotgw") == "0.1.0+1", "upgraded to 0.1.0+1")
    check(wait_for("iotgwd active after the upgrade",
                   lambda: c.out("systemctl is-active iotgwd", check=False) == "active"),
          "iotgwd is active after the upgrade")
    check(c.out("sha256sum /var/lib/iotgw/ca/ca.pem /var/lib/iotgw/ca/ca.key") == ca,
          "the gateway CA and its key are the same after the upgrade")
    devices = c.out("iotgwctl devices")
    check("cam-01" in devices and "plug-01" in devices,
          "both devices (D-Bus enrolled and devices.d/) are still enrolled after the upgrade")
    check("br-iot" in c.out("cat /etc/iotgw/iotgw.toml"), "the edited conffile is kept")
    check(queued(c) == 3, f"the 3 queued messages are still queued after the upgrade ({queued(c)})")
    c.sh("systemctl start mosquitto")
    r = c.sh("mosquitto_sub -h 127.0.0.1 -p 1884 -i app -c -q 1 -t 'devices/#' -C 3 -W 60", check=False,
             timeout=90)
    got = r.stdout.split()
    check(got == ['{"t":21}', '{"t":22}', '{"t":23}'],
          f"once the broker is back the app gets all three, in order ({got})")
    check(wait_for("an empty outbox", lambda: queued(c) == 0), "and the outbox is empty")

    # Remove keeps the state and the rules (fail closed); purge leaves nothing behind.
    files = [f for f in c.out("dpkg -L iotgw").splitlines() if f.strip()]
    c.sh("apt-get remove -y -q iotgw")
    tables = c.out("nft list tables")
    check("table inet iotgw" in tables and "table bridge iotgw" in tables,
          f"apt-get remove keeps the firewall tables (devices stay isolated): {tables!r}")
    check(c.sh("test -d /var/lib/iotgw/ca", check=False).returncode == 0, "and the state")
    c.sh("apt-get purge -y -q iotgw")
    left = c.out("for f in " + " ".join(f"'{f}'" for f in files) +
                 "; do [ -e \"$f\" ] && [ ! -d \"$f\" ] && echo \"$f\"; done; true")
    check(left == "", f"after purge no file of the package is left ({left or 'none'})")
    for path in ("/var/lib/iotgw", "/var/lib/private/iotgw", "/etc/iotgw"):
        check(c.sh(f"test -e {path}", check=False).returncode != 0, f"after purge {path} is gone")
    tables = c.out("nft list tables")
    check("iotgw" not in tables, f"after purge no nftables table of iotgw is left ({tables!r})")
    check(c.out("systemctl list-unit-files --no-legend 'iotgwd*'", check=False) == "", "and the unit")


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("needs root (debootstrap, systemd-nspawn)")
    main()
