// SPDX-License-Identifier: GPL-3.0-or-later
// The MQTT session engine driven by scripted client bytes and a fake upstream.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "tests/unit/protocols/mqtt_session_fixture.h"

using namespace iotgw::mqtt;
using namespace iotgw::policy;
using namespace std::chrono_literals;
using iotgw::test::bytesOf;
using iotgw::test::SessionTest;

TEST_F(SessionTest, ConnectsAndOpensUpstreamUnderTheDeviceIdentity) {
  makeSession();
  Effects e = connected();
  auto r = replies(e);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(std::get<Connack>(r[0]).reasonCode, 0);
  auto opens = commands<upstream::Open>(e);
  ASSERT_EQ(opens.size(), 1u);
  EXPECT_EQ(opens[0].clientId, "iotgw-thermo-01");
  EXPECT_EQ(opens[0].keepAlive, 10);
  EXPECT_EQ(session_->device()->id.str(), "thermo-01");
  EXPECT_TRUE(e.events.empty());
  EXPECT_TRUE(throttle_.knownSource("192.168.50.10")) << "a password login vouches for its source";
}

TEST_F(SessionTest, Mqtt31ClientsLogInAndOnlyShortIdentifiersAreTaken) {
  makeSession();
  Connect c = connect(Version::V31);
  c.protocolName = "MQIsdp";
  {
    Effects e = send({c}, Version::V31);
    auto r = replies(e, Version::V31);
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(std::get<Connack>(r[0]).reasonCode, 0);
    EXPECT_EQ(session_->state(), Session::State::Connected);
    EXPECT_EQ(session_->version(), Version::V31);
    ASSERT_EQ(commands<upstream::Open>(e).size(), 1u); // upstream as 3.1.1, under the device
  }
  {
    Effects e = send({Publish{false, 1, false, "devices/thermo-01/status", 7, {}, {'o', 'k'}}},
                     Version::V31);
    ASSERT_EQ(commands<upstream::Publish>(e).size(), 1u);
  }
  // 3.1: 1 to 23 bytes, anything else is return code 2 (identifier rejected).
  for (const std::string& id : {std::string(24, 'x'), std::string()}) {
    makeSession();
    c.clientId = id;
    Effects e = send({c}, Version::V31);
    auto r = replies(e, Version::V31);
    ASSERT_EQ(r.size(), 1u) << id.size();
    EXPECT_EQ(std::get<Connack>(r[0]).reasonCode, v311::kIdentifierRejected);
    EXPECT_TRUE(e.closeClient);
    EXPECT_TRUE(e.upstream.empty());
  }
}

TEST_F(SessionTest, DefaultCredentialRefusedNotAuthorized) {
  makeSession();
  for (Version v : {Version::V311, Version::V5}) {
    makeSession();
    Effects e = send({connect(v, "root", "xc3511")}, v);
    auto r = replies(e, v);
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(std::get<Connack>(r[0]).reasonCode,
              v == Version::V5 ? reason::kNotAuthorized : v311::kNotAuthorized);
    EXPECT_TRUE(e.closeClient);
    EXPECT_TRUE(e.upstream.empty());
    ASSERT_EQ(e.events.size(), 1u);
    EXPECT_EQ(e.events[0].type, EventType::DefaultCredentialRefused);
    EXPECT_EQ(e.events[0].provision, "5.1-1");
    EXPECT_EQ(e.events[0].peer, "192.168.50.10:40000");
    EXPECT_TRUE(e.authenticationFailed);
  }
}

