// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/io/socket.h"

#include <arpa/inet.h>
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

std::expected<UniqueFd, std::error_code> listenTcp(const policy::IpAddress& address, uint16_t port,
                                                   int backlog) {
  UniqueFd fd(::socket(address.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return std::unexpected(lastError());
  }
  setOption(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1);
  if (address.family == AF_INET6) {
    setOption(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1);
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
  UniqueFd fd(::accept4(listenFd, reinterpret_cast<sockaddr*>(&ss), &len,
                        SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (!fd.valid()) {
    return std::unexpected(lastError());
  }
  setOption(fd.get(), IPPROTO_TCP, TCP_NODELAY, 1);
  Accepted a;
  std::tie(a.address, a.port) = fromSockaddr(ss);
  a.fd = std::move(fd);
  return a;
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
