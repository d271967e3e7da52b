// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/mqtt/session.h"

#include <algorithm>

#include <fmt/format.h>

namespace iotgw::mqtt {

using policy::Decision;
using policy::Event;
using policy::EventType;
using policy::ViolationAction;

namespace {

// QoS 2 flows a 3.1/3.1.1 client may leave open (PUBREC sent, PUBREL not yet come), in Receive
// Maximums: more than a client keeps in flight of its own.
constexpr size_t kOpenQos2FlowsPerWindow = 4;

// QoS of a PUBLISH from its fixed header.
uint8_t publishQos(const Frame& f) { return (f.header >> 1) & 0x03; }

} // namespace

Session::Session(SessionSettings settings, std::shared_ptr<const policy::PolicySet> policies,
                 std::shared_ptr<const policy::DefaultCredentials> defaults,
                 policy::AuthThrottle& throttle, PeerInfo peer, Clock::time_point now,
                 SubscriptionMemory* subscriptionMemory)
    : settings_(std::move(settings)), policies_(std::move(policies)),
      defaults_(std::move(defaults)), throttle_(throttle), peer_(std::move(peer)),
      connectDeadline_(now + settings_.connectTimeout), lastPacket_(now),
      subscriptionMemory_(subscriptionMemory) {}

Clock::time_point Session::deadline() const {
  if (state_ == State::AwaitingConnect || state_ == State::Authenticating ||
      state_ == State::Opening) {
    return connectDeadline_;
  }
  if (state_ == State::Connected && keepAlive_ > 0) {
    return lastPacket_ + std::chrono::milliseconds(uint64_t{keepAlive_} * 1500);
  }
  return Clock::time_point::max();
}

std::string Session::deviceName() const { return device_ != nullptr ? device_->id.str() : ""; }

void Session::send(const Packet& p, Effects& out) const {
  const auto bytes = encode(p, version_.value_or(Version::V311));
  out.toClient.insert(out.toClient.end(), bytes.begin(), bytes.end());
}

bool Session::windowFull() const { return unacknowledgedFromClient_ >= settings_.receiveMaximum; }

bool Session::wantsInput() const {
  if (state_ == State::Authenticating || state_ == State::Opening) {
    return false;
  }
  if (state_ != State::Connected) {
    return true;
  }
  return pendingAcks_.size() < settings_.maxPendingSubscribes &&
         (version_ == Version::V5 || !windowFull());
}

void Session::close(bool publishWill, Effects& out) {
  if (state_ == State::Connected || state_ == State::Opening) {
    out.upstream.emplace_back(upstream::Close{publishWill && !willSuppressed_});
    rememberSubscriptions();
  }
  dropPendingConnect();
  state_ = State::Closed;
  out.closeClient = true;
}

void Session::receive(std::span<const uint8_t> bytes, Clock::time_point now, Effects& out) {
  if (state_ == State::Closed) {
    return;
  }
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
  if (state_ == State::Authenticating || state_ == State::Opening) {
    // Packets sent right behind the CONNECT wait, unread, until its password is checked and, for
    // a persistent session, the broker has answered.
    if (buffer_.size() > settings_.maxConnectBytes) {
      tooMuchBeforeLogin(out);
      buffer_.clear();
    }
    return;
  }
  size_t consumed = 0;
  while (state_ == State::AwaitingConnect || state_ == State::Connected) {
    const auto view = std::span<const uint8_t>(buffer_).subspan(consumed);
    // Before the CONNECT is accepted nobody is known, and a packet may only be small.
    const bool known = state_ == State::Connected;
    auto frame = readFrame(view, known ? settings_.maxPacketBytes : settings_.maxConnectBytes);
    if (!frame) {
      if (!known && frame.error().reasonCode == reason::kPacketTooLarge) {
        tooMuchBeforeLogin(out);
      } else {
        protocolViolation(frame.error(), out);
      }
      break;
    }
    if (!*frame) {
      break; // wait for the rest
    }
    if (known && version_ != Version::V5 && (*frame)->typeBits() == 3 && publishQos(**frame) > 0 &&
        (windowFull() || pendingAcks_.size() >= settings_.maxPendingSubscribes)) {
      // A 3.1/3.1.1 client with as much in flight as we take: it waits, unread, until the broker
      // acknowledges (its socket is not read meanwhile). Retransmissions wait too: the first
      // copy's acknowledgement answers them.
      break;
    }
    if (known && pendingAcks_.size() >= settings_.maxPendingSubscribes &&
        ((*frame)->typeBits() == 8 || (*frame)->typeBits() == 10)) {
      break; // SUBSCRIBE / UNSUBSCRIBE wait for the broker's answers to the earlier ones
    }
    auto packet = decodePacket(**frame, version_.value_or(Version::V311));
    consumed += (*frame)->size;
    if (!packet) {
      protocolViolation(packet.error(), out);
      break;
    }
    const Version v = std::holds_alternative<Connect>(*packet) ? std::get<Connect>(*packet).version
                                                               : version_.value_or(Version::V311);
    if (auto e = validateFromClient(*packet, v)) {
      if (std::holds_alternative<Connect>(*packet)) {
        version_ = v; // so that a 5.0 client hears its reason code in the right CONNACK
      }
      protocolViolation(*e, out);
      break;
    }
    ++counters_.packetsIn;
    lastPacket_ = now;
    handle(std::move(*packet), now, out);
  }
  if (state_ != State::Closed) {
    buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(consumed));
    if ((state_ == State::Authenticating || state_ == State::Opening) &&
        buffer_.size() > settings_.maxConnectBytes) {
      tooMuchBeforeLogin(out);
    }
  }
  if (state_ == State::Closed) {
    buffer_.clear();
  }
  // An idle session keeps no read-sized buffer around (a thousand idle devices would hold 64 KiB
  // each).
  if (buffer_.empty() && buffer_.capacity() > 4096) {
    std::vector<uint8_t>().swap(buffer_);
  }
}

