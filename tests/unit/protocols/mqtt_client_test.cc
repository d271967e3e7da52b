// SPDX-License-Identifier: GPL-3.0-or-later
// The broker-side MQTT client driven by scripted broker bytes: what it writes, and when.
#include <gtest/gtest.h>

#include "protocols/mqtt/client.h"
#include "protocols/mqtt/upstream.h"

using namespace iotgw::mqtt;
using namespace std::chrono_literals;

namespace {

std::vector<uint8_t> bytesOf(std::string_view s) { return {s.begin(), s.end()}; }

std::vector<Packet> packets(const std::vector<uint8_t>& bytes) {
  std::vector<Packet> out;
  std::span<const uint8_t> rest(bytes);
  while (!rest.empty()) {
    auto f = readFrame(rest, 1 << 20);
    EXPECT_TRUE(f && *f);
    if (!f || !*f) {
      break;
    }
    auto p = decodePacket(**f, Version::V311);
    EXPECT_TRUE(p.has_value());
    out.push_back(*p);
    rest = rest.subspan((*f)->size);
  }
  return out;
}

template <typename T> std::vector<T> only(const std::vector<Packet>& ps) {
  std::vector<T> out;
  for (const auto& p : ps) {
    if (const auto* t = std::get_if<T>(&p)) {
      out.push_back(*t);
    }
  }
  return out;
}

class ClientTest : public testing::Test {
protected:
  ClientTest() : client_(settings(), ClientLogin{"iotgw-thermo-01", false, 30, {}, "gw", "pw"}) {}

  static ClientSettings settings() {
    ClientSettings s;
    s.maxPacketBytes = 4096;
    s.maxInflight = 2;
    s.maxQueued = 10;
    s.maxQueuedBytes = 1000;
    return s;
  }

  ClientOutput broker(const Packet& p) {
    ClientOutput out;
    client_.received(encode(p, Version::V311), out);
    return out;
  }

  ClientOutput up(bool sessionPresent = false) {
    ClientOutput start;
    client_.start(now_, start);
    const auto sent = packets(start.toBroker);
    EXPECT_EQ(sent.size(), 1u);
    const auto& c = std::get<Connect>(sent.at(0));
    EXPECT_EQ(c.clientId, "iotgw-thermo-01");
    EXPECT_FALSE(c.cleanStart);
    EXPECT_EQ(c.username, "gw");
    return broker(Connack{sessionPresent, 0, {}});
  }

  Outgoing message(uint64_t token, uint8_t qos, std::string payload = "x") {
    return Outgoing{token, "devices/thermo-01/t", bytesOf(payload), qos, false};
  }

  Client::State state() const { return client_.state(); }

  ClientClock::time_point now_ = ClientClock::time_point{} + 1000s;
  Client client_;
};

} // namespace

TEST_F(ClientTest, NothingButConnectBeforeTheConnack) {
  ClientOutput start;
  client_.start(now_, start);
  ClientOutput held;
  EXPECT_TRUE(client_.publish(message(1, 1), held));
  EXPECT_TRUE(client_.publish(message(0, 0), held));
  client_.subscribe(7, {Subscription{"devices/thermo-01/cmd/#", 1}}, held);
  client_.disconnect(held);
  EXPECT_TRUE(held.toBroker.empty()) << "a broker calls anything before CONNACK a protocol error";
  ClientOutput after = broker(Connack{false, 0, {}});
  ASSERT_TRUE(after.connack);
  const auto sent = packets(after.toBroker);
  ASSERT_EQ(sent.size(), 3u);
  EXPECT_TRUE(std::holds_alternative<Subscribe>(sent[0]));
  const auto published = only<Publish>(sent);
  ASSERT_EQ(published.size(), 2u);
  EXPECT_EQ(published[0].qos, 1) << "in the order the device sent them";
  EXPECT_EQ(published[1].qos, 0);
}

