// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The stateless half of DTLS 1.2's cookie exchange (RFC 6347 §4.2.1), for a gate in front of a
// DTLS server: read just enough of a datagram's first record to tell a ClientHello and its
// cookie, make and check cookies bound to the client's address, and write the HelloVerifyRequest.
//
// A ClientHello is accepted here exactly when OpenSSL's DTLSv1_listen would parse it (epoch 0,
// unfragmented, message_seq 0 or 1, the record holding exactly the one message, session id and
// cookie within the first fragment), so that every ClientHello the gate lets through with a good
// cookie is one OpenSSL goes on with. Pure: the secrets and the time are given.

#include <array>
#include <chrono>
#include <cstdint>
#include <expected>
#include <memory>
#include <optional>

#include "protocols/coap/message.h"

namespace iotgw::coap::dtls {

inline constexpr size_t kRecordHeaderBytes = 13;    // type, version, epoch, sequence, length
inline constexpr size_t kHandshakeHeaderBytes = 12; // type, length, message_seq, fragment
inline constexpr size_t kCookieBytes = 16;
// Enough of a datagram to reach the end of any ClientHello's cookie (a 255-byte session id and
// a 255-byte cookie at most), so the gate never needs more than this much of one.
inline constexpr size_t kPeekBytes =
    kRecordHeaderBytes + kHandshakeHeaderBytes + 2 + 32 + 1 + 255 + 1 + 255;

enum class HelloError : uint8_t {
  NotClientHello, // another record type, another epoch, another handshake message
  Malformed,      // says it is a ClientHello, but one DTLSv1_listen would drop
};

struct ClientHello {
  std::array<uint8_t, 8> sequence{}; // epoch and record sequence number: echoed in the answer
  View cookie;                       // empty on a first ClientHello
};

// `head` is the start of a datagram (at most kPeekBytes are needed), `size` its real size.
[[nodiscard]] std::expected<ClientHello, HelloError> parseClientHello(View head,
                                                                      size_t size) noexcept;

// A HelloVerifyRequest (record and message) answering `hello` with `cookie` (at most 255 bytes):
// DTLS 1.0 as record and server version and message_seq 0, as OpenSSL and RFC 6347 §4.2.1 have
// it, so that every client version understands it. Built in place: a flood of ClientHellos costs
// no allocation.
struct HelloVerifyRequest {
  std::array<uint8_t, kRecordHeaderBytes + kHandshakeHeaderBytes + 3 + 255> bytes{};
  size_t size = 0;
  [[nodiscard]] View view() const { return View(bytes.data(), size); }
};
[[nodiscard]] HelloVerifyRequest helloVerifyRequest(const ClientHello& hello, View cookie);

using Cookie = std::array<uint8_t, kCookieBytes>;
using Secret = std::array<uint8_t, 32>;

// Cookies are a MAC (AES-256 CBC-MAC over the fixed-length client identity) of the client's
// address under a secret that is replaced every `lifetime`; the previous secret is still
// accepted, so a cookie is good for one to two lifetimes and a client between its two
// ClientHellos never sees a rotation fail it. Making one allocates nothing.
class CookieJar {
public:
  using Clock = std::chrono::steady_clock;

  explicit CookieJar(Clock::duration lifetime = std::chrono::seconds(60));
  CookieJar(const CookieJar&) = delete;
  CookieJar& operator=(const CookieJar&) = delete;
  ~CookieJar();

  // Whether the current secret is older than the lifetime (or there is none yet).
  [[nodiscard]] bool rotationDue(Clock::time_point now) const noexcept;
  // Makes `fresh` the current secret and keeps the one it replaces; false if the MAC could not
  // be set up (the jar then makes no cookies and accepts none).
  [[nodiscard]] bool rotate(const Secret& fresh, Clock::time_point now);

  // `client` identifies the client (its address and port, as the caller encodes them; always
  // the same length, under 32 bytes).
  // nullopt only when no secret is set or the MAC fails.
  [[nodiscard]] std::optional<Cookie> make(View client) const;
  [[nodiscard]] bool verify(View client, View cookie) const;

private:
  struct Key;
  std::unique_ptr<Key> current_;
  std::unique_ptr<Key> previous_;
  Clock::duration lifetime_;
  Clock::time_point rotated_{};
};

} // namespace iotgw::coap::dtls
