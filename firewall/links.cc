// SPDX-License-Identifier: GPL-3.0-or-later
#include "firewall/links.h"

#include <fcntl.h>
#include <net/if.h>
#include <sys/socket.h>

#include <linux/if_link.h>
#include <linux/rtnetlink.h>

#include <libmnl/libmnl.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string_view>

#include <fmt/format.h>

namespace iotgw::firewall {

namespace {

struct SocketCloser {
  void operator()(mnl_socket* s) const { mnl_socket_close(s); }
};
using SocketPtr = std::unique_ptr<mnl_socket, SocketCloser>;

std::string text(const nlattr* a) {
  const auto* p = static_cast<const char*>(mnl_attr_get_payload(a));
  return std::string(p, strnlen(p, mnl_attr_get_payload_len(a)));
}

bool isBridge(const nlattr* linkinfo) {
  bool bridge = false;
  mnl_attr_parse_nested(
      linkinfo,
      [](const nlattr* a, void* data) noexcept { // from libmnl: allocates nothing, throws nothing
        if (mnl_attr_get_type(a) == IFLA_INFO_KIND) {
          const auto* p = static_cast<const char*>(mnl_attr_get_payload(a));
          *static_cast<bool*>(data) =
              std::string_view(p, strnlen(p, mnl_attr_get_payload_len(a))) == "bridge";
        }
        return MNL_CB_OK;
      },
      &bridge);
  return bridge;
}

} // namespace

std::optional<LinkChange> parseLink(std::span<const uint8_t> message) {
  if (message.size() < NLMSG_LENGTH(sizeof(ifinfomsg))) {
    return std::nullopt;
  }
  const auto* h = reinterpret_cast<const nlmsghdr*>(message.data());
  if ((h->nlmsg_type != RTM_NEWLINK && h->nlmsg_type != RTM_DELLINK) ||
      h->nlmsg_len < NLMSG_LENGTH(sizeof(ifinfomsg)) || h->nlmsg_len > message.size()) {
    return std::nullopt;
  }
  const auto* ifi = static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(h));
  // The bridge's own per-port notifications (AF_BRIDGE) carry only part of a link's attributes;
  // every change they report comes as a full (AF_UNSPEC) message too.
  if (ifi->ifi_family != AF_UNSPEC || ifi->ifi_index <= 0) {
    return std::nullopt;
  }
  LinkChange c;
  c.removed = h->nlmsg_type == RTM_DELLINK;
  c.link.index = static_cast<uint32_t>(ifi->ifi_index);
  const auto* a = static_cast<const nlattr*>(mnl_nlmsg_get_payload_offset(h, sizeof(ifinfomsg)));
  const auto* tail = static_cast<const char*>(mnl_nlmsg_get_payload_tail(h));
  for (; mnl_attr_ok(a, static_cast<int>(tail - reinterpret_cast<const char*>(a)));
       a = mnl_attr_next(a)) {
    switch (mnl_attr_get_type(a)) {
    case IFLA_IFNAME:
      c.link.name = text(a);
      break;
    case IFLA_MASTER:
      if (mnl_attr_get_payload_len(a) >= 4) {
        c.link.master = mnl_attr_get_u32(a);
      }
      break;
    case IFLA_GROUP:
      if (mnl_attr_get_payload_len(a) >= 4) {
        c.link.group = mnl_attr_get_u32(a);
      }
      break;
    case IFLA_LINKINFO:
      c.link.bridge = isBridge(a);
      break;
    default:
      break;
    }
  }
  return c;
}

std::expected<std::unique_ptr<Links>, std::string> Links::open() {
  mnl_socket* nl = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (nl == nullptr) {
    return std::unexpected(fmt::format("rtnetlink socket: {}", std::strerror(errno)));
  }
  auto links = std::unique_ptr<Links>(new Links(nl));
  // Subscribed before the first dump, so that nothing that changes in between is missed.
  if (mnl_socket_bind(nl, RTMGRP_LINK, MNL_SOCKET_AUTOPID) < 0) {
    return std::unexpected(fmt::format("rtnetlink bind: {}", std::strerror(errno)));
  }
  if (auto r = links->dump(); !r) {
    return std::unexpected(r.error());
  }
  return links;
}