void Session::handle(Packet&& p, Clock::time_point now, Effects& out) {
  if (state_ == State::AwaitingConnect && !std::holds_alternative<Connect>(p)) {
    protocolViolation({"MQTT-3.1.0-1", reason::kProtocolError, "first packet is not CONNECT"}, out);
    return;
  }
  if (auto* c = std::get_if<Connect>(&p)) {
    onConnect(std::move(*c), now, out);
  } else if (auto* pub = std::get_if<Publish>(&p)) {
    onPublish(std::move(*pub), now, out);
  } else if (const auto* a = std::get_if<Ack>(&p)) {
    onAck(*a, out);
  } else if (const auto* s = std::get_if<Subscribe>(&p)) {
    onSubscribe(*s, out);
  } else if (const auto* u = std::get_if<Unsubscribe>(&p)) {
    onUnsubscribe(*u, out);
  } else if (std::holds_alternative<Pingreq>(p)) {
    send(Pingresp{}, out);
  } else if (const auto* d = std::get_if<Disconnect>(&p)) {
    // 5.0 "Disconnect with Will Message" (0x04) keeps the will; any other normal DISCONNECT
    // discards it (MQTT-3.14.4-3).
    const bool keepWill = version_ == Version::V5 && d->reasonCode == 0x04;
    willSuppressed_ = !keepWill;
    close(keepWill, out);
  } else if (std::holds_alternative<Auth>(p)) {
    protocolViolation({"MQTT-4.12.0-1", reason::kBadAuthenticationMethod,
                       "enhanced authentication is not supported"},
                      out);
  }
}

Decision Session::topicLength(std::string_view topic) const {
  if (topic.size() <= settings_.maxTopicBytes) {
    return Decision::allow("limits.max_topic_bytes");
  }
  return Decision::deny(
      policy::Reason::TopicTooLong,
      fmt::format("topic of {} bytes is longer than {}", topic.size(), settings_.maxTopicBytes),
      device_->onViolation);
}

void Session::violation(const Decision& d, Effects& out) {
  EventType type = EventType::AccessDenied;
  if (d.why == policy::Reason::PayloadRule) {
    type = EventType::PayloadRejected;
  } else if (policy::isRate(d.why)) {
    type = EventType::RateLimited;
  }
  out.events.push_back(policy::violationEvent(type, d, deviceName(), peer_.label, "mqtt"));
  if (d.action == ViolationAction::Quarantine) {
    out.quarantineRequested = true;
  }
}

