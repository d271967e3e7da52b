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

std::string_view text(std::span<const uint8_t> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

std::string sourceKey(const PeerInfo& p) { return p.address ? p.address->str() : p.label; }

Property number(PropertyId id, uint32_t v) {
  Property p;
  p.id = id;
  p.number = v;
  return p;
}

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
  if (state_ == State::AwaitingConnect || state_ == State::Authenticating) {
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

void Session::close(bool publishWill, Effects& out) {
  if (state_ == State::Connected) {
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
  if (state_ == State::Authenticating) {
    // Packets sent right behind the CONNECT wait, unread, until its password is checked.
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
    if (state_ == State::Authenticating && buffer_.size() > settings_.maxConnectBytes) {
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

void Session::refuseConnect(uint8_t v5Code, uint8_t v311Code, Effects& out) {
  const bool v5 = version_ == Version::V5;
  send(Connack{false, v5 ? v5Code : v311Code, {}}, out);
  state_ = State::Closed;
  out.closeClient = true;
}

policy::ConnectFacts Session::connectFacts(const Connect& c) const {
  policy::ConnectFacts facts;
  facts.clientId = c.clientId;
  if (c.username) {
    facts.username = *c.username;
  }
  if (c.password) {
    facts.password = text(*c.password);
  }
  facts.certificate = peer_.certificate ? &*peer_.certificate : nullptr;
  facts.peer = peer_.address;
  return facts;
}

void Session::onConnect(Connect&& c, Clock::time_point now, Effects& out) {
  if (state_ == State::Connected) {
    protocolViolation({"MQTT-3.1.0-2", reason::kProtocolError, "second CONNECT"}, out);
    return;
  }
  version_ = c.version;
  if (c.version == Version::V5 &&
      findProperty(c.properties, PropertyId::AuthenticationMethod) != nullptr) {
    refuseConnect(reason::kBadAuthenticationMethod, v311::kNotAuthorized, out);
    return;
  }
  policy::ConnectFacts facts = connectFacts(c);
  facts.sourceLockedOut = throttle_.sourceLockedOut(sourceKey(peer_), now);
  facts.usernameLockedOut =
      c.username && throttle_.userLockedOut(*c.username, sourceKey(peer_), now);
  const policy::ConnectDecision cd = evaluateConnect(*policies_, *defaults_, facts);
  pendingConnect_ = std::move(c);
  if (cd.passwordHash != nullptr) {
    pendingDecision_ = cd;
    const auto& password = pendingConnect_->password;
    out.passwordCheck.emplace(*cd.passwordHash, password ? text(*password) : std::string_view());
    state_ = State::Authenticating;
    return;
  }
  finishConnect(cd, now, out);
}

void Session::dropPendingConnect() {
  if (pendingConnect_ && pendingConnect_->password) {
    policy::secureWipe(pendingConnect_->password->data(), pendingConnect_->password->size());
  }
  pendingConnect_.reset();
}

bool Session::lockedOut(const Connect& c, Clock::time_point now) const {
  const std::string source = sourceKey(peer_);
  if (throttle_.sourceLockedOut(source, now)) {
    return true;
  }
  if (!c.username || !throttle_.userLockedOut(*c.username, source, now)) {
    return false;
  }
  // As in evaluateConnect: the device's own enrolled address is not locked out by its user name.
  const policy::DevicePolicy* d = pendingDecision_.device;
  return d == nullptr || !peer_.address ||
         std::ranges::find(d->addresses, *peer_.address) == d->addresses.end();
}

void Session::tooMuchBeforeLogin(Effects& out) {
  protocolViolation({"limits.max_connect_bytes", reason::kPacketTooLarge,
                     "more bytes before the CONNECT was accepted than limits.max_connect_bytes"},
                    out);
}

void Session::passwordChecked(PasswordResult result, Clock::time_point now, Effects& out) {
  if (state_ != State::Authenticating || !pendingConnect_) {
    return; // closed meanwhile (connect timeout, connection lost)
  }
  state_ = State::AwaitingConnect;
  if (result == PasswordResult::Busy) {
    // Too many checks in progress: a cheap refusal, not a failed login. The client retries.
    Event e;
    e.type = EventType::RateLimited;
    e.peer = peer_.label;
    e.protocol = "mqtt";
    e.provision = std::string(policy::provision::kBruteForce);
    e.rule = "limits.max_password_checks";
    e.action = "refuse";
    e.message = "login refused: too many password checks in progress";
    out.events.push_back(std::move(e));
    dropPendingConnect();
    refuseConnect(reason::kServerBusy, v311::kServerUnavailable, out);
    return;
  }
  policy::ConnectFacts facts = connectFacts(*pendingConnect_);
  // A lockout that began while this check ran (guesses in parallel) holds for it too.
  if (lockedOut(*pendingConnect_, now)) {
    facts.sourceLockedOut = true;
    finishConnect(evaluateConnect(*policies_, *defaults_, facts), now, out);
    return;
  }
  const policy::ConnectDecision cd =
      evaluateVerifiedConnect(pendingDecision_, result == PasswordResult::Matched, facts);
  finishConnect(cd, now, out);
  if (state_ == State::Connected) {
    receive({}, now, out); // what the client sent behind its CONNECT
  }
}

void Session::finishConnect(const policy::ConnectDecision& cd, Clock::time_point now,
                            Effects& out) {
  const std::string source = sourceKey(peer_);
  Connect& c = *pendingConnect_;
  if (!cd.decision.allowed()) {
    EventType type = EventType::AuthenticationFailed;
    uint8_t v5Code = reason::kNotAuthorized;
    uint8_t v311Code = v311::kNotAuthorized;
    if (cd.decision.why == policy::Reason::DefaultCredentials) {
      type = EventType::DefaultCredentialRefused;
    } else if (cd.decision.why == policy::Reason::Lockout) {
      type = EventType::AuthenticationLockout;
      v5Code = reason::kBanned;
    } else if (cd.decision.why == policy::Reason::WrongPassword) {
      v5Code = reason::kBadUserNameOrPassword;
      v311Code = v311::kBadUserNameOrPassword;
    }
    Event e = policy::violationEvent(type, cd.decision, "", peer_.label, "mqtt");
    e.action = "refuse";
    out.events.push_back(std::move(e));
    if (cd.authenticationFailure) {
      out.authenticationFailed = true;
      const auto started = throttle_.recordFailure(source, c.username.value_or(""), now);
      for (const bool user : {false, true}) {
        if (user ? !started.user : !started.source) {
          continue;
        }
        Event lock;
        lock.type = EventType::AuthenticationLockout;
        lock.peer = peer_.label;
        lock.protocol = "mqtt";
        lock.rule = std::string(policy::describe(policy::Reason::Lockout).rule);
        lock.action = "lockout";
        lock.message = user ? "user name locked out after repeated failed logins"
                            : "source locked out after repeated failed logins";
        out.events.push_back(std::move(lock));
      }
    }
    dropPendingConnect();
    refuseConnect(v5Code, v311Code, out);
    return;
  }
  if (settings_.quarantined && settings_.quarantined(cd.device->id)) {
    // Isolated: by address, login or certificate alike, from anywhere.
    Event e;
    e.type = EventType::AccessDenied;
    e.device = cd.device->id.str();
    e.peer = peer_.label;
    e.protocol = "mqtt";
    e.provision = std::string(policy::provision::kIsolable);
    e.rule = "device.quarantined";
    e.action = "refuse";
    e.message = "login of a quarantined device refused";
    out.events.push_back(std::move(e));
    dropPendingConnect();
    refuseConnect(reason::kNotAuthorized, v311::kNotAuthorized, out);
    return;
  }
  device_ = cd.device;
  clientId_ = c.clientId;
  const bool passwordLogin = cd.login == policy::Login::Password;
  username_ = passwordLogin ? c.username.value_or("") : std::string();
  if (passwordLogin) {
    throttle_.recordSuccess(source, username_); // the source's failures stand
  }
  acceptConnect(now, out);
}

void Session::acceptConnect(Clock::time_point now, Effects& out) {
  Connect c = std::move(*pendingConnect_);
  dropPendingConnect();
  if (c.password) {
    policy::secureWipe(c.password->data(), c.password->size());
  }
  if (c.will) {
    const Decision wd = evaluatePublish(
        *device_, {username_, c.will->topic, c.will->qos, c.will->retain, c.will->payload});
    if (!wd.allowed()) {
      out.events.push_back(
          policy::violationEvent(EventType::AccessDenied, wd, deviceName(), peer_.label, "mqtt"));
      refuseConnect(reason::kNotAuthorized, v311::kNotAuthorized, out);
      return;
    }
  }
  keepAlive_ = c.keepAlive;
  clientReceiveMaximum_ = settings_.sendMaximum;
  clientMaximumPacket_ = settings_.maxPacketBytes;
  if (c.version == Version::V5) {
    if (const Property* mp = findProperty(c.properties, PropertyId::MaximumPacketSize)) {
      clientMaximumPacket_ = std::min(clientMaximumPacket_, mp->number);
    }
    // The client may ask for fewer messages in flight towards it, never for more than we keep.
    if (const Property* rm = findProperty(c.properties, PropertyId::ReceiveMaximum)) {
      clientReceiveMaximum_ = std::min(clientReceiveMaximum_, static_cast<uint16_t>(rm->number));
    }
  }
  rate_ = makeRateLimiter(*device_, now);
  lastPacket_ = now; // the keepalive runs from the CONNACK: the password check took its time
  upstreamPrefix_ = device_->mqttRules.upstreamPrefix;
  if (const size_t at = upstreamPrefix_.find("%d"); at != std::string::npos) {
    upstreamPrefix_.replace(at, 2, device_->id.str());
  }
  state_ = State::Connected;
  persistent_ = !c.cleanStart;
  if (subscriptionMemory_ != nullptr) {
    // A persistent session at the broker still holds what earlier connections subscribed.
    if (persistent_) {
      subscriptions_ = (*subscriptionMemory_)[device_->id.str()];
      for (const auto& f : subscriptions_) {
        subscriptionBytes_ += f.size();
      }
    } else {
      subscriptionMemory_->erase(device_->id.str());
    }
  }

  Connack ack{false, 0, {}};
  if (c.version == Version::V5) {
    ack.properties.push_back(number(PropertyId::ReceiveMaximum, settings_.receiveMaximum));
    ack.properties.push_back(number(PropertyId::MaximumPacketSize, settings_.maxPacketBytes));
    ack.properties.push_back(
        number(PropertyId::RetainAvailable, device_->mqttRules.retainAllowed ? 1 : 0));
    if (device_->mqttRules.maxQos < 2) {
      ack.properties.push_back(number(PropertyId::MaximumQos, device_->mqttRules.maxQos));
    }
    ack.properties.push_back(number(PropertyId::SubscriptionIdentifierAvailable, 0));
    ack.properties.push_back(number(PropertyId::SharedSubscriptionAvailable, 0));
  }
  send(ack, out);
  if (c.will) {
    c.will->topic = toUpstream(c.will->topic);
  }
  out.upstream.emplace_back(upstream::Open{settings_.upstreamClientIdPrefix + device_->id.str(),
                                           c.cleanStart, c.keepAlive, std::move(c.will)});
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
  if (p.qos > 0 && unacknowledgedFromClient_ >= settings_.receiveMaximum) {
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
          // 3.1.1 completes the flow with PUBREL; until then it counts against the receive
          // maximum like a forwarded one, so a client cannot leave flows open without bound.
          qos2Received_.emplace(p.packetId, true);
          ++unacknowledgedFromClient_;
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
    }
  }
  out.upstream.emplace_back(std::move(fwd));
}

void Session::upstreamAcked(uint64_t token, Effects& out) {
  const auto it = awaitingBroker_.find(token);
  if (it == awaitingBroker_.end() || state_ != State::Connected) {
    return;
  }
  const Inbound in = it->second;
  awaitingBroker_.erase(it);
  if (in.qos == 1) {
    --unacknowledgedFromClient_;
    send(Ack{PacketType::Puback, in.packetId, 0, {}}, out);
  } else {
    send(Ack{PacketType::Pubrec, in.packetId, 0, {}}, out);
  }
}

void Session::onAck(const Ack& a, Effects& out) {
  switch (a.type) {
  case PacketType::Pubrel: {
    const auto it = qos2Received_.find(a.packetId);
    uint8_t code = 0;
    if (it == qos2Received_.end()) {
      code = version_ == Version::V5 ? reason::kPacketIdentifierNotFound : uint8_t{0};
    } else {
      if (it->second) {
        --unacknowledgedFromClient_;
      }
      qos2Received_.erase(it);
    }
    send(Ack{PacketType::Pubcomp, a.packetId, code, {}}, out);
    return;
  }
  case PacketType::Puback:
  case PacketType::Pubcomp: {
    const auto it = awaitingClient_.find(a.packetId);
    if (it != awaitingClient_.end()) {
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
  SubAck ack{PacketType::Suback, s.packetId, {}, {}};
  bool disconnect = false;
  size_t overLimit = 0;
  for (size_t i = 0; i < s.subscriptions.size(); ++i) {
    const auto& sub = s.subscriptions[i];
    // Bounded per packet and per session: each filter is state here and at the broker.
    const bool known = subscriptions_.contains(sub.filter);
    if (i >= settings_.maxFiltersPerSubscribe ||
        (!known && (subscriptions_.size() >= settings_.maxSubscriptions ||
                    subscriptionBytes_ + sub.filter.size() > settings_.maxSubscriptionBytes))) {
      ack.reasonCodes.push_back(v5 ? reason::kQuotaExceeded : v311::kSubackFailure);
      ++overLimit;
      continue;
    }
    Decision d = topicLength(sub.filter);
    if (d.allowed()) {
      d = evaluateSubscribe(*device_, {username_, sub.filter, sub.qos()});
    }
    if (d.allowed()) {
      ack.reasonCodes.push_back(d.grantedQos);
      if (subscriptions_.insert(sub.filter).second) {
        subscriptionBytes_ += sub.filter.size();
      }
      out.upstream.emplace_back(upstream::Subscribe{toUpstream(sub.filter), d.grantedQos});
    } else {
      ack.reasonCodes.push_back(v5 ? reason::kNotAuthorized : v311::kSubackFailure);
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
  send(ack, out);
  if (disconnect) {
    if (v5) {
      send(Disconnect{reason::kNotAuthorized, {}}, out);
    }
    close(true, out);
  }
}

void Session::rememberSubscriptions() {
  if (subscriptionMemory_ != nullptr && persistent_ && device_ != nullptr) {
    (*subscriptionMemory_)[device_->id.str()] = subscriptions_;
  }
}

void Session::onUnsubscribe(const Unsubscribe& u, Effects& out) {
  SubAck ack{PacketType::Unsuback, u.packetId, {}, {}};
  for (size_t i = 0; i < u.filters.size(); ++i) {
    const auto& f = u.filters[i];
    if (i >= settings_.maxFiltersPerSubscribe) {
      ack.reasonCodes.push_back(reason::kUnspecifiedError); // 3.1.1 carries no codes
      continue;
    }
    // Forwarded even when this connection did not subscribe it: a persistent session at the
    // broker may hold it from an earlier one.
    if (subscriptions_.erase(f) > 0) {
      subscriptionBytes_ -= f.size();
    }
    out.upstream.emplace_back(upstream::Unsubscribe{toUpstream(f)});
    ack.reasonCodes.push_back(reason::kSuccess);
  }
  send(ack, out);
}

uint16_t Session::nextPacketId() {
  // Skip 0 and identifiers still in flight towards the client.
  do {
    lastPacketId_ = static_cast<uint16_t>(lastPacketId_ + 1);
  } while (lastPacketId_ == 0 || awaitingClient_.contains(lastPacketId_));
  return lastPacketId_;
}

void Session::deliver(const std::string& brokerTopic, std::span<const uint8_t> payload, uint8_t qos,
                      bool retain, Effects& out) {
  if (state_ != State::Connected) {
    return;
  }
  // The device sees its own topic names: strip the mapping; anything outside it is not ours.
  if (!brokerTopic.starts_with(upstreamPrefix_)) {
    ++counters_.deliveriesDenied;
    return;
  }
  const std::string topic = brokerTopic.substr(upstreamPrefix_.size());
  // What the device gets is held to the device side's own limits, whatever the broker sends:
  // topic length, the packet size the client accepts, and retain only where its policy has it.
  Decision d = topicLength(topic);
  if (d.allowed()) {
    d = evaluateDelivery(*device_, {username_, topic, qos, retain, payload});
  }
  // Fixed header, topic, packet identifier, 5.0 properties: at most 12 bytes besides.
  if (d.allowed() && topic.size() + payload.size() + 12 > clientMaximumPacket_) {
    d = Decision::deny(policy::Reason::PacketTooLarge,
                       "message larger than the packet size the device accepts",
                       ViolationAction::Drop);
  }
  if (!d.allowed()) {
    ++counters_.deliveriesDenied;
    d.action = ViolationAction::Drop; // the broker's message is not the device's fault
    violation(d, out);
    return;
  }
  Publish p{false,
            std::min(qos, device_->mqttRules.maxQos),
            retain && device_->mqttRules.retainAllowed,
            topic,
            0,
            {},
            std::vector<uint8_t>(payload.begin(), payload.end())};
  if (p.qos == 0) {
    ++counters_.deliveries;
    send(p, out);
    return;
  }
  const size_t bytes = p.topic.size() + p.payload.size();
  if (queuedToClient_.size() >= settings_.maxQueuedToClient ||
      queuedBytes_ + bytes > settings_.maxQueuedBytesToClient) {
    ++counters_.dropped;
    return;
  }
  queuedBytes_ += bytes;
  queuedToClient_.push_back(std::move(p));
  sendQueued(out);
}

void Session::sendQueued(Effects& out) {
  size_t sent = 0;
  while (sent < queuedToClient_.size() && awaitingClient_.size() < clientReceiveMaximum_) {
    Publish& p = queuedToClient_[sent++];
    p.packetId = nextPacketId();
    awaitingClient_.emplace(p.packetId, Outbound{p.qos, false});
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
