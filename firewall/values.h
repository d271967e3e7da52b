// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Set-element values in the kernel's byte order, shared by the two tables' compilers.

#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "firewall/ruleset.h"
#include "policy/device.h"

namespace iotgw::firewall::values {

inline Value address(const policy::IpAddress& a) {
  const size_t n = a.family == AF_INET ? 4 : 16;
  return Value{{a.bytes.begin(), a.bytes.begin() + static_cast<long>(n)}, std::nullopt};
}

inline Value prefix(const policy::IpPrefix& p) {
  Value v = address(p.address);
  const uint8_t full = p.address.family == AF_INET ? 32 : 128;
  if (p.length != full) {
    v.prefix = p.length;
  }
  return v;
}

inline Value u8(uint8_t x) { return Value{{x}, std::nullopt}; }

inline Value port(uint16_t p) {
  return Value{{static_cast<uint8_t>(p >> 8), static_cast<uint8_t>(p)}, std::nullopt};
}

// Host order, as meta iifgroup loads it.
inline Value hostU32(uint32_t x) {
  Value v{std::vector<uint8_t>(4, 0), std::nullopt};
  std::memcpy(v.bytes.data(), &x, 4);
  return v;
}

inline Value ifname(const std::string& name) {
  Value v{std::vector<uint8_t>(16, 0), std::nullopt};
  std::memcpy(v.bytes.data(), name.data(), std::min<size_t>(name.size(), 15));
  return v;
}

inline Value mac(const policy::MacAddress& m) {
  return Value{{m.bytes.begin(), m.bytes.end()}, std::nullopt};
}

inline Compare is(Field f, uint32_t v) { return Compare{f, v, false}; }
inline Compare isNot(Field f, uint32_t v) { return Compare{f, v, true}; }

inline Rule rule(std::vector<Expr> exprs, Verdict v, std::string comment, std::string target = {}) {
  return Rule{std::move(exprs), v, std::move(target), std::move(comment)};
}

// Sorted and without duplicates, as diff() expects every set's elements.
inline void normalise(Set& s) {
  std::sort(s.elements.begin(), s.elements.end());
  s.elements.erase(std::unique(s.elements.begin(), s.elements.end()), s.elements.end());
}

} // namespace iotgw::firewall::values
