// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Which interface a datagram arrived on, and whether device traffic may arrive there. A
// device-side endpoint trusts a source address only for what arrives on the device segment's own
// interfaces: a LAN or WAN host can forge a device's address, but not make its datagram arrive
// on the device bridge (whatever rp_filter says).

#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "policy/device.h"

namespace iotgw::io {

[[nodiscard]] bool isLoopback(const policy::IpAddress& a);

// Which interfaces device traffic may arrive on: device_segment.interfaces, and loopback for
// sources that are loopback addresses themselves (a process on the gateway; no datagram from a
// network arrives on loopback, and a local process cannot make one from a device's real address
// arrive on a device-segment interface). Interface names are looked up by index and remembered
// for a few seconds, so that an interface created, renamed or removed later is seen.
class DeviceInterfaces {
public:
  using Clock = std::chrono::steady_clock;
  explicit DeviceInterfaces(std::vector<std::string> names) : names_(std::move(names)) {}
  // `ifindex` from IP_PKTINFO / IPV6_PKTINFO (0: unknown, refused); `fd` any socket (for ioctl).
  [[nodiscard]] bool allows(int fd, int ifindex, const policy::IpAddress& source,
                            Clock::time_point now);

private:
  struct Entry {
    bool deviceSegment = false;
    bool loopback = false;
    Clock::time_point expires;
  };
  static constexpr size_t kMaxEntries = 256;
  std::vector<std::string> names_;
  std::unordered_map<int, Entry> cache_;
};

// Asks for the arrival interface of every datagram on `fd` (IP_PKTINFO or IPV6_RECVPKTINFO).
[[nodiscard]] bool wantPacketInfo(int fd, int family);
// One datagram with its source and arrival interface; -1 and errno when there is none.
struct Received {
  sockaddr_storage from{};
  socklen_t fromLen = 0;
  int ifindex = 0;
};
ssize_t receiveWithInterface(int fd, uint8_t* buffer, size_t size, Received& r);

} // namespace iotgw::io
