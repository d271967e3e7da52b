// SPDX-License-Identifier: GPL-3.0-or-later
#include <gtest/gtest.h>

#include "protocols/io/admission.h"

using namespace iotgw::io;
using namespace std::chrono_literals;

namespace {

AdmissionLimits small() {
  AdmissionLimits l;
  l.maxConnections = 4;
  l.maxConnectionsPerSource = 3;
  l.maxHandshakes = 2;
  l.maxHandshakesPerSource = 2;
  l.maxUnauthenticatedBytes = 100;
  l.maxChecks = 4;
  l.maxChecksPerSource = 2;
  return l;
}

const auto t0 = Admission::Clock::time_point{} + 1000s;

} // namespace

TEST(Admission, PerSourceLimitsRefuseAndNeverEvict) {
  Admission a(small());
  for (Admission::Id id = 1; id <= 3; ++id) {
    EXPECT_EQ(a.admit(id, "10.0.0.1", false, t0).refusedBy, nullptr);
  }
  const auto v = a.admit(4, "10.0.0.1", false, t0);
  EXPECT_STREQ(v.refusedBy, "limits.max_connections_per_source");
  EXPECT_TRUE(v.evict.empty());
  a.closed(1);
  EXPECT_EQ(a.admit(5, "10.0.0.1", false, t0).refusedBy, nullptr);
}

TEST(Admission, AFullTableClosesTheOldestConnectionStillLoggingIn) {
  Admission a(small());
  ASSERT_EQ(a.admit(1, "10.0.0.1", false, t0).refusedBy, nullptr);
  ASSERT_EQ(a.admit(2, "10.0.0.2", false, t0 + 1s).refusedBy, nullptr);
  ASSERT_EQ(a.admit(3, "10.0.0.3", false, t0 + 2s).refusedBy, nullptr);
  ASSERT_EQ(a.admit(4, "10.0.0.4", false, t0 + 3s).refusedBy, nullptr);
  a.authenticated(1);                  // logged in: never closed to make room
  ASSERT_TRUE(a.startCheck(2, false)); // its password is being checked: neither
  const auto v = a.admit(5, "10.0.0.5", false, t0 + 4s);
  EXPECT_EQ(v.refusedBy, nullptr);
  EXPECT_EQ(v.evict, (std::vector<Admission::Id>{3}));
  a.closed(3);
  // Nothing left to give up: refused.
  a.authenticated(4);
  a.authenticated(5);
  EXPECT_STREQ(a.admit(6, "10.0.0.6", false, t0 + 5s).refusedBy, "limits.max_connections");
}

TEST(Admission, HandshakesSilentOrPastTheirGraceMakeRoom) {
  AdmissionLimits l = small();
  l.maxConnections = 100;
  Admission a(l);
  ASSERT_EQ(a.admit(1, "10.0.0.1", true, t0).refusedBy, nullptr);
  ASSERT_EQ(a.admit(2, "10.0.0.2", true, t0).refusedBy, nullptr);
  a.sawBytes(1);
  a.sawBytes(2);
  // Both have sent something and are younger than the grace: a new one is refused ...
  EXPECT_STREQ(a.admit(3, "10.0.0.3", true, t0 + 500ms).refusedBy, "limits.max_handshakes");
  // ... but one that has dragged on past it goes, however many bytes it sent.
  const auto v = a.admit(4, "10.0.0.3", true, t0 + 1500ms);
  EXPECT_EQ(v.refusedBy, nullptr);
  ASSERT_EQ(v.evict.size(), 1u);
  a.closed(v.evict[0]);
  // A silent one goes at once, and past the first-byte deadline on its own.
  ASSERT_EQ(a.admit(5, "10.0.0.5", false, t0 + 1500ms).refusedBy, nullptr);
  EXPECT_TRUE(a.silentHandshakes(t0 + 2s).empty());
  a.handshakeEnded(4);
  ASSERT_EQ(a.admit(6, "10.0.0.6", true, t0 + 2s).refusedBy, nullptr);
  EXPECT_EQ(a.silentHandshakes(t0 + 5s), (std::vector<Admission::Id>{6}));
  EXPECT_EQ(a.handshakes(), 2u);
}

TEST(Admission, TheByteBudgetClosesTheSlowestSendersFirst) {
  Admission a(small());
  for (Admission::Id id = 1; id <= 3; ++id) {
    ASSERT_EQ(a.admit(id, "10.0.0." + std::to_string(id), false, t0).refusedBy, nullptr);
  }
  EXPECT_TRUE(a.held(1, 40, t0).empty());
  EXPECT_TRUE(a.held(2, 40, t0 + 1s).empty());
  ASSERT_TRUE(a.startCheck(2, false)); // waiting behind its CONNECT's check: never closed for it
  EXPECT_TRUE(a.held(1, 50, t0 + 2s).empty()); // its partial packet began at t0 and grew
  EXPECT_EQ(a.unauthenticatedBytes(), 90u);
  const auto close = a.held(3, 30, t0 + 3s);
  EXPECT_EQ(close, (std::vector<Admission::Id>{1})); // the oldest partial packet
  a.closed(1);
  EXPECT_EQ(a.unauthenticatedBytes(), 70u);
  a.authenticated(3);
  EXPECT_EQ(a.unauthenticatedBytes(), 40u);
}

TEST(Admission, PasswordChecksLeaveRoomForKnownSources) {
  AdmissionLimits l = small();
  l.maxConnections = 100;
  l.maxConnectionsPerSource = 100;
  Admission a(l);
  for (Admission::Id id = 1; id <= 10; ++id) {
    ASSERT_EQ(a.admit(id, "10.0.0." + std::to_string(id), false, t0).refusedBy, nullptr);
  }
  // Unknown sources get three of the four.
  EXPECT_TRUE(a.startCheck(1, false));
  EXPECT_TRUE(a.startCheck(2, false));
  EXPECT_TRUE(a.startCheck(3, false));
  EXPECT_FALSE(a.startCheck(4, false));
  EXPECT_TRUE(a.startCheck(5, true)); // a source that logged in before
  EXPECT_FALSE(a.startCheck(6, true));
  EXPECT_EQ(a.checks(), 4u);
  // A check outlives its connection until it completes.
  a.closed(1);
  EXPECT_EQ(a.checks(), 4u);
  a.endCheck(1);
  EXPECT_EQ(a.checks(), 3u);
  EXPECT_TRUE(a.startCheck(7, true));
  // Per source.
  ASSERT_EQ(a.admit(20, "10.0.0.99", false, t0).refusedBy, nullptr);
  ASSERT_EQ(a.admit(21, "10.0.0.99", false, t0).refusedBy, nullptr);
  ASSERT_EQ(a.admit(22, "10.0.0.99", false, t0).refusedBy, nullptr);
  a.endCheck(2);
  a.endCheck(3);
  a.endCheck(5);
  EXPECT_TRUE(a.startCheck(20, false));
  EXPECT_TRUE(a.startCheck(21, false));
  EXPECT_FALSE(a.startCheck(22, false));
}