TEST_F(SessionTest, RepeatedFailuresLockTheSourceOut) {
  for (int i = 0; i < 5; ++i) {
    makeSession();
    Effects e = send({connect(Version::V311, "thermo", "guess")});
    EXPECT_EQ(std::get<Connack>(replies(e)[0]).reasonCode, v311::kBadUserNameOrPassword);
    if (i == 4) {
      // The source and the user name, both guessed at five times.
      ASSERT_EQ(e.events.size(), 3u);
      EXPECT_EQ(e.events[1].type, EventType::AuthenticationLockout);
      EXPECT_EQ(e.events[2].type, EventType::AuthenticationLockout);
    }
  }
  makeSession();
  Effects e = send({connect()}); // the right password, but locked out
  EXPECT_EQ(std::get<Connack>(replies(e)[0]).reasonCode, v311::kNotAuthorized);
  EXPECT_EQ(e.events[0].type, EventType::AuthenticationLockout);
  EXPECT_EQ(e.events[0].provision, "5.1-5");
  now_ += 301s;
  makeSession();
  EXPECT_EQ(std::get<Connack>(replies(send({connect()}))[0]).reasonCode, 0);
}

TEST_F(SessionTest, FirstPacketMustBeConnect) {
  makeSession();
  Effects e = send({Pingreq{}});
  EXPECT_TRUE(e.closeClient);
  EXPECT_TRUE(e.toClient.empty());
  ASSERT_EQ(e.events.size(), 1u);
  EXPECT_EQ(e.events[0].rule, "MQTT-3.1.0-1");
}

TEST_F(SessionTest, SecondConnectIsAViolation) {
  makeSession();
  connected();
  Effects e = send({connect()});
  EXPECT_TRUE(e.closeClient);
  EXPECT_EQ(e.events.at(0).rule, "MQTT-3.1.0-2");
  auto closes = commands<upstream::Close>(e);
  ASSERT_EQ(closes.size(), 1u);
  EXPECT_TRUE(closes[0].publishWill);
}

TEST_F(SessionTest, PubackOnlyAfterTheBrokerAcknowledged) {
  makeSession();
  connected();
  Effects e =
      send({Publish{false, 0, false, "devices/thermo-01/telemetry/hum", 0, {}, bytesOf("40")},
            Publish{false, 1, false, "devices/thermo-01/telemetry/hum", 5, {}, bytesOf("41")}});
  auto pubs = commands<upstream::Publish>(e);
  ASSERT_EQ(pubs.size(), 2u);
  EXPECT_EQ(pubs[0].qos, 0);
  EXPECT_EQ(pubs[1].qos, 1);
  EXPECT_NE(pubs[1].token, 0u);
  EXPECT_TRUE(e.toClient.empty()) << "no PUBACK before the broker has the message";
  Effects ack;
  session_->upstreamAcked(pubs[1].token, ack);
  auto r = replies(ack);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(std::get<Ack>(r[0]), (Ack{PacketType::Puback, 5, 0, {}}));
  EXPECT_EQ(session_->counters().publishesForwarded, 2u);
}

TEST_F(SessionTest, DeniedPublishIsDroppedAndReported) {
  makeSession("drop");
  connected(Version::V5);
  Effects e = send({Publish{false, 1, false, "devices/door-lock/cmd/open", 9, {}, bytesOf("1")}},
                   Version::V5);
  EXPECT_TRUE(commands<upstream::Publish>(e).empty());
  auto r = replies(e, Version::V5);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(std::get<Ack>(r[0]).reasonCode, reason::kNotAuthorized);
  ASSERT_EQ(e.events.size(), 1u);
  EXPECT_EQ(e.events[0].type, EventType::AccessDenied);
  EXPECT_EQ(e.events[0].device, "thermo-01");
  EXPECT_EQ(e.events[0].rule, "mqtt.publish");
  EXPECT_EQ(e.events[0].provision, "5.13-1");
  EXPECT_FALSE(e.closeClient);
  // A payload rule violation is a payload-rejected event.
  Effects p =
      send({Publish{false, 0, false, "devices/thermo-01/telemetry/temp", 0, {}, bytesOf("{}")}},
           Version::V5);
  EXPECT_EQ(p.events.at(0).type, EventType::PayloadRejected);
  EXPECT_EQ(session_->counters().publishesDenied, 2u);
}

