#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The demo lab (tests/demo/lab.sh, what packaging/run-demo.sh shows a new user) run end to end,
with what it claims checked line by line: the built-in default blocks the legacy device, the MQTT
proxy carries good readings and drops bad ones, the CoAP proxy lets an app read the device over
DTLS and refuses what the device's policy does not allow (the device never sees it), a CoAP push
reaches the broker, quarantine, table repair and removal. lab.sh builds its own namespaces, its
own journald and system bus inside a private mount namespace, and needs root."""
import os
import re
import subprocess

from iotgw_testlib import IOTGWD, check, finish, require_binary

require_binary()
source = os.environ.get("IOTGW_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
build = os.path.dirname(os.path.dirname(os.path.abspath(IOTGWD)))
lab = os.path.join(source, "tests", "demo", "lab.sh")

r = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", lab, build],
                   env=dict(os.environ, IOTGW_DEMO_IN_NS="1"), capture_output=True, text=True,
                   timeout=240)
out = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout)
print(out)
if r.stderr.strip():
    print("stderr:", r.stderr[-4000:])
check(r.returncode == 0, f"lab.sh exits 0 (got {r.returncode})")


def row(label):
    """The value printed after a row's label, or None."""
    for line in out.splitlines():
        if line.strip().startswith(label):
            return line.strip()[len(label):].strip()
    return None


def section(title):
    """The lines after a heading up to the next blank line."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(title):
            body = []
            for l in lines[i + 1:]:
                if not l.strip():
                    break
                body.append(l)
            return body
    return []


print("checks")
check((row("lan -> device :23 telnet (Mirai's way in)") or "").startswith("dropped"),
      "built-in default: telnet to the legacy device is dropped")
check((row("lan -> device :80 HTTP admin page") or "").startswith("dropped"),
      "built-in default: the device's admin page is dropped")
check("CoAP DTLS on port 5684, 0 sessions, devices on port 5683" in out,
      "sd_notify STATUS names the CoAP endpoints")
check((row('reading {"t":21.5}') or "") == "arrived", "MQTT: a valid reading arrives at the broker")
check((row("devices/door-lock/cmd/open (another device's topic)") or "") == "never arrived",
      "MQTT: a publish to another device's topic never arrives")
check((row('reading {"t":900} (out of range)') or "") == "never arrived",
      "MQTT: an out-of-range reading never arrives")

print("CoAP")
check((row("lan -> device :5683/udp (plain CoAP, directly)") or "").startswith("no answer"),
      "plain CoAP from the LAN straight to the device gets no answer")
got = row("app: GET coaps://192.168.1.1/thermo-01/time") or ""
check(re.fullmatch(r"[A-Z][a-z]{2} +\d+ \d\d:\d\d:\d\d", got) is not None,
      f"the app reads the device's clock through iotgwd over DTLS ({got!r})")
check((row("app: PUT /time 'Jan 1 1970' (would set its clock)") or "").startswith("4.03"),
      "a PUT the policy does not allow is refused with 4.03")
check((row("app: GET /example_data (not in its policy)") or "").startswith("4.03"),
      "a path the policy does not name is refused with 4.03")
check("handshake failure" in (row("app without a client certificate: GET /time") or ""),
      "an app without a client certificate fails the DTLS handshake")
seen = [l for l in section("  what the device itself received") if "c:" in l]
check(len(seen) == 1 and "c:GET" in seen[0] and "Uri-Path:time" in seen[0],
      f"the device received exactly the allowed GET /time, nothing else ({seen})")
check((row("device: POST coap://192.168.50.1/readings") or "").startswith("2.04"),
      "the device's CoAP push is answered 2.04")
check((row("device: POST coap://192.168.50.1/firmware (no push rule)") or "").startswith("4.03"),
      "a push to a path without a push rule is refused with 4.03")
check('devices/thermo-01/telemetry/coap {"t":21.7,"unit":"C"}' in out,
      "the pushed reading arrives at the broker's subscriber")
check(re.search(r"access-denied +device=thermo-01 +provision=5\.13-1 +rule=coap\.rule +CoAP PUT /time",
                out) is not None, "the refused PUT is a journald event citing 5.13-1")

print("firewall, quarantine, removal")
check((row("device -> lan :22 (not in its policy)") or "").startswith("dropped"),
      "the enrolled device cannot reach what its policy does not name")
check((row("at the broker: the 5 readings sent during the outage") or "").startswith(
    "5 of 5, 19.0 19.1 19.2 19.3 19.4"), "store-and-forward: every reading sent while the broker was down arrives, in order")
check((row("iotgwctl show thermo-01 (broker down)") or "").startswith("queued_messages 5"),
      "store-and-forward: the outbox held them meanwhile")
check((row("table inet iotgw") or "") == "present again", "a deleted table is put back")
check((row("iotgwctl remove thermo-01") or "") == "thermo-01 removed", "the device is removed")
check(re.search(r"serial \w+ in the CRL +listed", out) is not None,
      "the removed device's certificate is in the CRL")
check("iotgwd stopped (exit code 0)" in out, "iotgwd stops cleanly at the end")
finish()
