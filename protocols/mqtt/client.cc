// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/mqtt/client.h"

#include <algorithm>

#include "policy/topic.h"

namespace iotgw::mqtt {

namespace {

constexpr size_t kFiltersPerRestore = 32; // per SUBSCRIBE when a new broker session is filled

// The fixed header: type and flags, then the remaining length. nullopt: not all of it yet;
// an error: more than four length bytes.
struct Header {
  uint8_t byte;
  uint32_t remaining;
  size_t size;
};
std::expected<std::optional<Header>, CodecError> readHeader(std::span<const uint8_t> b) {
  if (b.empty()) {
    return std::nullopt;
  }
  uint32_t value = 0;
  for (size_t i = 1; i <= 4; ++i) {
    if (i >= b.size()) {
      return std::nullopt;
    }
    value |= static_cast<uint32_t>(b[i] & 0x7F) << (7 * (i - 1));
    if ((b[i] & 0x80) == 0) {
      return Header{b[0], value, i + 1};
    }
  }
  return std::unexpected(CodecError{"MQTT-1.5.5-1", reason::kMalformedPacket,
                                    "remaining length longer than four bytes"});
}

} // namespace

Client::Client(ClientSettings settings, ClientLogin login)
    : settings_(settings), login_(std::move(login)) {}

void Client::send(const Packet& p, ClientOutput& out) {
  const auto bytes = encode(p, Version::V311);
  out.toBroker.insert(out.toBroker.end(), bytes.begin(), bytes.end());
}

void Client::start(ClientClock::time_point now, ClientOutput& out) {
  buffer_.clear();
  skipping_ = 0;
  pingSent_.reset();
  Connect c;
  c.version = Version::V311;
  c.cleanStart = login_.cleanSession;
  c.keepAlive = login_.keepAlive;
  c.clientId = login_.clientId;
  c.will = login_.will;
  c.username = login_.username;
  if (login_.password) {
    c.password = std::vector<uint8_t>(login_.password->begin(), login_.password->end());
  }
  send(c, out);
  generation_ = static_cast<uint16_t>(generation_ == 0xFFFF ? 1 : generation_ + 1);
  if (c.password) {
    std::ranges::fill(*c.password, uint8_t{0});
  }
  lastPing_ = now;
  state_ = State::AwaitingConnack;
}

void Client::lost() {
  state_ = State::Offline;
  buffer_.clear();
  skipping_ = 0;
  pingSent_.reset();
  // A QoS 1 message the device has not acknowledged yet comes again on the next connection
  // (the broker's session) or never (a clean one); either way not under this id.
  qos1Unacknowledged_.clear();
}

void Client::fail(std::string_view clause, std::string_view what, ClientOutput& out) {
  if (!out.failure) {
    out.failure = CodecError{clause, reason::kProtocolError, what};
  }
}

void Client::received(std::span<const uint8_t> bytes, ClientOutput& out) {
  if (state_ == State::Offline) {
    return;
  }
  heard_ += bytes.empty() ? 0 : 1;
  size_t consumed = 0;
  if (skipping_ > 0) {
    const size_t n = std::min<size_t>(skipping_, bytes.size());
    skipping_ -= static_cast<uint32_t>(n);
    bytes = bytes.subspan(n);
  }
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
  while (!out.failure && state_ != State::Offline) {
    const auto view = std::span<const uint8_t>(buffer_).subspan(consumed);
    auto header = readHeader(view);
    if (!header) {
      out.failure = header.error();
      break;
    }
    if (!*header) {
      break;
    }
    const Header h = **header;
    if (h.size + h.remaining > settings_.maxPacketBytes) {
      if ((h.byte >> 4) != static_cast<uint8_t>(PacketType::Publish) || state_ != State::Up) {
        fail("limits.max_packet_bytes", "a packet from the broker larger than we take", out);
        break;
      }
      if (!skipOversized(view, h.byte, h.size, h.remaining, consumed, out)) {
        break;
      }
      continue;
    }
    if (view.size() < h.size + h.remaining) {
      break;
    }
    Frame f{h.byte, view.subspan(h.size, h.remaining), h.size + h.remaining};
    consumed += f.size;
    auto packet = decodePacket(f, Version::V311);
    if (!packet) {
      out.failure = packet.error();
      break;
    }
    handle(std::move(*packet), out);
  }
  if (state_ == State::Offline || out.failure) {
    buffer_.clear();
    return;
  }
  if (consumed >= buffer_.size()) {
    buffer_.clear();
  } else {
    buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(consumed));
  }
  if (buffer_.empty() && buffer_.capacity() > 4096) {
    std::vector<uint8_t>().swap(buffer_); // an idle session keeps no read-sized buffer
  }
}