TEST_F(SessionTest, QuarantineActionClosesAndAsksForQuarantine) {
  makeSession("quarantine");
  connected();
  Effects e = send({Publish{false, 0, false, "$SYS/broker/x", 0, {}, bytesOf("1")}});
  EXPECT_TRUE(e.closeClient);
  EXPECT_TRUE(e.quarantineRequested);
  EXPECT_EQ(e.events.at(0).action, "quarantine");
  EXPECT_TRUE(commands<upstream::Publish>(e).empty());
}

TEST_F(SessionTest, Qos2IsForwardedExactlyOnce) {
  makeSession();
  connected();
  const Publish p{false, 2, false, "devices/thermo-01/status", 7, {}, bytesOf("on")};
  Publish dup = p;
  dup.dup = true;
  Effects e1 = send({p, dup});
  ASSERT_EQ(commands<upstream::Publish>(e1).size(), 1u);
  const uint64_t token = commands<upstream::Publish>(e1)[0].token;
  Effects ack;
  session_->upstreamAcked(token, ack);
  EXPECT_EQ(std::get<Ack>(replies(ack).at(0)), (Ack{PacketType::Pubrec, 7, 0, {}}));
  Effects e2 = send({dup});
  EXPECT_TRUE(commands<upstream::Publish>(e2).empty());
  EXPECT_EQ(std::get<Ack>(replies(e2).at(0)).type, PacketType::Pubrec);
  Effects e3 = send({Ack{PacketType::Pubrel, 7, 0, {}}});
  EXPECT_EQ(std::get<Ack>(replies(e3).at(0)), (Ack{PacketType::Pubcomp, 7, 0, {}}));
  // After PUBCOMP the identifier is free: the same id is a new message.
  Effects e4 = send({p});
  EXPECT_EQ(commands<upstream::Publish>(e4).size(), 1u);
}

TEST_F(SessionTest, SubscribeGrantsOnlyWhatThePolicyAllows) {
  makeSession();
  connected();
  Effects e = send({Subscribe{3,
                              {},
                              {Subscription{"devices/thermo-01/cmd/#", 2},
                               Subscription{"devices/#", 0}, Subscription{"#", 1}}}});
  auto r = replies(e);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(std::get<SubAck>(r[0]).reasonCodes, (std::vector<uint8_t>{2, 0x80, 0x80}));
  auto subs = commands<upstream::Subscribe>(e);
  ASSERT_EQ(subs.size(), 1u);
  ASSERT_EQ(subs[0].filters.size(), 1u);
  EXPECT_EQ(subs[0].filters[0].filter, "devices/thermo-01/cmd/#");
  EXPECT_EQ(e.events.size(), 2u);
}

TEST_F(SessionTest, DeliveriesAreValidatedAndFlowControlled) {
  makeSession();
  Connect c = connect(Version::V5);
  Property rm;
  rm.id = PropertyId::ReceiveMaximum;
  rm.number = 2;
  c.properties.push_back(rm);
  send({c}, Version::V5);
  Effects e;
  deliver("devices/thermo-02/cmd/open", bytesOf("1"), 1, false, e);
  EXPECT_TRUE(e.toClient.empty()) << "another device's command never reaches this one";
  EXPECT_EQ(e.events.at(0).rule, "mqtt.subscribe");
  Effects d;
  for (int i = 0; i < 3; ++i) {
    deliver("devices/thermo-01/cmd/set", bytesOf("{}"), 1, false, d);
  }
  auto r = replies(d, Version::V5);
  ASSERT_EQ(r.size(), 2u) << "Receive Maximum 2 holds the third";
  const auto first = std::get<Publish>(r[0]).packetId;
  Effects after = send({Ack{PacketType::Puback, first, 0, {}}}, Version::V5);
  ASSERT_EQ(replies(after, Version::V5).size(), 1u);
  EXPECT_EQ(session_->counters().deliveries, 3u);
}

