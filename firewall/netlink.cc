// SPDX-License-Identifier: GPL-3.0-or-later
// The transport of the tables: one netlink socket, each transaction sent in one sendmsg and the
// kernel's answer read up to a fence (nftnl_build.cc writes the messages; netlink_read.cc reads
// counters and the generation, and watches notifications).
#include "firewall/netlink.h"

#include <sys/socket.h>

#include <linux/netfilter/nf_tables.h>

#include <libmnl/libmnl.h>
#include <libnftnl/common.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <vector>

#include "firewall/nftnl_build.h"

namespace iotgw::firewall {

using detail::Batch;
using detail::kReceiveBytes;
using detail::kRequestBytes;

namespace {

std::string errnoText(int err) { return std::strerror(err); }

} // namespace

std::expected<std::unique_ptr<Netlink>, std::string> Netlink::open() {
  mnl_socket* nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
  if (nl == nullptr) {
    return std::unexpected("netlink socket: " + errnoText(errno));
  }
  if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
    const int err = errno;
    mnl_socket_close(nl);
    return std::unexpected("netlink bind: " + errnoText(err));
  }
  return std::unique_ptr<Netlink>(new Netlink(nl));
}

Netlink::Netlink(mnl_socket* nl)
    : nl_(nl), portId_(mnl_socket_get_portid(nl)), seq_(static_cast<uint32_t>(::time(nullptr))) {}

Netlink::~Netlink() { mnl_socket_close(nl_); }

std::expected<BatchStats, std::string> Netlink::commit(Batch& b) {
  b.end();
  // The whole transaction goes in one sendmsg: the socket's send buffer must hold it.
  const int fd = mnl_socket_get_fd(nl_);
  const int want = static_cast<int>(b.size() + 64 * 1024);
  int have = 0;
  socklen_t len = sizeof have;
  if (::getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &have, &len) == 0 && have < want) {
    if (::setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof want) != 0) {
      (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &want, sizeof want);
    }
  }
  if (mnl_socket_sendto(nl_, b.data(), b.size()) < 0) {
    return std::unexpected("netlink send: " + errnoText(errno));
  }
  // Messages carry no ACK request: the kernel answers only errors. A GETGEN request sent after
  // the batch is answered after the batch was processed, so its reply closes the answer.
  char req[kRequestBytes];
  const uint32_t fence = seq_++;
  nlmsghdr* nlh = nftnl_nlmsg_build_hdr(req, NFT_MSG_GETGEN, AF_UNSPEC, 0, fence);
  if (mnl_socket_sendto(nl_, nlh, nlh->nlmsg_len) < 0) {
    return std::unexpected("netlink send: " + errnoText(errno));
  }
  std::string error;
  std::vector<char> buf(kReceiveBytes);
  for (;;) {
    const ssize_t n = mnl_socket_recvfrom(nl_, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return std::unexpected("netlink receive: " + errnoText(errno));
    }
    auto* h = reinterpret_cast<nlmsghdr*>(buf.data());
    int left = static_cast<int>(n);
    bool done = false;
    for (; mnl_nlmsg_ok(h, left); h = mnl_nlmsg_next(h, &left)) {
      if (h->nlmsg_type == NLMSG_ERROR) {
        const auto* e = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(h));
        if (e->error != 0 && error.empty()) {
          error = errnoText(-e->error);
        }
        if (h->nlmsg_seq == fence) {
          done = true;
        }
      } else if (h->nlmsg_seq == fence) {
        done = true;
      }
    }
    if (done) {
      break;
    }
  }
  if (!error.empty()) {
    return std::unexpected("the kernel refused the nftables batch (nothing was applied): " + error);
  }
  return BatchStats{b.messages(), b.size()};
}

std::expected<BatchStats, std::string> Netlink::replace(std::span<const Ruleset> tables) {
  Batch b(seq_);
  for (const Ruleset& rs : tables) {
    nftnl::replaceTable(b, rs);
  }
  return commit(b);
}

std::expected<BatchStats, std::string> Netlink::update(std::span<const TableUpdate> updates) {
  Batch b(seq_);
  for (const TableUpdate& u : updates) {
    nftnl::updateTable(b, *u.delta, *u.target);
  }
  return commit(b);
}

std::expected<void, std::string> Netlink::remove() {
  Batch b(seq_);
  nftnl::removeTables(b);
  if (auto r = commit(b); !r) {
    return std::unexpected(r.error());
  }
  return {};
}

} // namespace iotgw::firewall
