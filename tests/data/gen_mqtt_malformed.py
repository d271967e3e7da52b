#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
# Generates tests/data/mqtt-malformed.txt: one malformed client packet per line.
def vbi(n):
    out = bytearray()
    while True:
        b = n & 0x7F; n >>= 7
        if n: b |= 0x80
        out.append(b)
        if not n: return bytes(out)
def u16(n): return bytes([n >> 8, n & 0xFF])
def s(x):
    if isinstance(x, str): x = x.encode()
    return u16(len(x)) + x
def pkt(h, body): return bytes([h]) + vbi(len(body)) + body
def props(*ps):
    b = b"".join(ps); return vbi(len(b)) + b
def p_byte(i, v): return bytes([i, v])
def p_u16(i, v): return bytes([i]) + u16(v)
def p_u32(i, v): return bytes([i]) + v.to_bytes(4, "big")
def p_str(i, v): return bytes([i]) + s(v)
def p_user(k, v): return bytes([0x26]) + s(k) + s(v)

def connect(flags=0x02, cid=b"dev", level=4, name=b"MQTT", keep=60, pr=b"", payload_extra=b"", hdr=0x10):
    body = s(name) + bytes([level, flags]) + u16(keep)
    if level == 5: body += pr if pr else props()
    body += s(cid) + payload_extra
    return pkt(hdr, body)