bool Client::skipOversized(std::span<const uint8_t> view, uint8_t header, size_t headerSize,
                           uint32_t remaining, size_t& consumed, ClientOutput& out) {
  // Only as much as names the message: the topic and the packet identifier.
  const uint8_t qos = (header >> 1) & 0x03;
  if (view.size() < headerSize + 2) {
    return false;
  }
  const size_t topicLength = (size_t{view[headerSize]} << 8) | view[headerSize + 1];
  const size_t named = 2 + topicLength + (qos > 0 ? 2 : 0);
  if (named > remaining || qos == 3) {
    fail("MQTT-3.3.2-1", "malformed PUBLISH from the broker", out);
    return false;
  }
  if (view.size() < headerSize + named) {
    return false;
  }
  uint16_t packetId = 0;
  if (qos > 0) {
    const size_t at = headerSize + 2 + topicLength;
    packetId = static_cast<uint16_t>((view[at] << 8) | view[at + 1]);
  }
  const size_t whole = headerSize + remaining;
  const size_t here = std::min(view.size(), whole);
  consumed += here;
  skipping_ = static_cast<uint32_t>(whole - here);
  out.skipped.push_back("a message of " + std::to_string(whole) +
                        " bytes from the broker, larger than limits.max_packet_bytes");
  if (qos == 1) {
    send(Ack{PacketType::Puback, packetId, 0, {}}, out);
  } else if (qos == 2) {
    qos2Received_[packetId] = true;
    send(Ack{PacketType::Pubrec, packetId, 0, {}}, out);
  }
  return true;
}

void Client::handle(Packet&& p, ClientOutput& out) {
  if (state_ == State::AwaitingConnack) {
    if (const auto* c = std::get_if<Connack>(&p)) {
      onConnack(*c, out);
    } else {
      fail("MQTT-3.2.0-1", "the broker's first packet is not CONNACK", out);
    }
    return;
  }
  if (auto* pub = std::get_if<Publish>(&p)) {
    onPublish(std::move(*pub), out);
  } else if (const auto* a = std::get_if<Ack>(&p)) {
    onAck(*a, out);
  } else if (const auto* s = std::get_if<SubAck>(&p)) {
    onSubAck(*s, out);
  } else if (std::holds_alternative<Pingresp>(p)) {
    pingSent_.reset();
  } else {
    fail("MQTT-4.8.0-1", "a packet only a client sends, from the broker", out);
  }
}

