// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <netinet/in.h>

namespace iotgw::policy {

// A device's name as the gateway knows it: 1 to 63 characters of [a-z0-9._-], starting with a
// letter or digit. It appears in file names, journald fields, nftables comments and D-Bus paths,
// so nothing else is accepted.
class DeviceId {
public:
  [[nodiscard]] static std::optional<DeviceId> parse(std::string_view text);
  [[nodiscard]] const std::string& str() const { return id_; }
  auto operator<=>(const DeviceId&) const = default;

private:
  explicit DeviceId(std::string id) : id_(std::move(id)) {}
  std::string id_;
};

struct MacAddress {
  std::array<uint8_t, 6> bytes{};
  [[nodiscard]] static std::optional<MacAddress> parse(std::string_view text);
  [[nodiscard]] std::string str() const;
  bool operator==(const MacAddress&) const = default;
};

struct IpAddress {
  int family = AF_INET; // AF_INET or AF_INET6
  std::array<uint8_t, 16> bytes{};
  [[nodiscard]] static std::optional<IpAddress> parse(std::string_view text);
  [[nodiscard]] std::string str() const;
  bool operator==(const IpAddress&) const = default;
};

struct IpPrefix {
  IpAddress address;
  uint8_t length = 0;
  // "192.168.50.0/24", "fd00::/64"; host bits must be zero.
  [[nodiscard]] static std::optional<IpPrefix> parse(std::string_view text);
  [[nodiscard]] bool contains(const IpAddress& a) const;
  [[nodiscard]] std::string str() const;
  bool operator==(const IpPrefix&) const = default;
};

struct CivilDate {
  int year = 0;
  unsigned month = 0;
  unsigned day = 0;
  auto operator<=>(const CivilDate&) const = default;
};

// What the manufacturer says about the device (EN 303 645 5.2-1, 5.3-13, 5.3-16).
struct DeviceMetadata {
  std::string manufacturer;
  std::string model;
  std::string firmwareVersion;
  std::optional<CivilDate> supportUntil;
  std::string vulnerabilityContact;
};

} // namespace iotgw::policy
