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
    if (entries_.size() >= s_.maxTrackedSources && !lru_.empty()) {
      entries_.erase(lru_.back());
      lru_.pop_back();
    }
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

void FailureTable::clear(const std::string& key) {
  const auto it = entries_.find(key);
  if (it != entries_.end()) {
    lru_.erase(it->second.lru);
    entries_.erase(it);
  }
}

AuthThrottle::Lockouts AuthThrottle::recordFailure(const std::string& source,
                                                   const std::string& username,
                                                   Clock::time_point now) {
  Lockouts started;
  started.source = sources_.recordFailure(source, now);
  if (!username.empty()) {
    started.user = users_.recordFailure(username, now);
  }
  return started;
}

} // namespace iotgw::policy
