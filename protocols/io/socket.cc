// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/io/socket.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <tuple>

#include <fmt/format.h>

namespace iotgw::io {

namespace {
std::error_code lastError() { return {errno, std::generic_category()}; }

void setOption(int fd, int level, int name, int value) {
  ::setsockopt(fd, level, name, &value, sizeof value);
}
} // namespace

std::string Accepted::label() const { return endpointLabel(address, port); }

std::string endpointLabel(const policy::IpAddress& address, uint16_t port) {
  if (address.family == AF_INET6) {
    return fmt::format("[{}]:{}", address.str(), port);
  }
  return fmt::format("{}:{}", address.str(), port);
}

socklen_t toSockaddr(const policy::IpAddress& address, uint16_t port, sockaddr_storage& ss) {
  ss = {};
  if (address.family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    std::memcpy(&sin->sin_addr, address.bytes.data(), 4);
    return sizeof(sockaddr_in);
  }
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(port);
  std::memcpy(&sin6->sin6_addr, address.bytes.data(), 16);
  return sizeof(sockaddr_in6);
}

std::pair<policy::IpAddress, uint16_t> fromSockaddr(const sockaddr_storage& ss) {
  policy::IpAddress a;
  uint16_t port = 0;
  if (ss.ss_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    a.family = AF_INET;
    std::memcpy(a.bytes.data(), &sin->sin_addr, 4);
    port = ntohs(sin->sin_port);
  } else {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    a.family = AF_INET6;
    std::memcpy(a.bytes.data(), &sin6->sin6_addr, 16);
    port = ntohs(sin6->sin6_port);
  }
  return {a, port};
}

namespace {

// Linux keeps the interface a TCP connection's SYN arrived on and hands it out, for a socket with
// IP_PKTINFO (IPV6_RECVPKTINFO) set, as the pktinfo of IP_PKTOPTIONS (IPV6_2292PKTOPTIONS).
int arrivalInterface(int fd, int family) {
  alignas(cmsghdr) uint8_t buf[256];
  socklen_t len = sizeof buf;
  const bool v6 = family == AF_INET6;
  if (::getsockopt(fd, v6 ? IPPROTO_IPV6 : IPPROTO_IP, v6 ? IPV6_2292PKTOPTIONS : IP_PKTOPTIONS,
                   buf, &len) != 0) {
    return 0;
  }
  msghdr msg{};
  msg.msg_control = buf;
  msg.msg_controllen = len;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (!v6 && c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
      in_pktinfo info{};
      std::memcpy(&info, CMSG_DATA(c), sizeof info);
      return info.ipi_ifindex;
    }
    if (v6 && c->cmsg_level == IPPROTO_IPV6 &&
        (c->cmsg_type == IPV6_PKTINFO || c->cmsg_type == IPV6_2292PKTINFO)) {
      in6_pktinfo info{};
      std::memcpy(&info, CMSG_DATA(c), sizeof info);
      return static_cast<int>(info.ipi6_ifindex);
    }
  }
  return 0;
}

} // namespace

std::expected<UniqueFd, std::error_code> listenTcp(const policy::IpAddress& address, uint16_t port,
                                                   int backlog) {
  UniqueFd fd(::socket(address.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return std::unexpected(lastError());
  }
  setOption(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1);
  // The device segment's address may come after iotgwd (a bridge configured later, DHCP, a
  // link that comes up late): bound anyway, the listener takes connections once it is there,
  // instead of the start failing and the service restarting in a loop.
  if (address.family == AF_INET6) {
    setOption(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1);
    setOption(fd.get(), IPPROTO_IPV6, IPV6_RECVPKTINFO, 1); // inherited: arrival interface
    setOption(fd.get(), IPPROTO_IPV6, IPV6_FREEBIND, 1);
  } else {
    setOption(fd.get(), IPPROTO_IP, IP_PKTINFO, 1);
    setOption(fd.get(), IPPROTO_IP, IP_FREEBIND, 1);
  }
  sockaddr_storage ss{};
  const socklen_t len = toSockaddr(address, port, ss);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0 ||
      ::listen(fd.get(), backlog) != 0) {
    return std::unexpected(lastError());
  }
  return fd;
}

std::expected<UniqueFd, std::error_code> bindUdp(const policy::IpAddress& address, uint16_t port) {
  UniqueFd fd(::socket(address.family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return std::unexpected(lastError());
  }
  if (address.family == AF_INET6) {
    setOption(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1);
  }
  sockaddr_storage ss{};
  const socklen_t len = toSockaddr(address, port, ss);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    return std::unexpected(lastError());
  }
  return fd;
}

std::expected<Accepted, std::error_code> acceptTcp(int listenFd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  UniqueFd fd(
      ::accept4(listenFd, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (!fd.valid()) {
    return std::unexpected(lastError());
  }
  setOption(fd.get(), IPPROTO_TCP, TCP_NODELAY, 1);
  Accepted a;
  std::tie(a.address, a.port) = fromSockaddr(ss);
  a.ifindex = arrivalInterface(fd.get(), ss.ss_family);
  a.fd = std::move(fd);
  return a;
}

std::string interfaceName(int ifindex) {
  char name[IF_NAMESIZE] = {};
  return ifindex > 0 && ::if_indextoname(static_cast<unsigned>(ifindex), name) != nullptr
             ? std::string(name)
             : std::string();
}

uint16_t boundPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return 0;
  }
  if (ss.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in*>(&ss)->sin_port);
  }
  return ntohs(reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port);
}

} // namespace iotgw::io
