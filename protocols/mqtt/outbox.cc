// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/mqtt/outbox.h"

namespace iotgw::mqtt {

std::expected<std::unique_ptr<Outbox>, std::string> Outbox::open(const std::filesystem::path& path,
                                                                 OutboxLimits limits, Opener opener,
                                                                 OutboxLog::Recovered* recovered) {
  auto log = OutboxLog::open(path, limits, recovered);
  if (!log) {
    return std::unexpected(log.error());
  }
  return std::unique_ptr<Outbox>(new Outbox(std::move(*log), std::move(opener)));
}

Outbox::~Outbox() = default;

std::expected<Outbox::Stored, OutboxLog::Refusal>
Outbox::store(const Outgoing& message, StoreTicket ticket, std::string_view client) {
  std::optional<OutboxOrigin> origin;
  if (message.qos == 2 && message.origin != 0 && !client.empty()) {
    origin = OutboxOrigin{client, message.origin};
  }
  if (origin && message.originDup && log_->holds(*origin, message.topic, message.payload)) {
    // Its PUBREC was lost on the way: it is answered again (after the next commit, should the
    // flow still be on its way to the disk) and goes to the broker once, as stored.
    waiting_.push_back(ticket);
    return Stored::Again;
  }
  auto seq = log_->append(message.qos, message.retain, message.topic, message.payload, origin);
  if (!seq) {
    if (origin && !message.originDup) {
      // A new message under this identifier: whatever flow was open under it is over, and must
      // not take this message's resend for its own.
      (void)log_->close(*origin);
    }
    return std::unexpected(seq.error());
  }
  waiting_.push_back(ticket);
  return Stored::New;
}

bool Outbox::release(std::string_view client, uint16_t packetId, StoreTicket ticket) {
  if (!log_->close(OutboxOrigin{client, packetId})) {
    return false;
  }
  waiting_.push_back(ticket);
  return true;
}

bool Outbox::dropOldest() {
  const auto oldest = log_->next();
  if (!oldest) {
    return false;
  }
  log_->done(*oldest);
  ++dropped_;
  return true;
}

std::vector<StoreTicket> Outbox::commit(bool* ok) {
  const bool synced = log_->sync();
  if (ok != nullptr) {
    *ok = synced;
  }
  std::vector<StoreTicket> durable;
  durable.swap(waiting_);
  if (!synced) {
    durable.clear(); // not acknowledged: the devices send them again
    return durable;
  }
  feed(); // on its way now, not at the next acknowledgement or tick (100 ms)
  return durable;
}

void Outbox::feed() {
  // Only to a connected session: what it holds can no longer be dropped to make room, and while
  // the broker is away nothing needs to be held twice.
  while (link_ && link_->connected() && !closing_ && inLink_ < kWindow) {
    const auto seq = log_->next(fed_);
    if (!seq) {
      return;
    }
    auto m = log_->read(*seq);
    if (!m) {
      // Unreadable (the disk failed under us): not delivered, and not forgotten either; the
      // next start reads the file again.
      return;
    }
    Outgoing out{*seq,       std::move(m->topic), std::move(m->payload),
                 m->qos,     m->retain,           packetIdOf(*seq),
                 m->released};
    if (!link_->publish(out)) {
      return; // its queue is full: more once it has room
    }
    fed_ = *seq;
    ++inLink_;
  }
}

void Outbox::upstreamAcked(uint64_t token) {
  if (inLink_ > 0) {
    --inLink_;
  }
  log_->done(token); // nothing if a full queue dropped it meanwhile
  ++delivered_;
  feed();
}

void Outbox::upstreamReceived(const std::vector<uint64_t>& tokens) {
  for (const uint64_t seq : tokens) {
    log_->release(seq);
  }
  // Durable before the PUBRELs go: after a crash the message must not be sent again as new.
  (void)log_->sync();
}

void Outbox::upstreamConnected(const UpstreamStatus& status) {
  if (status.up) {
    feed();
  }
}

bool Outbox::service(Clock::time_point now, Clock::duration idle) {
  if (pending() && !link_ && now >= retryAt_) {
    auto link = opener_(*this);
    if (link) {
      link_ = std::move(*link);
      fed_ = 0;
      inLink_ = 0;
    } else {
      // Not reported (yet): no broker configured, or no identity for the device. Tried again.
      retryAt_ = now + std::chrono::seconds(5);
    }
  }
  if (link_) {
    feed();
    link_->service(now);
  }
  // Done marks are synced a second at most after they were written, and at once when nothing
  // is left (the file is then truncated): few duplicates after a crash, no sync per PUBACK.
  if (!log_->settled() && (!pending() || now - settledAt_ >= std::chrono::seconds(1))) {
    (void)log_->sync();
    settledAt_ = now;
  }
  if (pending() || inLink_ > 0) {
    lastActive_ = now;
  } else if (link_ && !closing_ && now - lastActive_ > idle) {
    link_->close(false); // DISCONNECT once drained; the broker keeps the (empty) session
    closing_ = true;
  }
  if (link_ && link_->finished()) {
    link_.reset();
    closing_ = false;
  }
  // Open flows keep it too: its file is on disk (and counted in the disk budget) while they are.
  return !pending() && !link_ && waiting_.empty() && !log_->dirty() && log_->settled() &&
         log_->flows() == 0;
}

size_t Outbox::erase() {
  const size_t n = log_->messages();
  link_.reset();
  log_->erase();
  waiting_.clear();
  return n;
}

} // namespace iotgw::mqtt
