// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// A certificate's subjectAltName as far as device identity goes: a DNS name or a URI. Only these
// two kinds ever name a device, and a name matches names of its own kind only: an e-mail address
// or a URI that reads "dev-s.hub.local" is not the device whose DNS name that is. Both the policy
// (what a device is called) and the TLS servers (what a certificate says) speak it, so it stands
// alone: protocols/ includes it without the whole policy model.

#include <compare>
#include <cstdint>
#include <expected>
#include <string>
#include <string_view>

namespace iotgw::policy {

enum class SanType : uint8_t { Dns, Uri };

struct SubjectAltName {
  SanType type = SanType::Dns;
  // As the certificate has it. In a policy a DNS name is kept in lower case: DNS names compare
  // without regard to case, URIs exactly.
  std::string value;

  auto operator<=>(const SubjectAltName&) const = default;
};

// The way OpenSSL prints them and policies may write them: "DNS:dev-s.hub.local",
// "URI:urn:dev:dev-s".
[[nodiscard]] inline std::string toString(const SubjectAltName& san) {
  return (san.type == SanType::Dns ? "DNS:" : "URI:") + san.value;
}

// DNS names compare without regard to (ASCII) case; this is the form both sides are compared in.
[[nodiscard]] inline std::string lowerCaseDnsName(std::string_view name) {
  std::string out(name);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') {
      c = static_cast<char>(c - 'A' + 'a');
    }
  }
  return out;
}

// One entry of a policy's device.certificate.subject_alt_names: "DNS:<name>", "URI:<uri>" or a bare
// name; the other kinds are refused by name. The error is a sentence quoting the entry.
[[nodiscard]] std::expected<SubjectAltName, std::string> parseSubjectAltName(std::string_view text);

} // namespace iotgw::policy