def publish(topic, qos=0, pid=1, dup=False, retain=False, pr=None, payload=b"x", v=4, hdr=None):
    flags = (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = s(topic)
    if qos: body += u16(pid)
    if v == 5: body += pr if pr is not None else props()
    body += payload
    return pkt(hdr if hdr is not None else (0x30 | flags), body)

def subscribe(subs, pid=1, v=4, pr=None, hdr=0x82):
    body = u16(pid)
    if v == 5: body += pr if pr is not None else props()
    for f, o in subs: body += s(f) + bytes([o])
    return pkt(hdr, body)

def unsubscribe(filters, pid=1, v=4, pr=None, hdr=0xA2):
    body = u16(pid)
    if v == 5: body += pr if pr is not None else props()
    for f in filters: body += s(f)
    return pkt(hdr, body)

cases = []
def add(name, v, clause, data): cases.append((name, v, clause, data.hex()))

# CONNECT
add("connect-protocol-name-mqisdp", 4, "MQTT-3.1.2-1", connect(name=b"MQIsdp", level=3))
add("connect-protocol-name-lowercase", 4, "MQTT-3.1.2-1", connect(name=b"mqtt"))
add("connect-level-3", 4, "MQTT-3.1.2-2", connect(level=3))
add("connect-level-6", 4, "MQTT-3.1.2-2", connect(level=6))
add("connect-reserved-flag", 4, "MQTT-3.1.2-3", connect(flags=0x03))
add("connect-will-qos-without-will", 4, "MQTT-3.1.2-13", connect(flags=0x0A))
add("connect-will-retain-without-will", 4, "MQTT-3.1.2-15", connect(flags=0x22))
add("connect-will-qos-3", 4, "MQTT-3.1.2-14", connect(flags=0x1E, payload_extra=s("w/t") + s("bye")))
add("connect-password-without-username", 4, "MQTT-3.1.2-22", connect(flags=0x42, payload_extra=s("pw")))
add("connect-client-id-overlong-utf8", 4, "MQTT-3.1.3-4", connect(cid=b"\xc0\xaf"))
add("connect-client-id-nul", 4, "MQTT-3.1.3-4", connect(cid=b"a\x00b"))
add("connect-client-id-surrogate", 4, "MQTT-3.1.3-4", connect(cid=b"\xed\xa0\x80"))
add("connect-empty-client-id-persistent", 4, "MQTT-3.1.3-8", connect(flags=0x00, cid=b""))
add("connect-client-id-300-bytes", 4, "MQTT-3.1.3-5", connect(cid=b"a" * 300))
add("connect-username-bad-utf8", 4, "MQTT-3.1.3-11", connect(flags=0x82, payload_extra=s(b"\xff\xfe")))
# MQTT 5 §1.5.4 (3.1.1 §1.5.3): control characters and non-characters may be treated as malformed;
# the parsers behind the gateway are the ones most likely to break on them.
add("connect-client-id-control-u0001", 4, "MQTT-1.5.4", connect(cid=b"dev\x01"))
add("connect-client-id-control-u009b", 4, "MQTT-1.5.4", connect(cid=b"dev\xc2\x9b"))
add("connect-username-control-u007f", 4, "MQTT-1.5.4", connect(flags=0x82, payload_extra=s(b"u\x7f")))
add("connect-username-noncharacter-ufffe", 4, "MQTT-1.5.4", connect(flags=0x82, payload_extra=s(b"u\xef\xbf\xbe")))
add("connect-will-topic-control-u000a", 4, "MQTT-1.5.4", connect(flags=0x06, payload_extra=s("a/\nb") + s("bye")))
add("connect-v5-will-topic-noncharacter-ufdd0", 5, "MQTT-1.5.4", connect(level=5, flags=0x06, payload_extra=props() + s(b"a/\xef\xb7\x90") + s("bye")))
add("connect-v5-user-property-control", 5, "MQTT-1.5.4", connect(level=5, pr=props(p_user("k", b"v\x1b[2J"))))
add("connect-will-topic-wildcard", 4, "MQTT-3.3.2-2", connect(flags=0x06, payload_extra=s("a/+") + s("bye")))
add("connect-will-topic-empty", 4, "MQTT-4.7.3-1", connect(flags=0x06, payload_extra=s("") + s("bye")))
add("connect-client-id-truncated", 4, "MQTT-1.5", pkt(0x10, s("MQTT") + bytes([4, 2]) + u16(60) + u16(10) + b"abc"))
add("connect-trailing-bytes", 4, "MQTT-1.5", connect(payload_extra=b"\x00"))
add("connect-header-flags", 4, "MQTT-2.2.2-1", connect(hdr=0x11))
add("connect-username-flag-no-username", 4, "MQTT-1.5", connect(flags=0x82))
add("connect-password-flag-no-password", 4, "MQTT-1.5", connect(flags=0xC2, payload_extra=s("u")))
add("connect-will-payload-truncated", 4, "MQTT-1.5", connect(flags=0x06, payload_extra=s("a/b") + u16(50)))
add("connect-name-truncated", 4, "MQTT-1.5", pkt(0x10, b"\x00"))
add("connect-empty-body", 4, "MQTT-1.5", pkt(0x10, b""))
add("connect-v5-property-length-past-end", 5, "MQTT-2.2.2.2", connect(level=5, pr=vbi(40) + p_u32(0x11, 10)))
add("connect-v5-unknown-property", 5, "MQTT-2.2.2.2", connect(level=5, pr=props(bytes([0x7F, 0]))))
add("connect-v5-duplicate-session-expiry", 5, "MQTT-2.2.2.2", connect(level=5, pr=props(p_u32(0x11, 1), p_u32(0x11, 2))))
add("connect-v5-topic-alias-property", 5, "MQTT-2.2.2.2", connect(level=5, pr=props(p_u16(0x23, 1))))
add("connect-v5-receive-maximum-0", 5, "MQTT-3.1.2.11.3", connect(level=5, pr=props(p_u16(0x21, 0))))
add("connect-v5-maximum-packet-size-0", 5, "MQTT-3.1.2.11.4", connect(level=5, pr=props(p_u32(0x27, 0))))
add("connect-v5-request-problem-info-2", 5, "MQTT-3.1.2.11", connect(level=5, pr=props(p_byte(0x17, 2))))
add("connect-v5-request-response-info-7", 5, "MQTT-3.1.2.11", connect(level=5, pr=props(p_byte(0x19, 7))))
add("connect-v5-auth-data-without-method", 5, "MQTT-3.1.2.11.10", connect(level=5, pr=props(bytes([0x16]) + s("x"))))
add("connect-v5-will-payload-not-utf8", 5, "MQTT-3.1.3-7", connect(level=5, flags=0x06, payload_extra=props(p_byte(0x01, 1)) + s("a/b") + s(b"\xff")))
add("connect-v5-will-session-expiry", 5, "MQTT-2.2.2.2", connect(level=5, flags=0x06, payload_extra=props(p_u32(0x11, 1)) + s("a/b") + s("x")))
add("connect-v5-user-property-bad-utf8", 5, "MQTT-1.5.4-1", connect(level=5, pr=props(p_user(b"\xc3", b"v"))))
add("connect-v5-property-id-5-bytes", 5, "MQTT-1.5.5-1", connect(level=5, pr=props(b"\x80\x80\x80\x80\x01")))
add("connect-v5-subscription-identifier", 5, "MQTT-2.2.2.2", connect(level=5, pr=props(b"\x0b\x01")))
add("connect-v5-assigned-client-id", 5, "MQTT-2.2.2.2", connect(level=5, pr=props(p_str(0x12, "x"))))
add("remaining-length-5-bytes", 4, "MQTT-1.5.5-1", bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]))
# After the login (before it, the much smaller limits.max_connect_bytes refuses it).
add("publish-v4-remaining-length-too-large", 4, "MQTT-3.2.2-15", bytes([0x30]) + vbi(10_000_000))
add("connect-v5-remaining-length-5-bytes", 5, "MQTT-1.5.5-1", bytes([0x10, 0x80, 0x80, 0x80, 0x80, 0x01]))

