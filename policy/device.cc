// SPDX-License-Identifier: GPL-3.0-or-later
#include "policy/device.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>
#include <fmt/format.h>

namespace iotgw::policy {

std::optional<DeviceId> DeviceId::parse(std::string_view text) {
  if (text.empty() || text.size() > 63) {
    return std::nullopt;
  }
  const auto lowerOrDigit = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!lowerOrDigit(text.front())) {
    return std::nullopt;
  }
  for (const char c : text) {
    if (!lowerOrDigit(c) && c != '.' && c != '_' && c != '-') {
      return std::nullopt;
    }
  }
  return DeviceId(std::string(text));
}

std::optional<MacAddress> MacAddress::parse(std::string_view text) {
  if (text.size() != 17) {
    return std::nullopt;
  }
  MacAddress m;
  for (size_t i = 0; i < 6; ++i) {
    const std::string_view part = text.substr(i * 3, 2);
    if (i < 5 && text[i * 3 + 2] != ':') {
      return std::nullopt;
    }
    unsigned v = 0;
    const auto [p, ec] = std::from_chars(part.data(), part.data() + 2, v, 16);
    if (ec != std::errc{} || p != part.data() + 2) {
      return std::nullopt;
    }
    m.bytes[i] = static_cast<uint8_t>(v);
  }
  return m;
}

std::string MacAddress::str() const {
  return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", bytes[0], bytes[1], bytes[2],
                     bytes[3], bytes[4], bytes[5]);
}

std::optional<IpAddress> IpAddress::parse(std::string_view text) {
  if (text.size() >= INET6_ADDRSTRLEN) {
    return std::nullopt;
  }
  char buf[INET6_ADDRSTRLEN] = {};
  std::memcpy(buf, text.data(), text.size());
  IpAddress a;
  if (inet_pton(AF_INET, buf, a.bytes.data()) == 1) {
    a.family = AF_INET;
    return a;
  }
  if (inet_pton(AF_INET6, buf, a.bytes.data()) == 1) {
    a.family = AF_INET6;
    return a;
  }
  return std::nullopt;
}

std::string IpAddress::str() const {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(family, bytes.data(), buf, sizeof buf);
  return buf;
}

std::optional<IpPrefix> IpPrefix::parse(std::string_view text) {
  const size_t slash = text.find('/');
  if (slash == std::string_view::npos) {
    return std::nullopt;
  }
  auto addr = IpAddress::parse(text.substr(0, slash));
  if (!addr) {
    return std::nullopt;
  }
  const std::string_view lenText = text.substr(slash + 1);
  unsigned len = 0;
  const auto [p, ec] = std::from_chars(lenText.data(), lenText.data() + lenText.size(), len);
  const unsigned max = addr->family == AF_INET ? 32 : 128;
  if (lenText.empty() || ec != std::errc{} || p != lenText.data() + lenText.size() || len > max) {
    return std::nullopt;
  }
  IpPrefix prefix{*addr, static_cast<uint8_t>(len)};
  // Host bits must be zero: "192.168.50.1/24" is more likely a typo than intent.
  const size_t bytes = max / 8;
  for (size_t bit = len; bit < bytes * 8; ++bit) {
    if ((addr->bytes[bit / 8] >> (7 - bit % 8)) & 1u) {
      return std::nullopt;
    }
  }
  return prefix;
}

bool IpPrefix::contains(const IpAddress& a) const {
  if (a.family != address.family) {
    return false;
  }
  for (size_t bit = 0; bit < length; ++bit) {
    const auto x = (a.bytes[bit / 8] >> (7 - bit % 8)) & 1u;
    const auto y = (address.bytes[bit / 8] >> (7 - bit % 8)) & 1u;
    if (x != y) {
      return false;
    }
  }
  return true;
}

std::string IpPrefix::str() const { return fmt::format("{}/{}", address.str(), length); }

} // namespace iotgw::policy
