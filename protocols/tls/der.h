// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Just enough DER to read the fields of our own certificates and to write a certificate
// revocation list (WolfSSL 5.5 makes certificates but not CRLs). Definite lengths only; the
// reader refuses anything else rather than guessing.

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace iotgw::tls::der {

using Bytes = std::vector<uint8_t>;
using View = std::span<const uint8_t>;

inline constexpr uint8_t kInteger = 0x02;
inline constexpr uint8_t kBitString = 0x03;
inline constexpr uint8_t kOctetString = 0x04;
inline constexpr uint8_t kOid = 0x06;
inline constexpr uint8_t kUtcTime = 0x17;
inline constexpr uint8_t kGeneralizedTime = 0x18;
inline constexpr uint8_t kSequence = 0x30;
inline constexpr uint8_t kSet = 0x31;
inline constexpr uint8_t kUtf8String = 0x0c;
inline constexpr uint8_t kPrintableString = 0x13;

struct Tlv {
  uint8_t tag = 0;
  View value; // the contents
  View whole; // tag, length and contents
};

// Reads the element at the front of `in` and moves `in` past it; nullopt when malformed
// (multi-byte tag, indefinite or non-minimal length, length past the end).
[[nodiscard]] std::optional<Tlv> read(View& in);

[[nodiscard]] Bytes tlv(uint8_t tag, View value);
[[nodiscard]] Bytes sequence(std::initializer_list<View> parts);
// A non-negative INTEGER from big-endian magnitude bytes (leading zeros dropped, one added
// when the top bit is set).
[[nodiscard]] Bytes unsignedInteger(View magnitude);
[[nodiscard]] Bytes unsignedInteger(uint64_t value);
// UTCTime until 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5).
[[nodiscard]] Bytes time(std::chrono::system_clock::time_point t);
[[nodiscard]] std::optional<std::chrono::system_clock::time_point> parseTime(const Tlv& t);

// The parts of an X.509 certificate we need, as views into its DER.
struct CertificateFields {
  View serial;        // INTEGER contents
  View issuer;        // whole Name
  View subject;       // whole Name
  View publicKeyInfo; // whole SubjectPublicKeyInfo
  std::chrono::system_clock::time_point notAfter;
  std::string commonName; // of the subject, empty if none
  View subjectKeyId;      // keyIdentifier contents; empty if the extension is absent
};

[[nodiscard]] std::optional<CertificateFields> parseCertificate(View der);

[[nodiscard]] std::string hex(View bytes);

} // namespace iotgw::tls::der
