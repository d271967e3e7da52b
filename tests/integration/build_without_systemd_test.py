# SPDX-License-Identifier: GPL-3.0-or-later
"""The build an OpenWrt feed can make: without sdbus-c++ and without libsystemd's headers.

OpenWrt has neither sd-bus nor journald, so iotgwd must build, link and work without them. On this
machine both are installed (the other presets need them), and their headers sit in the compiler's
default search path, so a build here would not notice a stray include. The test therefore makes a
Debian 12 root with debootstrap holding only the build dependencies that an OpenWrt feed has
(or that its package builds: tomlplusplus is header-only), checks that sdbus-c++, libsystemd-dev
and their headers are absent, and in it configures the `openwrt` preset (nosystemd, D-Bus off),
builds iotgwd and the daemon's and policy's unit tests, and runs them. The binary must not need
libsystemd or libsdbus-c++, must say `-systemd`, must accept the configuration the OpenWrt UCI
bridge writes, and must refuse `[dbus] enabled = true` with its line.

usage: build_without_systemd_test.py SOURCE_DIR WORK_DIR   (run as root; WORK_DIR is emptied)
"""
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import check, debootstrap, finish  # noqa: E402

# What the build needs, as a feed has it; nothing of systemd or D-Bus.
BUILD_DEPENDS = [
    "g++", "cmake", "make", "pkgconf", "libtomlplusplus-dev", "libfmt-dev", "libwolfssl-dev",
    "libssl-dev", "libcoap3-dev", "libnftnl-dev", "libmnl-dev",
    # the test suite's own: GoogleTest, and the bench tools' libraries (not linked by iotgwd)
    "libgtest-dev", "libgmock-dev", "libmosquitto-dev", "libsqlite3-dev",
]


def in_root(root, cmd, timeout=1800):
    """`cmd` (a shell line) in the root, with a /proc of its own."""
    return subprocess.run(["unshare", "--mount", "--pid", "--fork", "--mount-proc=" + root + "/proc",
                           "chroot", root, "/bin/sh", "-c", cmd], capture_output=True, text=True,
                          timeout=timeout)


def copy_sources(source, dest):
    """The files git knows (tracked, or new and not ignored): never a build tree."""
    listed = subprocess.run(["git", "-C", source, "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], check=True, capture_output=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = os.path.join(source, rel)
        if not os.path.isfile(src):
            continue  # deleted in the work tree
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))


def main():
    source, work = sys.argv[1], sys.argv[2]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    root = os.path.join(work, "root")
    debootstrap(root, BUILD_DEPENDS, os.path.join(work, "debootstrap.log"))

    present = in_root(root, "dpkg-query -W -f='${Package} ${Status}\\n' 2>/dev/null").stdout
    installed = {line.split()[0] for line in present.splitlines() if "ok installed" in line}
    for pkg in ("libsystemd-dev", "libsdbus-c++-dev", "libsdbus-c++-bin", "libdbus-1-dev"):
        check(pkg not in installed, f"{pkg} is not installed in the build root")
    for path in ("usr/include/systemd", "usr/include/sdbus-c++"):
        check(not os.path.exists(os.path.join(root, path)), f"no /{path} in the build root")

    copy_sources(source, os.path.join(root, "src"))
    started = time.time()
    built = in_root(root, "cd /src && cmake --preset openwrt >/tmp/configure.log 2>&1 && "
                    "cmake --build --preset openwrt -j2 --target iotgwd iotgw_daemon_tests "
                    "iotgw_policy_tests >/tmp/build.log 2>&1; rc=$?; tail -n 40 /tmp/configure.log "
                    "/tmp/build.log; exit $rc")
    print(f"openwrt preset build: {time.time() - started:.0f} s")
    if not check(built.returncode == 0, "the openwrt preset configures and builds without them"):
        print(built.stdout, built.stderr)
        finish()
    build = "/src/build/openwrt"
    check(not os.path.exists(os.path.join(root, build[1:], "daemon/iotgwctl")),
          "no iotgwctl is built without D-Bus")

    needed = subprocess.run(["readelf", "-d", os.path.join(root, build[1:], "daemon/iotgwd")],
                            check=True, capture_output=True, text=True).stdout
    libs = [line.split("[")[1].rstrip("]") for line in needed.splitlines() if "(NEEDED)" in line]
    print("iotgwd needs:", " ".join(libs))
    check(not any("systemd" in lib or "sdbus" in lib for lib in libs),
          "iotgwd links neither libsystemd nor libsdbus-c++")
    size = os.path.getsize(os.path.join(root, build[1:], "daemon/iotgwd"))
    stripped = in_root(root, f"strip -o /tmp/iotgwd.stripped {build}/daemon/iotgwd && "
                       "stat -c %s /tmp/iotgwd.stripped")
    print(f"iotgwd (MinSizeRel): {size} bytes, stripped {stripped.stdout.strip()} bytes")

    version = in_root(root, f"{build}/daemon/iotgwd --version")
    check(version.returncode == 0 and "-systemd" in version.stdout,
          f"--version says it is built without systemd: {version.stdout.strip()}")

    # What the OpenWrt UCI bridge writes for the package's default /etc/config/iotgw.
    bridge = os.path.join(source, "packaging/openwrt/files/iotgw-uci2toml")
    uci = os.path.join(source, "packaging/openwrt/files/iotgw.config")
    toml = subprocess.run(["awk", "-f", bridge, uci], capture_output=True, text=True)
    check(toml.returncode == 0, f"the UCI bridge turns the default UCI file into TOML: "
          f"{toml.stderr.strip()}")
    with open(os.path.join(root, "tmp/iotgw.toml"), "w") as f:
        f.write(toml.stdout)
    checked = in_root(root, f"{build}/daemon/iotgwd --check-config --config /tmp/iotgw.toml")
    check(checked.returncode == 0,
          f"that TOML passes --check-config: {checked.stdout.strip()} {checked.stderr.strip()}")

    with open(os.path.join(root, "tmp/dbus.toml"), "w") as f:
        f.write("[dbus]\nenabled = true\n")
    refused = in_root(root, f"{build}/daemon/iotgwd --check-config --config /tmp/dbus.toml")
    check(refused.returncode == 1 and "/tmp/dbus.toml:2:11: 'dbus.enabled' = true needs a build "
          "with D-Bus support" in refused.stderr,
          f"asking it for D-Bus is refused at the line: {refused.stderr.strip()}")

    for binary in ("iotgw_daemon_tests", "iotgw_policy_tests"):
        ran = in_root(root, f"{build}/tests/{binary} --gtest_brief=1", timeout=600)
        tail = (ran.stdout.strip().splitlines() or [""])[-1]
        if not check(ran.returncode == 0, f"{binary} passes in the build without them: {tail}"):
            print(ran.stdout[-4000:], ran.stderr[-2000:])

    if not os.environ.get("IOTGW_KEEP_ROOT"):
        shutil.rmtree(work, ignore_errors=True)
    finish()


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("needs root (debootstrap, chroot)")
    main()