TEST_F(SessionTest, KeepaliveExpiresAtOneAndAHalfTimes) {
  makeSession();
  connected(); // keep alive 10 s
  Effects quiet;
  now_ += 14900ms;
  session_->tick(now_, quiet);
  EXPECT_FALSE(quiet.closeClient);
  now_ += 100ms;
  Effects gone;
  session_->tick(now_, gone);
  EXPECT_TRUE(gone.closeClient);
  ASSERT_EQ(commands<upstream::Close>(gone).size(), 1u);
  EXPECT_TRUE(commands<upstream::Close>(gone)[0].publishWill);
}

TEST_F(SessionTest, NormalDisconnectDiscardsTheWill) {
  makeSession();
  connected();
  Effects e = send({Disconnect{}});
  ASSERT_EQ(commands<upstream::Close>(e).size(), 1u);
  EXPECT_FALSE(commands<upstream::Close>(e)[0].publishWill);
}

TEST_F(SessionTest, WillOutsideThePolicyRefusesTheConnection) {
  makeSession();
  Connect c = connect();
  c.will = Will{"devices/other/status", bytesOf("dead"), 0, false, {}};
  Effects e = send({c});
  EXPECT_EQ(std::get<Connack>(replies(e).at(0)).reasonCode, v311::kNotAuthorized);
  EXPECT_TRUE(e.closeClient);
  c.will->topic = "devices/thermo-01/status";
  makeSession();
  Effects ok = send({c});
  ASSERT_EQ(commands<upstream::Open>(ok).size(), 1u);
  EXPECT_EQ(commands<upstream::Open>(ok)[0].will->topic, "devices/thermo-01/status");
}

TEST_F(SessionTest, ConnectTimeout) {
  makeSession();
  Effects e;
  now_ += 9s;
  session_->tick(now_, e);
  EXPECT_FALSE(e.closeClient);
  now_ += 1s;
  session_->tick(now_, e);
  EXPECT_TRUE(e.closeClient);
}

TEST_F(SessionTest, ByteAtATime) {
  makeSession();
  const auto bytes = encode(connect(), Version::V311);
  Effects all;
  for (uint8_t b : bytes) {
    Effects e = sendBytes(std::span(&b, 1));
    all.toClient.insert(all.toClient.end(), e.toClient.begin(), e.toClient.end());
  }
  EXPECT_EQ(session_->state(), Session::State::Connected);
  EXPECT_EQ(replies(all).size(), 1u);
}

TEST_F(SessionTest, ReceiveMaximumIsEnforced) {
  makeSession();
  connected(Version::V5);
  std::vector<Packet> burst;
  for (uint16_t id = 1; id <= 21; ++id) {
    burst.push_back(Publish{false, 1, false, "devices/thermo-01/status", id, {}, bytesOf("x")});
  }
  Effects e = send(burst, Version::V5);
  EXPECT_EQ(commands<upstream::Publish>(e).size(), 20u);
  EXPECT_TRUE(e.closeClient);
  auto r = replies(e, Version::V5);
  EXPECT_EQ(std::get<Disconnect>(r.back()).reasonCode, reason::kReceiveMaximumExceeded);
}

TEST_F(SessionTest, RateLimitIsEnforced) {
  makeSession();
  connected();
  std::vector<Packet> burst;
  for (int i = 0; i < 60; ++i) {
    burst.push_back(Publish{false, 0, false, "devices/thermo-01/status", 0, {}, bytesOf("x")});
  }
  Effects e = send(burst);
  EXPECT_EQ(commands<upstream::Publish>(e).size(), 50u); // the burst
  EXPECT_EQ(e.events.size(), 10u);
  EXPECT_EQ(e.events[0].type, EventType::RateLimited);
  EXPECT_EQ(e.events[0].provision, "5.10-1");
}