void Client::onConnack(const Connack& c, ClientOutput& out) {
  out.connack = c;
  if (c.reasonCode != v311::kAccepted) {
    state_ = State::Offline; // the caller closes the connection
    return;
  }
  state_ = State::Up;
  if (!c.sessionPresent) {
    // A new session at the broker: nothing of an earlier one is there, restores still waiting
    // from the last connection included (they are made again below).
    qos2Received_.clear();
    std::erase_if(operations_, [](const Operation& op) { return op.token == 0; });
    std::vector<Subscription> restore;
    for (const auto& [filter, qos] : subscriptions_) {
      restore.push_back(Subscription{filter, qos});
      if (restore.size() == kFiltersPerRestore) {
        operations_.push_front(Operation{nextPacketId(), 0, true, std::move(restore)});
        restore.clear();
      }
    }
    if (!restore.empty()) {
      operations_.push_front(Operation{nextPacketId(), 0, true, std::move(restore)});
    }
  }
  // MQTT-4.4.0-1: what was in flight goes again, in the order it was sent, before anything new.
  for (const uint16_t id : inFlightInOrder()) {
    const InFlight& f = inFlight_.at(id);
    if (f.released) {
      send(Ack{PacketType::Pubrel, id, 0, {}}, out);
    } else {
      sendPublish(id, f, true, out);
    }
  }
  for (const auto& op : operations_) {
    sendOperation(op, out);
  }
  sendWaiting(out);
}

void Client::onPublish(Publish&& p, ClientOutput& out) {
  if (p.qos == 2) {
    if (const auto it = qos2Received_.find(p.packetId); it != qos2Received_.end()) {
      if (it->second) {
        send(Ack{PacketType::Pubrec, p.packetId, 0, {}}, out); // sent again: acknowledge again
      }
      return; // with the device already: exactly once
    }
  }
  if (p.qos == 1 && qos1Unacknowledged_.contains(p.packetId)) {
    return; // with the device already, its acknowledgement on the way
  }
  if (policy::validateTopicName(p.topic)) {
    // Not a topic a device could be given. Acknowledged, so that it is not sent again.
    out.skipped.push_back("a message from the broker with an invalid topic name");
    if (p.qos == 1) {
      send(Ack{PacketType::Puback, p.packetId, 0, {}}, out);
    } else if (p.qos == 2) {
      qos2Received_[p.packetId] = true;
      send(Ack{PacketType::Pubrec, p.packetId, 0, {}}, out);
    }
    return;
  }
  if (p.qos == 1) {
    qos1Unacknowledged_.insert(p.packetId);
  } else if (p.qos == 2) {
    qos2Received_[p.packetId] = false;
  }
  const uint32_t id = p.qos > 0 ? (uint32_t{generation_} << 16) | p.packetId : 0;
  out.deliveries.push_back(Delivery{id, std::move(p.topic), std::move(p.payload), p.qos, p.retain});
}

void Client::acknowledge(uint32_t id, ClientOutput& out) {
  const auto packetId = static_cast<uint16_t>(id & 0xFFFF);
  if ((id >> 16) == generation_ && qos1Unacknowledged_.erase(packetId) > 0) {
    if (up()) {
      send(Ack{PacketType::Puback, packetId, 0, {}}, out);
    }
    return;
  }
  // QoS 2 state outlives a reconnect only into a session the broker kept: the id is the same
  // message's whatever connection it came on.
  if (const auto it = qos2Received_.find(packetId); it != qos2Received_.end() && !it->second) {
    it->second = true;
    if (up()) {
      send(Ack{PacketType::Pubrec, packetId, 0, {}}, out);
    }
    // Offline: the broker sends the PUBLISH again on the next connection, and is answered then.
  }
}

void Client::onAck(const Ack& a, ClientOutput& out) {
  if (a.type == PacketType::Pubrel) {
    qos2Received_.erase(a.packetId);
    send(Ack{PacketType::Pubcomp, a.packetId, 0, {}}, out);
    return;
  }
  const auto it = inFlight_.find(a.packetId);
  if (it == inFlight_.end()) {
    return; // an acknowledgement from before a reconnect, already dealt with
  }
  if (a.type == PacketType::Pubrec && it->second.message.qos == 2) {
    if (!it->second.released) {
      it->second.released = true;
      out.received.push_back(it->second.message.token);
    }
    send(Ack{PacketType::Pubrel, a.packetId, 0, {}}, out);
    return;
  }
  const bool done = (a.type == PacketType::Puback && it->second.message.qos == 1) ||
                    (a.type == PacketType::Pubcomp && it->second.message.qos == 2);
  if (!done) {
    fail("MQTT-4.3.2-1", "an acknowledgement that does not fit the message's QoS", out);
    return;
  }
  out.acked.push_back(it->second.message.token);
  heldBytes_ -= bytesOf(it->second.message);
  --queuedQos_;
  inFlight_.erase(it);
  sendWaiting(out);
}

