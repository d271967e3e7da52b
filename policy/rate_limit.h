// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Time-based limits with injected time, so tests can step the clock.

#include <chrono>
#include <cstddef>
#include <list>
#include <string>
#include <unordered_map>
#include <vector>

namespace iotgw::policy {

using Clock = std::chrono::steady_clock;

class TokenBucket {
public:
  TokenBucket() = default; // unlimited
  TokenBucket(double ratePerSecond, double burst, Clock::time_point now)
      : rate_(ratePerSecond), burst_(burst), tokens_(burst), last_(now) {}

  [[nodiscard]] bool unlimited() const { return rate_ <= 0; }

  // Takes `cost` tokens if available.
  [[nodiscard]] bool take(double cost, Clock::time_point now) {
    if (unlimited()) {
      return true;
    }
    refill(now);
    if (tokens_ < cost) {
      return false;
    }
    tokens_ -= cost;
    return true;
  }

private:
  void refill(Clock::time_point now) {
    if (now > last_) {
      const double dt = std::chrono::duration<double>(now - last_).count();
      tokens_ = std::min(burst_, tokens_ + dt * rate_);
      last_ = now;
    }
  }

  double rate_ = 0;
  double burst_ = 0;
  double tokens_ = 0;
  Clock::time_point last_{};
};

// A device's message and byte budgets (its policy's [mqtt.rate]); both must allow a message.
class MessageRateLimiter {
public:
  MessageRateLimiter() = default; // unlimited
  MessageRateLimiter(double messagesPerSecond, double messageBurst, double bytesPerSecond,
                     double byteBurst, Clock::time_point now)
      : messages_(messagesPerSecond, messageBurst, now), bytes_(bytesPerSecond, byteBurst, now) {}

  enum class Result { Allowed, TooManyMessages, TooManyBytes };

  // Charges one message of `size` bytes. A refused message costs nothing, so a device that
  // slows down recovers at once.
  [[nodiscard]] Result take(size_t size, Clock::time_point now) {
    TokenBucket messagesBefore = messages_;
    if (!messages_.take(1, now)) {
      return Result::TooManyMessages;
    }
    if (!bytes_.take(static_cast<double>(size), now)) {
      messages_ = messagesBefore;
      return Result::TooManyBytes;
    }
    return Result::Allowed;
  }

private:
  TokenBucket messages_;
  TokenBucket bytes_;
};

struct ThrottleSettings {
  unsigned failuresBeforeLockout = 5;
  std::chrono::seconds failureWindow{60};
  std::chrono::seconds lockout{300};
  size_t maxTrackedSources = 4096;
};

// One kind of key (source addresses, or user names) and its failed logins: after N failures
// within the window the key is locked out for the lockout time; each further lockout doubles it
// (up to 16x). Memory is bounded: past maxTrackedSources the least recently seen key that is not
// locked out is forgotten (a flood of new keys must not wash a lockout away).
class FailureTable {
public:
  explicit FailureTable(ThrottleSettings s = {}) : s_(s) {}

  [[nodiscard]] bool lockedOut(const std::string& key, Clock::time_point now) const;
  // Records a failure; returns true if this failure started a lockout.
  bool recordFailure(const std::string& key, Clock::time_point now);
  // Forgets the failures counted towards the next lockout; a lockout in force, and how often the
  // key was locked out before, stay.
  void forgive(const std::string& key);
  [[nodiscard]] size_t tracked() const { return entries_.size(); }

private:
  struct Entry {
    unsigned failures = 0;
    Clock::time_point windowStart{};
    Clock::time_point lockedUntil{};
    unsigned lockouts = 0;
    std::list<std::string>::iterator lru;
  };
  void makeRoom(Clock::time_point now);

  ThrottleSettings s_;
  std::unordered_map<std::string, Entry> entries_;
  std::list<std::string> lru_; // front: most recently seen
};

// Failed-authentication throttling (EN 303 645 5.1-5), counted per source and per user name.
// A source that fails too often is locked out whatever user names it tries; a user name guessed
// at too often (from any number of sources) is locked out too — except from the sources it has
// logged in from before, so that guesses from elsewhere cannot lock the real device out. A
// successful login forgives only its own user name's failures, never the source's: one valid
// login cannot buy another round of guesses at a different device's password.
class AuthThrottle {
public:
  // User names longer than this are never enrolled (the policy parser's bound): they are counted
  // against their source only, and take no room in the tables.
  static constexpr size_t kMaxUsernameBytes = 256;

  explicit AuthThrottle(ThrottleSettings s = {}) : s_(s), sources_(s), users_(s) {}

  [[nodiscard]] bool sourceLockedOut(const std::string& source, Clock::time_point now) const {
    return sources_.lockedOut(source, now);
  }
  // Whether `username` is locked out for a login from `source`.
  [[nodiscard]] bool userLockedOut(const std::string& username, const std::string& source,
                                   Clock::time_point now) const;
  struct Lockouts {
    bool source = false;
    bool user = false;
  };
  // Records a failed login from `source`, naming `username` when it named one (empty: none).
  // Says which lockouts this failure started.
  Lockouts recordFailure(const std::string& source, const std::string& username,
                         Clock::time_point now);
  void recordSuccess(const std::string& source, const std::string& username);
  // Whether some login from `source` has succeeded (recently enough to be remembered).
  [[nodiscard]] bool knownSource(const std::string& source) const {
    return known_.contains(source);
  }
  [[nodiscard]] size_t trackedSources() const { return sources_.tracked(); }
  [[nodiscard]] size_t trackedUsers() const { return users_.tracked(); }

private:
  static constexpr size_t kKnownNamesPerSource = 4;

  ThrottleSettings s_;
  FailureTable sources_;
  FailureTable users_;
  // Sources that logged in, and as whom (bounded: maxTrackedSources sources, a few names each).
  std::unordered_map<std::string, std::vector<std::string>> known_;
  std::list<std::string> knownOrder_; // front: most recent
};

} // namespace iotgw::policy