# PUBLISH
for v in (4, 5):
    t = f"v{v}"
    add(f"publish-{t}-qos3", v, "MQTT-3.3.1-4", publish("a", qos=3, v=v))
    add(f"publish-{t}-dup-qos0", v, "MQTT-3.3.1-2", publish("a", dup=True, v=v))
    add(f"publish-{t}-topic-plus", v, "MQTT-3.3.2-2", publish("a/+/b", v=v))
    add(f"publish-{t}-topic-hash", v, "MQTT-3.3.2-2", publish("a/#", v=v))
    add(f"publish-{t}-topic-overlong-utf8", v, "MQTT-1.5.3-1", publish(b"\xc0\xaf", v=v))
    add(f"publish-{t}-topic-nul", v, "MQTT-1.5.3-2", publish(b"a\x00", v=v))
    add(f"publish-{t}-topic-surrogate", v, "MQTT-1.5.3-1", publish(b"\xed\xa0\x80", v=v))
    add(f"publish-{t}-qos1-packet-id-0", v, "MQTT-2.3.1-1", publish("a", qos=1, pid=0, v=v))
    add(f"publish-{t}-qos2-packet-id-0", v, "MQTT-2.3.1-1", publish("a", qos=2, pid=0, v=v))
    add(f"publish-{t}-topic-length-past-end", v, "MQTT-1.5", pkt(0x30, u16(20) + b"abc"))
    add(f"publish-{t}-qos1-missing-packet-id", v, "MQTT-1.5", pkt(0x32, s("a")))
    add(f"publish-{t}-empty-topic", v, "MQTT-4.7.3-1", publish("", v=v))
    add(f"publish-{t}-topic-5-byte-utf8", v, "MQTT-1.5.3-1", publish(b"\xf8\x88\x80\x80\x80", v=v))
    add(f"publish-{t}-topic-control-u0007", v, "MQTT-1.5.4", publish(b"a/\x07", v=v))
    add(f"publish-{t}-topic-control-u0085", v, "MQTT-1.5.4", publish(b"a/\xc2\x85", v=v))
    add(f"publish-{t}-topic-noncharacter-uffff", v, "MQTT-1.5.4", publish(b"a/\xef\xbf\xbf", v=v))
    add(f"publish-{t}-topic-noncharacter-u10fffe", v, "MQTT-1.5.4", publish(b"a/\xf4\x8f\xbf\xbe", v=v))
