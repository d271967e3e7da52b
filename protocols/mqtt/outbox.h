// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Store-and-forward for one device (EN 303 645 5.9-1, 5.9-2): the QoS 1 and 2 messages its
// sessions could not hand to the broker — the upstream was down, or earlier messages still wait
// here — are stored in its OutboxLog, acknowledged to the device once durable, and delivered from
// there in order over the device's own store session (client id storeClientId, clean session 0),
// opened while something is pending and closed once nothing has been for a while.
//
// Exactly once for QoS 2 across an iotgwd crash, towards the broker: a stored message keeps a
// packet identifier derived from its sequence number, so that after a restart its PUBLISH goes
// again as the same message (DUP) within the same broker session, and the PUBREC is made durable
// (a release mark) before its PUBREL is sent, so that a message the broker has completed is never
// sent again. Towards the device: the message's flow (OutboxLog, OutboxOrigin) is durable with it
// and stays open until the device's PUBREL, whose PUBCOMP waits until the flow's end is durable;
// a device that sends the message again (DUP) because its PUBREC was lost — iotgwd was killed, the
// connection dropped — is answered PUBREC again and nothing is stored twice.

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "protocols/mqtt/outbox_log.h"
#include "protocols/mqtt/upstream.h"

namespace iotgw::mqtt {

// Who waits for a stored message to be durable: a device connection and its session's token.
struct StoreTicket {
  uint64_t connection = 0;
  uint64_t token = 0;
};

class Outbox final : public UpstreamObserver {
public:
  // Opens the store session, reporting to the outbox.
  using Opener =
      std::function<std::expected<std::unique_ptr<Upstream>, std::string>(UpstreamObserver&)>;
  // Messages handed to the store session and not yet acknowledged by the broker, at most.
  static constexpr size_t kWindow = 64;

  [[nodiscard]] static std::expected<std::unique_ptr<Outbox>, std::string>
  open(const std::filesystem::path& path, OutboxLimits limits, Opener opener,
       OutboxLog::Recovered* recovered = nullptr);
  ~Outbox() override;

  enum class Stored {
    New,   // written
    Again, // a QoS 2 resend (DUP) of the message its open flow holds: nothing written
  };
  // Stores the message (`ticket` comes back from commit() once it is durable), or says why not.
  // `client` is the sending device client's upstream client id: with it a QoS 2 message that
  // names its origin (Outgoing::origin) opens that flow, or is recognised as a resend.
  [[nodiscard]] std::expected<Stored, OutboxLog::Refusal>
  store(const Outgoing& message, StoreTicket ticket, std::string_view client = {});
  // The device's PUBREL for its QoS 2 message `packetId`: true when the outbox holds that flow;
  // it is closed and `ticket` comes back from commit() once that is durable (then PUBCOMP).
  [[nodiscard]] bool release(std::string_view client, uint16_t packetId, StoreTicket ticket);
  // Makes room by dropping the oldest pending message (a full queue whose policy says so);
  // false when there is nothing to drop.
  bool dropOldest();
  // Makes what was stored durable (one fdatasync), hands it to a connected store session, and
  // returns the tickets to acknowledge. False in `ok` when the disk failed: the tickets are then
  // not acknowledged (the devices send again).
  [[nodiscard]] std::vector<StoreTicket> commit(bool* ok = nullptr);
  // Something stored waits for commit(): unsynced, or synced by another path (a PUBREC's
  // release, the done marks settling) and not yet acknowledged.
  [[nodiscard]] bool dirty() const { return log_->dirty() || !waiting_.empty(); }
  // Opens the store session when something is pending, feeds it, services it, and closes it
  // once it has been idle for `idle`. True when the outbox has nothing left to do — no message,
  // no open flow — and may go.
  bool service(Clock::time_point now, Clock::duration idle);
  // The device was removed: the file goes, and with it what it held (how many).
  size_t erase();

  [[nodiscard]] bool pending() const { return log_->messages() > 0; }
  [[nodiscard]] size_t messages() const { return log_->messages(); }
  [[nodiscard]] size_t bytes() const { return log_->bytes(); }
  [[nodiscard]] std::optional<std::chrono::system_clock::time_point> oldest() const {
    return log_->oldest();
  }
  [[nodiscard]] bool linkUp() const { return link_ && link_->connected(); }
  [[nodiscard]] uint64_t delivered() const { return delivered_; }
  [[nodiscard]] uint64_t dropped() const { return dropped_; }
  [[nodiscard]] size_t flows() const { return log_->flows(); }
  [[nodiscard]] const std::string& error() const { return log_->error(); }

  // The packet identifier a stored message goes under: fixed by its sequence number.
  [[nodiscard]] static uint16_t packetIdOf(uint64_t seq) {
    return static_cast<uint16_t>((seq - 1) % 65535 + 1);
  }

private:
  Outbox(std::unique_ptr<OutboxLog> log, Opener opener)
      : log_(std::move(log)), opener_(std::move(opener)) {}
  void upstreamAcked(uint64_t token) override;
  void upstreamReceived(const std::vector<uint64_t>& tokens) override;
  void upstreamMessage(const Delivery&) override {} // it subscribes to nothing
  void upstreamConnected(const UpstreamStatus& status) override;
  void feed();

  std::unique_ptr<OutboxLog> log_;
  Opener opener_;
  std::unique_ptr<Upstream> link_;
  uint64_t fed_ = 0;                 // the highest sequence number handed to the store session
  size_t inLink_ = 0;                // handed to it and not yet acknowledged
  std::vector<StoreTicket> waiting_; // stored, not yet durable
  Clock::time_point lastActive_ = Clock::now();
  Clock::time_point retryAt_{};   // the next attempt to open the store session, after a failure
  Clock::time_point settledAt_{}; // the done marks were last made durable
  bool closing_ = false;          // idle: the store session drains and disconnects
  uint64_t delivered_ = 0;
  uint64_t dropped_ = 0;
};

} // namespace iotgw::mqtt
