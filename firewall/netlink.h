// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Table `inet iotgw` in the kernel, through libmnl + libnftnl: the whole table replaced in one
// atomic transaction, per-device changes as element batches, counters read back, and a monitor
// of nftables notifications that tells when someone else touched the table. Never runs `nft`.
//
// Every batch is one transaction: the kernel applies all of it or none of it. Any error in the
// answer means nothing was applied.

#include <cstdint>
#include <expected>
#include <map>
#include <memory>
#include <string>

#include "firewall/ruleset.h"

struct mnl_socket;

namespace iotgw::firewall {

namespace detail {
class Batch;
}

struct CounterValue {
  uint64_t packets = 0;
  uint64_t bytes = 0;
  bool operator==(const CounterValue&) const = default;
};

struct BatchStats {
  size_t messages = 0;
  size_t bytes = 0;
};

class Netlink {
public:
  [[nodiscard]] static std::expected<std::unique_ptr<Netlink>, std::string> open();
  Netlink(const Netlink&) = delete;
  Netlink& operator=(const Netlink&) = delete;
  ~Netlink();

  // Replaces table inet iotgw (creating it if missing) by `rs`, atomically.
  [[nodiscard]] std::expected<BatchStats, std::string> replace(const Ruleset& rs);
  // Adds and removes elements and counters of sets that exist in the kernel as `target`
  // describes them. Fails (changing nothing) if an element to remove is missing.
  [[nodiscard]] std::expected<BatchStats, std::string> update(const ElementDelta& delta,
                                                              const Ruleset& target);
  // Deletes the table; no error if it does not exist.
  [[nodiscard]] std::expected<void, std::string> remove();
  // Named counters of the table.
  [[nodiscard]] std::expected<std::map<std::string, CounterValue>, std::string> counters();
  // The ruleset generation after the last transaction of any process.
  [[nodiscard]] std::expected<uint32_t, std::string> generation();

private:
  explicit Netlink(mnl_socket* nl);
  [[nodiscard]] std::expected<BatchStats, std::string> commit(detail::Batch& b);
  mnl_socket* nl_;
  uint32_t portId_;
  uint32_t seq_;
};

// A socket subscribed to nftables notifications. Non-blocking; poll fd() for readability.
class Monitor {
public:
  enum class Result {
    Quiet,   // nothing about our table, or only our own transactions
    Changed, // another process changed or deleted table inet iotgw
    Overrun, // notifications were lost: check the generation
  };
  [[nodiscard]] static std::expected<std::unique_ptr<Monitor>, std::string> open();
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;
  ~Monitor();
  [[nodiscard]] int fd() const;
  // Reads every pending notification.
  [[nodiscard]] Result drain();
  // Who made the last change noticed by drain() ("nft", "firewalld", ...), for the event.
  [[nodiscard]] const std::string& lastChanger() const { return lastChanger_; }

private:
  explicit Monitor(mnl_socket* nl) : nl_(nl) {}
  mnl_socket* nl_;
  bool touched_ = false; // since the last NEWGEN
  std::string lastChanger_;
};

} // namespace iotgw::firewall
