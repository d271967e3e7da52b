// SPDX-License-Identifier: GPL-3.0-or-later
// The proxy's clients of devices: one connected UDP socket and one protocols/coap/upstream.h
// client per device address and port, and what closing a device ends.
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <fmt/format.h>

#include "protocols/coap/proxy.h"
#include "protocols/io/socket.h"

namespace iotgw::coap {

using policy::EventType;
using namespace libcoap;

Proxy::Link* Proxy::linkFor(const policy::DevicePolicy& d) {
  const auto& address = d.addresses.front();
  const uint16_t port = d.coapRules.port;
  const PeerKey key = PeerKey::of(address, port);
  if (auto it = links.find(key); it != links.end()) {
    return it->second.get();
  }
  io::UniqueFd sock(::socket(address.family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  sockaddr_storage ss{};
  const socklen_t len = io::toSockaddr(address, port, ss);
  if (!sock.valid() || !io::wantPacketInfo(sock.get(), address.family) ||
      ::connect(sock.get(), reinterpret_cast<const sockaddr*>(&ss), len) != 0) {
    return nullptr;
  }
  coap::UpstreamSettings client;
  // Retransmit within the guard time: after 1 to 1.5 s, then twice that (RFC 7252's 2 s would
  // leave one retransmission within a 5 s guard).
  client.ackTimeout = std::chrono::milliseconds(1000);
  client.maxBodyBytes = coap::Limits{}.maxBodyBytes;
  client.budget = &bodies;
  auto link = std::make_unique<Link>(client, randomSpan);
  link->fd = std::move(sock);
  link->key = key;
  link->address = address;
  link->device = d.id.str();
  link->label = io::endpointLabel(address, port);
  link->lastUsed = Clock::now();
  const int raw = link->fd.get();
  if (reactor.add(raw, EPOLLIN, [this, key](uint32_t) { onLinkReadable(key); })) {
    return nullptr;
  }
  return links.emplace(key, std::move(link)).first->second.get();
}

void Proxy::closeLink(const PeerKey& key) {
  auto it = links.find(key);
  if (it == links.end()) {
    return;
  }
  Link& link = *it->second;
  if (link.wake) {
    wakes.erase({*link.wake, &link});
  }
  std::erase_if(pendingEvents, [&](const auto& e) { return e.first == key; });
  reactor.remove(link.fd.get());
  links.erase(it);
}

void Proxy::schedule(Link& link) {
  const auto next = link.client.nextWake();
  if (link.wake == next) {
    return;
  }
  if (link.wake) {
    wakes.erase({*link.wake, &link});
  }
  link.wake = next;
  if (next) {
    wakes.insert({*next, &link});
    armTimer(*next);
  }
}

void Proxy::onLinkReadable(const PeerKey& key) {
  auto it = links.find(key);
  if (it == links.end()) {
    return;
  }
  Link& link = *it->second;
  const auto now = Clock::now();
  coap::UpstreamOutput out;
  uint8_t buffer[2048];
  for (int i = 0; i < 64; ++i) { // bounded work per wake-up
    io::Received r;
    const ssize_t n = io::receiveWithInterface(link.fd.get(), buffer, sizeof buffer, r);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH ||
          errno == EHOSTDOWN) {
        link.client.unreachable(now, out); // ICMP: nothing listens there
        continue;
      }
      break;
    }
    // The socket is connected: the kernel gave it only datagrams from the device's address and
    // port. Where they came in is checked too: from anywhere but the device segment, someone
    // else made them.
    if (!interfaces.allows(link.fd.get(), r.ifindex, link.address, now)) {
      ++counters.wrongInterface;
      emit(EventType::AccessDenied, link.device, link.label, "device_segment.interfaces", "5.5-4",
           "drop",
           "a datagram from the device's address arrived on an interface that is not "
           "the device segment: dropped");
      continue;
    }
    if (static_cast<size_t>(n) > sizeof buffer ||
        link.client.receive(View(buffer, static_cast<size_t>(n)), now, out) ==
            coap::Upstream::Received::Malformed) {
      ++counters.badResponses;
      emit(EventType::MalformedPacket, link.device, link.label, "coap.response", "5.13-1", "drop",
           "a malformed CoAP datagram from the device dropped");
    }
  }
  link.lastUsed = now;
  apply(link, out);
  schedule(link);
  runDeferred();
  if (libcoapTouched) {
    libcoapTimers();
  }
}

void Proxy::apply(Link& link, coap::UpstreamOutput& out) {
  for (const auto& d : out.datagrams) {
    (void)::send(link.fd.get(), d.data(), d.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  }
  out.datagrams.clear();
  for (auto& e : out.events) {
    if (inLibcoap > 0) {
      // Answers reach libcoap only at the loop boundary, never from inside its callbacks.
      pendingEvents.emplace_back(link.key, std::move(e));
    } else {
      handleEvent(link, std::move(e));
    }
  }
  out.events.clear();
}

void Proxy::handleEvent(Link& link, coap::UpstreamEvent e) {
  using Kind = coap::UpstreamEvent::Kind;
  switch (e.kind) {
  case Kind::Answered:
    if (auto ex = exchanges.find(e.id); ex != exchanges.end()) {
      onAnswer(*ex->second, link, std::move(e.answer));
    } else if (e.answer.observing) {
      coap::UpstreamOutput none;
      link.client.cancel(e.id, Clock::now(), none); // nobody to relay to
    }
    break;
  case Kind::Failed:
    if (auto ex = exchanges.find(e.id); ex != exchanges.end()) {
      onFailure(*ex->second, e.failure, e.reason);
    }
    break;
  case Kind::Notified:
  case Kind::Dropped:
  case Kind::Ended:
    if (auto rel = relations.find(e.id); rel != relations.end()) {
      onNotification(*rel->second, e);
    } else if (e.kind == Kind::Notified && !e.ended) {
      coap::UpstreamOutput none;
      link.client.cancel(e.id, Clock::now(), none);
    }
    break;
  }
}

void Proxy::closeDevice(const std::string& device) {
  const std::string why = "the device was closed (quarantined, removed or given a new policy)";
  endRelationsIf([&](const Relation& r) { return r.device == device; },
                 coap::codes::kServiceUnavailable, why);
  std::vector<uint64_t> waiting;
  for (const auto& [id, ex] : exchanges) {
    if (ex->device == device && !ex->done && !ex->orphaned) {
      waiting.push_back(id);
    }
  }
  for (const uint64_t id : waiting) {
    if (auto it = exchanges.find(id); it != exchanges.end()) {
      ++counters.denied;
      fail(*it->second, coap::codes::kServiceUnavailable, why);
    }
  }
  // Nothing more is sent to the device: its link goes, with every retransmission it had due.
  std::vector<PeerKey> keys;
  for (const auto& [key, link] : links) {
    if (link->device == device) {
      keys.push_back(key);
    }
  }
  for (const auto& key : keys) {
    closeLink(key);
  }
  // The device's own DTLS sessions, where it is a client of the proxy (its certificate or its
  // address says so).
  const auto set = hooks.policies();
  const auto id = policy::DeviceId::parse(device);
  for (auto& [s, peer] : peers) {
    const policy::DevicePolicy* self = deviceOf(peer, set);
    if (self != nullptr && id && self->id == *id) {
      closeSession(s, "closed device");
    }
  }
  runDeferred();
  libcoapTimers();
}

} // namespace iotgw::coap
