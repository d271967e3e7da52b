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

TEST(AuthThrottle, LocksOutAfterFailuresAndDoubles) {
  ThrottleSettings s;
  s.failuresBeforeLockout = 3;
  s.failureWindow = 60s;
  s.lockout = 10s;
  AuthThrottle t(s);
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

TEST(AuthThrottle, FailuresOutsideWindowDoNotAccumulate) {
  ThrottleSettings s;
  s.failuresBeforeLockout = 2;
  s.failureWindow = 10s;
  AuthThrottle t(s);
  const auto t0 = Clock::time_point{} + 1000s;
  EXPECT_FALSE(t.recordFailure("a", t0));
  EXPECT_FALSE(t.recordFailure("a", t0 + 11s));
  EXPECT_TRUE(t.recordFailure("a", t0 + 12s));
}

TEST(AuthThrottle, SuccessClearsAndMemoryIsBounded) {
  ThrottleSettings s;
  s.maxTrackedSources = 100;
  AuthThrottle t(s);
  const auto t0 = Clock::time_point{} + 1000s;
  for (int i = 0; i < 10000; ++i) {
    t.recordFailure("src-" + std::to_string(i), t0);
  }
  EXPECT_EQ(t.tracked(), 100u);
  t.recordFailure("x", t0);
  t.recordSuccess("x");
  EXPECT_EQ(t.tracked(), 99u);
}
