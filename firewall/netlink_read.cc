// SPDX-License-Identifier: GPL-3.0-or-later
// What iotgwd reads back from the kernel over netlink: the tables' counters, the ruleset's
// generation, and the change notifications that tell it someone else touched its tables.
#include "firewall/netlink.h"

// <netinet/in.h> before the kernel's netfilter headers, or struct in_addr is defined twice.
#include <netinet/in.h>
#include <sys/socket.h>

#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>

#include <libmnl/libmnl.h>
#include <libnftnl/gen.h>
#include <libnftnl/object.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <new>

#include <fmt/format.h>

namespace iotgw::firewall {

namespace {

template <auto Free> struct Deleter {
  template <typename T> void operator()(T* p) const { Free(p); }
};
using ObjPtr = std::unique_ptr<nftnl_obj, Deleter<nftnl_obj_free>>;
using detail::kReceiveBytes;
using detail::kRequestBytes;

std::string errnoText(int err) { return std::strerror(err); }

} // namespace

namespace {

// Sends one request and runs `cb` on every answer until the dump ends.
std::expected<void, std::string> request(mnl_socket* nl, uint32_t portId, nlmsghdr* nlh,
                                         mnl_cb_t cb, void* data) {
  if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
    return std::unexpected("netlink send: " + errnoText(errno));
  }
  const uint32_t seq = nlh->nlmsg_seq;
  std::vector<char> buf(kReceiveBytes);
  for (;;) {
    const ssize_t n = mnl_socket_recvfrom(nl, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return std::unexpected("netlink receive: " + errnoText(errno));
    }
    const int ret = mnl_cb_run(buf.data(), static_cast<size_t>(n), seq, portId, cb, data);
    if (ret < 0) {
      return std::unexpected(errnoText(errno));
    }
    if (ret == MNL_CB_STOP) {
      return {};
    }
  }
}

} // namespace

std::expected<std::map<std::string, CounterValue>, std::string> Netlink::counters() {
  char buf[kRequestBytes];
  nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETOBJ, NFPROTO_INET, NLM_F_DUMP, seq_++);
  ObjPtr filter(nftnl_obj_alloc());
  nftnl_obj_set_str(filter.get(), NFTNL_OBJ_TABLE, kTableName);
  nftnl_obj_set_u32(filter.get(), NFTNL_OBJ_TYPE, NFT_OBJECT_COUNTER);
  nftnl_obj_nlmsg_build_payload(nlh, filter.get());
  std::map<std::string, CounterValue> out;
  // Called from libmnl: nothing may unwind into it (the map's allocation is the one that could).
  auto cb = [](const nlmsghdr* h, void* data) noexcept -> int {
    ObjPtr o(nftnl_obj_alloc());
    if (!o || nftnl_obj_nlmsg_parse(h, o.get()) < 0) {
      return MNL_CB_ERROR;
    }
    const char* name = nftnl_obj_get_str(o.get(), NFTNL_OBJ_NAME);
    if (name != nullptr && nftnl_obj_get_u32(o.get(), NFTNL_OBJ_TYPE) == NFT_OBJECT_COUNTER) {
      try {
        auto& m = *static_cast<std::map<std::string, CounterValue>*>(data);
        m[name] = CounterValue{nftnl_obj_get_u64(o.get(), NFTNL_OBJ_CTR_PKTS),
                               nftnl_obj_get_u64(o.get(), NFTNL_OBJ_CTR_BYTES)};
      } catch (const std::bad_alloc&) {
        return MNL_CB_ERROR;
      }
    }
    return MNL_CB_OK;
  };
  if (auto r = request(nl_, portId_, nlh, cb, &out); !r) {
    return std::unexpected("reading counters: " + r.error());
  }
  return out;
}

std::expected<uint32_t, std::string> Netlink::generation() {
  char buf[kRequestBytes];
  nlmsghdr* nlh = nftnl_nlmsg_build_hdr(buf, NFT_MSG_GETGEN, AF_UNSPEC, 0, seq_++);
  uint32_t gen = 0;
  auto cb = [](const nlmsghdr* h, void* data) noexcept -> int {
    std::unique_ptr<nftnl_gen, Deleter<nftnl_gen_free>> g(nftnl_gen_alloc());
    if (!g || nftnl_gen_nlmsg_parse(h, g.get()) < 0) {
      return MNL_CB_ERROR;
    }
    *static_cast<uint32_t*>(data) = nftnl_gen_get_u32(g.get(), NFTNL_GEN_ID);
    return MNL_CB_STOP;
  };
  if (auto r = request(nl_, portId_, nlh, cb, &gen); !r) {
    return std::unexpected("reading the ruleset generation: " + r.error());
  }
  return gen;
}

