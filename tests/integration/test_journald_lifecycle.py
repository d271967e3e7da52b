#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The real iotgwd under a private systemd-journald: start-up, reload accepted, reload rejected
(old configuration stays), shutdown; journald fields and MESSAGE_IDs; sd_notify READY, RELOADING,
STATUS, WATCHDOG and STOPPING on a notify socket the test binds."""
import os
import re
import signal
import time

from iotgw_testlib import (MESSAGE_IDS, Daemon, Journald, NotifySocket, check, cleanup, config_text,
                           device_policy, finish, in_private_mount_namespace, require_binary, tmpdir,
                           write)

require_binary()
in_private_mount_namespace()

journal = Journald()
root = tmpdir()
try:
    conf = os.path.join(root, "iotgw.toml")
    write(conf, config_text(root, target="journal"))
    write(os.path.join(root, "devices.d", "sensor-a.toml"), device_policy("sensor-a", 10))

    notify = NotifySocket(root)
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="400000")
    env.pop("WATCHDOG_PID", None)
    d = Daemon(["--config", conf], env=env)

    print("start-up")
    ready = notify.wait_for("READY=1")
    check(ready is not None, "READY=1 arrives on NOTIFY_SOCKET")
    check(ready is not None and "STATUS=1 device enrolled" in ready, f"STATUS names the device count: {ready!r}")
    got = notify.drain(1.0)
    watchdogs = [m for m in got if m == "WATCHDOG=1"]
    # 400 ms interval, pinged every 200 ms: about 5 in one second.
    check(3 <= len(watchdogs) <= 7, f"WATCHDOG=1 at half of WATCHDOG_USEC ({len(watchdogs)} in 1 s)")

    started = journal.entries(MESSAGE_IDS["daemon-started"])
    check(len(started) == 1, "one start-up event in the journal")
    if started:
        e = started[0]
        check(e.get("SYSLOG_IDENTIFIER") == "iotgwd", "SYSLOG_IDENTIFIER=iotgwd")
        check(e.get("IOTGW_EVENT") == "daemon-started", "IOTGW_EVENT=daemon-started")
        check(e.get("PRIORITY") == "5", "PRIORITY=5 (notice)")
        check(e.get("IOTGW_PROTOCOL") == "daemon", "IOTGW_PROTOCOL=daemon")
        check("1 device enrolled" in e.get("MESSAGE", ""), f"MESSAGE: {e.get('MESSAGE')!r}")
        check(int(e.get("_PID", "0")) == d.proc.pid, "the entry comes from the daemon's pid")
        check("CODE_FILE" not in e, "no source-location fields")

    print("reload accepted")
    write(os.path.join(root, "devices.d", "sensor-b.toml"), device_policy("sensor-b", 11))
    d.signal(signal.SIGHUP)
    check(notify.wait_for("RELOADING=1") is not None, "RELOADING=1 on SIGHUP")
    ready = notify.wait_for("READY=1")
    check(ready is not None and "2 devices enrolled" in ready, f"READY=1 after reload with 2 devices: {ready!r}")
    reloaded = journal.entries(MESSAGE_IDS["config-reloaded"])
    check(len(reloaded) == 1, "one reload-accepted event")
    if reloaded:
        check(reloaded[0].get("IOTGW_ACTION") == "apply", "IOTGW_ACTION=apply")
        check("2 devices enrolled" in reloaded[0].get("MESSAGE", ""), "reload message names 2 devices")

    print("reload rejected: broken configuration")
    good_conf = open(conf).read()
    write(os.path.join(root, "devices.d", "sensor-c.toml"), device_policy("sensor-c", 12))
    write(conf, good_conf + "\n[limits]\nmax_connections = \"lots\"\n")
    bad_line = good_conf.count("\n") + 3
    d.signal(signal.SIGHUP)
    ready = notify.wait_for("READY=1")
    check(ready is not None and "2 devices enrolled" in ready,
          f"still 2 devices after a rejected reload (sensor-c not applied): {ready!r}")
    rejected = journal.entries(MESSAGE_IDS["config-rejected"])
    check(len(rejected) == 1, "one reload-rejected event")
    if rejected:
        e = rejected[0]
        check(e.get("PRIORITY") == "3", "PRIORITY=3 (error)")
        check(e.get("IOTGW_RULE") == f"{conf}:{bad_line}:19: 'limits.max_connections' must be an integer, not string",
              f"IOTGW_RULE carries file:line:column: {e.get('IOTGW_RULE')!r}")
        check(e.get("IOTGW_ACTION") == "keep-running-config", "IOTGW_ACTION=keep-running-config")
    check(d.alive(), "daemon still running after a rejected reload")

    print("reload rejected: broken device policy")
    write(conf, good_conf)
    write(os.path.join(root, "devices.d", "sensor-c.toml"), device_policy("sensor-c", 12).replace("02:00", "zz:00"))
    d.signal(signal.SIGHUP)
    ready = notify.wait_for("READY=1")
    check(ready is not None and "2 devices enrolled" in ready, f"still 2 devices: {ready!r}")
    rejected = journal.entries(MESSAGE_IDS["config-rejected"], expect=2)
    check(len(rejected) == 2, "second reload-rejected event")
    if len(rejected) == 2:
        rule = rejected[1].get("IOTGW_RULE", "")
        check(re.match(r".*/devices\.d/sensor-c\.toml:3:7: 'device\.mac' must look like", rule) is not None,
              f"points at the bad MAC: {rule!r}")

    print("reload accepted after the fix")
    write(os.path.join(root, "devices.d", "sensor-c.toml"), device_policy("sensor-c", 12))
    d.signal(signal.SIGHUP)
    ready = notify.wait_for("READY=1")
    check(ready is not None and "3 devices enrolled" in ready, f"3 devices after the fix: {ready!r}")

    print("shutdown")
    t0 = time.time()
    d.signal(signal.SIGTERM)
    check(notify.wait_for("STOPPING=1") is not None, "STOPPING=1 on SIGTERM")
    rc = d.stop()
    check(rc == 0, f"exit code 0 on SIGTERM (got {rc})")
    check(time.time() - t0 < 3, "stops within 3 s")
    stopping = journal.entries(MESSAGE_IDS["daemon-stopping"])
    check(len(stopping) == 1 and "SIGTERM" in stopping[0].get("MESSAGE", ""), "stopping event names SIGTERM")

    # No field may carry a secret: the journal holds nothing that looks like a password hash.
    dump = os.popen("journalctl --no-pager -o json SYSLOG_IDENTIFIER=iotgwd").read()
    check("pbkdf2" not in dump, "no password material in the journal")
finally:
    journal.stop()
    cleanup(root)
finish()
