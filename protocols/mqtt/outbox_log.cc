// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/mqtt/outbox_log.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

namespace iotgw::mqtt {

namespace {

// "IOTGWQ" and the format's version: a later format sits beside this one. Version 02 added the
// flows (kinds 4 to 6); a version 01 file is read and marked 02 before anything is added to it,
// so that an older iotgwd leaves it alone ("another format") instead of cutting it off at the
// first record it does not know.
constexpr std::array<uint8_t, 8> kMagic = {'I', 'O', 'T', 'G', 'W', 'Q', '0', '2'};
constexpr std::array<uint8_t, 8> kMagicV1 = {'I', 'O', 'T', 'G', 'W', 'Q', '0', '1'};
constexpr size_t kFrame = 8;                   // length and CRC
constexpr size_t kMarkBody = 1 + 8;            // kind, sequence number
constexpr size_t kMessageHead = 1 + 8 + 8 + 4; // kind, seq, stored (ms), qos, retain, topic length
// A message that opens a flow has it after the head, before the topic; a flow on its own (written
// when its message is gone and the file is rewritten) has it after the kind and seq.
constexpr size_t kFlowHead = 2 + 4 + 2; // packet identifier, digest, client length
// No record is larger: a length past it is a torn or corrupt record, not an allocation.
constexpr uint32_t kMaxBody = 16 * 1024 * 1024;

enum Kind : uint8_t {
  kMessage = 1,
  kReleased = 2,
  kDone = 3,
  kFlowMessage = 4, // a QoS 2 message and the flow it opens
  kFlow = 5,        // an open flow whose message is done
  kFlowClosed = 6,  // the flow opened by this seq is closed (PUBREL)
};

// CRC-32C (Castagnoli), bytewise with a table: records are small and this is off the hot path.
// Chained: crc32c(b, crc32c(a)) is the CRC of a and b together.
uint32_t crc32c(std::span<const uint8_t> data, uint32_t crc = 0) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) {
        c = (c & 1U) != 0 ? 0x82F63B78U ^ (c >> 1) : c >> 1;
      }
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = crc ^ 0xFFFFFFFFU;
  for (uint8_t b : data) {
    c = table[(c ^ b) & 0xFFU] ^ (c >> 8);
  }
  return c ^ 0xFFFFFFFFU;
}

void put(std::vector<uint8_t>& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) {
    out.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
}

uint64_t get(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) {
    v |= static_cast<uint64_t>(p[i]) << (8 * i);
  }
  return v;
}

// Frames a record body: length, CRC-32C, body.
std::vector<uint8_t> frame(const std::vector<uint8_t>& body) {
  std::vector<uint8_t> out;
  out.reserve(kFrame + body.size());
  put(out, body.size(), 4);
  put(out, crc32c(body), 4);
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

bool writeAll(int fd, std::span<const uint8_t> bytes, off_t at) {
  while (!bytes.empty()) {
    const ssize_t n = ::pwrite(fd, bytes.data(), bytes.size(), at);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return false;
    }
    bytes = bytes.subspan(static_cast<size_t>(n));
    at += n;
  }
  return true;
}

bool readAll(int fd, uint8_t* into, size_t size, off_t at) {
  while (size > 0) {
    const ssize_t n = ::pread(fd, into, size, at);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return false;
    }
    into += n;
    size -= static_cast<size_t>(n);
    at += n;
  }
  return true;
}

bool syncDirectory(const std::filesystem::path& dir) {
  const int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d < 0) {
    return false;
  }
  const bool ok = ::fsync(d) == 0;
  ::close(d);
  return ok;
}