add("publish-v5-subscription-identifier", 5, "MQTT-2.2.2.2", publish("a", v=5, pr=props(b"\x0b\x01")))
add("publish-v5-topic-alias-0", 5, "MQTT-3.3.2-8", publish("a", v=5, pr=props(p_u16(0x23, 0))))
add("publish-v5-topic-alias-above-maximum", 5, "MQTT-3.3.2-9", publish("a", v=5, pr=props(p_u16(0x23, 5))))
add("publish-v5-payload-not-utf8", 5, "MQTT-3.3.2-4", publish("a", v=5, pr=props(p_byte(0x01, 1)), payload=b"\xff\xfe"))
add("publish-v5-duplicate-content-type", 5, "MQTT-2.2.2.2", publish("a", v=5, pr=props(p_str(0x03, "a"), p_str(0x03, "b"))))
add("publish-v5-response-topic-wildcard", 5, "MQTT-3.3.2-13", publish("a", v=5, pr=props(p_str(0x08, "r/#"))))
add("publish-v5-payload-format-2", 5, "MQTT-3.1.2.11", publish("a", v=5, pr=props(p_byte(0x01, 2))))
add("publish-v5-property-length-past-end", 5, "MQTT-2.2.2.2", publish("a", v=5, pr=vbi(30), payload=b""))
add("publish-v5-session-expiry", 5, "MQTT-2.2.2.2", publish("a", v=5, pr=props(p_u32(0x11, 5))))
add("publish-v5-reason-string", 5, "MQTT-2.2.2.2", publish("a", v=5, pr=props(p_str(0x1F, "x"))))
add("publish-v5-user-property-value-bad-utf8", 5, "MQTT-1.5.4-1", publish("a", v=5, pr=props(p_user("k", b"\xe2\x82"))))
add("publish-v5-content-type-nul", 5, "MQTT-1.5.4-1", publish("a", v=5, pr=props(p_str(0x03, b"a\x00"))))

# Acknowledgements
add("puback-packet-id-0", 4, "MQTT-2.3.1-1", pkt(0x40, u16(0)))
add("pubrec-packet-id-0", 4, "MQTT-2.3.1-1", pkt(0x50, u16(0)))
add("pubrel-flags-0", 4, "MQTT-3.6.1-1", pkt(0x60, u16(1)))
add("pubrel-flags-3", 4, "MQTT-3.6.1-1", pkt(0x63, u16(1)))
add("pubrel-packet-id-0", 4, "MQTT-2.3.1-1", pkt(0x62, u16(0)))
add("pubcomp-packet-id-0", 4, "MQTT-2.3.1-1", pkt(0x70, u16(0)))
add("puback-flags", 4, "MQTT-2.2.2-1", pkt(0x41, u16(1)))
add("puback-v4-trailing", 4, "MQTT-1.5", pkt(0x40, u16(1) + b"\x00"))
add("puback-truncated", 4, "MQTT-1.5", pkt(0x40, b"\x01"))
add("pubrec-empty", 4, "MQTT-1.5", pkt(0x50, b""))
add("puback-v5-reason-0x05", 5, "MQTT-3.4.2.1", pkt(0x40, u16(1) + b"\x05"))
add("pubrel-v5-reason-0x10", 5, "MQTT-3.4.2.1", pkt(0x62, u16(1) + b"\x10"))
add("pubcomp-v5-reason-0x80", 5, "MQTT-3.4.2.1", pkt(0x70, u16(1) + b"\x80"))
add("puback-v5-topic-alias-property", 5, "MQTT-2.2.2.2", pkt(0x40, u16(1) + b"\x00" + props(p_u16(0x23, 1))))
add("pubcomp-v5-duplicate-reason-string", 5, "MQTT-2.2.2.2", pkt(0x70, u16(1) + b"\x00" + props(p_str(0x1F, "a"), p_str(0x1F, "b"))))
add("pubrec-v5-property-length-past-end", 5, "MQTT-2.2.2.2", pkt(0x50, u16(1) + b"\x00" + vbi(9)))