void Client::onSubAck(const SubAck& a, ClientOutput& out) {
  const auto it = std::ranges::find_if(
      operations_, [&](const Operation& op) { return op.packetId == a.packetId; });
  if (it == operations_.end()) {
    return;
  }
  const bool subscribe = a.type == PacketType::Suback;
  if (subscribe != it->subscribe || (subscribe && a.reasonCodes.size() != it->filters.size())) {
    fail("MQTT-3.9.3-1", "a SUBACK that does not answer its SUBSCRIBE", out);
    return;
  }
  if (subscribe &&
      std::ranges::any_of(a.reasonCodes, [](uint8_t c) { return c > 2 && c != 0x80; })) {
    fail("MQTT-3.9.3-2", "a SUBACK return code that 3.1.1 does not define", out);
    return;
  }
  if (subscribe) {
    for (size_t i = 0; i < it->filters.size(); ++i) {
      if (a.reasonCodes[i] < 0x80) {
        subscriptions_[it->filters[i].filter] = a.reasonCodes[i];
      }
    }
    if (it->token != 0) {
      out.subscribed.push_back(SubscribeResult{it->token, a.reasonCodes});
    }
  } else {
    for (const auto& f : it->filters) {
      subscriptions_.erase(f.filter);
    }
    out.unsubscribed.push_back(it->token);
  }
  operations_.erase(it);
}

bool Client::publish(Outgoing&& m, ClientOutput& out) {
  const size_t bytes = bytesOf(m);
  // QoS 1/2 is bounded by its count (the device is slowed down before the bytes run out);
  // QoS 0 by the bytes held.
  if (m.qos > 0 ? queuedQos_ >= settings_.maxQueued
                : heldBytes_ + bytes > settings_.maxQueuedBytes) {
    return false;
  }
  if (m.qos == 0 && up() && waiting_.empty()) {
    send(Publish{false, 0, m.retain, std::move(m.topic), 0, {}, std::move(m.payload)}, out);
    return true;
  }
  heldBytes_ += bytes;
  queuedQos_ += m.qos > 0 ? 1 : 0;
  waiting_.push_back(std::move(m));
  if (up()) {
    sendWaiting(out);
  }
  return true;
}

void Client::sendWaiting(ClientOutput& out) {
  while (up() && !waiting_.empty()) {
    Outgoing& m = waiting_.front();
    if (m.qos == 0) {
      heldBytes_ -= bytesOf(m);
      send(Publish{false, 0, m.retain, std::move(m.topic), 0, {}, std::move(m.payload)}, out);
      waiting_.pop_front();
      continue;
    }
    if (inFlight_.size() >= settings_.maxInflight) {
      return;
    }
    const uint16_t id =
        m.packetId != 0 && !inFlight_.contains(m.packetId) ? m.packetId : nextPacketId();
    const bool released = m.released && m.qos == 2;
    const auto& f = inFlight_.emplace(id, InFlight{std::move(m), released, ++sent_}).first->second;
    waiting_.pop_front();
    if (released) {
      send(Ack{PacketType::Pubrel, id, 0, {}}, out);
    } else {
      sendPublish(id, f, false, out);
    }
  }
}

std::vector<uint16_t> Client::inFlightInOrder() const {
  std::vector<uint16_t> ids;
  ids.reserve(inFlight_.size());
  for (const auto& [id, f] : inFlight_) {
    ids.push_back(id);
  }
  std::ranges::sort(ids, {}, [this](uint16_t id) { return inFlight_.at(id).order; });
  return ids;
}

