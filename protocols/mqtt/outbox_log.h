// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// A device's outbox on disk: the QoS 1 and 2 messages iotgwd accepted from the device while its
// broker could not take them, in the order they came, until the broker has acknowledged each.
// It is the one place where iotgwd stores device payloads (in the state directory, owner-only,
// removed with the device: EN 303 645 5.11-1).
//
// An append-only file of records, each framed by its length and a CRC-32C: a message, or a mark
// that a message was released (QoS 2: the broker has it, only PUBREL remains) or is done (the
// broker acknowledged it, or a full queue dropped it). A QoS 2 message also opens its flow towards
// the device (OutboxOrigin: which client sent it under which packet identifier, and a digest of
// it), which outlives the message until the device's PUBREL closes it: a device that sends the
// message again (DUP) after losing its PUBREC — iotgwd was killed, the connection dropped — is
// recognised and answered without a second copy going to the broker. Why a log and not SQLite in
// WAL mode: measured (tests/bench/outbox_bench.py, the same messages and durable points for both;
// packaging/doc/performance.md), the log wrote 0.3–0.5× the bytes to storage that SQLite with
// synchronous=FULL did — what wears a router's flash — and stored messages 1.1–1.3× as fast; SQLite
// marked them delivered faster in large batches (0.6–0.8×, both far above what a broker takes), and
// it would be a dependency of iotgwd for one table. A record is written when appended and durable
// after the next sync(); acknowledgements to the device wait for that sync (group commit: one
// fdatasync for everything appended since the last one). Opening the file recovers it: a torn last
// record (power lost mid-write) is cut off and every complete record before it kept. Once nothing
// is pending and no flow open the file is truncated; when the marks outgrow what is pending it is
// rewritten (temporary file, fsync, rename).

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace iotgw::mqtt {

// The bytes every outbox together may hold on disk. Shared; loop thread only.
struct DiskBudget {
  size_t limit = 64 * 1024 * 1024;
  size_t used = 0;
};

struct OutboxLimits {
  size_t maxMessages = 10'000;       // pending messages of one device ...
  size_t maxBytes = 4 * 1024 * 1024; // ... and their bytes (records as stored)
  DiskBudget* budget = nullptr;      // all devices together; none: only the device's own
};

// Where a QoS 2 message came from: the device's client (its upstream client id, client_id.h) and
// the packet identifier it sent the message under.
struct OutboxOrigin {
  std::string_view client;
  uint16_t packetId = 0;
};

struct OutboxMessage {
  uint64_t seq = 0; // the device's sequence number: its order, and its packet identifier upstream
  uint8_t qos = 1;
  bool retain = false;
  bool released = false; // QoS 2: the broker has it; only PUBREL remains
  std::chrono::system_clock::time_point stored;
  std::string topic;
  std::vector<uint8_t> payload;
};

class OutboxLog {
public:
  struct Recovered {
    size_t messages = 0;  // pending messages found
    size_t tornBytes = 0; // cut off the end: an incomplete or corrupt last record
  };
  enum class Refusal { Full, DiskFull, Failed };

  // Opens (creating it owner-only, locked against a second writer) and recovers the file.
  [[nodiscard]] static std::expected<std::unique_ptr<OutboxLog>, std::string>
  open(const std::filesystem::path& path, OutboxLimits limits, Recovered* recovered = nullptr);
  ~OutboxLog();
  OutboxLog(const OutboxLog&) = delete;
  OutboxLog& operator=(const OutboxLog&) = delete;

  // Writes the message; durable after the next sync(). Refused when the device's bounds or the
  // disk budget have no room for it (Full, DiskFull), or the write failed (Failed, in error()).
  // With an origin (QoS 2) it opens that flow in the same record, replacing an older one under
  // the same client and packet identifier (the device started a new message under it).
  [[nodiscard]] std::expected<uint64_t, Refusal>
  append(uint8_t qos, bool retain, std::string_view topic, std::span<const uint8_t> payload,
         std::optional<OutboxOrigin> origin = std::nullopt);
  // Whether a message of this size would be taken now.
  [[nodiscard]] bool fits(size_t topicBytes, size_t payloadBytes) const;
  // The broker has the QoS 2 message: only PUBREL remains (durable after the next sync()).
  void release(uint64_t seq);
  // The broker acknowledged the message (PUBACK, PUBCOMP), or it was dropped: no longer pending.
  // The mark is written but needs no sync of its own (see settled()): lost in a crash, it costs
  // the message being sent again — at least once for QoS 1, and for a released QoS 2 message
  // only its PUBREL — never a loss.
  void done(uint64_t seq);
  // Whether the flow `origin` is open with this very message: the device sends again what was
  // stored (kept until its PUBREL, whether or not the broker has it yet).
  [[nodiscard]] bool holds(const OutboxOrigin& origin, std::string_view topic,
                           std::span<const uint8_t> payload) const;
  // The device's PUBREL: the flow is closed (durable after the next sync(), which its PUBCOMP
  // waits for: after a crash the closed flow must not come back and take a new message under
  // the same packet identifier for a resend). False when no such flow is open or closing.
  bool close(const OutboxOrigin& origin);
  // Open flows, at most kMaxFlows: past it the oldest is closed (its device, had it kept it,
  // would have its resend stored again: a duplicate, never a loss).
  static constexpr size_t kMaxFlows = 1024;
  [[nodiscard]] size_t flows() const { return flows_.size(); }
  // Makes everything written so far durable (fdatasync); then compacts if it is worth it.
  [[nodiscard]] bool sync();
  // Whether something that must be durable (a message, a release) was written since sync().
  [[nodiscard]] bool dirty() const { return dirty_; }
  // Whether done marks wait for a sync (made by the next one, or by the owner now and then).
  [[nodiscard]] bool settled() const { return !lazy_; }
  // The pending message with the smallest sequence number greater than `after`.
  [[nodiscard]] std::optional<uint64_t> next(uint64_t after = 0) const;
  // Reads a pending message back from the file.
  [[nodiscard]] std::optional<OutboxMessage> read(uint64_t seq) const;
  // Removes the file (the device was removed): what it held is gone, and nothing more is taken.
  void erase();

  [[nodiscard]] size_t messages() const { return pending_.size(); }
  [[nodiscard]] size_t bytes() const { return liveBytes_; }
  [[nodiscard]] size_t fileBytes() const { return static_cast<size_t>(end_); }
  // When the oldest pending message was stored.
  [[nodiscard]] std::optional<std::chrono::system_clock::time_point> oldest() const;
  [[nodiscard]] uint64_t syncs() const { return syncs_; }
  [[nodiscard]] const std::string& error() const { return error_; }
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

private:
  struct Entry {
    off_t offset = 0;
    uint32_t size = 0; // the whole record
    uint8_t qos = 1;
    bool released = false;
    bool flow = false; // the record opens a flow (an origin is in it)
    int64_t storedMs = 0;
  };
  using FlowKey = std::pair<std::string, uint16_t>; // client, packet identifier
  struct Flow {
    uint64_t seq = 0; // the message that opened it
    uint32_t digest = 0;
  };
  OutboxLog(std::filesystem::path path, int fd, OutboxLimits limits);
  [[nodiscard]] bool recover(Recovered& r);
  [[nodiscard]] bool write(std::span<const uint8_t> record, bool mustSync = true);
  void mark(uint8_t kind, uint64_t seq);
  void openFlow(FlowKey key, Flow flow);
  void closeFlow(uint64_t seq);
  [[nodiscard]] bool compact();
  void account(ptrdiff_t delta);

  std::filesystem::path path_;
  int fd_ = -1;
  OutboxLimits limits_;
  std::map<uint64_t, Entry> pending_;
  size_t liveBytes_ = 0; // records of pending messages
  std::map<FlowKey, Flow> flows_;
  std::map<uint64_t, FlowKey> flowBySeq_;
  size_t flowBytes_ = 0;             // what the open flows take when written on their own
  std::set<FlowKey> closedUnsynced_; // closed since the last sync
  std::vector<std::vector<uint8_t>> unwritten_; // marks whose write failed, for the next sync
  bool directoryUnsynced_ = false; // a rewrite's rename waits for its directory's fsync
  off_t end_ = 0;                  // where the next record goes
  uint64_t nextSeq_ = 1;
  uint64_t syncs_ = 0;
  bool dirty_ = false;
  bool lazy_ = false; // done marks written since the last sync
  std::string error_;
};

} // namespace iotgw::mqtt