namespace {
// Calls f(attribute) for each attribute after the nfgenmsg header, until f returns false.
template <typename F> void forEachAttribute(const nlmsghdr* h, F&& f) {
  const auto* a = static_cast<const nlattr*>(mnl_nlmsg_get_payload_offset(h, sizeof(nfgenmsg)));
  const auto* tail = static_cast<const char*>(mnl_nlmsg_get_payload_tail(h));
  while (mnl_attr_ok(a, static_cast<int>(tail - reinterpret_cast<const char*>(a))) && f(a)) {
    a = mnl_attr_next(a);
  }
}
} // namespace

// --- Monitor ------------------------------------------------------------------------------------

std::expected<std::unique_ptr<Monitor>, std::string> Monitor::open(uint32_t ownPort) {
  mnl_socket* nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (nl == nullptr) {
    return std::unexpected("netlink socket: " + errnoText(errno));
  }
  if (mnl_socket_bind(nl, 1u << (NFNLGRP_NFTABLES - 1), MNL_SOCKET_AUTOPID) < 0) {
    const int err = errno;
    mnl_socket_close(nl);
    return std::unexpected("netlink bind to nftables notifications: " + errnoText(err));
  }
  // Our own 10,000-device batches notify every element; room for them, so that overruns stay
  // rare (an overrun costs a generation check, not a missed change).
  const int size = 16 * 1024 * 1024;
  const int fd = mnl_socket_get_fd(nl);
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0) {
    (void)::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  }
  return std::unique_ptr<Monitor>(new Monitor(nl, ownPort));
}

Monitor::~Monitor() { mnl_socket_close(nl_); }

int Monitor::fd() const { return mnl_socket_get_fd(nl_); }

Monitor::Result Monitor::drain() {
  Result result = Result::Quiet;
  std::vector<char> buf(kReceiveBytes);
  for (;;) {
    const ssize_t n = ::recv(fd(), buf.data(), buf.size(), 0);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      if (errno == ENOBUFS) {
        touched_ = 0;
        result = Result::Overrun;
        continue;
      }
      return result; // EAGAIN: nothing more for now
    }
    auto* h = reinterpret_cast<nlmsghdr*>(buf.data());
    int left = static_cast<int>(n);
    for (; mnl_nlmsg_ok(h, left); h = mnl_nlmsg_next(h, &left)) {
      if (NFNL_SUBSYS_ID(h->nlmsg_type) != NFNL_SUBSYS_NFTABLES) {
        continue;
      }
      const uint16_t type = NFNL_MSG_TYPE(h->nlmsg_type);
      const auto* gen = static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(h));
      if (type == NFT_MSG_NEWGEN) {
        uint32_t pid = 0;
        std::string name;
        forEachAttribute(h, [&](const nlattr* a) {
          if (mnl_attr_get_type(a) == NFTA_GEN_PROC_PID) {
            pid = ntohl(mnl_attr_get_u32(a));
          } else if (mnl_attr_get_type(a) == NFTA_GEN_PROC_NAME) {
            name = mnl_attr_get_str(a);
          }
          return true;
        });
        // The generation notification carries the committing socket's netlink port id. (Its
        // NFTA_GEN_PROC_PID is a pid in the initial pid namespace, which never equals ours in a
        // container.)
        if (touched_ != 0 && h->nlmsg_pid != ownPort_) {
          result = result == Result::Overrun ? Result::Overrun : Result::Changed;
          lastChanger_ =
              name.empty() ? fmt::format("pid {}", pid) : fmt::format("{} (pid {})", name, pid);
          lastChanged_ = touched_ == 3   ? fmt::format("tables inet {0} and bridge {0}", kTableName)
                         : touched_ == 1 ? fmt::format("table inet {}", kTableName)
                                         : fmt::format("table bridge {}", kTableName);
        }
        touched_ = 0;
        continue;
      }
      if (gen->nfgen_family != NFPROTO_INET && gen->nfgen_family != NFPROTO_BRIDGE) {
        continue;
      }
      // Tables, chains, rules, sets, elements, objects and flowtables all name their table in
      // attribute 1.
      forEachAttribute(h, [&](const nlattr* a) {
        if (mnl_attr_get_type(a) == 1 && mnl_attr_get_payload_len(a) > 0 &&
            std::strncmp(static_cast<const char*>(mnl_attr_get_payload(a)), kTableName,
                         mnl_attr_get_payload_len(a)) == 0) {
          touched_ |= gen->nfgen_family == NFPROTO_INET ? 1 : 2;
          return false;
        }
        return true;
      });
    }
  }
}

} // namespace iotgw::firewall