std::vector<Outgoing> Client::takeUnacknowledged() {
  std::vector<Outgoing> taken;
  for (const uint16_t id : inFlightInOrder()) {
    auto it = inFlight_.find(id);
    if (it->second.released) {
      continue;
    }
    heldBytes_ -= bytesOf(it->second.message);
    --queuedQos_;
    taken.push_back(std::move(it->second.message));
    inFlight_.erase(it);
  }
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if (it->qos == 0) {
      ++it;
      continue;
    }
    heldBytes_ -= bytesOf(*it);
    --queuedQos_;
    taken.push_back(std::move(*it));
    it = waiting_.erase(it);
  }
  return taken;
}

void Client::sendPublish(uint16_t packetId, const InFlight& f, bool dup, ClientOutput& out) {
  // Encoded straight from the held message: it stays held until acknowledged.
  Publish p{dup, f.message.qos, f.message.retain, f.message.topic, packetId, {}, f.message.payload};
  send(p, out);
}

void Client::subscribe(uint64_t token, std::vector<Subscription> filters, ClientOutput& out) {
  operations_.push_back(Operation{nextPacketId(), token, true, std::move(filters)});
  if (up()) {
    sendOperation(operations_.back(), out);
  }
}

void Client::unsubscribe(uint64_t token, std::vector<std::string> filters, ClientOutput& out) {
  Operation op{nextPacketId(), token, false, {}};
  for (auto& f : filters) {
    op.filters.push_back(Subscription{std::move(f), 0});
  }
  operations_.push_back(std::move(op));
  if (up()) {
    sendOperation(operations_.back(), out);
  }
}

void Client::sendOperation(const Operation& op, ClientOutput& out) {
  if (op.subscribe) {
    send(Subscribe{op.packetId, {}, op.filters}, out);
    return;
  }
  Unsubscribe u{op.packetId, {}, {}};
  for (const auto& f : op.filters) {
    u.filters.push_back(f.filter);
  }
  send(u, out);
}

uint16_t Client::nextPacketId() {
  const auto inUse = [this](uint16_t id) {
    return inFlight_.contains(id) || std::ranges::any_of(operations_, [id](const Operation& op) {
             return op.packetId == id;
           });
  };
  do {
    lastPacketId_ = static_cast<uint16_t>(lastPacketId_ + 1);
  } while (lastPacketId_ == 0 || inUse(lastPacketId_));
  return lastPacketId_;
}

void Client::disconnect(ClientOutput& out) {
  if (up()) {
    send(Disconnect{}, out);
  }
}

ClientClock::time_point Client::deadline() const {
  if (state_ != State::Up || login_.keepAlive == 0) {
    return ClientClock::time_point::max();
  }
  return pingSent_ ? *pingSent_ + answerTimeout()
                   : lastPing_ + std::chrono::seconds(login_.keepAlive);
}

std::chrono::seconds Client::answerTimeout() const {
  return std::min(settings_.answerTimeout, std::chrono::seconds(login_.keepAlive));
}

bool Client::answerDue() const {
  return !inFlight_.empty() || !operations_.empty() || pingSent_.has_value();
}

void Client::tick(ClientClock::time_point now, ClientOutput& out) {
  if (state_ != State::Up || login_.keepAlive == 0) {
    return;
  }
  if (heard_ != heardSeen_ || !answerDue()) {
    heardSeen_ = heard_;
    silentSince_ = now;
  }
  if (pingSent_) {
    if (now >= *pingSent_ + answerTimeout()) {
      fail("MQTT-3.1.2-24", "the broker did not answer PINGREQ", out);
      out.silent = true;
    }
    return;
  }
  // Silent while answers are due: a dead link (no FIN, no RST) or a hung broker; ask.
  const bool silent = now >= silentSince_ + answerTimeout();
  if (silent || now >= deadline()) {
    send(Pingreq{}, out);
    pingSent_ = now;
    lastPing_ = now;
  }
}

} // namespace iotgw::mqtt
