// SPDX-License-Identifier: GPL-3.0-or-later
#include "firewall/reports.h"

// <netinet/in.h> before the kernel's netfilter headers, or struct in_addr is defined twice.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <linux/if_ether.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_log.h>

#include <libmnl/libmnl.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "firewall/compile.h"

namespace iotgw::firewall {

namespace {

constexpr uint32_t kSnapBytes = 128; // as the log statements ask (netlink.cc)

std::optional<ReportKind> kindOf(std::string_view prefix) {
  for (auto [text, kind] : {std::pair{kReportLearn, ReportKind::Learn},
                            {kReportPort, ReportKind::WrongPort},
                            {kReportSpoof, ReportKind::Spoofed},
                            {kReportPoison, ReportKind::Poisoning},
                            {kReportServer, ReportKind::RogueServer},
                            {kReportFrame, ReportKind::OtherFrame}}) {
    if (prefix == text) {
      return kind;
    }
  }
  return std::nullopt;
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }

policy::MacAddress macAt(const uint8_t* p) {
  policy::MacAddress m;
  std::memcpy(m.bytes.data(), p, 6);
  return m;
}

policy::IpAddress addressAt(int family, const uint8_t* p) {
  policy::IpAddress a;
  a.family = family;
  std::memcpy(a.bytes.data(), p, family == AF_INET ? 4 : 16);
  return a;
}

Claim arpClaim(std::span<const uint8_t> p) {
  // Ethernet/IPv4 ARP: htype, ptype, hlen, plen, op, sha (6), spa (4), tha (6), tpa (4).
  if (p.size() < 28 || be16(&p[2]) != ETH_P_IP || p[4] != 6 || p[5] != 4) {
    return Claim{std::nullopt, std::nullopt, "ARP"};
  }
  const uint16_t op = be16(&p[6]);
  const bool announcement = std::memcmp(&p[14], &p[24], 4) == 0;
  return Claim{addressAt(AF_INET, &p[14]), macAt(&p[8]),
               op == 2        ? "ARP reply"
               : announcement ? "ARP announcement"
               : op == 1      ? "ARP request"
                              : "ARP"};
}

Claim ipv4Claim(std::span<const uint8_t> p) {
  if (p.size() < 20 || (p[0] >> 4) != 4) {
    return Claim{std::nullopt, std::nullopt, "IPv4 packet"};
  }
  Claim c{addressAt(AF_INET, &p[12]), std::nullopt, "IPv4 packet"};
  const size_t ihl = size_t{p[0] & 0x0fu} * 4;
  if (p[9] == IPPROTO_UDP && ihl >= 20 && p.size() >= ihl + 4 && be16(&p[ihl]) == 67) {
    c.what = "DHCP server reply";
  }
  return c;
}

Claim ipv6Claim(std::span<const uint8_t> p) {
  if (p.size() < 40 || (p[0] >> 4) != 6) {
    return Claim{std::nullopt, std::nullopt, "IPv6 packet"};
  }
  Claim c{addressAt(AF_INET6, &p[8]), std::nullopt, "IPv6 packet"};
  const uint8_t next = p[6];
  const auto l4 = p.subspan(40);
  if (next == IPPROTO_UDP && l4.size() >= 2 && be16(&l4[0]) == 547) {
    c.what = "DHCPv6 server reply";
  } else if (next == IPPROTO_ICMPV6 && !l4.empty()) {
    switch (l4[0]) {
    case 134:
      c.what = "router advertisement";
      break;
    case 137:
      c.what = "redirect";
      break;
    case 136:
      c.what = "neighbour advertisement";
      if (l4.size() >= 24) {
        c.address = addressAt(AF_INET6, &l4[8]);
      }
      // The first option, when it is the target link-layer address (type 2, one 8-byte unit).
      if (l4.size() >= 32 && l4[24] == 2 && l4[25] == 1) {
        c.mac = macAt(&l4[26]);
      }
      break;
    default:
      c.what = fmt::format("ICMPv6 type {}", l4[0]);
    }
  }
  return c;
}

} // namespace

std::optional<Report> parseReport(std::span<const uint8_t> message) {
  if (message.size() < sizeof(nlmsghdr)) {
    return std::nullopt;
  }
  const auto* h = reinterpret_cast<const nlmsghdr*>(message.data());
  if (h->nlmsg_len < NLMSG_LENGTH(sizeof(nfgenmsg)) || h->nlmsg_len > message.size() ||
      NFNL_SUBSYS_ID(h->nlmsg_type) != NFNL_SUBSYS_ULOG ||
      NFNL_MSG_TYPE(h->nlmsg_type) != NFULNL_MSG_PACKET) {
    return std::nullopt;
  }
  Report r;
  std::optional<ReportKind> kind;
  uint32_t indev = 0;
  uint32_t physindev = 0;
  const auto* attr = static_cast<const nlattr*>(mnl_nlmsg_get_payload_offset(h, sizeof(nfgenmsg)));
  const auto* tail = static_cast<const char*>(mnl_nlmsg_get_payload_tail(h));
  for (; mnl_attr_ok(attr, static_cast<int>(tail - reinterpret_cast<const char*>(attr)));
       attr = mnl_attr_next(attr)) {
    const auto* v = static_cast<const uint8_t*>(mnl_attr_get_payload(attr));
    const size_t n = mnl_attr_get_payload_len(attr);
    switch (mnl_attr_get_type(attr)) {
    case NFULA_PACKET_HDR:
      if (n >= sizeof(nfulnl_msg_packet_hdr)) {
        r.ethertype = be16(v);
      }
      break;
    case NFULA_PREFIX:
      kind = kindOf(std::string_view(reinterpret_cast<const char*>(v),
                                     strnlen(reinterpret_cast<const char*>(v), n)));
      break;
    case NFULA_IFINDEX_INDEV:
      if (n >= 4) {
        indev = be32(v);
      }
      break;
    case NFULA_IFINDEX_PHYSINDEV:
      if (n >= 4) {
        physindev = be32(v);
      }
      break;
    case NFULA_HWADDR:
      // struct nfulnl_msg_packet_hw: address length (2), padding (2), the address (8).
      if (n >= 4 + 6 && be16(v) == 6) {
        r.source = macAt(v + 4);
      }
      break;
    case NFULA_PAYLOAD:
      r.packet.assign(v, v + std::min<size_t>(n, kSnapBytes));
      break;
    default:
      break;
    }
  }
  if (!kind) {
    return std::nullopt;
  }
  r.kind = *kind;
  // With br_netfilter in the kernel, a bridge-family report names the port as the physical
  // input device and the bridge as the input device; without it, the port as the input device.
  r.port = physindev != 0 ? physindev : indev;
  return r;
}

Claim readClaim(const Report& r) {
  switch (r.ethertype) {
  case ETH_P_ARP:
    return arpClaim(r.packet);
  case ETH_P_IP:
    return ipv4Claim(r.packet);
  case ETH_P_IPV6:
    return ipv6Claim(r.packet);
  default:
    return Claim{std::nullopt, std::nullopt, fmt::format("ethertype 0x{:04x}", r.ethertype)};
  }
}

// --- the socket ---------------------------------------------------------------------------------

namespace {

// One configuration message for the group, answered with an acknowledgement (or an error).
std::expected<void, std::string> configure(mnl_socket* nl, uint16_t group, uint32_t seq,
                                           void (*fill)(nlmsghdr*)) {
  char buf[8192];
  nlmsghdr* h = mnl_nlmsg_put_header(buf);
  h->nlmsg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
  h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  h->nlmsg_seq = seq;
  auto* g = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(h, sizeof(nfgenmsg)));
  g->nfgen_family = AF_UNSPEC;
  g->version = NFNETLINK_V0;
  g->res_id = htons(group);
  fill(h);
  if (mnl_socket_sendto(nl, h, h->nlmsg_len) < 0) {
    return std::unexpected(fmt::format("nflog: {}", std::strerror(errno)));
  }
  const ssize_t n = mnl_socket_recvfrom(nl, buf, sizeof buf);
  if (n < 0) {
    return std::unexpected(fmt::format("nflog: {}", std::strerror(errno)));
  }
  if (mnl_cb_run(buf, static_cast<size_t>(n), seq, mnl_socket_get_portid(nl), nullptr, nullptr) <
      0) {
    const int err = errno;
    return std::unexpected(fmt::format("nflog group {}: {}{}", group, std::strerror(err),
                                       err == EBUSY ? " (another process holds the group)" : ""));
  }
  return {};
}

} // namespace