std::span<const uint8_t> bytesOf(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// What tells a resend from a new message under the same packet identifier.
uint32_t digestOf(std::string_view topic, std::span<const uint8_t> payload) {
  return crc32c(payload, crc32c(bytesOf(topic)));
}

// The size of a flow written on its own.
size_t flowRecordBytes(size_t clientBytes) { return kFrame + 1 + 8 + kFlowHead + clientBytes; }

// Reads a flow's fields at `p` (within a body ending at `end`): its client and packet
// identifier, its digest, and where what follows begins; nothing when they do not fit.
struct ParsedFlow {
  std::pair<std::string, uint16_t> key;
  uint32_t digest = 0;
  const uint8_t* rest = nullptr;
};
std::optional<ParsedFlow> parseFlow(const uint8_t* p, const uint8_t* end) {
  if (end - p < static_cast<ptrdiff_t>(kFlowHead)) {
    return std::nullopt;
  }
  const auto clientBytes = static_cast<size_t>(get(p + 6, 2));
  if (end - p < static_cast<ptrdiff_t>(kFlowHead + clientBytes)) {
    return std::nullopt;
  }
  ParsedFlow f;
  f.key.first.assign(reinterpret_cast<const char*>(p + kFlowHead), clientBytes);
  f.key.second = static_cast<uint16_t>(get(p, 2));
  f.digest = static_cast<uint32_t>(get(p + 2, 4));
  f.rest = p + kFlowHead + clientBytes;
  return f;
}

void putFlow(std::vector<uint8_t>& body, std::string_view client, uint16_t packetId,
             uint32_t digest) {
  put(body, packetId, 2);
  put(body, digest, 4);
  put(body, client.size(), 2);
  body.insert(body.end(), client.begin(), client.end());
}

int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

} // namespace

OutboxLog::OutboxLog(std::filesystem::path path, int fd, OutboxLimits limits)
    : path_(std::move(path)), fd_(fd), limits_(limits) {}

OutboxLog::~OutboxLog() {
  account(-static_cast<ptrdiff_t>(end_));
  if (fd_ >= 0 && lazy_) {
    (void)::fdatasync(fd_); // a clean stop sends nothing twice
  }
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

std::expected<std::unique_ptr<OutboxLog>, std::string>
OutboxLog::open(const std::filesystem::path& path, OutboxLimits limits, Recovered* recovered) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    return std::unexpected(path.string() + ": " + std::strerror(errno));
  }
  // One writer: a second iotgwd on the same state directory would interleave records.
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd);
    return std::unexpected(path.string() + ": " +
                           (err == EWOULDBLOCK ? std::string("in use by another process")
                                               : std::string(std::strerror(err))));
  }
  std::unique_ptr<OutboxLog> log(new OutboxLog(path, fd, limits));
  Recovered r;
  if (!log->recover(r)) {
    return std::unexpected(path.string() + ": " + log->error_);
  }
  if (recovered != nullptr) {
    *recovered = r;
  }
  return log;
}

void OutboxLog::account(ptrdiff_t delta) {
  if (limits_.budget != nullptr) {
    limits_.budget->used =
        static_cast<size_t>(static_cast<ptrdiff_t>(limits_.budget->used) + delta);
  }
}

