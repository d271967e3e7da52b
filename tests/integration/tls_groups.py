# SPDX-License-Identifier: GPL-3.0-or-later
"""Which key exchange groups a TLS server uses, per protocol version, measured the way sslscan's
group test does it (one ClientHello per group, offering that group alone) but reading the answer
the server actually gives:

* TLS 1.2: the named curve of the ServerKeyExchange. sslscan 2.0.7 never gets this far against
  WolfSSL: its protocol probe offers 317 cipher suites, more than WolfSSL takes in a ClientHello
  (WOLFSSL_MAX_SUITE_SZ, 150 suites), so it reports TLS 1.2 as disabled and skips its groups.
* TLS 1.3: the group in the key_share of the ServerHello or HelloRetryRequest. The ClientHello
  carries no key share, so a server that can use the group must ask for it by name in a
  HelloRetryRequest. sslscan counts any HelloRetryRequest as acceptance, and WolfSSL 5.5.4 answers
  a ClientHello whose only groups it refuses with a HelloRetryRequest that names no group, so
  sslscan lists every group it tries for TLS 1.3.
"""
import os
import socket
import struct

# The groups sslscan tries (IANA TLS Supported Groups), with short names.
GROUPS = {
    0x0001: "sect163k1", 0x0002: "sect163r1", 0x0003: "sect163r2", 0x0004: "sect193r1",
    0x0005: "sect193r2", 0x0006: "sect233k1", 0x0007: "sect233r1", 0x0008: "sect239k1",
    0x0009: "sect283k1", 0x000a: "sect283r1", 0x000b: "sect409k1", 0x000c: "sect409r1",
    0x000d: "sect571k1", 0x000e: "sect571r1", 0x000f: "secp160k1", 0x0010: "secp160r1",
    0x0011: "secp160r2", 0x0012: "secp192k1", 0x0013: "secp192r1", 0x0014: "secp224k1",
    0x0015: "secp224r1", 0x0016: "secp256k1", 0x0017: "P-256", 0x0018: "P-384", 0x0019: "P-521",
    0x001a: "brainpoolP256r1", 0x001b: "brainpoolP384r1", 0x001c: "brainpoolP512r1",
    0x001d: "X25519", 0x001e: "X448", 0x0100: "ffdhe2048", 0x0101: "ffdhe3072",
    0x0102: "ffdhe4096", 0x0103: "ffdhe6144", 0x0104: "ffdhe8192",
}

# ECDHE suites with ECDSA or RSA certificates, AEAD and CBC, so that the group is the only thing
# the server can refuse.
_SUITES_12 = [0xc02b, 0xc02c, 0xcca9, 0xc02f, 0xc030, 0xcca8, 0xc009, 0xc00a, 0xc023, 0xc024,
              0xc013, 0xc014, 0xc027, 0xc028]
_SUITES_13 = [0x1301, 0x1302, 0x1303]
_SIGALGS = [0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601, 0x0807]


def _ext(kind, body):
    return struct.pack(">HH", kind, len(body)) + body


def _u16_list(values, length_bytes=2):
    body = b"".join(struct.pack(">H", v) for v in values)
    return (struct.pack(">H", len(body)) if length_bytes == 2 else bytes([len(body)])) + body


def _client_hello(group, tls13):
    ext = _ext(10, _u16_list([group]))                     # supported_groups: this one alone
    ext += _ext(11, b"\x01\x00")                           # ec_point_formats: uncompressed
    ext += _ext(13, _u16_list(_SIGALGS))                   # signature_algorithms
    if tls13:
        ext += _ext(43, b"\x02\x03\x04")                   # supported_versions: TLS 1.3
        ext += _ext(51, b"\x00\x00")                       # key_share: none offered
    suites = _u16_list(_SUITES_13 if tls13 else _SUITES_12)
    body = b"\x03\x03" + os.urandom(32) + b"\x00" + suites + b"\x01\x00" + struct.pack(">H", len(ext)) + ext
    handshake = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(handshake)) + handshake


def _handshake_messages(sock, want):
    """Yields (type, body) of the server's handshake messages until `want` or anything else."""
    buf = b""
    data = b""
    while True:
        while len(buf) < 5 or len(buf) < 5 + struct.unpack(">H", buf[3:5])[0]:
            chunk = sock.recv(16384)
            if not chunk:
                return
            buf += chunk
        kind, length = buf[0], struct.unpack(">H", buf[3:5])[0]
        record, buf = buf[5:5 + length], buf[5 + length:]
        if kind != 22:  # an alert, or anything but a handshake record: the group was refused
            return
        data += record
        while len(data) >= 4 and len(data) >= 4 + int.from_bytes(data[1:4], "big"):
            size = int.from_bytes(data[1:4], "big")
            msg_type, body, data = data[0], data[4:4 + size], data[4 + size:]
            yield msg_type, body
            if msg_type in want:
                return


def _extensions(body, offset):
    total = struct.unpack(">H", body[offset:offset + 2])[0]
    at, end = offset + 2, offset + 2 + total
    while at + 4 <= end:
        kind, size = struct.unpack(">HH", body[at:at + 4])
        yield kind, body[at + 4:at + 4 + size]
        at += 4 + size


def _server_group(port, group, tls13, host="127.0.0.1"):
    """The group the server chose when offered `group` alone, or None."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(_client_hello(group, tls13))
        try:
            for msg_type, body in _handshake_messages(s, want={2} if tls13 else {12, 14}):
                if msg_type == 2 and tls13:
                    # ServerHello or HelloRetryRequest: version, random, session id, suite, method
                    offset = 2 + 32 + 1 + body[34] + 2 + 1
                    for kind, value in _extensions(body, offset):
                        if kind == 51 and len(value) >= 2:
                            return struct.unpack(">H", value[:2])[0]
                    return None
                if msg_type == 12:  # ServerKeyExchange: curve_type 3 (named_curve), then the curve
                    return struct.unpack(">H", body[1:3])[0] if body[0] == 3 else None
                if msg_type == 14:  # ServerHelloDone without a key exchange
                    return None
        except (socket.timeout, ConnectionError):
            return None
    return None


def server_groups(port, tls13):
    """The names of the groups the server uses, for TLS 1.3 or for TLS 1.2."""
    return [name for gid, name in GROUPS.items() if _server_group(port, gid, tls13) == gid]
