// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// CoAP messages (RFC 7252 §3) as a pure codec: bytes to a typed message or a typed error, and
// back. Framing and decoding only; what a request may contain is checked in validate.h. Views
// point into the datagram, which must outlive the message.

#include <cstdint>
#include <expected>
#include <span>
#include <string_view>
#include <vector>

namespace iotgw::coap {

using Bytes = std::vector<uint8_t>;
using View = std::span<const uint8_t>;

enum class Type : uint8_t { Confirmable = 0, NonConfirmable = 1, Acknowledgement = 2, Reset = 3 };

// Code as class.detail packed in one byte (RFC 7252 §3: ccc ddddd).
constexpr uint8_t code(uint8_t cls, uint8_t detail) {
  return static_cast<uint8_t>(cls << 5 | detail);
}

namespace codes {
inline constexpr uint8_t kEmpty = 0;
inline constexpr uint8_t kGet = 1, kPost = 2, kPut = 3, kDelete = 4, kFetch = 5, kPatch = 6,
                         kIPatch = 7;
inline constexpr uint8_t kContent = code(2, 5);
inline constexpr uint8_t kContinue = code(2, 31); // RFC 7959 §2.9.1
inline constexpr uint8_t kBadRequest = code(4, 0);
inline constexpr uint8_t kUnauthorized = code(4, 1);
inline constexpr uint8_t kBadOption = code(4, 2);
inline constexpr uint8_t kForbidden = code(4, 3);
inline constexpr uint8_t kNotFound = code(4, 4);
inline constexpr uint8_t kMethodNotAllowed = code(4, 5);
inline constexpr uint8_t kRequestEntityIncomplete = code(4, 8);
inline constexpr uint8_t kRequestEntityTooLarge = code(4, 13);
inline constexpr uint8_t kUnsupportedContentFormat = code(4, 15);
inline constexpr uint8_t kTooManyRequests = code(4, 29); // RFC 8516
inline constexpr uint8_t kInternalServerError = code(5, 0);
inline constexpr uint8_t kBadGateway = code(5, 2);
inline constexpr uint8_t kServiceUnavailable = code(5, 3);
inline constexpr uint8_t kGatewayTimeout = code(5, 4);
inline constexpr uint8_t kProxyingNotSupported = code(5, 5);
} // namespace codes

namespace options {
inline constexpr uint16_t kIfMatch = 1, kUriHost = 3, kETag = 4, kIfNoneMatch = 5, kObserve = 6,
                          kUriPort = 7, kLocationPath = 8, kOscore = 9, kUriPath = 11,
                          kContentFormat = 12, kMaxAge = 14, kUriQuery = 15, kAccept = 17,
                          kLocationQuery = 20, kBlock2 = 23, kBlock1 = 27, kSize2 = 28,
                          kProxyUri = 35, kProxyScheme = 39, kSize1 = 60, kEcho = 252,
                          kNoResponse = 258, kRequestTag = 292;
// Odd numbers are critical (RFC 7252 §5.4.1): a recipient that does not know one must refuse.
constexpr bool critical(uint16_t number) { return (number & 1) != 0; }
} // namespace options

struct Option {
  uint16_t number = 0;
  View value;
};

struct Message {
  Type type = Type::Confirmable;
  uint8_t code = 0;
  uint16_t messageId = 0;
  View token;                  // 0 to 8 bytes
  std::vector<Option> options; // in ascending number order, as on the wire
  View payload;                // empty when there is none

  [[nodiscard]] uint8_t codeClass() const { return code >> 5; }
  [[nodiscard]] bool isRequest() const { return code >= 1 && code <= 31; }
  [[nodiscard]] bool isResponse() const { return code >= 64; }
  [[nodiscard]] bool isEmpty() const { return code == codes::kEmpty; }
};

enum class ParseError : uint8_t {
  TooShort,             // under the 4-byte header, or the token runs past the end
  BadVersion,           // version is not 1
  BadTokenLength,       // TKL 9-15 (reserved)
  ReservedCode,         // classes 1, 6 and 7 (RFC 7252 §12.1)
  ReservedNibble,       // option delta or length 15 outside a payload marker
  TruncatedOption,      // extended delta/length or value past the end
  OptionNumberTooLarge, // beyond 65535
  EmptyPayload,         // a payload marker followed by nothing (§3)
  EmptyWithContent,     // code 0.00 with a token, options or payload (§4.1)
  TooManyOptions,
};

[[nodiscard]] std::string_view describe(ParseError e) noexcept;

// At most this many options are decoded; more is an error (a sane request has a handful).
inline constexpr size_t kMaxOptions = 64;

[[nodiscard]] std::expected<Message, ParseError> parse(View datagram);

// Encodes a message; options must be sorted by number (stable for repeats).
[[nodiscard]] Bytes encode(const Message& m);

// Option values as unsigned integers (RFC 7252 §3.2 uint: big-endian, no leading zeros, 0-4 bytes).
[[nodiscard]] uint32_t decodeUint(View v) noexcept;
[[nodiscard]] Bytes encodeUint(uint32_t value);

} // namespace iotgw::coap
