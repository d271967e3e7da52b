// SPDX-License-Identifier: GPL-3.0-or-later
#include "policy/subject_alt_name.h"

#include <algorithm>
#include <optional>

#include <fmt/format.h>

namespace iotgw::policy {

namespace {

// ASCII case-insensitive equality, for the type prefixes of subjectAltNames.
bool equalsIgnoringCase(std::string_view a, std::string_view b) {
  const auto lower = [](char c) {
    return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
  };
  return std::ranges::equal(a, b, [&](char x, char y) { return lower(x) == lower(y); });
}

// Letters, digits, '-' and '_' in dot-separated labels of 1 to 63, at most 253 in all, no label
// starting or ending with '-'. No wildcard: a device is one name, and a certificate's "*.hub.local"
// must not stand for it.
std::optional<std::string> dnsNameProblem(std::string_view name) {
  if (name.find('*') != std::string_view::npos) {
    return "a wildcard never names a device; write the device's own name";
  }
  if (name.empty() || name.size() > 253) {
    return "a DNS name has 1 to 253 characters";
  }
  size_t start = 0;
  while (start <= name.size()) {
    const size_t dot = std::min(name.find('.', start), name.size());
    const std::string_view label = name.substr(start, dot - start);
    if (label.empty() || label.size() > 63) {
      return "each dot-separated label of a DNS name has 1 to 63 characters";
    }
    if (label.front() == '-' || label.back() == '-') {
      return "a DNS label neither starts nor ends with '-'";
    }
    for (const char c : label) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '_';
      if (!ok) {
        return "a DNS name has only letters, digits, '-', '_' and dots";
      }
    }
    start = dot + 1;
  }
  return std::nullopt;
}

// RFC 3986: a scheme (a letter, then letters, digits, '+', '-', '.'), ':', and something after it,
// all printable ASCII without spaces.
std::optional<std::string> uriProblem(std::string_view uri) {
  const size_t colon = uri.find(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == uri.size()) {
    return "a URI is scheme:something (\"urn:dev:thermo-01\", \"https://...\")";
  }
  const auto alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  if (!alpha(uri.front()) || !std::ranges::all_of(uri.substr(0, colon), [&](char c) {
        return alpha(c) || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.';
      })) {
    return "a URI's scheme is a letter followed by letters, digits, '+', '-' or '.'";
  }
  if (!std::ranges::all_of(uri, [](char c) { return c > ' ' && c < 0x7f; })) {
    return "a URI has only printable ASCII characters and no spaces";
  }
  return std::nullopt;
}

} // namespace

// One entry of device.certificate.subject_alt_names. "DNS:<name>" and "URI:<uri>" say the kind
// (as OpenSSL writes them, in any case); a bare entry is a DNS name, or a URI when it has a ':'
// (which no DNS name has, and which keeps lists written before names had kinds meaning what they
// meant). The other kinds of subjectAltName are refused by name: they never identify a device.
std::expected<SubjectAltName, std::string> parseSubjectAltName(std::string_view text) {
  const size_t colon = text.find(':');
  const std::string_view prefix = colon == std::string_view::npos ? "" : text.substr(0, colon);
  for (const std::string_view never :
       {"email", "IP", "RID", "dirName", "otherName", "x400Name", "ediPartyName"}) {
    if (equalsIgnoringCase(prefix, never)) {
      return std::unexpected(fmt::format(
          "\"{}\": {} names never identify a device; write a DNS name (\"dev.hub.local\") or a "
          "URI (\"URI:urn:dev:x\")",
          text, never));
    }
  }
  SubjectAltName san;
  std::string_view value = text;
  if (equalsIgnoringCase(prefix, "DNS")) {
    value = text.substr(colon + 1);
  } else if (equalsIgnoringCase(prefix, "URI")) {
    san.type = SanType::Uri;
    value = text.substr(colon + 1);
  } else if (colon != std::string_view::npos) {
    san.type = SanType::Uri;
  }
  const auto problem = san.type == SanType::Dns ? dnsNameProblem(value) : uriProblem(value);
  if (problem) {
    return std::unexpected(fmt::format("\"{}\" is not a valid {}: {}", text,
                                       san.type == SanType::Dns ? "DNS name" : "URI", *problem));
  }
  san.value = san.type == SanType::Dns ? lowerCaseDnsName(value) : std::string(value);
  return san;
}

} // namespace iotgw::policy