void Session::onPublish(Publish&& p, Clock::time_point now, Effects& out) {
  const bool v5 = version_ == Version::V5;
  if (p.qos == 2) {
    if (auto it = qos2Received_.find(p.packetId); it != qos2Received_.end()) {
      // A retransmission of a message already taken: acknowledge it again, forward it never.
      if (!std::ranges::any_of(awaitingBroker_,
                               [&](const auto& kv) { return kv.second.packetId == p.packetId; })) {
        send(Ack{PacketType::Pubrec, p.packetId, 0, {}}, out);
      }
      return;
    }
  }
  if (p.qos == 1 && std::ranges::any_of(awaitingBroker_, [&](const auto& kv) {
        return kv.second.packetId == p.packetId && kv.second.qos == 1;
      })) {
    return; // a retransmission (DUP) of one on its way: its PUBACK answers both
  }
  if (p.qos == 2 &&
      qos2Received_.size() >= kOpenQos2FlowsPerWindow * size_t{settings_.receiveMaximum}) {
    protocolViolation({"limits.max_open_qos2_flows", reason::kReceiveMaximumExceeded,
                       "too many QoS 2 flows left without their PUBREL"},
                      out);
    return;
  }
  if (p.qos > 0 && v5 && windowFull()) {
    protocolViolation({"MQTT-3.3.4-9", reason::kReceiveMaximumExceeded,
                       "more unacknowledged QoS 1/2 messages than Receive Maximum"},
                      out);
    return;
  }
  Decision d = topicLength(p.topic);
  if (d.allowed()) {
    d = rateDecision(*device_, rate_.take(p.payload.size(), now));
  }
  if (d.allowed()) {
    d = evaluatePublish(*device_, {username_, p.topic, p.qos, p.retain, p.payload});
  }
  if (!d.allowed()) {
    ++counters_.publishesDenied;
    violation(d, out);
    if (d.action == ViolationAction::Drop) {
      // Acknowledge without forwarding: 5.0 says why, 3.1.1 has no way to.
      const uint8_t code = policy::isRate(d.why) ? reason::kQuotaExceeded : reason::kNotAuthorized;
      if (p.qos == 1) {
        send(Ack{PacketType::Puback, p.packetId, v5 ? code : uint8_t{0}, {}}, out);
      } else if (p.qos == 2) {
        send(Ack{PacketType::Pubrec, p.packetId, v5 ? code : uint8_t{0}, {}}, out);
        if (!v5) {
          // 3.1.1 completes the flow with PUBREL (bounded by kOpenQos2FlowsPerWindow).
          qos2Received_.emplace(p.packetId, false);
        }
      }
      return;
    }
    if (v5) {
      send(Disconnect{policy::isRate(d.why) ? reason::kMessageRateTooHigh : reason::kNotAuthorized,
                      {}},
           out);
    }
    close(true, out);
    return;
  }
  ++counters_.publishesForwarded;
  upstream::Publish fwd{0, toUpstream(p.topic), std::move(p.payload), p.qos, p.retain};
  if (p.qos > 0) {
    fwd.token = nextToken_++;
    awaitingBroker_.emplace(fwd.token, Inbound{p.packetId, p.qos});
    ++unacknowledgedFromClient_;
    if (p.qos == 2) {
      qos2Received_.emplace(p.packetId, true);
      fwd.origin = p.packetId; // the outbox tells a resend from a new message by these
      fwd.originDup = p.dup;
    }
  }
  out.upstream.emplace_back(std::move(fwd));
}

