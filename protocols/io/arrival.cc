// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/io/arrival.h"

#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <array>
#include <cstring>

namespace iotgw::io {

bool isLoopback(const policy::IpAddress& a) {
  if (a.family == AF_INET) {
    return a.bytes[0] == 127;
  }
  static constexpr std::array<uint8_t, 16> kV6{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return a.bytes == kV6;
}

bool DeviceInterfaces::allows(int fd, int ifindex, const policy::IpAddress& source,
                              Clock::time_point now) {
  if (ifindex <= 0) {
    return false;
  }
  auto it = cache_.find(ifindex);
  if (it == cache_.end() || it->second.expires <= now) {
    if (cache_.size() >= kMaxEntries) {
      cache_.clear();
    }
    Entry e;
    e.expires = now + std::chrono::seconds(5);
    ifreq ifr{};
    if (::if_indextoname(static_cast<unsigned>(ifindex), ifr.ifr_name) != nullptr) {
      e.deviceSegment =
          std::find(names_.begin(), names_.end(), std::string(ifr.ifr_name)) != names_.end();
      e.loopback = ::ioctl(fd, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags & IFF_LOOPBACK) != 0;
    }
    it = cache_.insert_or_assign(ifindex, e).first;
  }
  return it->second.deviceSegment || (it->second.loopback && isLoopback(source));
}

bool wantPacketInfo(int fd, int family) {
  const int on = 1;
  return family == AF_INET6 ? ::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &on, sizeof on) == 0
                            : ::setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on) == 0;
}

ssize_t receiveWithInterface(int fd, uint8_t* buffer, size_t size, Received& r) {
  iovec iov{buffer, size};
  alignas(cmsghdr)
      uint8_t control[CMSG_SPACE(sizeof(in6_pktinfo)) + CMSG_SPACE(sizeof(in_pktinfo))];
  msghdr m{};
  m.msg_name = &r.from;
  m.msg_namelen = sizeof r.from;
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  const ssize_t n = ::recvmsg(fd, &m, MSG_TRUNC | MSG_DONTWAIT);
  if (n < 0) {
    return n;
  }
  r.fromLen = m.msg_namelen;
  r.ifindex = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
      in_pktinfo info{};
      std::memcpy(&info, CMSG_DATA(c), sizeof info);
      r.ifindex = info.ipi_ifindex;
    } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
      in6_pktinfo info{};
      std::memcpy(&info, CMSG_DATA(c), sizeof info);
      r.ifindex = static_cast<int>(info.ipi6_ifindex);
    }
  }
  return n;
}

} // namespace iotgw::io