// Every malformed packet of tests/data/mqtt-malformed.txt, sent into a session (after a valid
// CONNECT where the packet is not itself a CONNECT): a clean refusal, nothing forwarded, counted.
TEST_F(SessionTest, MalformedCorpusIsRefusedCleanly) {
  std::ifstream in(IOTGW_SOURCE_DIR "/tests/data/mqtt-malformed.txt");
  std::string line;
  size_t cases = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') {
      continue;
    }
    std::istringstream ss(line);
    std::string name;
    std::string clause;
    std::string hex;
    int v = 0;
    ss >> name >> v >> clause >> hex;
    std::vector<uint8_t> bytes;
    for (size_t i = 0; i + 1 < hex.size(); i += 2) {
      bytes.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    }
    makeSession();
    const auto version = static_cast<Version>(v);
    if (!name.starts_with("connect-") && !name.starts_with("remaining-length")) {
      connected(version);
    }
    Effects e = sendBytes(bytes);
    ++cases;
    EXPECT_TRUE(e.closeClient) << name;
    EXPECT_TRUE(commands<upstream::Publish>(e).empty()) << name;
    EXPECT_TRUE(commands<upstream::Subscribe>(e).empty()) << name;
    ASSERT_FALSE(e.events.empty()) << name;
    EXPECT_EQ(e.events.back().type, EventType::MalformedPacket) << name;
    EXPECT_EQ(e.events.back().rule, clause) << name;
    EXPECT_EQ(session_->counters().malformed, 1u) << name;
    EXPECT_EQ(session_->state(), Session::State::Closed) << name;
  }
  EXPECT_GE(cases, 100u);
}

TEST_F(SessionTest, TopicsAreMappedUnderThePolicyPrefix) {
  makeSession("drop", "upstream_prefix = \"home/gw1/%d/\"\n");
  Connect c = connect();
  c.will = Will{"devices/thermo-01/status", bytesOf("gone"), 0, false, {}};
  Effects e = send({c});
  ASSERT_EQ(commands<upstream::Open>(e).size(), 1u);
  EXPECT_EQ(commands<upstream::Open>(e)[0].will->topic,
            "home/gw1/thermo-01/devices/thermo-01/status");
  Effects p = send({Publish{false, 0, false, "devices/thermo-01/status", 0, {}, bytesOf("on")},
                    Subscribe{1, {}, {Subscription{"devices/thermo-01/cmd/#", 1}}}});
  EXPECT_EQ(commands<upstream::Publish>(p).at(0).topic,
            "home/gw1/thermo-01/devices/thermo-01/status");
  EXPECT_EQ(commands<upstream::Subscribe>(p).at(0).filters.at(0).filter,
            "home/gw1/thermo-01/devices/thermo-01/cmd/#");
  Effects d;
  deliver("home/gw1/thermo-01/devices/thermo-01/cmd/set", bytesOf("1"), 0, false, d);
  auto r = replies(d);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(std::get<Publish>(r[0]).topic, "devices/thermo-01/cmd/set");
  Effects other;
  deliver("home/gw1/door-lock/devices/thermo-01/cmd/set", bytesOf("1"), 0, false, other);
  EXPECT_TRUE(other.toClient.empty());
}

TEST_F(SessionTest, PasswordIsCheckedOffTheSessionAndPipelinedPacketsWait) {
  makeSession();
  std::vector<uint8_t> bytes = encode(connect(), Version::V311);
  const auto pub = encode(
      Publish{false, 1, false, "devices/thermo-01/status", 5, {}, bytesOf("on")}, Version::V311);
  bytes.insert(bytes.end(), pub.begin(), pub.end());
  Effects e;
  session_->receive(bytes, now_, e);
  // Nothing happens until the check's answer: no CONNACK, no upstream, the PUBLISH unread.
  ASSERT_TRUE(e.passwordCheck.has_value());
  EXPECT_EQ(session_->state(), Session::State::Authenticating);
  EXPECT_FALSE(session_->authenticated());
  EXPECT_TRUE(e.toClient.empty());
  EXPECT_TRUE(e.upstream.empty());
  EXPECT_EQ(session_->bufferedBytes(), pub.size());
  const bool ok = e.passwordCheck->hash.verify(e.passwordCheck->password);
  EXPECT_TRUE(ok);
  Effects done;
  session_->passwordChecked(PasswordResult::Matched, now_, done);
  EXPECT_EQ(session_->state(), Session::State::Connected);
  EXPECT_EQ(std::get<Connack>(replies(done).at(0)).reasonCode, 0);
  EXPECT_EQ(commands<upstream::Open>(done).size(), 1u);
  ASSERT_EQ(commands<upstream::Publish>(done).size(), 1u); // the PUBLISH that waited
  EXPECT_EQ(session_->bufferedBytes(), 0u);
}