# SUBSCRIBE
add("subscribe-flags-0", 4, "MQTT-3.8.1-1", subscribe([("a", 0)], hdr=0x80))
add("subscribe-flags-3", 4, "MQTT-3.8.1-1", subscribe([("a", 0)], hdr=0x83))
for v in (4, 5):
    t = f"v{v}"
    add(f"subscribe-{t}-packet-id-0", v, "MQTT-2.3.1-1", subscribe([("a", 0)], pid=0, v=v))
    add(f"subscribe-{t}-no-filter", v, "MQTT-3.8.3-3", subscribe([], v=v))
    add(f"subscribe-{t}-qos3", v, "MQTT-3.8.3-4", subscribe([("a", 3)], v=v))
    add(f"subscribe-{t}-hash-in-middle", v, "MQTT-4.7.1-2", subscribe([("a/#/b", 0)], v=v))
    add(f"subscribe-{t}-hash-not-alone", v, "MQTT-4.7.1-2", subscribe([("a#", 0)], v=v))
    add(f"subscribe-{t}-plus-not-alone", v, "MQTT-4.7.1-3", subscribe([("a+", 0)], v=v))
    add(f"subscribe-{t}-empty-filter", v, "MQTT-4.7.3-1", subscribe([("", 0)], v=v))
    add(f"subscribe-{t}-filter-bad-utf8", v, "MQTT-1.5.3-1", subscribe([(b"\xc3\x28", 0)], v=v))
    add(f"subscribe-{t}-filter-control-u001f", v, "MQTT-1.5.4", subscribe([(b"a/\x1f/#", 0)], v=v))
    add(f"subscribe-{t}-filter-nul", v, "MQTT-1.5.3-2", subscribe([(b"a\x00/b", 0)], v=v))
    add(f"subscribe-{t}-second-filter-invalid", v, "MQTT-4.7.1-3", subscribe([("ok/+", 0), ("x/y+", 1)], v=v))
    add(f"subscribe-{t}-share-empty-name", v, "MQTT-4.8.2-2", subscribe([("$share//a", 0)], v=v))
    add(f"subscribe-{t}-share-no-filter", v, "MQTT-4.8.2-2", subscribe([("$share/name", 0)], v=v))
    add(f"subscribe-{t}-share-wildcard-name", v, "MQTT-4.8.2-2", subscribe([("$share/na+me/x", 0)], v=v))
add("subscribe-filter-length-past-end", 4, "MQTT-1.5", pkt(0x82, u16(1) + u16(30) + b"ab"))
add("subscribe-missing-options", 4, "MQTT-1.5", pkt(0x82, u16(1) + s("a")))
add("subscribe-v4-reserved-option-bits", 4, "MQTT-3.8.3-4", subscribe([("a", 0x04)]))
add("subscribe-v5-reserved-option-bits", 5, "MQTT-3.8.3-5", subscribe([("a", 0xC0)], v=5))
add("subscribe-v5-retain-handling-3", 5, "MQTT-3.8.3.1", subscribe([("a", 0x30)], v=5))
add("subscribe-v5-shared-no-local", 5, "MQTT-3.8.3-4", subscribe([("$share/g/a", 0x04)], v=5))
add("subscribe-v5-subscription-id-0", 5, "MQTT-3.8.2.1.2", subscribe([("a", 0)], v=5, pr=props(b"\x0b\x00")))
add("subscribe-v5-two-subscription-ids", 5, "MQTT-2.2.2.2", subscribe([("a", 0)], v=5, pr=props(b"\x0b\x01", b"\x0b\x02")))
add("subscribe-v5-topic-alias-property", 5, "MQTT-2.2.2.2", subscribe([("a", 0)], v=5, pr=props(p_u16(0x23, 1))))
add("subscribe-v5-property-length-past-end", 5, "MQTT-2.2.2.2", subscribe([], v=5, pr=vbi(5)))

