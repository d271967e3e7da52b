#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attack: block-wise bodies without end, or announced as huge (issue 15, items 9 and 10).

From a device (item 9), through an authenticated client's requests:
* an answer whose every block says more follow: iotgwd asks for the blocks up to the body limit
  (64 KiB) and no further, and the client gets 5.02;
* an answer whose first block announces 4 GiB (Size2): 5.02 at that block, nothing more asked;
* an observed resource whose notifications each say more blocks follow: nothing more is asked
  for them (the rest of a notification is never fetched), each is dropped and counted, memory
  stays flat. Before, each notification started a block-wise fetch that never ended.
From a client (item 10):
* a Size1 of 4 GiB: 4.13 at once, with the limit as Size1 (RFC 7959 §4);
* 2 MiB in 1 KiB blocks without a last one: 2.31 up to 64 KiB, 4.13 at the first block past it,
  and nothing of the rest is kept.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import check, cleanup, finish, require_binary, tmpdir  # noqa: E402
from coaplab import (PROBE, Certificates, FakeDevice, Gateway, Probe, code_of, coap_config,  # noqa: E402
                     device_policy, free_udp_port, options, request, uint)
from iotgw_testlib import write  # noqa: E402

GET, PUT = 1, 3


def path(*segments):
    return [(11, s.encode()) for s in segments]


def block(num, more, szx=6):
    return uint(num << 4 | (8 if more else 0) | szx)


