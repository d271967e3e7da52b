// SPDX-License-Identifier: GPL-3.0-or-later
// The MQTT session engine with its broker: flow control of 3.1.1 clients, SUBACK after the
// broker's, persistent sessions' CONNACK, acknowledgements towards the broker, one upstream
// session per client.
#include <gtest/gtest.h>

#include "tests/unit/protocols/mqtt_session_fixture.h"

using namespace iotgw::mqtt;
using namespace iotgw::policy;
using namespace std::chrono_literals;
using iotgw::test::bytesOf;
using iotgw::test::SessionTest;

TEST_F(SessionTest, A311ClientPastTheWindowIsHeldBackNotDisconnected) {
  makeSession();
  connected();
  std::vector<Packet> burst;
  for (uint16_t id = 1; id <= 25; ++id) {
    burst.push_back(Publish{false, 1, false, "devices/thermo-01/status", id, {}, bytesOf("x")});
    if (id == 1) {
      // A retransmission of the first, while it is still on its way to the broker.
      burst.push_back(Publish{true, 1, false, "devices/thermo-01/status", 1, {}, bytesOf("x")});
    }
  }
  Effects e = send(burst);
  auto forwarded = commands<upstream::Publish>(e);
  EXPECT_EQ(forwarded.size(), 20u);
  EXPECT_FALSE(e.closeClient) << "3.1.1 has no Receive Maximum: the client waits";
  EXPECT_FALSE(session_->wantsInput());
  // The broker acknowledges one: one more goes, the rest still wait unread.
  Effects a;
  session_->upstreamAcked(forwarded[0].token, a);
  EXPECT_TRUE(session_->wantsInput());
  Effects more;
  session_->receive({}, now_, more);
  EXPECT_EQ(commands<upstream::Publish>(more).size(), 1u);
  // Acknowledge everything: all 25 reach the broker once, the duplicate never.
  size_t total = forwarded.size() + 1;
  std::vector<upstream::Publish> open(forwarded.begin() + 1, forwarded.end());
  for (const auto& p : commands<upstream::Publish>(more)) {
    open.push_back(p);
  }
  while (!open.empty()) {
    Effects ack;
    session_->upstreamAcked(open.back().token, ack);
    open.pop_back();
    Effects next;
    session_->receive({}, now_, next);
    for (const auto& p : commands<upstream::Publish>(next)) {
      open.push_back(p);
      ++total;
    }
  }
  EXPECT_EQ(total, 25u);
  EXPECT_EQ(session_->counters().publishesForwarded, 25u);
}

TEST_F(SessionTest, SubackWaitsForTheBrokerAndGrantsTheLowerQos) {
  brokerAnswers_ = false;
  makeSession();
  connected();
  Effects e =
      send({Subscribe{7,
                      {},
                      {Subscription{"devices/thermo-01/cmd/a", 2}, Subscription{"devices/#", 0},
                       Subscription{"devices/thermo-01/cmd/b", 1}}}});
  EXPECT_TRUE(replies(e).empty()) << "not subscribed until the broker says so";
  const auto subs = commands<upstream::Subscribe>(e);
  ASSERT_EQ(subs.size(), 1u);
  ASSERT_EQ(subs[0].filters.size(), 2u);
  // The broker grants QoS 1 for the first and refuses the second.
  Effects answer;
  session_->upstreamSubscribed(SubscribeResult{subs[0].token, {1, 0x80}}, answer);
  auto r = replies(answer);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(std::get<SubAck>(r[0]).packetId, 7);
  EXPECT_EQ(std::get<SubAck>(r[0]).reasonCodes, (std::vector<uint8_t>{1, 0x80, 0x80}));
  // UNSUBACK likewise.
  Effects u = send({Unsubscribe{8, {}, {"devices/thermo-01/cmd/a"}}});
  EXPECT_TRUE(replies(u).empty());
  Effects done;
  session_->upstreamUnsubscribed(commands<upstream::Unsubscribe>(u).at(0).token, done);
  EXPECT_EQ(std::get<SubAck>(replies(done).at(0)).type, PacketType::Unsuback);
}