TEST_F(SessionTest, UnknownUserNameIsCheckedAndAnsweredLikeAWrongPassword) {
  for (Version v : {Version::V311, Version::V5}) {
    uint8_t codes[2] = {};
    int i = 0;
    for (const char* user : {"thermo", "nobody"}) {
      makeSession();
      const int before = passwordChecks_;
      Effects e = send({connect(v, user, "guess")}, v);
      EXPECT_EQ(passwordChecks_, before + 1) << user; // the same work for both
      codes[i++] = std::get<Connack>(replies(e, v).at(0)).reasonCode;
      EXPECT_TRUE(e.authenticationFailed);
    }
    EXPECT_EQ(codes[0], codes[1]);
    EXPECT_EQ(codes[0],
              v == Version::V5 ? reason::kBadUserNameOrPassword : v311::kBadUserNameOrPassword);
  }
}

TEST_F(SessionTest, BusyPasswordCheckIsACheapRefusalNotAFailure) {
  for (Version v : {Version::V311, Version::V5}) {
    makeSession();
    Effects e;
    session_->receive(encode(connect(v), v), now_, e);
    ASSERT_TRUE(e.passwordCheck.has_value());
    Effects busy;
    session_->passwordChecked(PasswordResult::Busy, now_, busy);
    EXPECT_EQ(std::get<Connack>(replies(busy, v).at(0)).reasonCode,
              v == Version::V5 ? reason::kServerBusy : v311::kServerUnavailable);
    EXPECT_TRUE(busy.closeClient);
    EXPECT_FALSE(busy.authenticationFailed);
    ASSERT_EQ(busy.events.size(), 1u);
    EXPECT_EQ(busy.events[0].rule, "limits.max_password_checks");
  }
  // No failure was counted: the right password still logs in.
  makeSession();
  EXPECT_EQ(std::get<Connack>(replies(send({connect()})).at(0)).reasonCode, 0);
}

TEST_F(SessionTest, PacketsBeforeTheLoginAreSmall) {
  settings_.maxConnectBytes = 1024;
  makeSession();
  // A CONNECT header claiming more than the pre-login bound is refused from the header alone.
  const std::vector<uint8_t> header = {0x10, 0xfc, 0xff, 0x0f}; // remaining length 262,140
  Effects e = sendBytes(header);
  EXPECT_TRUE(e.closeClient);
  ASSERT_EQ(e.events.size(), 1u);
  EXPECT_EQ(e.events[0].rule, "limits.max_connect_bytes");
  // Once logged in, the session's own limit applies.
  makeSession();
  connected();
  Effects big = send({Publish{
      false, 0, false, "devices/thermo-01/status", 0, {}, std::vector<uint8_t>(4000, 'x')}});
  EXPECT_FALSE(big.closeClient);
  EXPECT_EQ(commands<upstream::Publish>(big).size(), 1u);
  // What waits behind a CONNECT under check is bounded too.
  makeSession();
  Effects pending;
  session_->receive(encode(connect(), Version::V311), now_, pending);
  ASSERT_TRUE(pending.passwordCheck.has_value());
  Effects flood;
  session_->receive(std::vector<uint8_t>(2000, 0xc0), now_, flood);
  EXPECT_TRUE(flood.closeClient);
  EXPECT_EQ(flood.events.at(0).rule, "limits.max_connect_bytes");
}