TEST_F(ClientTest, ARefusedLoginIsTheBrokersAnswerAndNothingElseIsSent) {
  ClientOutput start;
  client_.start(now_, start);
  ClientOutput out = broker(Connack{false, v311::kNotAuthorized, {}});
  ASSERT_TRUE(out.connack);
  EXPECT_EQ(out.connack->reasonCode, v311::kNotAuthorized);
  EXPECT_EQ(state(), Client::State::Offline);
  EXPECT_TRUE(out.toBroker.empty());
}

TEST_F(ClientTest, InFlightMessagesGoAgainAfterAReconnectWithDup) {
  up();
  ClientOutput out;
  for (uint64_t t = 1; t <= 3; ++t) {
    ASSERT_TRUE(client_.publish(message(t, t == 3 ? 2 : 1), out));
  }
  auto sent = only<Publish>(packets(out.toBroker));
  ASSERT_EQ(sent.size(), 2u) << "two in flight at most; the third waits";
  client_.lost();
  ClientOutput again = up(true);
  auto resent = only<Publish>(packets(again.toBroker));
  ASSERT_EQ(resent.size(), 2u);
  EXPECT_TRUE(resent[0].dup);
  EXPECT_EQ(resent[0].packetId, sent[0].packetId);
  EXPECT_TRUE(resent[1].dup);
  ClientOutput acked = broker(Ack{PacketType::Puback, sent[0].packetId, 0, {}});
  EXPECT_EQ(acked.acked, (std::vector<uint64_t>{1}));
  auto third = only<Publish>(packets(acked.toBroker));
  ASSERT_EQ(third.size(), 1u) << "room in the window: the waiting one goes";
  EXPECT_EQ(third[0].qos, 2);
  // QoS 2: PUBREC → PUBREL; after a reconnect the PUBREL goes again, not the PUBLISH.
  ClientOutput rec = broker(Ack{PacketType::Pubrec, third[0].packetId, 0, {}});
  EXPECT_TRUE(std::holds_alternative<Ack>(packets(rec.toBroker).at(0)));
  client_.lost();
  ClientOutput back = up(true);
  bool pubrel = false;
  for (const auto& p : packets(back.toBroker)) {
    if (const auto* a = std::get_if<Ack>(&p); a != nullptr && a->packetId == third[0].packetId) {
      pubrel = a->type == PacketType::Pubrel;
    }
  }
  EXPECT_TRUE(pubrel);
  ClientOutput comp = broker(Ack{PacketType::Pubcomp, third[0].packetId, 0, {}});
  EXPECT_EQ(comp.acked, (std::vector<uint64_t>{3}));
}

TEST_F(ClientTest, SubscriptionsAreRestoredInANewBrokerSessionOnly) {
  up();
  ClientOutput out;
  client_.subscribe(5, {Subscription{"a/#", 1}, Subscription{"b", 2}}, out);
  const auto sub = only<Subscribe>(packets(out.toBroker)).at(0);
  ClientOutput answer = broker(SubAck{PacketType::Suback, sub.packetId, {}, {1, 0x80}});
  ASSERT_EQ(answer.subscribed.size(), 1u);
  EXPECT_EQ(answer.subscribed[0].token, 5u);
  EXPECT_EQ(answer.subscribed[0].codes, (std::vector<uint8_t>{1, 0x80}));
  client_.lost();
  // The broker kept the session: nothing to restore (a SUBSCRIBE would resend retained messages).
  EXPECT_TRUE(only<Subscribe>(packets(up(true).toBroker)).empty());
  client_.lost();
  // A new one: what was granted is subscribed again, and its answer is ours, not the device's.
  const auto restored = only<Subscribe>(packets(up(false).toBroker));
  ASSERT_EQ(restored.size(), 1u);
  ASSERT_EQ(restored[0].subscriptions.size(), 1u);
  EXPECT_EQ(restored[0].subscriptions[0].filter, "a/#");
  ClientOutput quiet = broker(SubAck{PacketType::Suback, restored[0].packetId, {}, {1}});
  EXPECT_TRUE(quiet.subscribed.empty());
}