bool OutboxLog::recover(Recovered& r) {
  struct stat st{};
  if (::fstat(fd_, &st) != 0) {
    error_ = std::strerror(errno);
    return false;
  }
  if (st.st_size < static_cast<off_t>(kMagic.size())) {
    // New, or torn before its header was whole: start it.
    if (::ftruncate(fd_, 0) != 0 || !writeAll(fd_, kMagic, 0) || ::fdatasync(fd_) != 0) {
      error_ = std::strerror(errno);
      return false;
    }
    r.tornBytes = static_cast<size_t>(st.st_size);
    end_ = static_cast<off_t>(kMagic.size());
    account(end_);
    return true;
  }
  std::array<uint8_t, kMagic.size()> magic{};
  if (!readAll(fd_, magic.data(), magic.size(), 0) || (magic != kMagic && magic != kMagicV1)) {
    error_ = "not an outbox of this version (its first bytes differ); left as it is";
    return false;
  }
  if (magic == kMagicV1 && (!writeAll(fd_, kMagic, 0) || ::fdatasync(fd_) != 0)) {
    error_ = std::string("marking the file version 02: ") + std::strerror(errno);
    return false;
  }
  off_t at = static_cast<off_t>(kMagic.size());
  uint64_t highest = 0;
  std::vector<uint8_t> body;
  while (at + static_cast<off_t>(kFrame) <= st.st_size) {
    std::array<uint8_t, kFrame> head{};
    if (!readAll(fd_, head.data(), head.size(), at)) {
      break;
    }
    const auto size = static_cast<uint32_t>(get(head.data(), 4));
    const auto crc = static_cast<uint32_t>(get(head.data() + 4, 4));
    if (size < kMarkBody || size > kMaxBody ||
        at + static_cast<off_t>(kFrame + size) > st.st_size) {
      break;
    }
    body.resize(size);
    if (!readAll(fd_, body.data(), size, at + static_cast<off_t>(kFrame)) || crc32c(body) != crc) {
      break;
    }
    const uint8_t kind = body[0];
    const uint64_t seq = get(body.data() + 1, 8);
    highest = std::max(highest, seq);
    const uint8_t* end = body.data() + body.size();
    if ((kind == kMessage || kind == kFlowMessage) && size >= kMessageHead) {
      Entry e;
      e.offset = at;
      e.size = static_cast<uint32_t>(kFrame + size);
      e.storedMs = static_cast<int64_t>(get(body.data() + 9, 8));
      e.qos = body[17];
      e.flow = kind == kFlowMessage;
      if (e.flow) {
        auto f = parseFlow(body.data() + kMessageHead, end);
        if (!f || end - f->rest < static_cast<ptrdiff_t>(get(body.data() + 19, 2))) {
          break; // its lengths do not add up: corrupt, treated as the end
        }
        openFlow(std::move(f->key), Flow{seq, f->digest});
      }
      pending_[seq] = e;
      liveBytes_ += e.size;
    } else if (kind == kFlow) {
      auto f = parseFlow(body.data() + kMarkBody, end);
      if (!f) {
        break;
      }
      openFlow(std::move(f->key), Flow{seq, f->digest});
    } else if (kind == kFlowClosed) {
      closeFlow(seq);
    } else if (kind == kReleased) {
      if (auto it = pending_.find(seq); it != pending_.end()) {
        it->second.released = true;
      }
    } else if (kind == kDone) {
      if (auto it = pending_.find(seq); it != pending_.end()) {
        liveBytes_ -= it->second.size;
        pending_.erase(it);
      }
    } else {
      break; // a kind this version does not know: treated as the end
    }
    at += static_cast<off_t>(kFrame + size);
  }
  if (at < st.st_size) {
    r.tornBytes = static_cast<size_t>(st.st_size - at);
    if (::ftruncate(fd_, at) != 0 || ::fdatasync(fd_) != 0) {
      error_ = std::string("cutting off a torn record: ") + std::strerror(errno);
      return false;
    }
  }
  end_ = at;
  account(end_);
  nextSeq_ = highest + 1;
  r.messages = pending_.size();
  return true;
}

bool OutboxLog::fits(size_t topicBytes, size_t payloadBytes) const {
  const size_t record = kFrame + kMessageHead + topicBytes + payloadBytes;
  return pending_.size() < limits_.maxMessages && liveBytes_ + record <= limits_.maxBytes &&
         (limits_.budget == nullptr || limits_.budget->used + record <= limits_.budget->limit);
}

bool OutboxLog::write(std::span<const uint8_t> record, bool mustSync) {
  if (!writeAll(fd_, record, end_)) {
    error_ = std::string("write: ") + (errno != 0 ? std::strerror(errno) : "short write");
    // Whatever part of it reached the file is cut off again (or found torn on the next start).
    (void)::ftruncate(fd_, end_);
    return false;
  }
  end_ += static_cast<off_t>(record.size());
  account(static_cast<ptrdiff_t>(record.size()));
  (mustSync ? dirty_ : lazy_) = true;
  return true;
}

