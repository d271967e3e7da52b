// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Non-blocking TCP and UDP sockets for the reactor. Every descriptor is CLOEXEC; every connection
// gets TCP_NODELAY (Nagle plus delayed ACKs stall small MQTT exchanges by ~40 ms).

#include <cstdint>
#include <expected>
#include <string>
#include <system_error>
#include <utility>

#include <sys/socket.h>

#include "policy/device.h"
#include "protocols/io/reactor.h"

namespace iotgw::io {

struct Accepted {
  UniqueFd fd;
  policy::IpAddress address;
  uint16_t port = 0;
  // The interface the connection's SYN arrived on (0: unknown). Known for listeners made by
  // listenTcp, whatever the routing or rp_filter settings: what a listener meant for one
  // network segment checks before it trusts a peer.
  int ifindex = 0;
  [[nodiscard]] std::string label() const; // "192.168.50.10:40000", "[fd00::10]:40000"
};

[[nodiscard]] std::expected<UniqueFd, std::error_code> listenTcp(const policy::IpAddress& address,
                                                                 uint16_t port, int backlog = 128);
// Accepts one pending connection: nullopt-like EAGAIN is reported as an error code
// std::errc::resource_unavailable_try_again.
[[nodiscard]] std::expected<Accepted, std::error_code> acceptTcp(int listenFd);
// A non-blocking UDP socket bound to `address`:`port` (IPv6 sockets are v6-only).
[[nodiscard]] std::expected<UniqueFd, std::error_code> bindUdp(const policy::IpAddress& address,
                                                               uint16_t port);
[[nodiscard]] socklen_t toSockaddr(const policy::IpAddress& address, uint16_t port,
                                   sockaddr_storage& out);
[[nodiscard]] std::pair<policy::IpAddress, uint16_t> fromSockaddr(const sockaddr_storage& ss);
[[nodiscard]] std::string endpointLabel(const policy::IpAddress& address, uint16_t port);
// The interface's name ("br-iot"), or empty when there is none by that index.
[[nodiscard]] std::string interfaceName(int ifindex);
// The port a socket is bound to (for tests that bind port 0).
[[nodiscard]] uint16_t boundPort(int fd);

} // namespace iotgw::io
