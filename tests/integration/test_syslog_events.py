#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Events through syslog, as on OpenWrt (no journald): a private /dev/log receives them, with the
MESSAGE_ID and IOTGW_* fields in the line. In a build without systemd this is the automatic
target and no readiness notification is sent; with systemd, target = "syslog" selects it."""
import os
import signal
import socket
import subprocess
import time

from iotgw_testlib import (MESSAGE_IDS, WITH_SYSTEMD, Daemon, NotifySocket, check, cleanup, config_text,
                           device_policy, finish, in_private_mount_namespace, require_binary, tmpdir,
                           write)

require_binary()
in_private_mount_namespace()

root = tmpdir()
# A private /dev: a tmpfs with the few device nodes a process needs, bound from the real /dev.
realdev = os.path.join(root, "realdev")
os.makedirs(realdev)
subprocess.check_call(["mount", "--bind", "/dev", realdev])
subprocess.check_call(["mount", "-t", "tmpfs", "tmpfs", "/dev"])
for node in ("null", "zero", "urandom", "random"):
    open(f"/dev/{node}", "w").close()
    subprocess.check_call(["mount", "--bind", f"{realdev}/{node}", f"/dev/{node}"])

log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
log.bind("/dev/log")
log.settimeout(5)


def receive(marker, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            line = log.recv(8192).decode(errors="replace")
        except socket.timeout:
            return None
        if marker in line:
            return line
    return None


try:
    conf = os.path.join(root, "iotgw.toml")
    write(conf, config_text(root, target="auto" if not WITH_SYSTEMD else "syslog"))
    write(os.path.join(root, "devices.d", "sensor-a.toml"), device_policy("sensor-a", 10))
    notify = NotifySocket(root)
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="200000")
    d = Daemon(["--config", conf], env=env)

    line = receive(MESSAGE_IDS["daemon-started"])
    check(line is not None, "start-up event arrives on /dev/log")
    if line:
        check("iotgwd[" in line, f"tagged iotgwd[pid]: {line!r}")
        check(line.startswith("<29>"), "facility daemon, priority notice (<29>)")
        check("IOTGW_EVENT=daemon-started" in line, "IOTGW_EVENT in the line")
        check("events to syslog" in line, "the daemon says where its events go")

    write(conf, config_text(root, target="auto" if not WITH_SYSTEMD else "syslog") + "[limits]\nmax_devices = 0\n")
    d.signal(signal.SIGHUP)
    line = receive(MESSAGE_IDS["config-rejected"])
    check(line is not None and "<27>" in line[:5], f"reload-rejected event at priority error: {line!r}")
    check(line is not None and "IOTGW_ACTION=keep-running-config" in line, "action field present")

    d.signal(signal.SIGTERM)
    check(receive(MESSAGE_IDS["daemon-stopping"]) is not None, "stopping event on /dev/log")
    check(d.stop() == 0, "clean exit")

    messages = notify.drain(0.3) + notify.messages
    if WITH_SYSTEMD:
        check(any(m.startswith("READY=1") for m in messages), "systemd build: READY=1 sent")
    else:
        check(messages == [], f"build without systemd: readiness protocol compiled out ({messages!r})")
finally:
    log.close()
    subprocess.call(["umount", "-l", "/dev"])
    subprocess.call(["umount", "-l", realdev])
    cleanup(root)
finish()