TEST_F(SessionTest, SubscriptionsAreBoundedPerSessionAndPerPacket) {
  settings_.maxSubscriptions = 3;
  settings_.maxFiltersPerSubscribe = 2;
  for (Version v : {Version::V311, Version::V5}) {
    makeSession();
    connected(v);
    const uint8_t failure = v == Version::V5 ? reason::kQuotaExceeded : v311::kSubackFailure;
    const auto sub = [&](uint16_t id, std::vector<std::string> filters) {
      Subscribe s{id, {}, {}};
      for (auto& f : filters) {
        s.subscriptions.push_back(Subscription{std::move(f), 1});
      }
      Effects e = send({s}, v);
      const auto forwarded = commands<upstream::Subscribe>(e);
      return std::make_pair(std::get<SubAck>(replies(e, v).at(0)).reasonCodes,
                            forwarded.empty() ? size_t{0} : forwarded[0].filters.size());
    };
    // Three filters in one packet: the third is past the per-packet bound.
    auto [codes, forwarded] =
        sub(1, {"devices/thermo-01/cmd/a", "devices/thermo-01/cmd/b", "devices/thermo-01/cmd/c"});
    EXPECT_EQ(codes, (std::vector<uint8_t>{1, 1, failure}));
    EXPECT_EQ(forwarded, 2u);
    // A repeat of a filter held already does not count again; a fourth distinct one is refused.
    std::tie(codes, forwarded) = sub(2, {"devices/thermo-01/cmd/a", "devices/thermo-01/cmd/c"});
    EXPECT_EQ(codes, (std::vector<uint8_t>{1, 1}));
    std::tie(codes, forwarded) = sub(3, {"devices/thermo-01/cmd/d"});
    EXPECT_EQ(codes, (std::vector<uint8_t>{failure}));
    EXPECT_EQ(forwarded, 0u);
    EXPECT_EQ(session_->counters().subscriptionsRefused, 2u);
    // Unsubscribing makes room.
    send({Unsubscribe{4, {}, {"devices/thermo-01/cmd/a"}}}, v);
    std::tie(codes, forwarded) = sub(5, {"devices/thermo-01/cmd/d"});
    EXPECT_EQ(codes, (std::vector<uint8_t>{1}));
  }
}

TEST_F(SessionTest, OpenQos2FlowsAreBounded) {
  // 5.0: a dropped QoS 2 flow counts against the Receive Maximum until its PUBREL.
  settings_.receiveMaximum = 3;
  makeSession();
  connected(Version::V5);
  for (uint16_t id = 1; id <= 3; ++id) {
    // Outside the publish list: dropped, answered with PUBREC 0x87, done.
    Effects e =
        send({Publish{false, 2, false, "devices/thermo-01/elsewhere", id, {}, bytesOf("x")}},
             Version::V5);
    EXPECT_FALSE(e.closeClient);
  }
  // 3.1.1: the flow is open until the client's PUBREL, bounded by how many may be open at once
  // (far more than any client has in flight), past which the client is cut off.
  makeSession();
  connected();
  for (uint16_t id = 1; id <= 12; ++id) { // four Receive Maximums
    Effects e =
        send({Publish{false, 2, false, "devices/thermo-01/elsewhere", id, {}, bytesOf("x")}});
    ASSERT_FALSE(e.closeClient) << id;
  }
  Effects e = send({Publish{false, 2, false, "devices/thermo-01/elsewhere", 13, {}, bytesOf("x")}});
  EXPECT_TRUE(e.closeClient);
  EXPECT_EQ(e.events.back().rule, "limits.max_open_qos2_flows");
  // Released flows free their place.
  makeSession();
  connected();
  for (uint16_t id = 1; id <= 6; ++id) {
    send({Publish{false, 2, false, "devices/thermo-01/elsewhere", id, {}, bytesOf("x")}});
    Effects r = send({Ack{PacketType::Pubrel, id, 0, {}}});
    EXPECT_FALSE(r.closeClient);
    EXPECT_EQ(std::get<Ack>(replies(r).at(0)).type, PacketType::Pubcomp);
  }
}