std::expected<uint64_t, OutboxLog::Refusal> OutboxLog::append(uint8_t qos, bool retain,
                                                              std::string_view topic,
                                                              std::span<const uint8_t> payload,
                                                              std::optional<OutboxOrigin> origin) {
  const size_t flowBytes = origin ? kFlowHead + origin->client.size() : 0;
  const size_t record = kFrame + kMessageHead + flowBytes + topic.size() + payload.size();
  if (pending_.size() >= limits_.maxMessages || liveBytes_ + record > limits_.maxBytes ||
      topic.size() > 0xFFFF || (origin && origin->client.size() > 0xFFFF) ||
      record - kFrame > kMaxBody) {
    return std::unexpected(Refusal::Full);
  }
  if (limits_.budget != nullptr && limits_.budget->used + record > limits_.budget->limit) {
    return std::unexpected(Refusal::DiskFull);
  }
  std::optional<FlowKey> key;
  if (origin) {
    key.emplace(std::string(origin->client), origin->packetId);
    if (!flows_.contains(*key) && flows_.size() >= kMaxFlows) {
      const uint64_t oldest = flowBySeq_.begin()->first;
      closeFlow(oldest);
      mark(kFlowClosed, oldest);
    }
  }
  const uint64_t seq = nextSeq_;
  const int64_t stored = nowMs();
  const uint32_t digest = origin ? digestOf(topic, payload) : 0;
  std::vector<uint8_t> body;
  body.reserve(record - kFrame);
  body.push_back(origin ? kFlowMessage : kMessage);
  put(body, seq, 8);
  put(body, static_cast<uint64_t>(stored), 8);
  body.push_back(qos);
  body.push_back(retain ? 1 : 0);
  put(body, topic.size(), 2);
  if (origin) {
    putFlow(body, origin->client, origin->packetId, digest);
  }
  body.insert(body.end(), topic.begin(), topic.end());
  body.insert(body.end(), payload.begin(), payload.end());
  const off_t at = end_;
  if (!write(frame(body))) {
    return std::unexpected(Refusal::Failed);
  }
  ++nextSeq_;
  pending_[seq] = Entry{at, static_cast<uint32_t>(record), qos, false, key.has_value(), stored};
  liveBytes_ += record;
  if (key) {
    closedUnsynced_.erase(*key);
    openFlow(std::move(*key), Flow{seq, digest});
  }
  return seq;
}

void OutboxLog::openFlow(FlowKey key, Flow flow) {
  if (auto it = flows_.find(key); it != flows_.end()) {
    flowBySeq_.erase(it->second.seq);
    flowBytes_ -= flowRecordBytes(key.first.size());
    flows_.erase(it);
  }
  flowBytes_ += flowRecordBytes(key.first.size());
  flowBySeq_[flow.seq] = key;
  flows_.emplace(std::move(key), flow);
}

void OutboxLog::closeFlow(uint64_t seq) {
  const auto it = flowBySeq_.find(seq);
  if (it == flowBySeq_.end()) {
    return;
  }
  flowBytes_ -= flowRecordBytes(it->second.first.size());
  flows_.erase(it->second);
  flowBySeq_.erase(it);
}

bool OutboxLog::holds(const OutboxOrigin& origin, std::string_view topic,
                      std::span<const uint8_t> payload) const {
  const auto it = flows_.find(FlowKey{std::string(origin.client), origin.packetId});
  return it != flows_.end() && it->second.digest == digestOf(topic, payload);
}

bool OutboxLog::close(const OutboxOrigin& origin) {
  FlowKey key{std::string(origin.client), origin.packetId};
  const auto it = flows_.find(key);
  if (it == flows_.end()) {
    return closedUnsynced_.contains(key);
  }
  const uint64_t seq = it->second.seq;
  closeFlow(seq);
  mark(kFlowClosed, seq);
  closedUnsynced_.insert(std::move(key));
  return true;
}

