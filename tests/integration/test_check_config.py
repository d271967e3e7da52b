#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The command-line contract: --version, --check-config with exact file:line:column positions for
every error, --config with a missing file, the built-in default, --hash-password, bad arguments."""
import os
import subprocess

from iotgw_testlib import (IOTGWD, check, cleanup, config_text, device_policy, finish,
                           in_private_mount_namespace, require_binary, tmpdir, write)

require_binary()
# A private mount namespace lets the test hide the host's /etc/iotgw to see the built-in default.
in_private_mount_namespace()


def run(*args, stdin=None):
    return subprocess.run([IOTGWD, *args], capture_output=True, text=True, input=stdin, timeout=30)


root = tmpdir()
created_etc = False
try:
    r = run("--version")
    check(r.returncode == 0 and r.stdout.startswith("iotgwd "), f"--version: {r.stdout.strip()!r}")

    r = run("--frobnicate")
    check(r.returncode == 2 and "unknown argument '--frobnicate'" in r.stderr, "unknown argument: exit 2")

    conf = os.path.join(root, "iotgw.toml")
    write(conf, config_text(root))
    write(os.path.join(root, "devices.d", "sensor-a.toml"), device_policy("sensor-a", 10))
    r = run("--config", conf, "--check-config")
    check(r.returncode == 0, f"valid configuration: exit 0 ({r.stderr.strip()})")
    check(r.stdout.strip() == f"{conf}: OK, 1 device policies", f"summary line: {r.stdout.strip()!r}")

    # Errors in the configuration and in two device files: every one is listed, in order, with
    # exact positions, and the exit code is 1.
    write(conf, config_text(root) + "[limits]\nmax_connections = 0\nbogus = true\n")
    write(os.path.join(root, "devices.d", "sensor-b.toml"), "[device]\nid = \"sensor-b\"\nmac = \"nope\"\n")
    r = run("--config", conf, "--check-config")
    check(r.returncode == 1, f"invalid configuration: exit 1 (got {r.returncode})")
    n = config_text(root).count("\n")
    expected = [f"{conf}:{n + 2}:19: 'limits.max_connections' = 0 is out of range [1, 1000000]",
                f"{conf}:{n + 3}:1: unknown key 'limits.bogus'"]
    got = r.stderr.strip().splitlines()
    check(got == expected, f"configuration errors with positions: {got!r}")

    write(conf, config_text(root))
    r = run("--config", conf, "--check-config")
    got = r.stderr.strip().splitlines()
    check(r.returncode == 1, "device policy error: exit 1")
    check(got == [f"{root}/devices.d/sensor-b.toml:3:7: 'device.mac' must look like 02:00:00:00:00:10"],
          f"device policy error with position: {got!r}")

    # A TOML syntax error.
    write(conf, "[daemon\nstate_directory = 1\n")
    r = run("--config", conf, "--check-config")
    check(r.returncode == 1 and r.stderr.startswith(f"{conf}:1:8: "), f"syntax error position: {r.stderr.strip()!r}")

    r = run("--config", os.path.join(root, "missing.toml"), "--check-config")
    check(r.returncode == 1 and "cannot open" in r.stderr, "explicit missing config: exit 1")
    r = run("--config", os.path.join(root, "missing.toml"))
    check(r.returncode == 1 and "cannot start" in r.stderr, "daemon refuses to start on a missing config")

    # Built-in default: hide /etc/iotgw so the default path does not exist.
    created_etc = not os.path.exists("/etc/iotgw")
    os.makedirs("/etc/iotgw", exist_ok=True)
    subprocess.check_call(["mount", "-t", "tmpfs", "tmpfs", "/etc/iotgw"])
    r = run("--check-config")
    check(r.returncode == 0 and r.stdout.strip() == "built-in default: OK, 0 device policies",
          f"built-in default: {r.stdout.strip()!r}")
    # With /etc/iotgw/iotgw.toml present it is used, and checked.
    write("/etc/iotgw/iotgw.toml", "[firewall]\nenabled = 3\n")
    r = run("--check-config")
    check(r.returncode == 1 and r.stderr.strip() == "/etc/iotgw/iotgw.toml:2:11: 'firewall.enabled' must be a boolean, not integer",
          f"default path used when present: {r.stderr.strip()!r}")

    r = run("--hash-password", stdin="correct horse\n")
    check(r.returncode == 0 and r.stdout.startswith("pbkdf2-sha256$100000$"), "--hash-password prints a PBKDF2 hash")
    check("correct horse" not in r.stdout, "the hash does not contain the password")
    r = run("--hash-password", stdin="")
    check(r.returncode == 2, "--hash-password refuses an empty password")
finally:
    if subprocess.call(["umount", "/etc/iotgw"], stderr=subprocess.DEVNULL) == 0 and created_etc:
        os.rmdir("/etc/iotgw")
    cleanup(root)
finish()