def main():
    require_binary()
    if os.geteuid() != 0 or not PROBE:
        print("needs root (a private system bus) and COAP_DTLS_PROBE", file=sys.stderr)
        sys.exit(2)
    root = tmpdir("iotgw-coap-blockwise-")
    gw, fake, probes = None, None, []
    try:
        certs = Certificates(os.path.join(root, "pki"))
        dtls, fake_port = free_udp_port(), free_udp_port("127.0.0.5")
        devices = os.path.join(root, "devices.d")
        device_policy(devices, fake_port, name="fake", address="127.0.0.5",
                      extra='[[coap.rule]]\nmethods = ["PUT"]\npath = "/upload/**"\n')
        fake = FakeDevice("127.0.0.5", fake_port)
        conf = os.path.join(root, "iotgw.toml")
        write(conf, coap_config(root, certs, ["127.0.0.1"], dtls, devices, limits="coap_request_timeout_ms = 3000"))
        # A small ASan quarantine, so that RSS measures what iotgwd keeps (as in the other tests).
        asan = os.environ.get("ASAN_OPTIONS", "")
        gw = Gateway(root, conf, env={"ASAN_OPTIONS": (asan + ":" if asan else "") + "quarantine_size_mb=1"})
        check(bool(gw.counters()), "iotgwd is up")

        def probe(wait_ms=300):
            p = Probe(dtls, certs, wait_ms)
            probes.append(p)
            check(p.connected, "a client completes its handshake")
            return p

        def asked(since):
            return [e for e in fake.log[since:]]

        print("a device's answer whose blocks never end")
        p = probe(wait_ms=3500)
        rss0, n0 = gw.rss_kb(), len(fake.log)
        r = p.send(request(GET, options(*path("fake", "endless")), mid=1, token=b"\x01"))
        check([code_of(x) for x in r] == ["5.02"], f"the client gets 5.02 ({[code_of(x) for x in r]})")
        first = len(asked(n0))
        time.sleep(1.5)
        total = len(asked(n0))
        print(f"  the device was asked for {total} blocks; RSS {rss0} -> {gw.rss_kb()} kB")
        check(first <= 64 and total == first, f"iotgwd asked for at most 64 blocks of 1 KiB and then stopped ({first}, {total})")

        print("a device's answer that announces 4 GiB")
        n0 = len(fake.log)
        r = p.send(request(GET, options(*path("fake", "huge")), mid=2, token=b"\x02"))
        check([code_of(x) for x in r] == ["5.02"], f"the client gets 5.02 ({[code_of(x) for x in r]})")
        time.sleep(0.5)
        n = len(asked(n0))
        print(f"  the device was asked {n} times")
        check(n == 1, f"at its first block: nothing more is asked ({n})")
        r = p.send(request(GET, options(*path("fake", "big")), mid=3, token=b"\x03"))
        check([code_of(x) for x in r] == ["2.05"], f"a proper block-wise answer still comes through ({[code_of(x) for x in r]})")
        p.close()

        print("an observed resource whose notifications say more blocks follow, ten a second")
        p = probe(wait_ms=50)
        before = gw.counters()
        r = p.send(request(GET, options((6, b""), *path("fake", "obs-endless")), mid=4, token=b"\x04"))
        check(any(code_of(x) == "2.05" for x in r), f"the registration is answered ({[code_of(x) for x in r][:3]})")
        n0 = len(fake.log)
        # RSS from one second in: the first notifications warm a sanitizer build's allocator up.
        time.sleep(1)
        rss0 = gw.rss_kb()
        time.sleep(4)
        follow = len(asked(n0))
        after = gw.counters()
        rss1 = gw.rss_kb()
        dropped = after.get("coap_bad_responses", 0) - before.get("coap_bad_responses", 0)
        print(f"  blocks asked of the device for its notifications in 5 s: {follow}; RSS {rss0} -> {rss1} kB")
        check(follow == 0, f"none: the rest of a notification is never fetched ({follow})")
        check(dropped >= 20, f"each notification dropped and counted ({dropped})")
        check(rss1 - rss0 < 2048, f"memory stays flat (RSS {rss0} -> {rss1} kB)")
        p.close()

        print("a client's upload announced as 4 GiB")
        p = probe(wait_ms=40)
        r = p.send(request(PUT, options(*path("fake", "upload", "a"), (27, block(0, True)), (60, uint(0xffffffff))),
                           b"x" * 1024, mid=1, token=b"\x11"))
        codes = [code_of(x) for x in r]
        check(codes == ["4.13"], f"a Size1 of 4 GiB: 4.13 at once ({codes})")
        check(bool(r) and uint(65536).hex() in r[0], "with the limit as its Size1")
        print("a client's uploads of 2 MiB each without a last block")

        def endless_upload(name, token):
            codes = []
            for start in range(0, 2048, 32):
                codes += [code_of(x) for x in p.burst(
                    [request(PUT, options(*path("fake", "upload", name), (27, block(n, True))), b"y" * 1024,
                             mid=(2 + n) & 0xffff, token=token) for n in range(start, start + 32)])]
            return codes

        # The first one also warms up the allocator (a sanitizer build's grows by megabytes on its
        # own); what the second one adds is what iotgwd keeps of it.
        rss0 = gw.rss_kb()
        codes = endless_upload("b", b"\x12")
        rss1 = gw.rss_kb()
        print(f"  {codes.count('2.31')} x 2.31, then {codes[64:66]}; RSS {rss0} -> {rss1} kB")
        check(codes[:64] == ["2.31"] * 64 and codes[64] == "4.13" and "2.31" not in codes[65:],
              "2.31 up to 64 KiB, 4.13 at the first block past it, no 2.31 after")
        codes = endless_upload("c", b"\x13")
        rss2 = gw.rss_kb()
        print(f"  again: {codes.count('2.31')} x 2.31, then {codes[64:66]}; RSS {rss1} -> {rss2} kB")
        check(codes[:64] == ["2.31"] * 64 and codes[64] == "4.13", "the same for the next upload")
        check(rss2 - rss1 < 1024, f"and nothing of the rest is kept (RSS {rss1} -> {rss2} kB, of 2 MiB sent)")
        p.close()
        check(gw.alive(), "iotgwd survived all of it")
    finally:
        for p in probes:
            p.close()
        if gw:
            gw.stop()
        if fake:
            fake.stop()
        cleanup(root)
    finish()


if __name__ == "__main__":
    main()