Links::~Links() { mnl_socket_close(nl_); }

int Links::fd() const { return mnl_socket_get_fd(nl_); }

// Every link, read on a socket of its own (blocking, and with nothing else arriving on it).
std::expected<void, std::string> Links::dump() {
  SocketPtr nl(mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC));
  if (!nl || mnl_socket_bind(nl.get(), 0, MNL_SOCKET_AUTOPID) < 0) {
    return std::unexpected(fmt::format("rtnetlink: {}", std::strerror(errno)));
  }
  char buf[8192];
  nlmsghdr* h = mnl_nlmsg_put_header(buf);
  h->nlmsg_type = RTM_GETLINK;
  h->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  h->nlmsg_seq = seq_++;
  auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(h, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  if (mnl_socket_sendto(nl.get(), h, h->nlmsg_len) < 0) {
    return std::unexpected(fmt::format("rtnetlink: {}", std::strerror(errno)));
  }
  std::map<uint32_t, Link> fresh;
  std::vector<uint8_t> rx(64 * 1024);
  for (;;) {
    const ssize_t n = mnl_socket_recvfrom(nl.get(), rx.data(), rx.size());
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return std::unexpected(fmt::format("rtnetlink: {}", std::strerror(errno)));
    }
    auto* m = reinterpret_cast<const nlmsghdr*>(rx.data());
    int left = static_cast<int>(n);
    for (; mnl_nlmsg_ok(m, left); m = mnl_nlmsg_next(m, &left)) {
      if (m->nlmsg_type == NLMSG_DONE) {
        links_ = std::move(fresh);
        return {};
      }
      if (m->nlmsg_type == NLMSG_ERROR) {
        return std::unexpected("rtnetlink: the link dump failed");
      }
      if (auto c = parseLink(std::span(reinterpret_cast<const uint8_t*>(m), m->nlmsg_len))) {
        fresh[c->link.index] = c->link;
      }
    }
  }
}

bool Links::apply(std::span<const uint8_t> buffer) {
  bool changed = false;
  auto* m = reinterpret_cast<const nlmsghdr*>(buffer.data());
  int left = static_cast<int>(buffer.size());
  for (; mnl_nlmsg_ok(m, left); m = mnl_nlmsg_next(m, &left)) {
    auto c = parseLink(std::span(reinterpret_cast<const uint8_t*>(m), m->nlmsg_len));
    if (!c) {
      continue;
    }
    if (c->removed) {
      changed |= links_.erase(c->link.index) > 0;
    } else if (auto it = links_.find(c->link.index); it == links_.end() || it->second != c->link) {
      links_[c->link.index] = c->link;
      changed = true;
    }
  }
  return changed;
}

bool Links::drain() {
  bool changed = false;
  bool lost = false;
  std::vector<uint8_t> buf(64 * 1024);
  for (;;) {
    const ssize_t n = ::recv(fd(), buf.data(), buf.size(), 0);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      if (errno == ENOBUFS) {
        lost = true;
        continue;
      }
      break; // EAGAIN
    }
    changed |= apply(std::span(buf.data(), static_cast<size_t>(n)));
  }
  if (lost) {
    const auto before = links_;
    // On failure the old list stays; the next notification tries again.
    changed |= dump().has_value() && links_ != before;
  }
  return changed;
}

const Link* Links::find(uint32_t index) const {
  auto it = links_.find(index);
  return it == links_.end() ? nullptr : &it->second;
}

std::vector<std::string> Links::foreignPorts(const std::vector<std::string>& bridges) const {
  std::vector<std::string> out;
  for (const auto& [index, link] : links_) {
    const Link* master = find(link.master);
    if (master != nullptr && master->bridge &&
        std::find(bridges.begin(), bridges.end(), master->name) == bridges.end()) {
      out.push_back(link.name);
    }
  }
  return out;
}

} // namespace iotgw::firewall