TEST_F(ClientTest, ASubscribeLostWithTheConnectionIsSentAgainAndAnsweredThen) {
  up();
  ClientOutput out;
  client_.subscribe(9, {Subscription{"c", 1}}, out);
  client_.lost();
  const auto again = only<Subscribe>(packets(up(true).toBroker));
  ASSERT_EQ(again.size(), 1u);
  ClientOutput answer = broker(SubAck{PacketType::Suback, again[0].packetId, {}, {1}});
  EXPECT_EQ(answer.subscribed.at(0).token, 9u);
}

TEST_F(ClientTest, ABrokerMessageIsAcknowledgedWhenTheDeviceHasIt) {
  up();
  ClientOutput in = broker(Publish{false, 1, false, "devices/thermo-01/cmd", 77, {}, bytesOf("1")});
  ASSERT_EQ(in.deliveries.size(), 1u);
  EXPECT_EQ(in.deliveries[0].id & 0xFFFF, 77u);
  EXPECT_TRUE(in.toBroker.empty()) << "no PUBACK before the device's";
  // Sent again before the device answered: not delivered twice.
  EXPECT_TRUE(broker(Publish{true, 1, false, "devices/thermo-01/cmd", 77, {}, bytesOf("1")})
                  .deliveries.empty());
  ClientOutput ack;
  client_.acknowledge(in.deliveries[0].id, ack);
  const auto puback = std::get<Ack>(packets(ack.toBroker).at(0));
  EXPECT_EQ(puback.type, PacketType::Puback);
  EXPECT_EQ(puback.packetId, 77);
  // The device's acknowledgement of a message from an earlier connection is not sent on this
  // one: the broker (a new session here) reuses the id for another message, not yet delivered.
  ClientOutput late =
      broker(Publish{false, 1, false, "devices/thermo-01/cmd", 78, {}, bytesOf("2")});
  client_.lost();
  up(false);
  ClientOutput other =
      broker(Publish{false, 1, false, "devices/thermo-01/cmd", 78, {}, bytesOf("other")});
  ASSERT_EQ(other.deliveries.size(), 1u);
  ClientOutput stale;
  client_.acknowledge(late.deliveries.at(0).id, stale);
  EXPECT_TRUE(stale.toBroker.empty());
  ClientOutput fresh;
  client_.acknowledge(other.deliveries[0].id, fresh);
  EXPECT_FALSE(fresh.toBroker.empty());
}

TEST_F(ClientTest, Qos2FromTheBrokerIsDeliveredExactlyOnceAcrossAReconnect) {
  up();
  ClientOutput in = broker(Publish{false, 2, false, "devices/thermo-01/cmd", 5, {}, bytesOf("1")});
  ASSERT_EQ(in.deliveries.size(), 1u);
  client_.lost();
  up(true);
  ClientOutput dup = broker(Publish{true, 2, false, "devices/thermo-01/cmd", 5, {}, bytesOf("1")});
  EXPECT_TRUE(dup.deliveries.empty()) << "the device has it already";
  ClientOutput rec;
  client_.acknowledge(in.deliveries[0].id, rec); // delivered on the connection before
  EXPECT_EQ(std::get<Ack>(packets(rec.toBroker).at(0)).type, PacketType::Pubrec);
  ClientOutput rel = broker(Ack{PacketType::Pubrel, 5, 0, {}});
  EXPECT_EQ(std::get<Ack>(packets(rel.toBroker).at(0)).type, PacketType::Pubcomp);
  // The id is free again: a new message under it is a new message.
  EXPECT_EQ(broker(Publish{false, 2, false, "devices/thermo-01/cmd", 5, {}, bytesOf("2")})
                .deliveries.size(),
            1u);
}