void OutboxLog::mark(uint8_t kind, uint64_t seq) {
  std::vector<uint8_t> body;
  body.push_back(kind);
  put(body, seq, 8);
  // A done mark that does not reach the disk costs a duplicate at worst (the message is sent
  // again after a restart), never a loss, and needs no sync of its own: one fdatasync per PUBACK
  // would bound delivery at the disk's sync rate (measured: 4,400 a second). A release must be
  // durable before its PUBREL goes and a flow's close before its PUBCOMP: one that could not be
  // written is kept and written again by the next sync(), which fails until it is (marks name
  // their message, so a late one means the same).
  const bool mustSync = kind != kDone;
  auto record = frame(body);
  if (!write(record, mustSync) && mustSync) {
    unwritten_.push_back(std::move(record));
    dirty_ = true;
  }
}

void OutboxLog::release(uint64_t seq) {
  auto it = pending_.find(seq);
  if (it == pending_.end() || it->second.released) {
    return;
  }
  it->second.released = true;
  mark(kReleased, seq);
}

void OutboxLog::done(uint64_t seq) {
  auto it = pending_.find(seq);
  if (it == pending_.end()) {
    return;
  }
  liveBytes_ -= it->second.size;
  pending_.erase(it);
  mark(kDone, seq);
}

bool OutboxLog::sync() {
  if (!dirty_ && !lazy_ && !directoryUnsynced_) {
    return true;
  }
  while (!unwritten_.empty()) {
    if (!write(unwritten_.front())) {
      return false;
    }
    unwritten_.erase(unwritten_.begin());
  }
  if (directoryUnsynced_) {
    // The last rewrite's rename is durable only with its directory.
    if (!syncDirectory(path_.parent_path())) {
      error_ = std::string("fsync of the outbox directory: ") + std::strerror(errno);
      return false;
    }
    directoryUnsynced_ = false;
  }
  if (::fdatasync(fd_) != 0) {
    error_ = std::string("fdatasync: ") + std::strerror(errno);
    return false;
  }
  ++syncs_;
  dirty_ = false;
  lazy_ = false;
  closedUnsynced_.clear();
  return compact();
}

bool OutboxLog::compact() {
  const auto header = static_cast<off_t>(kMagic.size());
  if (pending_.empty() && flows_.empty()) {
    if (end_ > header) {
      // Everything is done, and that is durable: nothing of the file is needed any more.
      if (::ftruncate(fd_, header) != 0) {
        error_ = std::string("ftruncate: ") + std::strerror(errno);
        return false;
      }
      account(header - end_);
      end_ = header;
    }
    return true;
  }
  // Rewritten only when the marks and done messages outweigh what is pending (and the open
  // flows), and are worth it: with nothing pending sooner, so that a flow left open (a device
  // that never sent its PUBREL) does not keep what came before it.
  const auto live = static_cast<off_t>(liveBytes_ + flowBytes_);
  const off_t worth = pending_.empty() ? 64 * 1024 : 256 * 1024;
  if (end_ < worth || end_ < 2 * (live + header)) {
    return true;
  }
  const std::filesystem::path tmp = path_.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    error_ = tmp.string() + ": " + std::strerror(errno);
    return false;
  }
  std::map<uint64_t, Entry> moved;
  off_t at = header;
  bool ok = ::flock(fd, LOCK_EX | LOCK_NB) == 0 && writeAll(fd, kMagic, 0); // it replaces ours
  std::vector<uint8_t> record;
  for (const auto& [seq, e] : pending_) {
    record.resize(e.size);
    ok = ok && readAll(fd_, record.data(), record.size(), e.offset) && writeAll(fd, record, at);
    Entry n = e;
    n.offset = at;
    at += e.size;
    const auto markAlso = [&](uint8_t kind) {
      std::vector<uint8_t> body{kind};
      put(body, seq, 8);
      const auto m = frame(body);
      ok = ok && writeAll(fd, m, at);
      at += static_cast<off_t>(m.size());
    };
    if (e.released) {
      markAlso(kReleased);
    }
    if (e.flow && !flowBySeq_.contains(seq)) {
      markAlso(kFlowClosed); // closed, or replaced by a newer message under its identifier
    }
    moved[seq] = n;
  }
  for (const auto& [key, flow] : flows_) {
    if (pending_.contains(flow.seq)) {
      continue; // in its message's record
    }
    std::vector<uint8_t> body{kFlow};
    put(body, flow.seq, 8);
    putFlow(body, key.first, key.second, flow.digest);
    const auto m = frame(body);
    ok = ok && writeAll(fd, m, at);
    at += static_cast<off_t>(m.size());
  }
  if (!ok || ::fsync(fd) != 0 || ::rename(tmp.c_str(), path_.c_str()) != 0) {
    error_ = std::string("compacting: ") + std::strerror(errno);
    ::close(fd);
    (void)::unlink(tmp.c_str());
    return true; // the old file is whole and still in use: nothing lost, only not smaller
  }
  // Renamed: from now on the new file is the outbox, whether or not the rename is durable yet.
  // Until it is, a crash may bring the old one back — which holds everything synced so far —
  // so what is written from here on waits for the directory (the next sync() retries it).
  directoryUnsynced_ = !syncDirectory(path_.parent_path());
  ::close(fd_);
  fd_ = fd;
  account(at - end_);
  end_ = at;
  pending_ = std::move(moved);
  return true;
}

