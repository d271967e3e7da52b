// SPDX-License-Identifier: GPL-3.0-or-later
// The device-side endpoint ([listeners.coap]): readings enrolled devices push over plain CoAP,
// published upstream through the MQTT capability. Our own sockets and codec.
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "policy/evaluator.h"
#include "policy/topic.h"
#include "protocols/coap/push_endpoint.h"
#include "protocols/io/socket.h"

namespace iotgw::coap {

using policy::EventType;

PushEndpoint::PushEndpoint(io::Reactor& loop, PushSettings s, PushHooks h, PushCounters& c)
    : reactor(loop), settings(std::move(s)), hooks(std::move(h)), counters(c),
      interfaces(settings.deviceInterfaces) {}

PushEndpoint::~PushEndpoint() {
  for (const auto& s : sockets) {
    reactor.remove(s.get());
  }
}

std::expected<void, std::string> PushEndpoint::start() {
  const PushSettings& c = settings;
  for (const auto& a : c.addresses) {
    auto fd = io::bindUdp(a, c.port);
    if (!fd) {
      return std::unexpected(fmt::format("cannot bind device-side CoAP to {}: {}",
                                         io::endpointLabel(a, c.port), fd.error().message()));
    }
    // Which interface each datagram came in on: only the device segment's are devices'.
    if (!io::wantPacketInfo(fd->get(), a.family)) {
      return std::unexpected(
          fmt::format("cannot ask for the arrival interface on {}", io::endpointLabel(a, c.port)));
    }
    const int raw = fd->get();
    if (reactor.add(raw, EPOLLIN, [this, raw](uint32_t) { onReadable(raw); })) {
      return std::unexpected("cannot watch the device-side CoAP socket");
    }
    sockets.push_back(std::move(*fd));
  }
  return {};
}

std::vector<uint16_t> PushEndpoint::boundPorts() const {
  std::vector<uint16_t> ports;
  for (const auto& s : sockets) {
    ports.push_back(io::boundPort(s.get()));
  }
  return ports;
}

void PushEndpoint::emit(EventType type, std::string device, std::string peer, std::string rule,
                        std::string provision, std::string action, std::string message) {
  hooks.emit(coap::event(type, std::move(device), std::move(peer), std::move(rule),
                         std::move(provision), std::move(action), std::move(message)));
}

PushEndpoint::Source& PushEndpoint::sourceFor(const std::string& ip, Clock::time_point now) {
  if (sources.size() >= kMaxSources && !sources.contains(ip)) {
    // Forget sources quiet for a minute; if that frees nothing, start over (a forgotten source
    // starts with an empty budget, so forgetting never allows more than 3x).
    std::erase_if(sources, [now](const auto& kv) {
      return now - kv.second.lastSeen > std::chrono::minutes(1);
    });
    if (sources.size() >= kMaxSources) {
      sources.clear();
    }
  }
  Source& s = sources[ip];
  s.lastSeen = now;
  return s;
}

void PushEndpoint::pruneRecent(Clock::time_point now) {
  while (!recentOrder.empty() &&
         (recentOrder.front().first <= now || recent.size() >= kMaxRecent)) {
    const auto& [expires, key] = recentOrder.front();
    if (auto it = recent.find(key); it != recent.end() && it->second.expires == expires) {
      recent.erase(it);
    }
    recentOrder.pop_front();
  }
}

void PushEndpoint::remember(const RecentKey& key, Bytes reply, Clock::time_point now) {
  pruneRecent(now);
  const auto expires = now + kExchangeLifetime;
  recent.insert_or_assign(key, Recent{std::move(reply), expires});
  recentOrder.emplace_back(expires, key);
}

void PushEndpoint::send(int fd, const sockaddr_storage& to, socklen_t toLen, const Bytes& bytes,
                        Source* budget) {
  if (bytes.empty()) {
    return;
  }
  if (budget != nullptr) {
    if (!budget->budget.allows(bytes.size())) {
      ++counters.budgetDrops;
      return;
    }
    budget->budget.sent(bytes.size());
    counters.unauthenticatedBytesOut += bytes.size();
  }
  (void)::sendto(fd, bytes.data(), bytes.size(), MSG_DONTWAIT,
                 reinterpret_cast<const sockaddr*>(&to), toLen);
}

std::optional<policy::Decision>
PushEndpoint::charge(const policy::DevicePolicy& d,
                     const std::shared_ptr<const policy::PolicySet>& set, size_t bytes,
                     Clock::time_point now) {
  if (ratesFor.lock() != set) {
    // A new snapshot: budgets of devices that left, or whose rate changed, start over.
    std::erase_if(rates, [&](const auto& kv) {
      const auto id = policy::DeviceId::parse(kv.first);
      const policy::DevicePolicy* p = id ? set->find(*id) : nullptr;
      const policy::RateLimit& r = kv.second.settings;
      return p == nullptr || p->mqttRules.rate.messagesPerSecond != r.messagesPerSecond ||
             p->mqttRules.rate.messageBurst != r.messageBurst ||
             p->mqttRules.rate.bytesPerSecond != r.bytesPerSecond ||
             p->mqttRules.rate.byteBurst != r.byteBurst;
    });
    ratesFor = set;
  }
  auto it = rates.find(d.id.str());
  if (it == rates.end()) {
    it = rates.emplace(d.id.str(), Rate{d.mqttRules.rate, policy::makeRateLimiter(d, now)}).first;
  }
  const auto result = it->second.limiter.take(bytes, now);
  if (result == policy::MessageRateLimiter::Result::Allowed) {
    return std::nullopt;
  }
  return policy::rateDecision(d, result);
}

void PushEndpoint::forget(const std::string& device) { rates.erase(device); }

void PushEndpoint::onReadable(int fd) {
  const auto now = Clock::now();
  for (int i = 0; i < 64; ++i) { // bounded work per wake-up
    io::Received r;
    const ssize_t n = io::receiveWithInterface(fd, buffer, sizeof buffer, r);
    if (n < 0) {
      return;
    }
    ++counters.datagrams;
    if (r.from.ss_family != AF_INET && r.from.ss_family != AF_INET6) {
      continue;
    }
    // A datagram that did not come in on the device segment comes from no device, whatever its
    // source address says: the LAN or the WAN can forge that (with rp_filter off, or loose).
    // Counted, and not even refused: an answer would go to the device the sender pretends to be.
    if (const auto [ip, port] = io::fromSockaddr(r.from);
        !interfaces.allows(fd, r.ifindex, ip, now)) {
      ++counters.wrongInterface;
      emit(EventType::AccessDenied, "", io::endpointLabel(ip, port), "device_segment.interfaces",
           "5.5-4", "drop",
           "CoAP datagram on the device-side endpoint from an interface that is not the device "
           "segment dropped");
      continue;
    }
    // MSG_TRUNC reports the real size: a datagram larger than the buffer is refused whole.
    const size_t size = static_cast<size_t>(n);
    handle(fd, r.from, r.fromLen, View(buffer, std::min(size, sizeof buffer)), size);
  }
}

void PushEndpoint::handle(int fd, const sockaddr_storage& from, socklen_t fromLen, View datagram,
                          size_t size) {
  const auto now = Clock::now();
  const auto [ip, port] = io::fromSockaddr(from);
  const std::string peer = io::endpointLabel(ip, port);
  const auto policies = hooks.policies();
  const policy::DevicePolicy* device = policies->findByAddress(ip);
  Source* budget = nullptr;
  if (device == nullptr) {
    budget = &sourceFor(ip.str(), now);
    budget->budget.received(size);
    counters.unauthenticatedBytesIn += size;
    ++counters.unknownSources;
  }
  const std::string deviceName = device != nullptr ? device->id.str() : std::string();
  if (size > datagram.size()) {
    ++counters.deviceMalformed;
    emit(EventType::MalformedPacket, deviceName, peer, "coap.datagram", "5.13-1", "drop",
         fmt::format("CoAP datagram of more than {} bytes dropped", sizeof buffer));
    return;
  }
  auto parsed = coap::parse(datagram);
  if (!parsed) {
    ++counters.deviceMalformed;
    emit(EventType::MalformedPacket, deviceName, peer, "coap.message", "5.13-1", "drop",
         fmt::format("malformed CoAP datagram dropped: {}", coap::describe(parsed.error())));
    return;
  }
  const coap::Message& m = *parsed;
  if (m.type == coap::Type::Acknowledgement || m.type == coap::Type::Reset) {
    return; // we send no confirmable messages from here: nothing to match
  }
  if (!m.isRequest()) {
    // A CoAP ping (empty CON) or a stray response: a reset says we do not process it.
    send(fd, from, fromLen, coap::resetFor(m), budget);
    return;
  }
  if (device == nullptr) {
    emit(EventType::AccessDenied, "", peer, "coap.source", "5.5-4", "refuse",
         "CoAP request from an address that is no enrolled device refused");
    send(fd, from, fromLen, coap::refusalFor(m, coap::codes::kForbidden, "not an enrolled device"),
         budget);
    return;
  }
  // A repeated confirmable request gets the answer the first one got (or nothing while it waits).
  const auto key = std::make_pair(peer, m.messageId);
  if (m.type == coap::Type::Confirmable) {
    pruneRecent(now);
    if (auto it = recent.find(key); it != recent.end()) {
      send(fd, from, fromLen, it->second.reply, nullptr);
      return;
    }
  }
  auto reply = [&](Bytes bytes) {
    if (m.type == coap::Type::Confirmable) {
      remember(key, bytes, now);
    }
    send(fd, from, fromLen, bytes, nullptr);
  };
  auto answer = [&](uint8_t code, std::string_view reason) {
    reply(coap::refusalFor(m, code, reason));
  };
  if (hooks.quarantined && hooks.quarantined(device->id)) {
    ++counters.pushesDenied;
    emit(EventType::AccessDenied, deviceName, peer, "quarantine", "5.3-15", "refuse",
         "CoAP push from a quarantined device refused");
    answer(coap::codes::kServiceUnavailable, "device is quarantined");
    return;
  }
  coap::Limits limits;
  limits.maxPayloadBytes = device->coapRules.maxPayloadBytes;
  auto v = coap::validateRequest(m, limits);
  if (!v) {
    ++counters.deviceMalformed;
    emit(EventType::MalformedPacket, deviceName, peer, v.error().rule, "5.13-1", "refuse",
         fmt::format("CoAP push refused with {}: {}", codeText(v.error().code), v.error().reason));
    answer(v.error().code, v.error().reason);
    return;
  }
  if (v->block1 || v->block2) {
    ++counters.pushesDenied;
    answer(coap::codes::kRequestEntityTooLarge, "a reading fits in one datagram");
    return;
  }
  policy::CoapFacts facts;
  facts.method = static_cast<policy::CoapMethod>(v->method);
  facts.path = v->path;
  facts.payloadBytes = m.payload.size();
  facts.contentFormat = v->contentFormat;
  const policy::CoapPush* push = nullptr;
  const auto decision = policy::evaluateCoapPush(*device, facts, &push);
  if (!decision.allowed()) {
    // A body in a format the device does not take is bad input, like validation's refusals.
    const bool malformed = decision.why == policy::Reason::CoapContentFormat;
    ++(malformed ? counters.deviceMalformed : counters.pushesDenied);
    const bool method = v->method != coap::codes::kPost && v->method != coap::codes::kPut;
    const uint8_t code = method ? coap::codes::kMethodNotAllowed : codeOfDenial(decision.why);
    emit(malformed ? EventType::MalformedPacket : EventType::AccessDenied, deviceName, peer,
         decision.rule, std::string(decision.provision), "refuse",
         fmt::format("CoAP push to {} refused with {}: {}", v->path, codeText(code),
                     decision.reason));
    answer(code, decision.reason);
    return;
  }
  const std::string topic = policy::coapPushTopic(*device, *push, v->path);
  // A path segment of '+' or '#' (or one holding them) would put a wildcard into the topic name:
  // no broker takes that as a PUBLISH, and it is the request's fault, not the upstream's.
  if (const auto bad = policy::validateTopicName(topic)) {
    ++counters.pushesBadTopic;
    emit(EventType::MalformedPacket, deviceName, peer, "coap.push.topic", "5.13-1", "refuse",
         fmt::format("CoAP push to {} refused with 4.00: the topic it maps to is not a valid MQTT "
                     "topic name ({}, {})",
                     v->path, policy::describe(*bad), policy::clause(*bad)));
    answer(coap::codes::kBadRequest,
           fmt::format("not a valid MQTT topic name: {}", policy::describe(*bad)));
    return;
  }
  // The device's [mqtt.rate] holds for its readings whichever protocol carries them (5.10-1):
  // beyond it a push is 4.29 with the seconds until the next one may come (RFC 8516).
  if (const auto limited = charge(*device, policies, m.payload.size(), now)) {
    ++counters.pushesRateLimited;
    // Max-Age: about when the budget has room for one more reading like this one.
    const auto& rate = device->mqttRules.rate;
    const double seconds = limited->why == policy::Reason::ByteRate
                               ? static_cast<double>(m.payload.size()) / rate.bytesPerSecond
                               : 1.0 / rate.messagesPerSecond;
    const auto wait = static_cast<uint32_t>(std::clamp(std::ceil(seconds), 1.0, 3600.0));
    emit(EventType::RateLimited, deviceName, peer, limited->rule, std::string(limited->provision),
         "refuse", fmt::format("CoAP push to {} refused with 4.29: {}", v->path, limited->reason));
    reply(coap::tooManyRequests(m, wait, limited->reason));
    return;
  }
  if (!hooks.publish) {
    ++counters.pushesFailed;
    answer(coap::codes::kServiceUnavailable, "no upstream broker");
    return;
  }
  const bool confirmable = m.type == coap::Type::Confirmable;
  if (confirmable) {
    remember(key, {}, now); // in flight: repeats get nothing yet
  }
  // The 2.04 goes out when the broker has the reading (PUBACK): an acknowledged reading is
  // never lost. A device that gives up before then retransmits or sends the next reading.
  Bytes changed = coap::refusalFor(m, coap::code(2, 4), "");
  const sockaddr_storage to = from;
  auto done = [this, fd, to, fromLen, key, changed, confirmable](bool ok) {
    if (!ok || !confirmable) {
      return;
    }
    if (auto it = recent.find(key); it != recent.end()) {
      it->second.reply = changed;
    }
    send(fd, to, fromLen, changed, nullptr);
  };
  const auto published = hooks.publish(*device, topic, m.payload, push->qos, done);
  if (!published) {
    ++counters.pushesFailed;
    recent.erase(key);
    emit(EventType::UpstreamUnavailable, deviceName, peer, "upstream", "5.9-1", "refuse",
         fmt::format("CoAP push to {} not published: {}", v->path, published.error()));
    answer(coap::codes::kServiceUnavailable, published.error());
    return;
  }
  ++counters.pushesPublished;
}

} // namespace iotgw::coap
