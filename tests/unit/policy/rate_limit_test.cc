// SPDX-License-Identifier: GPL-3.0-or-later
#include <gtest/gtest.h>

#include "policy/rate_limit.h"

using namespace iotgw::policy;
using namespace std::chrono_literals;

TEST(TokenBucket, AllowsBurstThenRate) {
  const auto t0 = Clock::time_point{} + 100s;
  TokenBucket b(2.0, 5.0, t0);
  for (int i = 0; i < 5; ++i) {
    EXPECT_TRUE(b.take(1, t0)) << i;
  }
  EXPECT_FALSE(b.take(1, t0));
  EXPECT_FALSE(b.take(1, t0 + 400ms));
  EXPECT_TRUE(b.take(1, t0 + 500ms)); // 2/s refills one token in 500 ms
  EXPECT_FALSE(b.take(1, t0 + 500ms));
  EXPECT_TRUE(b.take(5, t0 + 1h)); // capped at the burst
  EXPECT_FALSE(b.take(1, t0 + 1h));
}

TEST(TokenBucket, ZeroRateIsUnlimited) {
  TokenBucket b;
  for (int i = 0; i < 1000; ++i) {
    EXPECT_TRUE(b.take(1e6, Clock::time_point{}));
  }
}

TEST(FailureTable, LocksOutAfterFailuresAndDoubles) {
  ThrottleSettings s;
  s.failuresBeforeLockout = 3;
  s.failureWindow = 60s;
  s.lockout = 10s;
  FailureTable t(s);
  const auto t0 = Clock::time_point{} + 1000s;
  EXPECT_FALSE(t.recordFailure("10.0.0.1", t0));
  EXPECT_FALSE(t.recordFailure("10.0.0.1", t0 + 1s));
  EXPECT_FALSE(t.lockedOut("10.0.0.1", t0 + 1s));
  EXPECT_TRUE(t.recordFailure("10.0.0.1", t0 + 2s));
  EXPECT_TRUE(t.lockedOut("10.0.0.1", t0 + 2s));
  EXPECT_TRUE(t.lockedOut("10.0.0.1", t0 + 11s));
  EXPECT_FALSE(t.lockedOut("10.0.0.1", t0 + 12s));
  EXPECT_FALSE(t.lockedOut("10.0.0.2", t0 + 2s)); // per source
  // Second lockout lasts twice as long.
  for (int i = 0; i < 3; ++i) {
    t.recordFailure("10.0.0.1", t0 + 20s);
  }
  EXPECT_TRUE(t.lockedOut("10.0.0.1", t0 + 39s));
  EXPECT_FALSE(t.lockedOut("10.0.0.1", t0 + 40s));
}

TEST(FailureTable, FailuresOutsideWindowDoNotAccumulate) {
  ThrottleSettings s;
  s.failuresBeforeLockout = 2;
  s.failureWindow = 10s;
  FailureTable t(s);
  const auto t0 = Clock::time_point{} + 1000s;
  EXPECT_FALSE(t.recordFailure("a", t0));
  EXPECT_FALSE(t.recordFailure("a", t0 + 11s));
  EXPECT_TRUE(t.recordFailure("a", t0 + 12s));
}

TEST(FailureTable, MemoryIsBoundedAndLockoutsOutliveFloods) {
  ThrottleSettings s;
  s.maxTrackedSources = 100;
  s.failuresBeforeLockout = 2;
  FailureTable t(s);
  const auto t0 = Clock::time_point{} + 1000s;
  t.recordFailure("victim", t0);
  EXPECT_TRUE(t.recordFailure("victim", t0));
  for (int i = 0; i < 10000; ++i) {
    t.recordFailure("src-" + std::to_string(i), t0);
  }
  EXPECT_EQ(t.tracked(), 100u);
  EXPECT_TRUE(t.lockedOut("victim", t0 + 1s)); // ten thousand new keys did not wash it away
  // Forgiving clears the count towards the next lockout, not the lockout in force.
  t.forgive("victim");
  EXPECT_TRUE(t.lockedOut("victim", t0 + 1s));
}

TEST(AuthThrottle, SuccessClearsOnlyItsOwnUserName) {
  ThrottleSettings s;
  s.failuresBeforeLockout = 3;
  s.lockout = 10s;
  AuthThrottle t(s);
  const auto t0 = Clock::time_point{} + 1000s;
  // Guesses at one device's password between valid logins of another, from one source.
  EXPECT_FALSE(t.recordFailure("10.0.0.1", "victim", t0).source);
  t.recordSuccess("10.0.0.1", "other");
  EXPECT_FALSE(t.recordFailure("10.0.0.1", "victim", t0 + 1s).source);
  t.recordSuccess("10.0.0.1", "other");
  const auto started = t.recordFailure("10.0.0.1", "victim", t0 + 2s);
  EXPECT_TRUE(started.source);
  EXPECT_TRUE(started.user);
  EXPECT_TRUE(t.sourceLockedOut("10.0.0.1", t0 + 3s));
  EXPECT_TRUE(t.userLockedOut("victim", "10.0.0.9", t0 + 3s));
  EXPECT_FALSE(t.userLockedOut("other", "10.0.0.9", t0 + 3s));
  EXPECT_FALSE(t.sourceLockedOut("10.0.0.1", t0 + 13s));
}

TEST(AuthThrottle, UserNameGuessedFromManySources) {
  ThrottleSettings s;
  s.failuresBeforeLockout = 3;
  AuthThrottle t(s);
  const auto t0 = Clock::time_point{} + 1000s;
  t.recordSuccess("10.0.0.50", "victim"); // where the device itself logs in from
  EXPECT_FALSE(t.recordFailure("10.0.0.1", "victim", t0).user);
  EXPECT_FALSE(t.recordFailure("10.0.0.2", "victim", t0).user);
  const auto started = t.recordFailure("10.0.0.3", "victim", t0);
  EXPECT_TRUE(started.user);
  EXPECT_FALSE(started.source);
  EXPECT_FALSE(t.sourceLockedOut("10.0.0.3", t0));
  EXPECT_TRUE(t.userLockedOut("victim", "10.0.0.4", t0));
  // The device's own source still gets in, and its login does not lift the lockout for others.
  EXPECT_FALSE(t.userLockedOut("victim", "10.0.0.50", t0));
  t.recordSuccess("10.0.0.50", "victim");
  EXPECT_TRUE(t.userLockedOut("victim", "10.0.0.4", t0));
  EXPECT_TRUE(t.knownSource("10.0.0.50"));
  EXPECT_FALSE(t.knownSource("10.0.0.4"));
  // A failure naming no user name, or an impossibly long one, counts against the source only.
  EXPECT_FALSE(t.recordFailure("10.0.0.4", "", t0).user);
  EXPECT_FALSE(t.recordFailure("10.0.0.4", std::string(5000, 'x'), t0).user);
  EXPECT_EQ(t.trackedUsers(), 1u);
}