std::expected<std::unique_ptr<ReportListener>, std::string> ReportListener::open(uint16_t group) {
  mnl_socket* nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
  if (nl == nullptr) {
    return std::unexpected(fmt::format("nflog socket: {}", std::strerror(errno)));
  }
  auto listener = std::unique_ptr<ReportListener>(new ReportListener(nl));
  if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
    return std::unexpected(fmt::format("nflog bind: {}", std::strerror(errno)));
  }
  if (auto r = configure(nl, group, 1,
                         [](nlmsghdr* h) {
                           const nfulnl_msg_config_cmd cmd{NFULNL_CFG_CMD_BIND};
                           mnl_attr_put(h, NFULA_CFG_CMD, sizeof cmd, &cmd);
                         });
      !r) {
    return std::unexpected(r.error());
  }
  if (auto r = configure(nl, group, 2,
                         [](nlmsghdr* h) {
                           nfulnl_msg_config_mode mode{};
                           mode.copy_range = htonl(kSnapBytes);
                           mode.copy_mode = NFULNL_COPY_PACKET;
                           mnl_attr_put(h, NFULA_CFG_MODE, sizeof mode, &mode);
                           mnl_attr_put_u32(h, NFULA_CFG_QTHRESH, htonl(1));
                         });
      !r) {
    return std::unexpected(r.error());
  }
  const int fd = mnl_socket_get_fd(nl);
  // Room for a burst of reports (each at most ~300 bytes): what overflows is lost, not queued.
  const int size = 1 << 20;
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0) {
    (void)::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  }
  if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
    return std::unexpected(fmt::format("nflog: {}", std::strerror(errno)));
  }
  return listener;
}

ReportListener::~ReportListener() { mnl_socket_close(nl_); }

int ReportListener::fd() const { return mnl_socket_get_fd(nl_); }

std::vector<Report> ReportListener::drain() {
  std::vector<Report> out;
  std::vector<uint8_t> buf(64 * 1024);
  for (;;) {
    const ssize_t n = ::recv(fd(), buf.data(), buf.size(), 0);
    if (n < 0) {
      if (errno == EINTR || errno == ENOBUFS) {
        continue;
      }
      return out; // EAGAIN: nothing more for now
    }
    auto* h = reinterpret_cast<const nlmsghdr*>(buf.data());
    int left = static_cast<int>(n);
    for (; mnl_nlmsg_ok(h, left); h = mnl_nlmsg_next(h, &left)) {
      const auto* start = reinterpret_cast<const uint8_t*>(h);
      if (auto r = parseReport(std::span(start, h->nlmsg_len))) {
        out.push_back(std::move(*r));
      }
    }
  }
}

} // namespace iotgw::firewall