void Session::upstreamAcked(uint64_t token, Effects& out) {
  if ((token & kReleaseToken) != 0) {
    const auto pid = static_cast<uint16_t>(token);
    if (releasing_.erase(pid) > 0 && state_ == State::Connected) {
      send(Ack{PacketType::Pubcomp, pid, 0, {}}, out);
    }
    return;
  }
  const auto it = awaitingBroker_.find(token);
  if (it == awaitingBroker_.end() || state_ != State::Connected) {
    return;
  }
  const Inbound in = it->second;
  awaitingBroker_.erase(it);
  if (in.qos == 1) {
    --unacknowledgedFromClient_;
    send(Ack{PacketType::Puback, in.packetId, 0, {}}, out);
    return;
  }
  send(Ack{PacketType::Pubrec, in.packetId, 0, {}}, out);
  if (version_ != Version::V5) {
    // 3.1/3.1.1 knows no Receive Maximum: its window is what waits for the broker, so that the
    // PUBREL behind a held-back PUBLISH can never be what frees it.
    if (const auto q = qos2Received_.find(in.packetId); q != qos2Received_.end() && q->second) {
      q->second = false;
      --unacknowledgedFromClient_;
    }
  }
}

void Session::upstreamReleaseUnknown(uint64_t token, Effects& out) {
  const auto it = releasing_.find(static_cast<uint16_t>(token));
  if ((token & kReleaseToken) == 0 || it == releasing_.end()) {
    return;
  }
  const auto [pid, known] = *it;
  releasing_.erase(it);
  if (state_ == State::Connected) {
    send(Ack{PacketType::Pubcomp, pid, pubcompCode(known), {}}, out);
  }
}

uint8_t Session::pubcompCode(bool known) const {
  return known || version_ != Version::V5 ? uint8_t{0} : reason::kPacketIdentifierNotFound;
}

void Session::upstreamRefused(uint64_t token, Effects& out) {
  const auto it = awaitingBroker_.find(token);
  if (it == awaitingBroker_.end() || state_ != State::Connected) {
    return;
  }
  ++counters_.storeRefused;
  if (version_ != Version::V5) {
    return; // no acknowledgement: the client keeps it (MQTT-4.4.0-1 sends it again)
  }
  const Inbound in = it->second;
  awaitingBroker_.erase(it);
  if (in.qos == 1) {
    --unacknowledgedFromClient_;
  } else if (const auto q = qos2Received_.find(in.packetId); q != qos2Received_.end()) {
    // A PUBREC with an error code ends a QoS 2 flow: no PUBREL comes for it.
    if (q->second) {
      --unacknowledgedFromClient_;
    }
    qos2Received_.erase(q);
  }
  send(Ack{in.qos == 1 ? PacketType::Puback : PacketType::Pubrec,
           in.packetId,
           reason::kQuotaExceeded,
           {}},
       out);
}

void Session::onAck(const Ack& a, Effects& out) {
  switch (a.type) {
  case PacketType::Pubrel: {
    const auto it = qos2Received_.find(a.packetId);
    const bool known = it != qos2Received_.end();
    if (known) {
      if (it->second) {
        --unacknowledgedFromClient_;
      }
      qos2Received_.erase(it);
    }
    if (!settings_.storedFlows) {
      send(Ack{PacketType::Pubcomp, a.packetId, pubcompCode(known), {}}, out);
    } else if (releasing_.emplace(a.packetId, known).second) {
      // The outbox may hold the flow from an earlier connection (or iotgwd run): its end must
      // be durable before PUBCOMP lets the client use the identifier again. A repeat while
      // that is on its way is answered by the same PUBCOMP.
      out.upstream.emplace_back(upstream::Release{kReleaseToken | a.packetId, a.packetId});
    }
    return;
  }
  case PacketType::Puback:
  case PacketType::Pubcomp: {
    const auto it = awaitingClient_.find(a.packetId);
    if (it != awaitingClient_.end()) {
      if (it->second.upstream != 0 && a.type == PacketType::Puback) {
        out.upstream.emplace_back(upstream::Acknowledge{it->second.upstream}); // it has it now
      }
      awaitingClient_.erase(it);
      sendQueued(out);
    }
    return;
  }
  case PacketType::Pubrec: {
    const auto it = awaitingClient_.find(a.packetId);
    if (it == awaitingClient_.end()) {
      return;
    }
    if (it->second.upstream != 0) {
      // The client has it (or refused it): either way the broker's flow is done with.
      out.upstream.emplace_back(upstream::Acknowledge{it->second.upstream});
      it->second.upstream = 0;
    }
    if (a.reasonCode >= 0x80) {
      awaitingClient_.erase(it); // the client refused it; the flow ends here
      sendQueued(out);
      return;
    }
    it->second.released = true;
    send(Ack{PacketType::Pubrel, a.packetId, 0, {}}, out);
    return;
  }
  default:
    return;
  }
}

