// SPDX-License-Identifier: GPL-3.0-or-later
#include "policy/rate_limit.h"

#include <algorithm>

namespace iotgw::policy {

bool AuthThrottle::lockedOut(const std::string& source, Clock::time_point now) const {
  const auto it = entries_.find(source);
  return it != entries_.end() && now < it->second.lockedUntil;
}

bool AuthThrottle::recordFailure(const std::string& source, Clock::time_point now) {
  auto it = entries_.find(source);
  if (it == entries_.end()) {
    if (entries_.size() >= s_.maxTrackedSources && !lru_.empty()) {
      entries_.erase(lru_.back());
      lru_.pop_back();
    }
    lru_.push_front(source);
    it = entries_.emplace(source, Entry{}).first;
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

void AuthThrottle::recordSuccess(const std::string& source) {
  const auto it = entries_.find(source);
  if (it != entries_.end()) {
    lru_.erase(it->second.lru);
    entries_.erase(it);
  }
}

} // namespace iotgw::policy
