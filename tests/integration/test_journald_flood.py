#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Events are rate-limited per device and type before they reach journald, and what was
suppressed is reported in a summary: 30 rejected reloads in a row produce `burst` config-rejected
entries and one events-suppressed entry counting the rest."""
import os
import re
import signal
import time

from iotgw_testlib import (MESSAGE_IDS, Daemon, Journald, NotifySocket, check, cleanup, config_text,
                           finish, in_private_mount_namespace, require_binary, tmpdir, write)

SUPPRESSED_ID = "5e97e4bf6285446593b840b5c897e586"
RELOADS = 30
BURST = 3

require_binary()
in_private_mount_namespace()

journal = Journald()
root = tmpdir()
try:
    conf = os.path.join(root, "iotgw.toml")
    good = config_text(root, target="journal").replace("burst = 50", f"burst = {BURST}\nsummary_interval_seconds = 1")
    write(conf, good)
    notify = NotifySocket(root)
    d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path))
    check(notify.wait_for("READY=1") is not None, "daemon ready")

    write(conf, good + "[limits]\nmax_devices = -1\n")
    answered = 0
    for _ in range(RELOADS):
        d.signal(signal.SIGHUP)
        if notify.wait_for("READY=1") is not None:  # one reload at a time: signals would coalesce
            answered += 1
    check(answered == RELOADS, f"every SIGHUP answered ({answered}/{RELOADS})")

    rejected = journal.entries(MESSAGE_IDS["config-rejected"], expect=BURST)
    check(len(rejected) == BURST, f"{BURST} config-rejected entries reach the journal (got {len(rejected)})")
    # The summary timer runs every second, so the count may be split over several summaries.
    deadline = time.time() + 5
    total = 0
    while time.time() < deadline:
        summaries = journal.entries(SUPPRESSED_ID, expect=1, timeout=1)
        counts = [re.search(r"suppressed (\d+) config-rejected events", e.get("MESSAGE", "")) for e in summaries]
        total = sum(int(m.group(1)) for m in counts if m)
        if total >= RELOADS - BURST:
            break
        time.sleep(0.2)
    check(len(summaries) >= 1, f"events-suppressed summaries reach the journal ({len(summaries)})")
    check(total == RELOADS - BURST, f"summaries count every suppressed event ({total} of {RELOADS - BURST})")
    check(all(e.get("IOTGW_RULE") == "config-rejected" for e in summaries),
          "IOTGW_RULE names the suppressed event type")
    check(d.alive(), "daemon still running")
    check(d.stop() == 0, "clean exit")
finally:
    journal.stop()
    cleanup(root)
finish()
