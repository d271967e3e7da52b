// SPDX-License-Identifier: GPL-3.0-or-later
#include "policy/rate_limit.h"

#include <algorithm>

namespace iotgw::policy {

bool FailureTable::lockedOut(const std::string& key, Clock::time_point now) const {
  const auto it = entries_.find(key);
  return it != entries_.end() && now < it->second.lockedUntil;
}

bool FailureTable::recordFailure(const std::string& key, Clock::time_point now) {
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    makeRoom(now);
    lru_.push_front(key);
    it = entries_.emplace(key, Entry{}).first;
    it->second.lru = lru_.begin();
    it->second.windowStart = now;
  } else {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
  }
  Entry& e = it->second;
  if (now - e.windowStart > s_.failureWindow) {
    e.failures = 0;
    e.windowStart = now;
  }
  ++e.failures;
  if (e.failures >= s_.failuresBeforeLockout) {
    const unsigned factor = 1u << std::min(e.lockouts, 4u);
    e.lockedUntil = now + s_.lockout * factor;
    ++e.lockouts;
    e.failures = 0;
    e.windowStart = now;
    return true;
  }
  return false;
}

void FailureTable::makeRoom(Clock::time_point now) {
  if (entries_.size() < s_.maxTrackedSources || lru_.empty()) {
    return;
  }
  // The least recently seen key that is not locked out, looking at a bounded number of them; if
  // all of those are locked, the least recently seen goes after all.
  auto victim = std::prev(lru_.end());
  auto it = victim;
  for (int looked = 0; looked < 64; ++looked) {
    if (now >= entries_.at(*it).lockedUntil) {
      victim = it;
      break;
    }
    if (it == lru_.begin()) {
      break;
    }
    --it;
  }
  entries_.erase(*victim);
  lru_.erase(victim);
}

void FailureTable::forgive(const std::string& key) {
  if (const auto it = entries_.find(key); it != entries_.end()) {
    it->second.failures = 0;
  }
}

bool AuthThrottle::userLockedOut(const std::string& username, const std::string& source,
                                 Clock::time_point now) const {
  if (username.size() > kMaxUsernameBytes || !users_.lockedOut(username, now)) {
    return false;
  }
  const auto it = known_.find(source);
  return it == known_.end() || std::ranges::find(it->second, username) == it->second.end();
}

void AuthThrottle::recordSuccess(const std::string& source, const std::string& username) {
  if (username.empty() || username.size() > kMaxUsernameBytes) {
    return;
  }
  users_.forgive(username);
  auto it = known_.find(source);
  if (it == known_.end()) {
    if (known_.size() >= s_.maxTrackedSources && !knownOrder_.empty()) {
      known_.erase(knownOrder_.back());
      knownOrder_.pop_back();
    }
    it = known_.emplace(source, std::vector<std::string>{}).first;
  } else {
    knownOrder_.remove(source);
  }
  knownOrder_.push_front(source);
  auto& names = it->second;
  if (std::ranges::find(names, username) == names.end()) {
    if (names.size() >= kKnownNamesPerSource) {
      names.erase(names.begin());
    }
    names.push_back(username);
  }
}

AuthThrottle::Lockouts AuthThrottle::recordFailure(const std::string& source,
                                                   const std::string& username,
                                                   Clock::time_point now) {
  Lockouts started;
  started.source = sources_.recordFailure(source, now);
  if (!username.empty() && username.size() <= kMaxUsernameBytes) {
    started.user = users_.recordFailure(username, now);
  }
  return started;
}

} // namespace iotgw::policy
