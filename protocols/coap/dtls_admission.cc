// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/coap/dtls_admission.h"

#include <sys/socket.h>

#include <algorithm>

namespace iotgw::coap::dtls {

namespace {
constexpr size_t kPortOffset = 17;
} // namespace

PeerKey PeerKey::v4(const std::array<uint8_t, 4>& address, uint16_t port) {
  PeerKey k;
  k.bytes[0] = 4;
  std::copy(address.begin(), address.end(), k.bytes.begin() + 1);
  k.bytes[kPortOffset] = static_cast<uint8_t>(port >> 8);
  k.bytes[kPortOffset + 1] = static_cast<uint8_t>(port);
  return k;
}

PeerKey PeerKey::v6(const std::array<uint8_t, 16>& address, uint16_t port) {
  PeerKey k;
  k.bytes[0] = 6;
  std::copy(address.begin(), address.end(), k.bytes.begin() + 1);
  k.bytes[kPortOffset] = static_cast<uint8_t>(port >> 8);
  k.bytes[kPortOffset + 1] = static_cast<uint8_t>(port);
  return k;
}

PeerKey PeerKey::of(const policy::IpAddress& address, uint16_t port) {
  if (address.family == AF_INET6) {
    return v6(address.bytes, port);
  }
  std::array<uint8_t, 4> a;
  std::copy_n(address.bytes.begin(), a.size(), a.begin());
  return v4(a, port);
}

bool PeerKey::sameAddress(const PeerKey& other) const {
  return std::equal(bytes.begin(), bytes.begin() + kPortOffset, other.bytes.begin());
}

size_t PeerKeyHash::operator()(const PeerKey& k) const noexcept {
  // FNV-1a: the keys are short and the table small; the port spreads peers behind one address.
  uint64_t h = 1469598103934665603ULL;
  for (uint8_t b : k.bytes) {
    h = (h ^ b) * 1099511628211ULL;
  }
  return static_cast<size_t>(h);
}

Admission::Admission(Settings settings) : settings_(settings) {
  settings_.maxPending = std::max<size_t>(settings_.maxPending, 1);
  settings_.maxPendingPerAddress =
      std::clamp<size_t>(settings_.maxPendingPerAddress, 1, settings_.maxPending);
}

Admission::State Admission::state(const PeerKey& peer, Clock::time_point now) const {
  const auto it = entries_.find(peer);
  if (it == entries_.end()) {
    return State::Unknown;
  }
  if (it->second.state == State::Pending && now >= it->second.deadline) {
    return State::Unknown;
  }
  return it->second.state;
}

Admission::State Admission::touch(const PeerKey& peer, Clock::time_point now) {
  const auto it = entries_.find(peer);
  if (it == entries_.end()) {
    return State::Unknown;
  }
  if (it->second.state == State::Established) {
    it->second.heard = now;
    return State::Established;
  }
  return now >= it->second.deadline ? State::Unknown : State::Pending;
}

std::optional<Admission::Clock::time_point> Admission::lastHeard(const PeerKey& peer) const {
  const auto it = entries_.find(peer);
  if (it == entries_.end() || it->second.state != State::Established) {
    return std::nullopt;
  }
  return it->second.heard;
}

void Admission::dropPending(std::unordered_map<PeerKey, Entry, PeerKeyHash>::iterator it,
                            std::vector<Ended>* ended, bool expired) {
  if (ended != nullptr) {
    ended->push_back(Ended{it->first, it->second.tag, expired});
  }
  order_.erase(it->second.order);
  entries_.erase(it);
}

void Admission::expire(Clock::time_point now, std::vector<Ended>& ended) {
  // One lifetime for all: the oldest entry expires first.
  while (!order_.empty()) {
    auto it = entries_.find(order_.front());
    if (now < it->second.deadline) {
      break;
    }
    dropPending(it, &ended, true);
  }
}

void Admission::admit(const PeerKey& peer, int tag, Clock::time_point now,
                      std::vector<Ended>& ended) {
  expire(now, ended);
  if (entries_.contains(peer)) {
    return; // a retransmitted ClientHello, or a renegotiation: nothing changes
  }
  size_t sameAddress = 0;
  auto oldestOfAddress = order_.end();
  for (auto it = order_.begin(); it != order_.end(); ++it) {
    if (it->sameAddress(peer)) {
      if (sameAddress++ == 0) {
        oldestOfAddress = it;
      }
    }
  }
  if (sameAddress >= settings_.maxPendingPerAddress) {
    dropPending(entries_.find(*oldestOfAddress), &ended, false);
  } else if (order_.size() >= settings_.maxPending) {
    dropPending(entries_.find(order_.front()), &ended, false);
  }
  order_.push_back(peer);
  entries_.emplace(
      peer, Entry{State::Pending, now + settings_.pendingLifetime, tag, std::prev(order_.end())});
}

void Admission::established(const PeerKey& peer, Clock::time_point now) {
  auto it = entries_.find(peer);
  if (it == entries_.end()) {
    // A session the gate did not admit cannot exist; mirror it anyway rather than cut it off.
    entries_.emplace(peer, Entry{State::Established, {}, 0, order_.end(), now});
    return;
  }
  if (it->second.state == State::Pending) {
    order_.erase(it->second.order);
    it->second.state = State::Established;
    it->second.order = order_.end();
    it->second.heard = now;
  }
}

void Admission::closed(const PeerKey& peer) {
  auto it = entries_.find(peer);
  if (it == entries_.end()) {
    return;
  }
  if (it->second.state == State::Pending) {
    dropPending(it, nullptr, false);
  } else {
    entries_.erase(it);
  }
}

} // namespace iotgw::coap::dtls
