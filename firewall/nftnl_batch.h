// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// One nftables transaction being built (inside firewall/: netlink.cc sends it, nftnl_build.cc
// writes its messages).

#include <cstddef>
#include <cstdint>
#include <vector>

#include <linux/netlink.h>

#include <libnftnl/common.h>

namespace iotgw::firewall::detail {

// Netlink messages laid end to end in one buffer, framed by batch begin/end, sent with one
// sendmsg. Each message gets room for the largest payload libnftnl writes into one message.
class Batch {
public:
  explicit Batch(uint32_t& seq) : seq_(seq) {
    nftnl_batch_begin(reserve(), seq_++);
    commit();
  }
  // Room for the next message; call commit() once it is written.
  [[nodiscard]] char* reserve() {
    buf_.resize(used_ + kRoom);
    return buf_.data() + used_;
  }
  // The family goes in the message header and again in the object's attributes.
  nlmsghdr* header(uint16_t type, uint16_t family, uint16_t flags) {
    ++messages_;
    return nftnl_nlmsg_build_hdr(reserve(), type, family, flags, seq_++);
  }
  void commit() {
    auto* nlh = reinterpret_cast<nlmsghdr*>(buf_.data() + used_);
    used_ += NLMSG_ALIGN(nlh->nlmsg_len);
  }
  void end() {
    nftnl_batch_end(reserve(), seq_++);
    commit();
  }
  [[nodiscard]] const char* data() const { return buf_.data(); }
  [[nodiscard]] size_t size() const { return used_; }
  [[nodiscard]] size_t messages() const { return messages_; }

private:
  static constexpr size_t kRoom = 128 * 1024; // > 64 KiB of elements per message, plus headers
  uint32_t& seq_;
  std::vector<char> buf_;
  size_t used_ = 0;
  size_t messages_ = 0;
};

} // namespace iotgw::firewall::detail