TEST_F(SessionTest, APersistentSessionsConnackSaysWhatTheBrokerSays) {
  brokerAnswers_ = false;
  for (const bool present : {false, true}) {
    makeSession();
    Connect c = connect();
    c.cleanStart = false;
    std::vector<uint8_t> bytes = encode(c, Version::V311);
    const auto pub = encode(
        Publish{false, 1, false, "devices/thermo-01/status", 5, {}, bytesOf("x")}, Version::V311);
    bytes.insert(bytes.end(), pub.begin(), pub.end()); // sent right behind the CONNECT
    Effects e = sendBytes(bytes);
    EXPECT_TRUE(replies(e).empty()) << "the CONNACK waits for the broker's";
    EXPECT_EQ(session_->state(), Session::State::Opening);
    EXPECT_FALSE(session_->wantsInput());
    const auto opens = commands<upstream::Open>(e);
    ASSERT_EQ(opens.size(), 1u);
    EXPECT_FALSE(opens[0].cleanStart);
    EXPECT_EQ(opens[0].clientId, "iotgw-thermo-01");
    EXPECT_TRUE(commands<upstream::Publish>(e).empty());
    Effects up;
    session_->upstreamStatus(true, present, now_, up);
    auto r = replies(up);
    ASSERT_GE(r.size(), 1u);
    EXPECT_EQ(std::get<Connack>(r[0]).sessionPresent, present);
    EXPECT_EQ(commands<upstream::Publish>(up).size(), 1u) << "then what came behind it";
  }
  // A broker that cannot be reached: "server unavailable", never "no session".
  makeSession();
  Connect c = connect();
  c.cleanStart = false;
  send({c});
  Effects down;
  session_->upstreamStatus(false, false, now_, down);
  EXPECT_EQ(std::get<Connack>(replies(down).at(0)).reasonCode, v311::kServerUnavailable);
  EXPECT_TRUE(down.closeClient);
  // Nor in time.
  makeSession();
  send({c});
  Effects late;
  now_ += settings_.connectTimeout + 1s;
  session_->tick(now_, late);
  EXPECT_EQ(std::get<Connack>(replies(late).at(0)).reasonCode, v311::kServerUnavailable);
}

TEST_F(SessionTest, BrokerMessagesAreAcknowledgedOnlyOnceTheDeviceHasThem) {
  makeSession();
  connected();
  Effects d;
  session_->deliver(Delivery{41, "devices/thermo-01/cmd/set", bytesOf("1"), 1, false}, d);
  EXPECT_TRUE(commands<upstream::Acknowledge>(d).empty());
  const auto id = std::get<Publish>(replies(d).at(0)).packetId;
  Effects a = send({Ack{PacketType::Puback, id, 0, {}}});
  ASSERT_EQ(commands<upstream::Acknowledge>(a).size(), 1u);
  EXPECT_EQ(commands<upstream::Acknowledge>(a)[0].id, 41);
  // QoS 2: the broker's flow is done once the device has sent PUBREC.
  Effects d2;
  session_->deliver(Delivery{42, "devices/thermo-01/cmd/set", bytesOf("1"), 2, false}, d2);
  const auto id2 = std::get<Publish>(replies(d2).at(0)).packetId;
  Effects rec = send({Ack{PacketType::Pubrec, id2, 0, {}}});
  EXPECT_EQ(commands<upstream::Acknowledge>(rec).at(0).id, 42);
  Effects comp = send({Ack{PacketType::Pubcomp, id2, 0, {}}});
  EXPECT_TRUE(commands<upstream::Acknowledge>(comp).empty());
  // What the device may not have is acknowledged at once (dealt with, and counted).
  Effects other;
  session_->deliver(Delivery{43, "devices/thermo-01/elsewhere", bytesOf("1"), 1, false}, other);
  EXPECT_TRUE(replies(other).empty());
  EXPECT_EQ(commands<upstream::Acknowledge>(other).at(0).id, 43);
  // A device that drops before its PUBACK never acknowledged it: nothing goes to the broker.
  Effects d3;
  session_->deliver(Delivery{44, "devices/thermo-01/cmd/set", bytesOf("1"), 1, false}, d3);
  Effects lost;
  session_->connectionLost(lost);
  EXPECT_TRUE(commands<upstream::Acknowledge>(lost).empty());
}

TEST_F(SessionTest, ClientsOfOneDeviceGetUpstreamSessionsOfTheirOwn) {
  std::vector<std::string> seen;
  settings_.admit = [&](const DevicePolicy&, const std::string& id) {
    seen.push_back(id);
    return id != "iotgw-thermo-01:refused";
  };
  for (const std::string& clientId : {std::string("thermo-01"), std::string("sub"),
                                      std::string(40, 'x'), std::string("a/b"), std::string()}) {
    makeSession("drop", "", true);
    Connect c = connect();
    c.clientId = clientId;
    Effects e = send({c});
    ASSERT_EQ(std::get<Connack>(replies(e).at(0)).reasonCode, 0) << clientId;
  }
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen[0], "iotgw-thermo-01");
  EXPECT_EQ(seen[1], "iotgw-thermo-01:sub");
  EXPECT_EQ(seen[2].substr(0, 17), "iotgw-thermo-01:~");
  EXPECT_EQ(seen[2].size(), 17u + 32u);
  EXPECT_NE(seen[3], seen[2]);
  EXPECT_EQ(seen[3].size(), 17u + 32u);
  EXPECT_EQ(seen[4].size(), 17u + 32u); // an empty id: a random one, new every time
  // Stable: the same client id maps to the same session.
  makeSession("drop", "", true);
  Connect again = connect();
  again.clientId = std::string(40, 'x');
  send({again});
  EXPECT_EQ(seen.back(), seen[2]);
  // Past the device's limit: refused, with a reason.
  for (const Version v : {Version::V311, Version::V5}) {
    makeSession("drop", "", true);
    Connect c = connect(v);
    c.clientId = "refused";
    Effects e = send({c}, v);
    EXPECT_EQ(std::get<Connack>(replies(e, v).at(0)).reasonCode,
              v == Version::V5 ? reason::kQuotaExceeded : v311::kServerUnavailable);
    EXPECT_EQ(e.events.at(0).rule, "mqtt.max_clients");
    EXPECT_TRUE(commands<upstream::Open>(e).empty());
  }
}