std::optional<uint64_t> OutboxLog::next(uint64_t after) const {
  auto it = pending_.upper_bound(after);
  if (it == pending_.end()) {
    return std::nullopt;
  }
  return it->first;
}

std::optional<OutboxMessage> OutboxLog::read(uint64_t seq) const {
  auto it = pending_.find(seq);
  if (it == pending_.end()) {
    return std::nullopt;
  }
  std::vector<uint8_t> record(it->second.size);
  if (!readAll(fd_, record.data(), record.size(), it->second.offset)) {
    return std::nullopt;
  }
  const uint8_t* b = record.data() + kFrame;
  const uint8_t* end = record.data() + record.size();
  const auto topicBytes = static_cast<size_t>(get(b + 19, 2));
  const uint8_t* topic = b + kMessageHead;
  if (b[0] == kFlowMessage) {
    const auto f = parseFlow(topic, end);
    if (!f) {
      return std::nullopt;
    }
    topic = f->rest;
  }
  if (end - topic < static_cast<ptrdiff_t>(topicBytes)) {
    return std::nullopt;
  }
  OutboxMessage m;
  m.seq = seq;
  m.stored = std::chrono::system_clock::time_point(
      std::chrono::milliseconds(static_cast<int64_t>(get(b + 9, 8))));
  m.qos = b[17];
  m.retain = b[18] != 0;
  m.released = it->second.released;
  m.topic.assign(reinterpret_cast<const char*>(topic), topicBytes);
  m.payload.assign(topic + topicBytes, end);
  return m;
}

std::optional<std::chrono::system_clock::time_point> OutboxLog::oldest() const {
  if (pending_.empty()) {
    return std::nullopt;
  }
  return std::chrono::system_clock::time_point(
      std::chrono::milliseconds(pending_.begin()->second.storedMs));
}

void OutboxLog::erase() {
  pending_.clear();
  liveBytes_ = 0;
  flows_.clear();
  flowBySeq_.clear();
  flowBytes_ = 0;
  closedUnsynced_.clear();
  (void)::unlink(path_.c_str());
  (void)syncDirectory(path_.parent_path());
  ::close(fd_);
  fd_ = -1; // nothing is written any more
  account(-static_cast<ptrdiff_t>(end_));
  end_ = 0;
}

} // namespace iotgw::mqtt
