#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The control API with real parts: a private system-like dbus-daemon that includes the project's
bus policy file (systemd/org.iotgw.Gateway1.conf), the real iotgwd on it (firewall on, in a
network namespace of its own), and busctl and iotgwctl as clients, run as root, as `nobody`,
as `nobody` in group iotgw, and as `nobody` in group iotgw-admin.

The groups exist only in this test's mount namespace: /etc/group is a bind-mounted copy.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import (IOTGWD, check, finish, hash_password, in_private_namespaces, private_bus,  # noqa: E402
                           require_binary, tmpdir, write)

SRC = os.environ.get("IOTGW_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
XML = os.path.join(SRC, "daemon", "dbus", "org.iotgw.Gateway1.xml")
POLICY = os.path.join(SRC, "systemd", "org.iotgw.Gateway1.conf")
IOTGWCTL = os.path.join(os.path.dirname(IOTGWD), "iotgwctl")
GID_READ, GID_ADMIN = 64711, 64712
NAME, PATH, IFACE = "org.iotgw.Gateway1", "/org/iotgw/Gateway1", "org.iotgw.Gateway1.Manager"

# A bus that lets anyone call anything: only iotgwd's own check stands between a caller and a change.
OPEN_POLICY = """<policy context="default"><allow own="*"/><allow send_type="method_call"/></policy>"""

THERMO = """[device]
id = "thermo-01"
mac = "02:00:00:00:00:10"
addresses = ["192.168.50.10"]
[mqtt]
publish = ["devices/%d/telemetry/#"]
[network]
outbound = ["203.0.113.5:8883/tcp"]
"""


def caller(who):
    """Command prefix running as root, nobody, nobody in iotgw, or nobody in iotgw-admin."""
    groups = {"root": None, "nobody": "", "reader": str(GID_READ), "admin": str(GID_ADMIN)}[who]
    if groups is None:
        return []
    return ["setpriv", "--reuid=nobody", "--regid=nogroup",
            "--clear-groups" if not groups else f"--groups={groups}", "--"]


def busctl(address, who, method, *args):
    cmd = caller(who) + ["busctl", f"--address={address}", "call", NAME, PATH, IFACE, method, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    return r.returncode, r.stdout + r.stderr


def ctl(address, who, *args, stdin=None):
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address)
    r = subprocess.run(caller(who) + [IOTGWCTL, *args], capture_output=True, text=True, timeout=20,
                       env=env, input=stdin)
    return r.returncode, r.stdout, r.stderr


def methods():
    """Every method of the interface, with a valid-looking argument list for each."""
    out = {}
    for m in ET.parse(XML).getroot().iter("method"):
        sig = "".join(a.get("type") for a in m.iter("arg") if a.get("direction") == "in")
        args = [sig] + ["thermo-01", THERMO][:len(sig)] if sig else []
        if m.get("name") == "Quarantine":
            args = ["ss", "thermo-01", "a test"]
        out[m.get("name")] = args
    return out


def readers():
    """Methods the bus policy lets group iotgw call."""
    root = ET.parse(POLICY).getroot()
    for p in root.iter("policy"):
        if p.get("group") == "iotgw":
            return {a.get("send_member") for a in p.iter("allow") if a.get("send_interface") == IFACE}
    return set()


def restart_iotgwd(d, *args, **kwargs):
    d.send_signal(signal.SIGTERM)
    check(d.wait(timeout=10) == 0, "iotgwd stops cleanly")
    return start_iotgwd(*args, **kwargs)


class SignalWatcher:
    """A reader's `iotgwctl --json watch --count N` (group iotgw), started before the actions."""

    def __init__(self, address, count):
        self.proc = subprocess.Popen(caller("reader") + [IOTGWCTL, "--json", "watch", "--count", str(count)],
                                     env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.3)  # its match rules in place first

    def seen(self, timeout):
        """What it printed, and the signals in it."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def start_iotgwd(root, address, state, stderr, burst=1000):
    conf = os.path.join(root, "iotgw.toml")
    write(conf, f"""[daemon]
state_directory = "{state}"
devices_directory = "{root}/devices.d"
[device_segment]
interfaces = ["br-iot"]
subnets = ["192.168.50.0/24"]
[firewall]
keep_rules_on_exit = false
scan_interval_seconds = 0
[dbus]
admin_group = "iotgw-admin"
[events]
target = "stderr"
burst = {burst}
""")
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address)
    d = subprocess.Popen([IOTGWD, "--config", conf], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.time() + 10
    while time.time() < deadline:
        if busctl(address, "root", "GetStatus")[0] == 0:
            return d
        time.sleep(0.05)
    return d


def files_mentioning(directory, needle):
    found = []
    for base, _, names in os.walk(directory):
        for n in names:
            p = os.path.join(base, n)
            if needle in n or needle.encode() in open(p, "rb").read():
                found.append(p)
    return found


def inside():
    root = tmpdir("iotgw-dbus-")
    procs = []
    d = None
    try:
        group = os.path.join(root, "group")
        with open("/etc/group") as f:
            write(group, f.read() + f"iotgw:x:{GID_READ}:\niotgw-admin:x:{GID_ADMIN}:\n")
        subprocess.run(["mount", "--bind", group, "/etc/group"], check=True)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        with open(POLICY) as f:
            policy = f.read().split("<busconfig>")[1].split("</busconfig>")[0]
        sysbus, address = private_bus(root, "system", policy)
        procs.append(sysbus)
        state = os.path.join(root, "state")
        err = open(os.path.join(root, "iotgwd.err"), "w")
        d = start_iotgwd(root, address, state, err)
        check(busctl(address, "root", "GetStatus")[0] == 0, "iotgwd owns org.iotgw.Gateway1 on the private system bus")

        print("access control, every method of the introspection XML")
        all_methods = methods()
        read_only = readers()
        check(read_only == {"ListDevices", "GetDevice", "GetStatus"}, f"the bus policy's read-only methods ({sorted(read_only)})")
        mutating = sorted(set(all_methods) - read_only)
        check(len(mutating) >= 6, f"changing methods found in the XML: {mutating}")
        for m in mutating:
            rc, out = busctl(address, "nobody", m, *all_methods[m])
            check(rc != 0 and "Access denied" in out, f"nobody: {m} denied ({out.strip()[:80]})")
            rc, out = busctl(address, "reader", m, *all_methods[m])
            check(rc != 0 and "Access denied" in out, f"group iotgw: {m} denied")
        for m in sorted(read_only):
            rc, out = busctl(address, "reader", m, *all_methods[m])
            check("Access denied" not in out, f"group iotgw may call {m}")

        print("iotgwctl as a member of iotgw-admin")
        policy_file = os.path.join(root, "thermo-01.toml")
        write(policy_file, THERMO)
        rc, out, errtext = ctl(address, "admin", "enroll", "thermo-01", policy_file)
        check(rc == 0, f"iotgwctl enroll as iotgw-admin ({errtext.strip()})")
        rc, out, _ = ctl(address, "reader", "--json", "devices")
        listed = json.loads(out) if rc == 0 else []
        check(listed == [{"id": "thermo-01", "source": "api", "quarantined": False}], f"iotgwctl --json devices as iotgw ({out.strip()})")
        rc, out, _ = ctl(address, "reader", "--json", "show", "thermo-01")
        shown = json.loads(out) if rc == 0 else {}
        check(shown.get("policy") == THERMO and shown.get("state", {}).get("source") == "api",
              "iotgwctl --json show returns the policy document and state")
        # The bash completion asks the real iotgwctl, over this bus, for the enrolled ids.
        script = (f'source {SRC}/packaging/completion/iotgwctl.bash; PATH={os.path.dirname(IOTGWCTL)}:$PATH; '
                  'COMP_WORDS=(iotgwctl show th); COMP_CWORD=2; _iotgwctl; echo "${COMPREPLY[*]}"')
        r = subprocess.run(caller("reader") + ["bash", "-c", script], capture_output=True, text=True,
                           timeout=20, env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address))
        check(r.stdout.strip() == "thermo-01",
              f"bash completes 'iotgwctl show th' with the enrolled id ({r.stdout.strip() or r.stderr.strip()[:80]})")
        check(os.stat(os.path.join(state, "devices", "thermo-01.toml")).st_mode & 0o077 == 0,
              "the policy is persisted owner-only in the state directory")
        rc, out, errtext = ctl(address, "reader", "enroll", "plug-02", policy_file)
        check(rc == 3 and "iotgw-admin" in errtext, f"iotgwctl: access denied is exit code 3 ({errtext.strip()})")
        rc, out, errtext = ctl(address, "admin", "enroll", "thermo-01", policy_file)
        check(rc == 2 and "already enrolled" in errtext, "enrolling an enrolled id: exit 2, says so")

        print("invalid policy")
        bad = THERMO.replace('outbound = ["203.0.113.5:8883/tcp"]', 'outbound = ["203.0.113.5:99999/tcp"]')
        rc, out = busctl(address, "admin", "SetDevicePolicy", "ss", "thermo-01", bad)
        check(rc != 0 and "policy:8:13:" in out, f"busctl SetDevicePolicy with a bad port: refused at line 8, column 13 ({out.strip()[:120]})")
        rc, out, errtext = ctl(address, "admin", "set-policy", "thermo-01", "-", stdin=bad)
        check(rc == 2 and "policy:8:13:" in errtext, f"iotgwctl set-policy: exit 2 and the position ({errtext.strip()[:120]})")
        rc, out, _ = ctl(address, "root", "--json", "show", "thermo-01")
        check(rc == 0 and json.loads(out)["policy"] == THERMO, "the running policy is unchanged")
        rc, out, errtext = ctl(address, "admin", "set-policy", "thermo-01", "-",
                               stdin=THERMO.replace('id = "thermo-01"', 'id = "other"'))
        check(rc == 2 and "not 'thermo-01'" in errtext, "a document naming another id is refused")
        good = THERMO.replace("8883/tcp", "8884/tcp")
        rc, out, errtext = ctl(address, "admin", "set-policy", "thermo-01", "-", stdin=good)
        check(rc == 0, f"a valid new policy is accepted ({errtext.strip()})")
        table = subprocess.run(["nft", "list", "set", "inet", "iotgw", "allow4"], capture_output=True, text=True).stdout
        check("8884" in table and "8883" not in table, "and the firewall follows it (allow4 names :8884)")

        print("persistence across a restart")
        d.send_signal(signal.SIGTERM)
        check(d.wait(timeout=10) == 0, "iotgwd stops cleanly")
        rc, _, errtext = ctl(address, "root", "status")
        check(rc == 4 and "not running" in errtext, f"iotgwctl with iotgwd stopped: exit 4 ({errtext.strip()[:80]})")
        # The command line is checked before the bus: a mistake is exit 2 (not "not running"),
        # named in one line rather than the whole help.
        rc, _, errtext = ctl(address, "root", "show", "Thermo 01")
        check(rc == 2 and "is not a device id" in errtext and "usage:" not in errtext,
              f"iotgwctl show with a malformed id: exit 2, the mistake named ({errtext.strip()[:80]})")
        rc, out, _ = ctl(address, "root", "--version")
        check(rc == 0 and out.startswith("iotgwctl "), f"iotgwctl --version ({out.strip()})")
        d = start_iotgwd(root, address, state, err)
        rc, out, _ = ctl(address, "root", "--json", "show", "thermo-01")
        check(rc == 0 and json.loads(out)["policy"] == good, "after a restart the device and its policy are back")
        rc, out, _ = ctl(address, "root", "status", "--json")  # options go anywhere
        status = json.loads(out) if rc == 0 else {}
        check(status.get("devices") == 1 and status.get("firewall") is True, f"iotgwctl status --json ({out.strip()})")

        print("signals are not held to the journal's budget")
        # Twelve quarantines and releases of one device in a few seconds, with the event sink's
        # budget for the journal at 3 per device and type a minute: each is still a signal the
        # companion app must see.
        d = restart_iotgwd(d, root, address, state, err, burst=3)
        cycles = 12
        watcher = SignalWatcher(address, 2 * cycles)
        for i in range(cycles):
            ctl(address, "admin", "quarantine", "thermo-01", "--reason", f"cycle {i}")
            ctl(address, "admin", "release", "thermo-01")
        _, signals = watcher.seen(timeout=15)
        got = (sum(x["signal"] == "DeviceQuarantined" for x in signals),
               sum(x["signal"] == "DeviceChanged" and x.get("change") == "released" for x in signals))
        check(got == (cycles, cycles),
              f"{cycles} quarantines and releases in a row: DeviceQuarantined and DeviceChanged signals seen {got}")
        d = restart_iotgwd(d, root, address, state, err)

        print("quarantine and erase")
        # A reader (group iotgw) watches the signals while an admin acts.
        watcher = SignalWatcher(address, 5)
        rc, _, errtext = ctl(address, "admin", "quarantine", "thermo-01", "--reason", "test")
        check(rc == 0 and os.path.exists(os.path.join(state, "quarantine", "thermo-01")), f"quarantine over D-Bus ({errtext.strip()})")
        rc, _, _ = ctl(address, "admin", "release", "thermo-01")
        check(rc == 0 and not os.path.exists(os.path.join(state, "quarantine", "thermo-01")), "release over D-Bus")
        ctl(address, "admin", "quarantine", "thermo-01", "--reason", "before removal")
        rc, _, errtext = ctl(address, "admin", "remove", "thermo-01")
        check(rc == 0, f"iotgwctl remove ({errtext.strip()})")
        seen, signals = watcher.seen(timeout=10)
        # DeviceQuarantined's reason is the event's sentence, which quotes the caller's reason.
        check([(x["signal"], x.get("id"), x.get("change") or x.get("changed") or
                re.sub(r".*\((.*)\).*", r"\1", x.get("reason", ""))) for x in signals] == [
            ("DeviceQuarantined", "thermo-01", "test"), ("DeviceChanged", "thermo-01", "released"),
            ("DeviceQuarantined", "thermo-01", "before removal"), ("DeviceChanged", "thermo-01", "removed"),
            ("PropertiesChanged", None, {"DeviceCount": 0})],
            f"a reader's iotgwctl watch saw DeviceQuarantined, DeviceChanged and DeviceCount in order ({seen!r})")
        left = files_mentioning(state, "thermo-01")
        check(not left, f"nothing of the device remains in the state directory ({left})")
        ruleset = subprocess.run(["nft", "list", "table", "inet", "iotgw"], capture_output=True, text=True).stdout
        check("thermo-01" not in ruleset and "192.168.50.10" not in ruleset, "nor in the firewall (counters, sets)")
        rc, _, errtext = ctl(address, "reader", "show", "thermo-01")
        check(rc == 2 and "no device" in errtext, "show of a removed device: exit 2")
        write(os.path.join(root, "devices.d", "lamp-03.toml"),
              THERMO.replace("thermo-01", "lamp-03").replace(":10", ":13").replace(".10", ".13"))
        rc, _, _ = ctl(address, "admin", "reload")
        rc2, _, errtext = ctl(address, "admin", "remove", "lamp-03")
        check(rc == 0 and rc2 == 2 and "devices.d" in errtext, "a devices.d/ device is read-only over the API")

        print("iotgwd's own check, behind a bus that allows everything")
        d.send_signal(signal.SIGTERM)
        d.wait(timeout=10)
        d = None
        openbus, open_address = private_bus(root, "open", OPEN_POLICY)
        procs.append(openbus)
        d = start_iotgwd(root, open_address, os.path.join(root, "state2"), err)
        for m in mutating:
            rc, out = busctl(open_address, "nobody", m, *all_methods[m])
            check(rc != 0 and "only root and group iotgw-admin" in out, f"iotgwd itself refuses {m} to nobody")
        rc, out = busctl(open_address, "admin", "EnrollDevice", "ss", "thermo-01", THERMO)
        check(rc == 0, f"and allows a member of iotgw-admin ({out.strip()[:80]})")
        for m in sorted(read_only):
            rc, out = busctl(open_address, "nobody", m, *all_methods[m])
            check(rc != 0 and "only root and groups iotgw and iotgw-admin" in out,
                  f"iotgwd itself refuses the reading {m} to nobody ({out.strip()[:80]})")
            rc, out = busctl(open_address, "reader", m, *all_methods[m])
            check(rc == 0, f"and allows {m} to a member of iotgw ({out.strip()[:80]})")

        print("secrets never leave over D-Bus")
        secret = hash_password("s3cret-plug")
        plug = THERMO.replace("thermo-01", "plug-02").replace(":10", ":12").replace(".10", ".12") + \
            f'[device.mqtt]\nusername = "plug"\npassword_hash = "{secret}"  # set by the installer\n'
        rc, out = busctl(open_address, "admin", "EnrollDevice", "ss", "plug-02", plug)
        check(rc == 0, f"a device with a password is enrolled ({out.strip()[:80]})")
        rc, out = busctl(open_address, "reader", "GetDevice", "s", "plug-02")
        check(rc == 0 and secret not in out and secret.split("$")[-1] not in out,
              "GetDevice does not return the password hash")
        check('password_hash = \\"(redacted)\\"' in out and 'username = \\"plug\\"' in out,
              f"it says where it was redacted and keeps the rest of the document ({out[:60]}...)")
        rc, out, _ = ctl(open_address, "reader", "--json", "show", "plug-02")
        shown = json.loads(out) if rc == 0 else {}
        check(shown.get("policy") == plug.replace(f'"{secret}"', '"(redacted)"'),
              "iotgwctl show prints the document with only the hash replaced (its comment kept)")
    finally:
        if d is not None:
            d.send_signal(signal.SIGTERM)
            try:
                d.wait(timeout=10)
            except subprocess.TimeoutExpired:
                d.kill()
        for p in procs:
            p.terminate()
            p.wait(timeout=5)
        subprocess.run(["umount", "/etc/group"], capture_output=True)
        subprocess.run(["rm", "-rf", root])


def main():
    require_binary()
    in_private_namespaces(["-m", "-n", "--propagation", "private"], "namespaces, private bus, nftables")
    inside()
    finish()


if __name__ == "__main__":
    main()