TEST_F(ClientTest, AnOversizedPublishIsReadPastAcknowledgedAndNeverHeld) {
  up();
  // A header announcing 200 MiB, then the body in pieces: only the topic and id are looked at.
  std::vector<uint8_t> head{0x34}; // PUBLISH, QoS 2
  appendVarInt(head, 200u * 1024 * 1024);
  const std::string topic = "devices/thermo-01/cmd";
  head.push_back(0);
  head.push_back(static_cast<uint8_t>(topic.size()));
  head.insert(head.end(), topic.begin(), topic.end());
  head.push_back(0x12);
  head.push_back(0x34);
  ClientOutput first;
  client_.received(head, first);
  ASSERT_EQ(first.skipped.size(), 1u);
  const auto acks = only<Ack>(packets(first.toBroker));
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].type, PacketType::Pubrec);
  EXPECT_EQ(acks[0].packetId, 0x1234);
  const std::vector<uint8_t> chunk(64 * 1024, 'z');
  size_t fed = head.size() - 5;
  const size_t body = 200u * 1024 * 1024;
  while (fed + chunk.size() <= body - 3) {
    ClientOutput o;
    client_.received(chunk, o);
    ASSERT_TRUE(o.deliveries.empty());
    ASSERT_FALSE(o.failure);
    fed += chunk.size();
  }
  // The rest of it, and a PINGRESP right behind: the stream is in step again.
  std::vector<uint8_t> tail(body - fed, 'z');
  tail.push_back(0xD0);
  tail.push_back(0x00);
  ClientOutput end;
  client_.received(tail, end);
  EXPECT_FALSE(end.failure);
  ClientOutput next = broker(Publish{false, 0, false, topic, 0, {}, bytesOf("small")});
  ASSERT_EQ(next.deliveries.size(), 1u);
  EXPECT_EQ(next.deliveries[0].payload, bytesOf("small"));
}

TEST_F(ClientTest, WhatOnlyAClientSendsOrAnInvalidTopicIsNotTaken) {
  ClientOutput start;
  client_.start(now_, start);
  EXPECT_TRUE(broker(Pingresp{}).failure) << "the first packet must be CONNACK";
  client_.lost();
  up();
  EXPECT_TRUE(broker(Subscribe{1, {}, {Subscription{"x", 0}}}).failure);
  client_.lost();
  up();
  ClientOutput wildcard = broker(Publish{false, 1, false, "devices/+/cmd", 3, {}, bytesOf("1")});
  EXPECT_TRUE(wildcard.deliveries.empty());
  EXPECT_EQ(wildcard.skipped.size(), 1u);
  EXPECT_EQ(std::get<Ack>(packets(wildcard.toBroker).at(0)).packetId, 3);
}

TEST_F(ClientTest, KeepaliveSendsPingsAndGivesUpOnASilentBroker) {
  up();
  EXPECT_EQ(client_.deadline(), now_ + 30s);
  ClientOutput ping;
  client_.tick(now_ + 30s, ping);
  EXPECT_TRUE(std::holds_alternative<Pingreq>(packets(ping.toBroker).at(0)));
  broker(Pingresp{});
  ClientOutput quiet;
  client_.tick(now_ + 45s, quiet);
  EXPECT_TRUE(quiet.toBroker.empty());
  ClientOutput second;
  client_.tick(now_ + 60s, second);
  EXPECT_FALSE(second.toBroker.empty());
  ClientOutput silent;
  client_.tick(now_ + 90s, silent);
  EXPECT_TRUE(silent.failure) << "no PINGRESP within the keep alive";
}