void Session::onSubscribe(const Subscribe& s, Effects& out) {
  const bool v5 = version_ == Version::V5;
  PendingAck pending{true, s.packetId, {}, {}, {}, {}, {}};
  upstream::Subscribe forward{nextOperation_, {}};
  bool disconnect = false;
  size_t overLimit = 0;
  for (size_t i = 0; i < s.subscriptions.size(); ++i) {
    const auto& sub = s.subscriptions[i];
    // Bounded per packet and per session: each filter is state here and at the broker.
    const bool known = subscriptions_.contains(sub.filter);
    if (i >= settings_.maxFiltersPerSubscribe ||
        (!known && (subscriptions_.size() >= settings_.maxSubscriptions ||
                    subscriptionBytes_ + sub.filter.size() > settings_.maxSubscriptionBytes))) {
      pending.codes.push_back(v5 ? reason::kQuotaExceeded : v311::kSubackFailure);
      ++overLimit;
      continue;
    }
    Decision d = topicLength(sub.filter);
    if (d.allowed()) {
      d = evaluateSubscribe(*device_, {username_, sub.filter, sub.qos()});
    }
    if (d.allowed()) {
      pending.codes.push_back(d.grantedQos); // the broker's grant may lower it
      pending.forwarded.push_back(i);
      pending.policyQos.push_back(d.grantedQos);
      pending.filters.push_back(sub.filter);
      const bool added = subscriptions_.insert(sub.filter).second;
      pending.wasHeld.push_back(!added);
      if (added) {
        subscriptionBytes_ += sub.filter.size(); // counted while the broker decides
      }
      forward.filters.push_back(Subscription{toUpstream(sub.filter), d.grantedQos});
    } else {
      pending.codes.push_back(v5 ? reason::kNotAuthorized : v311::kSubackFailure);
      violation(d, out);
      disconnect = disconnect || d.action != ViolationAction::Drop;
    }
  }
  if (overLimit > 0) {
    counters_.subscriptionsRefused += overLimit;
    Event e;
    e.type = EventType::RateLimited;
    e.device = deviceName();
    e.peer = peer_.label;
    e.protocol = "mqtt";
    e.provision = std::string(policy::provision::kValidateInput);
    e.rule = s.subscriptions.size() > settings_.maxFiltersPerSubscribe
                 ? "limits.max_filters_per_subscribe"
                 : "limits.max_subscriptions_per_session";
    e.action = "refuse";
    e.message =
        fmt::format("{} subscription filter(s) refused: past the subscription limits "
                    "({} per session, {} per SUBSCRIBE)",
                    overLimit, settings_.maxSubscriptions, settings_.maxFiltersPerSubscribe);
    out.events.push_back(std::move(e));
  }
  if (disconnect) {
    send(SubAck{PacketType::Suback, s.packetId, {}, std::move(pending.codes)}, out);
    if (v5) {
      send(Disconnect{reason::kNotAuthorized, {}}, out);
    }
    close(true, out);
    return;
  }
  if (forward.filters.empty()) {
    send(SubAck{PacketType::Suback, s.packetId, {}, std::move(pending.codes)}, out);
    return;
  }
  // "Subscribed" is said once it is true: after the broker's SUBACK (upstreamSubscribed).
  pendingAcks_.emplace(nextOperation_++, std::move(pending));
  out.upstream.emplace_back(std::move(forward));
}