# UNSUBSCRIBE
add("unsubscribe-flags-0", 4, "MQTT-3.10.1-1", unsubscribe(["a"], hdr=0xA0))
for v in (4, 5):
    t = f"v{v}"
    add(f"unsubscribe-{t}-packet-id-0", v, "MQTT-2.3.1-1", unsubscribe(["a"], pid=0, v=v))
    add(f"unsubscribe-{t}-no-filter", v, "MQTT-3.10.3-2", unsubscribe([], v=v))
    add(f"unsubscribe-{t}-hash-in-middle", v, "MQTT-4.7.1-2", unsubscribe(["a/#/b"], v=v))
    add(f"unsubscribe-{t}-filter-bad-utf8", v, "MQTT-1.5.3-1", unsubscribe([b"\xe0\x80\x80"], v=v))
    add(f"unsubscribe-{t}-filter-control-u0001", v, "MQTT-1.5.4", unsubscribe([b"a/\x01"], v=v))
add("unsubscribe-filter-truncated", 4, "MQTT-1.5", pkt(0xA2, u16(1) + u16(9)))
add("unsubscribe-v5-session-expiry-property", 5, "MQTT-2.2.2.2", unsubscribe(["a"], v=5, pr=props(p_u32(0x11, 1))))

# Others
add("pingreq-with-body", 4, "MQTT-1.5", bytes([0xC0, 0x01, 0x00]))
add("pingreq-flags", 4, "MQTT-2.2.2-1", bytes([0xC1, 0x00]))
add("disconnect-flags", 4, "MQTT-2.2.2-1", bytes([0xE1, 0x00]))
add("disconnect-v4-with-body", 4, "MQTT-1.5", bytes([0xE0, 0x01, 0x00]))
add("disconnect-v5-server-only-reason", 5, "MQTT-3.14.2.1", bytes([0xE0, 0x01, 0x8E]))
add("disconnect-v5-topic-alias-property", 5, "MQTT-2.2.2.2", pkt(0xE0, b"\x00" + props(p_u16(0x23, 1))))
add("reserved-type-0", 4, "MQTT-2.2.1", bytes([0x00, 0x00]))
add("connack-from-client", 4, "MQTT-4.8.0-1", bytes([0x20, 0x02, 0x00, 0x00]))
add("suback-from-client", 4, "MQTT-4.8.0-1", bytes([0x90, 0x03, 0x00, 0x01, 0x00]))
add("unsuback-from-client", 4, "MQTT-4.8.0-1", bytes([0xB0, 0x02, 0x00, 0x01]))
add("pingresp-from-client", 4, "MQTT-4.8.0-1", bytes([0xD0, 0x00]))
add("auth-in-v311", 4, "MQTT-2.2.1", bytes([0xF0, 0x00]))
add("auth-v5-reason-0x01", 5, "MQTT-3.15.2.1", bytes([0xF0, 0x01, 0x01]))
add("auth-v5-flags", 5, "MQTT-2.2.2-1", bytes([0xF1, 0x00]))
add("connack-v5-from-client", 5, "MQTT-4.8.0-1", bytes([0x20, 0x03, 0x00, 0x00, 0x00]))

import os
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mqtt-malformed.txt"), "w") as f:
    f.write("# Malformed MQTT packets a client might send, one per line:\n")
    f.write("#   name  session-version(4|5)  clause-the-refusal-must-name  packet-in-hex\n")
    f.write("# Used by the codec unit test and by the proxy's raw-socket integration test.\n")
    for name, v, clause, hx in cases:
        f.write(f"{name} {v} {clause} {hx}\n")
print(len(cases), "cases")