// An uplink cut leaves the connection open and silent: while a PUBACK is due and nothing comes
// for answerTimeout (5 s), a PINGREQ goes at once, not after the keep alive (30 s here), and
// the connection fails when that is not answered within 5 s either.
TEST_F(ClientTest, ASilentBrokerWhileAnAnswerIsDueFailsWithinTwiceTheAnswerTimeout) {
  up();
  ClientOutput sent;
  ASSERT_TRUE(client_.publish(message(1, 1), sent));
  ASSERT_FALSE(sent.toBroker.empty());
  ClientOutput t1;
  client_.tick(now_ + 1s, t1); // the silence is counted from here
  ClientOutput t5;
  client_.tick(now_ + 5s, t5);
  EXPECT_TRUE(t5.toBroker.empty()) << "4 s of silence is not yet overdue";
  ClientOutput t6;
  client_.tick(now_ + 6s, t6);
  ASSERT_EQ(packets(t6.toBroker).size(), 1u);
  EXPECT_TRUE(std::holds_alternative<Pingreq>(packets(t6.toBroker).at(0)));
  ClientOutput t10;
  client_.tick(now_ + 10s, t10);
  EXPECT_FALSE(t10.failure);
  ClientOutput t11;
  client_.tick(now_ + 11s, t11);
  ASSERT_TRUE(t11.failure) << "the PINGREQ unanswered for 5 s";
  EXPECT_TRUE(t11.silent);
}

// A broker that answers keeps the connection, however long the stream; with nothing due, only
// the keep alive sends a PINGREQ.
TEST_F(ClientTest, ABrokerThatAnswersOrOwesNothingIsNotPinged) {
  up();
  ClientOutput idle;
  client_.tick(now_ + 10s, idle);
  EXPECT_TRUE(idle.toBroker.empty()) << "nothing due: 10 s of silence are fine";
  for (uint16_t k = 1; k <= 8; ++k) { // to 26 s: before the keep alive's own PINGREQ at 30 s
    ClientOutput sent;
    ASSERT_TRUE(client_.publish(message(k, 1), sent));
    const auto id = std::get<Publish>(packets(sent.toBroker).at(0)).packetId;
    ClientOutput tick;
    client_.tick(now_ + 10s + std::chrono::seconds(2 * k), tick);
    EXPECT_TRUE(tick.toBroker.empty()) << "answered every 2 s: no PINGREQ at " << k;
    broker(Ack{PacketType::Puback, id, 0, {}});
  }
}

TEST_F(ClientTest, QueuesAreBounded) {
  ClientOutput start;
  client_.start(now_, start);
  ClientOutput out;
  for (uint64_t t = 1; t <= 10; ++t) {
    ASSERT_TRUE(client_.publish(message(t, 1), out));
  }
  EXPECT_FALSE(client_.publish(message(11, 1), out)) << "maxQueued QoS 1/2 messages";
  EXPECT_TRUE(client_.publish(message(0, 0, std::string(500, 'q')), out));
  EXPECT_FALSE(client_.publish(message(0, 0, std::string(500, 'q')), out)) << "bytes held";
  EXPECT_EQ(client_.queued(), 10u);
}

// Messages from the outbox keep the packet identifiers they were stored under; a QoS 2 message
// whose PUBREC came before a restart gets only its PUBREL; a PUBREC is reported before PUBREL.
TEST_F(ClientTest, StoredMessagesKeepTheirPacketIdsAndAReleasedOneGetsOnlyItsPubrel) {
  Outgoing stored = message(1, 2, "reading");
  stored.packetId = 65535;
  Outgoing released = message(2, 2, "earlier reading");
  released.packetId = 77;
  released.released = true;
  ClientOutput held;
  ASSERT_TRUE(client_.publish(std::move(stored), held));
  ASSERT_TRUE(client_.publish(std::move(released), held));
  ClientOutput out = up(true);
  auto sent = packets(out.toBroker);
  ASSERT_EQ(sent.size(), 2u);
  const auto& first = std::get<Publish>(sent[0]);
  EXPECT_EQ(first.packetId, 65535);
  EXPECT_FALSE(first.dup);
  const auto& rel = std::get<Ack>(sent[1]);
  EXPECT_EQ(rel.type, PacketType::Pubrel);
  EXPECT_EQ(rel.packetId, 77);

  ClientOutput rec = broker(Ack{PacketType::Pubrec, 65535, 0, {}});
  EXPECT_EQ(rec.received, (std::vector<uint64_t>{1}));
  EXPECT_TRUE(rec.acked.empty());
  EXPECT_EQ(std::get<Ack>(packets(rec.toBroker).at(0)).type, PacketType::Pubrel);
  // PUBREC again (the broker did not see our PUBREL): PUBREL again, not reported twice.
  ClientOutput again = broker(Ack{PacketType::Pubrec, 65535, 0, {}});
  EXPECT_TRUE(again.received.empty());
  EXPECT_EQ(packets(again.toBroker).size(), 1u);
  EXPECT_EQ(broker(Ack{PacketType::Pubcomp, 77, 0, {}}).acked, (std::vector<uint64_t>{2}));
  EXPECT_EQ(broker(Ack{PacketType::Pubcomp, 65535, 0, {}}).acked, (std::vector<uint64_t>{1}));
  EXPECT_TRUE(client_.drained());
}

