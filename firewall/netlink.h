// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Tables `inet iotgw` and `bridge iotgw` in the kernel, through libmnl + libnftnl: whole tables
// replaced in one atomic transaction, per-device changes as element batches, counters read back,
// and a monitor of nftables notifications that tells when someone else touched them. Never runs
// `nft`.
//
// Every batch is one transaction: the kernel applies all of it or none of it. Any error in the
// answer means nothing was applied.

#include <cstddef>
#include <cstdint>
#include <expected>
#include <map>
#include <memory>
#include <span>
#include <string>

#include "firewall/ruleset.h"

struct mnl_socket;

namespace iotgw::firewall {

namespace detail {
class Batch;
// Room for one request we build, and for what one receive from the kernel may hold.
inline constexpr size_t kRequestBytes = 8192;
inline constexpr size_t kReceiveBytes = 64 * 1024;
} // namespace detail

struct CounterValue {
  uint64_t packets = 0;
  uint64_t bytes = 0;
  bool operator==(const CounterValue&) const = default;
};

struct BatchStats {
  size_t messages = 0;
  size_t bytes = 0;
};

// The element changes of one table, towards `target` (whose sets exist in the kernel).
struct TableUpdate {
  const ElementDelta* delta;
  const Ruleset* target;
};

// Where the tables are put in force: the kernel (Netlink), or a test's stand-in.
class Applier {
public:
  virtual ~Applier() = default;
  // Replaces each table (family iotgw, creating it if missing) by its ruleset, all in one
  // transaction.
  [[nodiscard]] virtual std::expected<BatchStats, std::string>
  replace(std::span<const Ruleset> tables) = 0;
  // Adds and removes elements and counters of sets that exist in the kernel as each target
  // describes them, in one transaction. Fails (changing nothing) if an element to remove is
  // missing.
  [[nodiscard]] virtual std::expected<BatchStats, std::string>
  update(std::span<const TableUpdate> updates) = 0;
  // Deletes both tables; no error if they do not exist.
  [[nodiscard]] virtual std::expected<void, std::string> remove() = 0;
  // Named counters of table inet iotgw.
  [[nodiscard]] virtual std::expected<std::map<std::string, CounterValue>, std::string>
  counters() = 0;
  // The ruleset generation after the last transaction of any process.
  [[nodiscard]] virtual std::expected<uint32_t, std::string> generation() = 0;
  // The netlink port id that the kernel names as the author of our transactions.
  [[nodiscard]] virtual uint32_t portId() const = 0;
};

class Netlink final : public Applier {
public:
  [[nodiscard]] static std::expected<std::unique_ptr<Netlink>, std::string> open();
  Netlink(const Netlink&) = delete;
  Netlink& operator=(const Netlink&) = delete;
  ~Netlink() override;

  [[nodiscard]] std::expected<BatchStats, std::string>
  replace(std::span<const Ruleset> tables) override;
  [[nodiscard]] std::expected<BatchStats, std::string> replace(const Ruleset& rs) {
    return replace(std::span(&rs, 1));
  }
  [[nodiscard]] std::expected<BatchStats, std::string>
  update(std::span<const TableUpdate> updates) override;
  [[nodiscard]] std::expected<BatchStats, std::string> update(const ElementDelta& delta,
                                                              const Ruleset& target) {
    const TableUpdate u{&delta, &target};
    return update(std::span(&u, 1));
  }
  [[nodiscard]] std::expected<void, std::string> remove() override;
  [[nodiscard]] std::expected<std::map<std::string, CounterValue>, std::string> counters() override;
  [[nodiscard]] std::expected<uint32_t, std::string> generation() override;
  [[nodiscard]] uint32_t portId() const override { return portId_; }

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
    Changed, // another process changed or deleted table inet iotgw or bridge iotgw
    Overrun, // notifications were lost: check the generation
  };
  // `ownPort`: the port id of the socket whose transactions are ours (Netlink::portId()).
  [[nodiscard]] static std::expected<std::unique_ptr<Monitor>, std::string> open(uint32_t ownPort);
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;
  ~Monitor();
  [[nodiscard]] int fd() const;
  // Reads every pending notification.
  [[nodiscard]] Result drain();
  // Who made the last change noticed by drain() ("nft", "firewalld", ...), and to which table
  // ("table inet iotgw", ...), for the event.
  [[nodiscard]] const std::string& lastChanger() const { return lastChanger_; }
  [[nodiscard]] const std::string& lastChanged() const { return lastChanged_; }

private:
  Monitor(mnl_socket* nl, uint32_t ownPort) : nl_(nl), ownPort_(ownPort) {}
  mnl_socket* nl_;
  uint32_t ownPort_;
  unsigned touched_ = 0; // since the last NEWGEN: 1 inet, 2 bridge
  std::string lastChanger_;
  std::string lastChanged_;
};

} // namespace iotgw::firewall
