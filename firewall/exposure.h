// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The exposure scan's vocabulary (EN 303 645 5.6-1, 5.6-5): which well-known service ports are
// probed on every enrolled device, and which open ones its policy does not explain. Pure; the
// daemon does the probing.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "policy/policy.h"

namespace iotgw::firewall {

struct ScanPort {
  uint16_t port;
  policy::Transport transport;
  const char* service; // what usually listens there
};

// 21, 22, 23, 80, 443, 554, 1883, 2323, 5683/udp, 7547, 8080, 8443, 8883.
[[nodiscard]] std::span<const ScanPort> scanPorts() noexcept;

struct OpenPort {
  uint16_t port = 0;
  policy::Transport transport = policy::Transport::Tcp;
  bool operator==(const OpenPort&) const = default;
};

struct Exposure {
  OpenPort open;
  std::string service; // "telnet"
  std::string message; // why it matters
};

// The open ports the device's policy does not list among its services.
[[nodiscard]] std::vector<Exposure> unexpectedServices(const policy::DevicePolicy& device,
                                                       std::span<const OpenPort> open);

} // namespace iotgw::firewall
