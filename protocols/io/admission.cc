// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/io/admission.h"

#include <algorithm>

namespace iotgw::io {

void Admission::drop(Counts& counts, const std::string& key) {
  if (auto it = counts.find(key); it != counts.end() && --it->second == 0) {
    counts.erase(it);
  }
}

template <typename Pred> std::optional<Admission::Id> Admission::oldest(Pred&& candidate) const {
  std::optional<Id> found;
  Clock::time_point at = Clock::time_point::max();
  for (const auto& [id, e] : entries_) {
    if (candidate(e) && e.accepted < at) {
      found = id;
      at = e.accepted;
    }
  }
  return found;
}

Admission::Verdict Admission::admit(Id id, const std::string& source, bool tls,
                                    Clock::time_point now) {
  Verdict v;
  const auto count = [](const Counts& c, const std::string& key) {
    const auto it = c.find(key);
    return it != c.end() ? it->second : 0u;
  };
  // A source at its own limits is refused: it may not make room for itself at others' cost.
  if (count(perSource_, source) >= limits_.maxConnectionsPerSource) {
    v.refusedBy = "limits.max_connections_per_source";
    return v;
  }
  if (tls && count(handshakesPerSource_, source) >= limits_.maxHandshakesPerSource) {
    v.refusedBy = "limits.max_handshakes_per_source";
    return v;
  }
  // Full tables: the oldest connection still waiting for its login goes (never one whose
  // password is being checked), for handshakes the oldest that has sent nothing or has had more
  // than its grace — a real handshake is over in milliseconds.
  if (entries_.size() >= limits_.maxConnections) {
    const auto victim = oldest([](const Entry& e) { return !e.authenticated && !e.checking; });
    if (!victim) {
      v.refusedBy = "limits.max_connections";
      return v;
    }
    v.evict.push_back(*victim);
  }
  const bool freesHandshake = !v.evict.empty() && entries_.at(v.evict.front()).handshaking;
  if (tls && handshakes_ - (freesHandshake ? 1 : 0) >= limits_.maxHandshakes) {
    const Entry* taken = v.evict.empty() ? nullptr : &entries_.at(v.evict.front());
    const auto victim = oldest([&](const Entry& e) {
      return &e != taken && e.handshaking &&
             (!e.gotBytes || now - e.accepted >= limits_.handshakeGrace);
    });
    if (!victim) {
      v.refusedBy = "limits.max_handshakes";
      v.evict.clear();
      return v;
    }
    v.evict.push_back(*victim);
  }
  Entry e;
  e.source = source;
  e.accepted = now;
  e.handshaking = tls;
  entries_.emplace(id, std::move(e));
  ++perSource_[source];
  if (tls) {
    ++handshakes_;
    ++handshakesPerSource_[source];
  }
  return v;
}

void Admission::endHandshake(Entry& e) {
  if (e.handshaking) {
    e.handshaking = false;
    --handshakes_;
    drop(handshakesPerSource_, e.source);
  }
}

void Admission::handshakeEnded(Id id) {
  if (auto it = entries_.find(id); it != entries_.end()) {
    endHandshake(it->second);
  }
}

void Admission::sawBytes(Id id) {
  if (auto it = entries_.find(id); it != entries_.end()) {
    it->second.gotBytes = true;
  }
}

void Admission::authenticated(Id id) {
  if (auto it = entries_.find(id); it != entries_.end()) {
    Entry& e = it->second;
    e.authenticated = true;
    heldBytes_ -= e.held;
    e.held = 0;
  }
}

void Admission::closed(Id id) {
  const auto it = entries_.find(id);
  if (it == entries_.end()) {
    return;
  }
  Entry& e = it->second;
  endHandshake(e);
  heldBytes_ -= e.held;
  drop(perSource_, e.source);
  entries_.erase(it); // a check in progress stays counted until endCheck
}

std::vector<Admission::Id> Admission::held(Id id, size_t bytes, Clock::time_point now) {
  std::vector<Id> close;
  const auto it = entries_.find(id);
  if (it == entries_.end() || it->second.authenticated) {
    return close;
  }
  Entry& e = it->second;
  if (bytes > 0 && e.held == 0) {
    e.partialSince = now;
  }
  heldBytes_ = heldBytes_ - e.held + bytes;
  e.held = bytes;
  while (heldBytes_ > limits_.maxUnauthenticatedBytes) {
    std::optional<Id> slowest;
    Clock::time_point since = Clock::time_point::max();
    for (const auto& [other, o] : entries_) {
      if (o.held > 0 && !o.checking && o.partialSince < since &&
          std::ranges::find(close, other) == close.end()) {
        slowest = other;
        since = o.partialSince;
      }
    }
    if (!slowest) {
      break;
    }
    close.push_back(*slowest);
    heldBytes_ -= entries_.at(*slowest).held;
    entries_.at(*slowest).held = 0;
  }
  return close;
}

bool Admission::startCheck(Id id, bool knownSource) {
  const auto it = entries_.find(id);
  if (it == entries_.end()) {
    return false;
  }
  const uint32_t reserved = limits_.maxChecks / 4;
  const uint32_t capacity = knownSource ? limits_.maxChecks : limits_.maxChecks - reserved;
  const auto fromSource = checksPerSource_.find(it->second.source);
  const uint32_t mine = fromSource != checksPerSource_.end() ? fromSource->second : 0;
  if (checks_ >= capacity || mine >= limits_.maxChecksPerSource) {
    return false;
  }
  ++checks_;
  ++checksPerSource_[it->second.source];
  checking_.emplace(id, it->second.source);
  it->second.checking = true;
  return true;
}

void Admission::endCheck(Id id) {
  const auto it = checking_.find(id);
  if (it == checking_.end()) {
    return;
  }
  --checks_;
  drop(checksPerSource_, it->second);
  checking_.erase(it);
  if (auto e = entries_.find(id); e != entries_.end()) {
    e->second.checking = false;
  }
}

std::vector<Admission::Id> Admission::silentHandshakes(Clock::time_point now) const {
  std::vector<Id> out;
  for (const auto& [id, e] : entries_) {
    if (e.handshaking && !e.gotBytes && now - e.accepted >= limits_.firstByteTimeout) {
      out.push_back(id);
    }
  }
  return out;
}

} // namespace iotgw::io