void Session::upstreamSubscribed(const SubscribeResult& r, Effects& out) {
  const auto it = pendingAcks_.find(r.token);
  if (it == pendingAcks_.end() || !it->second.subscribe || state_ != State::Connected) {
    return;
  }
  PendingAck p = std::move(it->second);
  pendingAcks_.erase(it);
  const bool v5 = version_ == Version::V5;
  for (size_t k = 0; k < p.forwarded.size(); ++k) {
    const uint8_t broker = k < r.codes.size() ? r.codes[k] : v311::kSubackFailure;
    uint8_t& code = p.codes[p.forwarded[k]];
    if (broker >= 0x80) {
      code = v5 ? reason::kUnspecifiedError : v311::kSubackFailure; // the broker refused it
      if (!p.wasHeld[k] && subscriptions_.erase(p.filters[k]) > 0) {
        subscriptionBytes_ -= p.filters[k].size(); // not held at the broker: not counted
      }
    } else {
      code = std::min(p.policyQos[k], broker);
    }
  }
  send(SubAck{PacketType::Suback, p.packetId, {}, std::move(p.codes)}, out);
  rememberSubscriptions(); // what the broker now holds, should the policy change meanwhile
}

void Session::upstreamUnsubscribed(uint64_t token, Effects& out) {
  const auto it = pendingAcks_.find(token);
  if (it == pendingAcks_.end() || it->second.subscribe || state_ != State::Connected) {
    return;
  }
  send(SubAck{PacketType::Unsuback, it->second.packetId, {}, std::move(it->second.codes)}, out);
  pendingAcks_.erase(it);
}

void Session::rememberSubscriptions() {
  if (subscriptionMemory_ != nullptr && persistent_ && device_ != nullptr) {
    (*subscriptionMemory_)[upstreamClientId_] = subscriptions_;
  }
}

void Session::onUnsubscribe(const Unsubscribe& u, Effects& out) {
  PendingAck pending{false, u.packetId, {}, {}, {}, {}, {}};
  upstream::Unsubscribe forward{nextOperation_, {}};
  for (size_t i = 0; i < u.filters.size(); ++i) {
    const auto& f = u.filters[i];
    if (i >= settings_.maxFiltersPerSubscribe) {
      pending.codes.push_back(reason::kUnspecifiedError); // 3.1.1 carries no codes
      continue;
    }
    // Forwarded even when this connection did not subscribe it: a persistent session at the
    // broker may hold it from an earlier one.
    if (subscriptions_.erase(f) > 0) {
      subscriptionBytes_ -= f.size();
    }
    forward.filters.push_back(toUpstream(f));
    pending.codes.push_back(reason::kSuccess);
  }
  rememberSubscriptions();
  if (forward.filters.empty()) {
    send(SubAck{PacketType::Unsuback, u.packetId, {}, std::move(pending.codes)}, out);
    return;
  }
  pendingAcks_.emplace(nextOperation_++, std::move(pending));
  out.upstream.emplace_back(std::move(forward));
}

uint16_t Session::nextPacketId() {
  // Skip 0 and identifiers still in flight towards the client.
  do {
    lastPacketId_ = static_cast<uint16_t>(lastPacketId_ + 1);
  } while (lastPacketId_ == 0 || awaitingClient_.contains(lastPacketId_));
  return lastPacketId_;
}

void Session::deliver(const Delivery& m, Effects& out) {
  if (state_ != State::Connected) {
    return; // unacknowledged: a persistent session at the broker keeps it
  }
  // Whatever is not passed on to the client is acknowledged at once: it has been dealt with
  // (counted, reported), and the broker must not hold it in flight for ever.
  const auto consumed = [&] {
    if (m.qos > 0) {
      out.upstream.emplace_back(upstream::Acknowledge{m.id});
    }
  };
  // The device sees its own topic names: strip the mapping; anything outside it is not ours.
  if (!m.topic.starts_with(upstreamPrefix_)) {
    ++counters_.deliveriesDenied;
    consumed();
    return;
  }
  const std::string topic = m.topic.substr(upstreamPrefix_.size());
  // What the device gets is held to the device side's own limits, whatever the broker sends:
  // topic length, the packet size the client accepts, and retain only where its policy has it.
  Decision d = topicLength(topic);
  if (d.allowed()) {
    d = evaluateDelivery(*device_, {username_, topic, m.qos, m.retain, m.payload});
  }
  // Fixed header, topic, packet identifier, 5.0 properties: at most 12 bytes besides.
  if (d.allowed() && topic.size() + m.payload.size() + 12 > clientMaximumPacket_) {
    d = Decision::deny(policy::Reason::PacketTooLarge,
                       "message larger than the packet size the device accepts",
                       ViolationAction::Drop);
  }
  if (!d.allowed()) {
    ++counters_.deliveriesDenied;
    d.action = ViolationAction::Drop; // the broker's message is not the device's fault
    violation(d, out);
    consumed();
    return;
  }
  Publish p{false,
            std::min(m.qos, device_->mqttRules.maxQos),
            m.retain && device_->mqttRules.retainAllowed,
            topic,
            0,
            {},
            m.payload};
  if (p.qos == 0) {
    ++counters_.deliveries;
    send(p, out);
    consumed(); // the device's QoS 0 is all the delivery there is
    return;
  }
  const size_t bytes = p.topic.size() + p.payload.size();
  if (queuedToClient_.size() >= settings_.maxQueuedToClient ||
      queuedBytes_ + bytes > settings_.maxQueuedBytesToClient) {
    ++counters_.dropped;
    consumed();
    return;
  }
  queuedBytes_ += bytes;
  queuedToClient_.push_back(Queued{std::move(p), m.qos > 0 ? m.id : 0});
  sendQueued(out);
}