// After a reconnect what was in flight goes again in the order it was first sent, also when the
// packet identifiers wrapped around in between.
TEST_F(ClientTest, InFlightMessagesGoAgainInTheOrderTheyWereSent) {
  up();
  Outgoing last = message(1, 1, "first");
  last.packetId = 65535;
  ClientOutput out;
  ASSERT_TRUE(client_.publish(std::move(last), out));
  ASSERT_TRUE(client_.publish(message(2, 1, "second"), out)); // gets identifier 1
  client_.lost();
  out = up(true);
  const auto resent = only<Publish>(packets(out.toBroker));
  ASSERT_EQ(resent.size(), 2u);
  EXPECT_EQ(resent[0].packetId, 65535);
  EXPECT_EQ(resent[1].packetId, 1);
  EXPECT_TRUE(resent[0].dup && resent[1].dup);
}

// When the broker is away someone else (the outbox) delivers what the client held: it gives up
// every QoS > 0 message not acknowledged, in order, and keeps QoS 0 and what the broker has.
TEST_F(ClientTest, GivesUpWhatTheBrokerHasNotAcknowledgedInOrder) {
  up();
  ClientOutput out;
  ASSERT_TRUE(client_.publish(message(1, 2, "qos2, PUBREC comes"), out));
  ASSERT_TRUE(client_.publish(message(2, 1, "in flight"), out));
  ASSERT_TRUE(client_.publish(message(3, 1, "waiting"), out)); // maxInflight is 2
  ASSERT_TRUE(client_.publish(message(4, 0, "qos0"), out));
  ASSERT_TRUE(client_.publish(message(5, 2, "waiting qos2"), out));
  ClientOutput rec = broker(Ack{PacketType::Pubrec, 1, 0, {}});
  EXPECT_EQ(rec.received, (std::vector<uint64_t>{1}));
  client_.lost();
  const auto taken = client_.takeUnacknowledged();
  std::vector<uint64_t> tokens;
  for (const auto& m : taken) {
    tokens.push_back(m.token);
  }
  EXPECT_EQ(tokens, (std::vector<uint64_t>{2, 3, 5}));
  EXPECT_EQ(client_.queued(), 1u) << "the released QoS 2 message stays";
  out = up(true);
  const auto sent = packets(out.toBroker);
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(std::get<Ack>(sent[0]).type, PacketType::Pubrel);
  EXPECT_EQ(std::get<Publish>(sent[1]).qos, 0);
}

// Reconnects of every upstream together: a second's worth at once, then `rate` a second.
TEST(ReconnectPacer, SpreadsReconnectsAtItsRate) {
  ReconnectPacer pacer(10);
  const auto t0 = Clock::time_point{} + 100s;
  int now = 0;
  while (pacer.take(t0)) {
    ++now;
  }
  EXPECT_EQ(now, 10) << "a second's worth at once";
  EXPECT_GT(pacer.wait(), 0ms);
  EXPECT_LE(pacer.wait(), 100ms);
  int later = 0;
  for (int ms = 1; ms <= 2000; ++ms) {
    later += pacer.take(t0 + std::chrono::milliseconds(ms)) ? 1 : 0;
  }
  EXPECT_GE(later, 19);
  EXPECT_LE(later, 21) << "then ten a second";
  EXPECT_GT(pacer.deferred(), 1000u);
}