TEST_F(SessionTest, FlowTowardsTheClientIsOursToBound) {
  settings_.sendMaximum = 2;
  settings_.maxQueuedBytesToClient = 60; // two messages of 27 bytes (topic and payload)
  makeSession();
  Connect c = connect(Version::V5);
  c.properties.push_back(Property{PropertyId::ReceiveMaximum, 65535, {}, {}, {}});
  send({c}, Version::V5);
  ASSERT_EQ(session_->state(), Session::State::Connected);
  Effects d;
  for (int i = 0; i < 5; ++i) {
    deliver("devices/thermo-01/cmd/x", bytesOf("abcd"), 1, false, d);
  }
  // Two in flight (our maximum, whatever the client offered), two queued (54 bytes), one dropped.
  EXPECT_EQ(replies(d, Version::V5).size(), 2u);
  EXPECT_EQ(session_->counters().dropped, 1u);
}

TEST_F(SessionTest, PersistentSessionsKeepTheirSubscriptionsCounted) {
  settings_.maxSubscriptions = 2;
  const auto subscribeOne = [&](uint16_t id, const std::string& f) {
    Effects e = send({Subscribe{id, {}, {Subscription{f, 1}}}});
    return std::get<SubAck>(replies(e).at(0)).reasonCodes.at(0);
  };
  const auto reconnect = [&](bool clean) {
    send({Disconnect{}});
    makeSessionKeepingMemory();
    Connect c = connect();
    c.cleanStart = clean;
    send({c});
    ASSERT_EQ(session_->state(), Session::State::Connected);
  };
  makeSession();
  Connect c = connect();
  c.cleanStart = false;
  send({c});
  EXPECT_EQ(subscribeOne(1, "devices/thermo-01/cmd/a"), 1);
  EXPECT_EQ(subscribeOne(2, "devices/thermo-01/cmd/b"), 1);
  // The broker still holds both (it says so): reconnecting without a clean start does not make
  // room.
  sessionPresent_ = true;
  reconnect(false);
  EXPECT_EQ(subscribeOne(3, "devices/thermo-01/cmd/c"), v311::kSubackFailure);
  EXPECT_EQ(subscribeOne(4, "devices/thermo-01/cmd/a"), 1); // already held
  // A clean start empties the broker's session, and the count.
  reconnect(true);
  EXPECT_EQ(subscribeOne(5, "devices/thermo-01/cmd/c"), 1);
}

TEST_F(SessionTest, UnsubscribeIsBoundedPerPacket) {
  settings_.maxFiltersPerSubscribe = 2;
  makeSession();
  connected(Version::V5);
  Effects e = send({Unsubscribe{1,
                                {},
                                {"devices/thermo-01/cmd/a", "devices/thermo-01/cmd/b",
                                 "devices/thermo-01/cmd/c"}}},
                   Version::V5);
  EXPECT_EQ(std::get<SubAck>(replies(e, Version::V5).at(0)).reasonCodes,
            (std::vector<uint8_t>{0, 0, reason::kUnspecifiedError}));
  ASSERT_EQ(commands<upstream::Unsubscribe>(e).size(), 1u);
  EXPECT_EQ(commands<upstream::Unsubscribe>(e)[0].filters.size(), 2u);
}

TEST_F(SessionTest, ALockoutThatBeginsDuringTheCheckHoldsForIt) {
  makeSession();
  Effects e;
  session_->receive(encode(connect(), Version::V311), now_, e);
  ASSERT_TRUE(e.passwordCheck.has_value());
  // Meanwhile, parallel guesses from the same source lock it out.
  for (int i = 0; i < 5; ++i) {
    throttle_.recordFailure("192.168.50.10", "thermo", now_);
  }
  Effects done;
  session_->passwordChecked(PasswordResult::Matched, now_, done);
  EXPECT_EQ(std::get<Connack>(replies(done).at(0)).reasonCode, v311::kNotAuthorized);
  EXPECT_EQ(done.events.at(0).type, EventType::AuthenticationLockout);
  EXPECT_NE(session_->state(), Session::State::Connected);
}
