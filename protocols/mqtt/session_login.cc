// SPDX-License-Identifier: GPL-3.0-or-later
// Session, logging in: the CONNECT, its password check off the loop, lockouts, quarantine, the
// limit on clients per device, and the answer — at once for a clean session, after the broker's
// for a persistent one (session-present as the broker says it).
#include "protocols/mqtt/session.h"

#include <algorithm>

#include <fmt/format.h>

#include "protocols/mqtt/client_id.h"

namespace iotgw::mqtt {

using policy::Decision;
using policy::Event;
using policy::EventType;

namespace {

// Persistent client ids a device may hold at the broker, per client of mqtt.max_clients.
constexpr uint32_t kPersistentPerClient = 4;

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

void Session::refuseLogin(policy::EventType type, std::string_view device,
                          std::string_view provision, std::string_view rule, std::string message,
                          uint8_t v5Code, uint8_t v311Code, Effects& out) {
  Event e;
  e.type = type;
  e.device = device;
  e.peer = peer_.label;
  e.protocol = "mqtt";
  e.provision = provision;
  e.rule = rule;
  e.action = "refuse";
  e.message = std::move(message);
  out.events.push_back(std::move(e));
  dropPendingConnect();
  refuseConnect(v5Code, v311Code, out);
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
    refuseLogin(EventType::RateLimited, "", policy::provision::kBruteForce,
                "limits.max_password_checks", "login refused: too many password checks in progress",
                reason::kServerBusy, v311::kServerUnavailable, out);
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
    refuseLogin(EventType::AccessDenied, cd.device->id.str(), policy::provision::kIsolable,
                "device.quarantined", "login of a quarantined device refused",
                reason::kNotAuthorized, v311::kNotAuthorized, out);
    return;
  }
  const std::string upstreamId =
      mqtt::upstreamClientId(settings_.upstreamClientIdPrefix, cd.device->id.str(), c.clientId);
  if (settings_.admit && !settings_.admit(*cd.device, upstreamId)) {
    refuseLogin(EventType::RateLimited, cd.device->id.str(), policy::provision::kValidateInput,
                "mqtt.max_clients",
                fmt::format("login refused: the device already has {} MQTT clients connected",
                            cd.device->mqttRules.maxClients),
                reason::kQuotaExceeded, v311::kServerUnavailable, out);
    return;
  }
  device_ = cd.device;
  clientId_ = c.clientId;
  upstreamClientId_ = upstreamId;
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
  // 5.0: Clean Start 0 is persistent only with a Session Expiry (without one the session ends
  // with the connection). The broker side is 3.1.1, where its expiry is the broker's to set.
  const Property* expiry = findProperty(c.properties, PropertyId::SessionExpiryInterval);
  // Without a client id there is nothing to come back to (no Assigned Client Identifier is sent).
  persistent_ = !c.cleanStart && !c.clientId.empty() &&
                (c.version != Version::V5 || (expiry != nullptr && expiry->number > 0));
  cleanStart_ = !persistent_;
  if (persistent_ && subscriptionMemory_ != nullptr &&
      !subscriptionMemory_->contains(upstreamClientId_)) {
    // Each persistent client id is a session the broker keeps (and queues for): a device that
    // makes up new ones is held to a few per client it may have.
    const std::string own = settings_.upstreamClientIdPrefix + device_->id.str();
    const auto held = std::ranges::count_if(*subscriptionMemory_, [&](const auto& kv) {
      return kv.first == own || kv.first.starts_with(own + ":");
    });
    if (static_cast<size_t>(held) >= size_t{kPersistentPerClient} * device_->mqttRules.maxClients) {
      refuseLogin(EventType::RateLimited, deviceName(), policy::provision::kValidateInput,
                  "mqtt.max_clients",
                  fmt::format("persistent session refused: the device holds {} at the broker "
                              "already ({} per client of mqtt.max_clients)",
                              held, kPersistentPerClient),
                  reason::kQuotaExceeded, v311::kServerUnavailable, out);
      return;
    }
  }
  if (subscriptionMemory_ != nullptr) {
    // A persistent session at the broker still holds what earlier connections subscribed.
    if (persistent_) {
      subscriptions_ = (*subscriptionMemory_)[upstreamClientId_];
      for (const auto& f : subscriptions_) {
        subscriptionBytes_ += f.size();
      }
    } else {
      subscriptionMemory_->erase(upstreamClientId_);
    }
  }
  if (c.will) {
    c.will->topic = toUpstream(c.will->topic);
  }
  out.upstream.emplace_back(
      upstream::Open{upstreamClientId_, cleanStart_, c.keepAlive, std::move(c.will)});
  if (persistent_) {
    // Whether the session is there is the broker's to say: the CONNACK waits for its answer.
    state_ = State::Opening;
    connectDeadline_ = now + settings_.connectTimeout;
    return;
  }
  state_ = State::Connected;
  sendConnack(false, out);
}

void Session::sendConnack(bool sessionPresent, Effects& out) {
  Connack ack{sessionPresent, 0, {}};
  if (version_ == Version::V5) {
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
}

void Session::upstreamStatus(bool up, bool sessionPresent, Clock::time_point now, Effects& out,
                             bool refused) {
  // A broker that refuses the login, or that has lost a persistent session the client was told
  // it had (a restart without persistence): the connection ends, so that the client is not left
  // waiting for what cannot come, and learns the truth (session-present 0) when it logs in again.
  if (state_ == State::Connected && (refused || (up && persistent_ && !sessionPresent))) {
    if (version_ == Version::V5) {
      send(Disconnect{reason::kServerUnavailable, {}}, out);
    }
    close(false, out); // the link has said why (upstream-unavailable) if it was refused
    return;
  }
  if (state_ != State::Opening) {
    return;
  }
  if (!up) {
    // The broker cannot be reached (this attempt failed) or refused us: a persistent session
    // cannot be resumed, and saying "no session" would be untrue. The client retries.
    Event e;
    e.type = EventType::UpstreamUnavailable;
    e.device = deviceName();
    e.peer = peer_.label;
    e.protocol = "mqtt";
    e.rule = "upstream";
    e.action = "refuse";
    e.message = "persistent session refused: the broker cannot be reached to resume it";
    out.events.push_back(std::move(e));
    send(Connack{false,
                 version_ == Version::V5 ? reason::kServerUnavailable : v311::kServerUnavailable,
                 {}},
         out);
    close(false, out);
    return;
  }
  state_ = State::Connected;
  lastPacket_ = now;
  if (!sessionPresent) {
    subscriptions_.clear(); // the broker holds none of what an earlier connection subscribed
    subscriptionBytes_ = 0;
    rememberSubscriptions();
  }
  sendConnack(sessionPresent, out);
  receive({}, now, out); // what the client sent behind its CONNECT
}

} // namespace iotgw::mqtt