TEST_F(SessionTest, PersistentClientIdsAreBoundedPerDevice) {
  // max_clients 4 (the default): 16 persistent client ids at the broker, not a 17th.
  int accepted = 0;
  for (int i = 0; i < 17; ++i) {
    makeSession("drop", "", true);
    Connect c = connect();
    c.clientId = "p" + std::to_string(i);
    c.cleanStart = false;
    Effects e = send({c});
    const auto code = std::get<Connack>(replies(e).at(0)).reasonCode;
    accepted += code == 0;
    if (i == 16) {
      EXPECT_EQ(code, v311::kServerUnavailable);
      EXPECT_EQ(e.events.at(0).rule, "mqtt.max_clients");
    }
    session_->connectionLost(e);
  }
  EXPECT_EQ(accepted, 16);
  // One it holds already comes back as ever.
  makeSession("drop", "", true);
  Connect again = connect();
  again.clientId = "p3";
  again.cleanStart = false;
  EXPECT_EQ(std::get<Connack>(replies(send({again})).at(0)).reasonCode, 0);
}

TEST_F(SessionTest, ABrokerThatLosesTheSessionOrRefusesTheLoginEndsTheConnection) {
  makeSession();
  Connect c = connect();
  c.cleanStart = false;
  send({c}); // the broker answers: session present 0
  ASSERT_EQ(session_->state(), Session::State::Connected);
  Effects kept;
  session_->upstreamStatus(true, true, now_, kept); // a reconnect into the same session
  EXPECT_FALSE(kept.closeClient);
  Effects lost;
  session_->upstreamStatus(true, false, now_, lost); // restarted without it
  EXPECT_TRUE(lost.closeClient) << "the client must learn session-present 0 by logging in again";
  makeSession();
  connected(); // a clean session: CONNACK at once
  Effects refused;
  session_->upstreamStatus(false, false, now_, refused, true);
  EXPECT_TRUE(refused.closeClient);
}

// With the outbox keeping QoS 2 flows (storedFlows), a PUBREL asks the outbox to end its flow and
// the PUBCOMP waits until that is durable: the client may use the identifier again only once a
// crash can no longer bring the flow back. The publish names its origin for the outbox.
TEST_F(SessionTest, WithStoredFlowsPubcompWaitsForTheFlowsEnd) {
  settings_.storedFlows = true;
  makeSession();
  connected(Version::V5);
  Publish p{false, 2, false, "devices/thermo-01/status", 7, {}, bytesOf("on")};
  p.dup = true; // a resend from an earlier connection
  Effects e1 = send({p}, Version::V5);
  const auto fwd = commands<upstream::Publish>(e1);
  ASSERT_EQ(fwd.size(), 1U);
  EXPECT_EQ(fwd[0].origin, 7U);
  EXPECT_TRUE(fwd[0].originDup);
  Effects ack;
  session_->upstreamAcked(fwd[0].token, ack);
  EXPECT_EQ(std::get<Ack>(replies(ack, Version::V5).at(0)).type, PacketType::Pubrec);

  Effects rel = send({Ack{PacketType::Pubrel, 7, 0, {}}}, Version::V5);
  EXPECT_TRUE(rel.toClient.empty()) << "no PUBCOMP before the flow's end is durable";
  const auto releases = commands<upstream::Release>(rel);
  ASSERT_EQ(releases.size(), 1U);
  EXPECT_EQ(releases[0].packetId, 7U);
  Effects again = send({Ack{PacketType::Pubrel, 7, 0, {}}}, Version::V5);
  EXPECT_TRUE(commands<upstream::Release>(again).empty()) << "the coming PUBCOMP answers both";
  Effects done;
  session_->upstreamAcked(releases[0].token, done);
  ASSERT_EQ(replies(done, Version::V5).size(), 1U);
  EXPECT_EQ(std::get<Ack>(replies(done, Version::V5).at(0)), (Ack{PacketType::Pubcomp, 7, 0, {}}));
  Effects late;
  session_->upstreamAcked(releases[0].token, late);
  EXPECT_TRUE(late.toClient.empty()) << "one PUBCOMP per PUBREL";

  // A PUBREL nobody knows of (no flow in the session, none in the outbox): 5.0 says so.
  Effects stray = send({Ack{PacketType::Pubrel, 9, 0, {}}}, Version::V5);
  const auto unknown = commands<upstream::Release>(stray);
  ASSERT_EQ(unknown.size(), 1U);
  Effects answer;
  session_->upstreamReleaseUnknown(unknown[0].token, answer);
  EXPECT_EQ(std::get<Ack>(replies(answer, Version::V5).at(0)),
            (Ack{PacketType::Pubcomp, 9, reason::kPacketIdentifierNotFound, {}}));
  // Publish tokens are never taken for release tokens.
  Effects notRelease;
  session_->upstreamReleaseUnknown(fwd[0].token, notRelease);
  EXPECT_TRUE(notRelease.toClient.empty());
}