void Session::sendQueued(Effects& out) {
  size_t sent = 0;
  while (sent < queuedToClient_.size() && awaitingClient_.size() < clientReceiveMaximum_) {
    Queued& q = queuedToClient_[sent++];
    Publish& p = q.publish;
    p.packetId = nextPacketId();
    awaitingClient_.emplace(p.packetId, Outbound{p.qos, false, q.upstream});
    ++counters_.deliveries;
    queuedBytes_ -= p.topic.size() + p.payload.size();
    send(p, out);
  }
  queuedToClient_.erase(queuedToClient_.begin(),
                        queuedToClient_.begin() + static_cast<std::ptrdiff_t>(sent));
}

void Session::protocolViolation(const CodecError& e, Effects& out) {
  ++counters_.malformed;
  Event ev;
  ev.type = EventType::MalformedPacket;
  ev.device = deviceName();
  ev.peer = peer_.label;
  ev.protocol = "mqtt";
  ev.rule = std::string(e.clause);
  ev.action = "disconnect";
  ev.message = fmt::format("MQTT protocol violation ({}): {}", e.clause, e.what);
  out.events.push_back(std::move(ev));
  if (state_ == State::AwaitingConnect || state_ == State::Authenticating) {
    dropPendingConnect();
    // A CONNECT that fails: 5.0 clients hear why in CONNACK; 3.1.1 defines codes for an
    // unsupported protocol level and a rejected client identifier only.
    if (version_ == Version::V5) {
      send(Connack{false, e.reasonCode, {}}, out);
    } else if (e.clause == "MQTT-3.1.2-2" || e.clause == "MQTT-3.1.2-1") {
      version_ = Version::V311;
      send(Connack{false, v311::kUnacceptableProtocolVersion, {}}, out);
    } else if (e.clause == "MQTT-3.1.3-8" || e.clause == "MQTT-3.1.3-5") {
      send(Connack{false, v311::kIdentifierRejected, {}}, out);
    }
  } else if (state_ == State::Connected && version_ == Version::V5) {
    send(Disconnect{e.reasonCode, {}}, out);
  }
  close(true, out); // a protocol error publishes the will (MQTT-3.1.2-8)
}

void Session::tick(Clock::time_point now, Effects& out) {
  if (state_ == State::Opening && now >= connectDeadline_) {
    upstreamStatus(false, false, now, out); // the broker did not answer in time
    return;
  }
  if ((state_ == State::AwaitingConnect || state_ == State::Authenticating) &&
      now >= connectDeadline_) {
    dropPendingConnect();
    state_ = State::Closed;
    out.closeClient = true;
    return;
  }
  if (state_ == State::Connected && keepAlive_ > 0 && now >= deadline()) {
    // MQTT-3.1.2-24: 1.5 times the keep alive without a control packet.
    if (version_ == Version::V5) {
      send(Disconnect{reason::kKeepAliveTimeout, {}}, out);
    }
    close(true, out);
  }
}

void Session::connectionLost(Effects& out) {
  if (state_ == State::Closed) {
    return;
  }
  close(true, out);
  out.closeClient = false; // already gone
}

} // namespace iotgw::mqtt
