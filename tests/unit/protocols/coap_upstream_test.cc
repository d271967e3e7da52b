// SPDX-License-Identifier: GPL-3.0-or-later
// The proxy as a CoAP client of a device (protocols/coap/upstream.h), driven with scripted
// datagrams and an injected clock: retransmissions that stop at the deadline, requests that
// wait for their turn and are never sent past it, block-wise bodies both ways, observe.
#include <gtest/gtest.h>

#include <algorithm>

#include "protocols/coap/message.h"
#include "protocols/coap/upstream.h"
#include "protocols/coap/validate.h"

namespace iotgw::coap {
namespace {

using namespace std::chrono_literals;
using Clock = Upstream::Clock;
using Kind = UpstreamEvent::Kind;

const Clock::time_point t0{};

// Deterministic "random" bytes: a counter.
Upstream::Random counter() {
  auto n = std::make_shared<uint8_t>(1);
  return [n](std::span<uint8_t> out) {
    for (auto& b : out) {
      b = (*n)++;
    }
  };
}

UpstreamRequest get(std::string path, Clock::time_point deadline, bool observe = false) {
  UpstreamRequest r;
  r.method = codes::kGet;
  r.options.push_back({options::kUriPath, Bytes(path.begin(), path.end())});
  r.observe = observe;
  r.deadline = deadline;
  return r;
}

const Option* optionOf(const Message& m, uint16_t number) {
  for (const auto& o : m.options) {
    if (o.number == number) {
      return &o;
    }
  }
  return nullptr;
}

// What the device would answer: a response to `request` (piggybacked on its ACK, or separate
// with its own message id), with options in number order and a payload.
struct Reply {
  Type type = Type::Acknowledgement;
  uint8_t code = codes::kContent;
  std::vector<std::pair<uint16_t, Bytes>> opts;
  Bytes payload;
  uint16_t mid = 0;

  Bytes to(const Bytes& request) const {
    const Message req = *parse(request);
    Message m;
    m.type = type;
    m.code = code;
    m.messageId = type == Type::Acknowledgement ? req.messageId : mid;
    m.token = req.token;
    for (const auto& [n, v] : opts) {
      m.options.push_back({n, v});
    }
    m.payload = payload;
    return encode(m);
  }
};

Bytes block(uint32_t number, bool more, uint8_t szx) {
  return encodeBlock(Block{number, more, szx});
}

TEST(CoapUpstream, PiggybackedAnswerIsTheExchangesAnswer) {
  Upstream u({}, counter());
  UpstreamOutput out;
  ASSERT_TRUE(u.send(1, get("time", t0 + 5s), t0, out));
  ASSERT_EQ(out.datagrams.size(), 1u);
  const Message sent = *parse(out.datagrams[0]);
  EXPECT_EQ(sent.type, Type::Confirmable);
  EXPECT_EQ(sent.token.size(), 8u);
  const Bytes request = out.datagrams[0];
  out = {};
  Reply r;
  r.opts = {{options::kContentFormat, {0}}};
  r.payload = {'h', 'i'};
  EXPECT_EQ(u.receive(r.to(request), t0 + 10ms, out), Upstream::Received::Handled);
  ASSERT_EQ(out.events.size(), 1u);
  EXPECT_EQ(out.events[0].kind, Kind::Answered);
  EXPECT_EQ(out.events[0].answer.code, codes::kContent);
  EXPECT_EQ(out.events[0].answer.body, (Bytes{'h', 'i'}));
  EXPECT_TRUE(u.idle());
  // The same answer again is nobody's.
  out = {};
  EXPECT_EQ(u.receive(r.to(request), t0 + 20ms, out), Upstream::Received::Unexpected);
  EXPECT_TRUE(out.events.empty());
}

TEST(CoapUpstream, RetransmitsUntilTheDeadlineAndNeverAfter) {
  Upstream u({}, counter());
  UpstreamOutput out;
  ASSERT_TRUE(u.send(1, get("silent", t0 + 5s), t0, out));
  const Bytes first = out.datagrams.at(0);
  size_t sent = out.datagrams.size();
  for (auto t = t0; t <= t0 + 30s; t += 10ms) {
    out = {};
    u.expire(t, out);
    for (const auto& d : out.datagrams) {
      EXPECT_LT(t, t0 + 5s) << "a datagram sent at or after the deadline";
      EXPECT_EQ(d, first); // the same datagram: same message id and token
    }
    sent += out.datagrams.size();
    if (!out.events.empty()) {
      EXPECT_EQ(out.events[0].kind, Kind::Failed);
      EXPECT_EQ(out.events[0].failure, UpstreamFailure::Timeout);
      EXPECT_EQ(t, t0 + 5s) << "failed at its deadline";
    }
  }
  // At 1 to 1.5 s and 3 to 4.5 s; the next would come after the deadline.
  EXPECT_EQ(sent, 3u);
  EXPECT_TRUE(u.idle());
  EXPECT_FALSE(u.nextWake());
}

TEST(CoapUpstream, ARequestWaitingForItsTurnPastItsDeadlineIsNeverSent) {
  Upstream u({}, counter()); // NSTART 1
  UpstreamOutput out;
  ASSERT_TRUE(u.send(1, get("a", t0 + 5s), t0, out));
  ASSERT_TRUE(u.send(2, get("b", t0 + 2s), t0, out));
  ASSERT_EQ(out.datagrams.size(), 1u);
  const Bytes first = out.datagrams[0];
  std::vector<uint64_t> failed;
  for (auto t = t0; t <= t0 + 10s; t += 10ms) {
    out = {};
    u.expire(t, out);
    for (const auto& d : out.datagrams) {
      EXPECT_EQ(d, first) << "only the first request ever goes out";
    }
    for (const auto& e : out.events) {
      EXPECT_EQ(e.kind, Kind::Failed);
      failed.push_back(e.id);
    }
  }
  EXPECT_EQ(failed, (std::vector<uint64_t>{2, 1}));
}

TEST(CoapUpstream, TheNextRequestGoesWhenTheFirstIsAcknowledged) {
  Upstream u({}, counter());
  UpstreamOutput out;
  ASSERT_TRUE(u.send(1, get("a", t0 + 5s), t0, out));
  ASSERT_TRUE(u.send(2, get("b", t0 + 5s), t0, out));
  const Bytes first = out.datagrams[0];
  out = {};
  Message emptyAck; // the answer comes separately
  emptyAck.type = Type::Acknowledgement;
  emptyAck.messageId = parse(first)->messageId;
  ASSERT_EQ(u.receive(encode(emptyAck), t0 + 5ms, out), Upstream::Received::Handled);
  ASSERT_EQ(out.datagrams.size(), 1u) << "the second request starts";
  EXPECT_EQ(optionOf(*parse(out.datagrams[0]), options::kUriPath)->value.size(), 1u);
  // The separate answer to the first, confirmable: acknowledged; its repeat gets the same ACK and
  // is not a second answer.
  Reply separate;
  separate.type = Type::Confirmable;
  separate.mid = 0x4242;
  out = {};
  ASSERT_EQ(u.receive(separate.to(first), t0 + 1s, out), Upstream::Received::Handled);
  ASSERT_EQ(out.events.size(), 1u);
  EXPECT_EQ(out.events[0].id, 1u);
  ASSERT_EQ(out.datagrams.size(), 1u);
  const Message ackOfIt = *parse(out.datagrams[0]);
  EXPECT_EQ(ackOfIt.type, Type::Acknowledgement);
  EXPECT_EQ(ackOfIt.messageId, 0x4242);
  const Bytes sameAck = out.datagrams[0];
  out = {};
  ASSERT_EQ(u.receive(separate.to(first), t0 + 2s, out), Upstream::Received::Handled);
  EXPECT_TRUE(out.events.empty());
  EXPECT_EQ(out.datagrams, std::vector<Bytes>{sameAck});
}

TEST(CoapUpstream, ABlockWiseAnswerIsCollected) {
  Upstream u({}, counter());
  UpstreamOutput out;
  ASSERT_TRUE(u.send(1, get("big", t0 + 5s), t0, out));
  Bytes body;
  for (int i = 0; i < 40; ++i) {
    body.push_back(static_cast<uint8_t>('a' + i % 26));
  }
  for (uint32_t n = 0;; ++n) {
    ASSERT_EQ(out.datagrams.size(), 1u);
    const Bytes request = out.datagrams[0];
    if (n > 0) {
      const Message asked = *parse(request);
      const Option* b2 = optionOf(asked, options::kBlock2);
      ASSERT_NE(b2, nullptr);
      EXPECT_EQ(decodeBlock(b2->value)->number, n);
      EXPECT_EQ(optionOf(*parse(request), options::kObserve), nullptr);
    }
    const size_t from = n * 16;
    const bool more = from + 16 < body.size();
    Reply r;
    r.opts = {{options::kETag, {7}}, {options::kBlock2, block(n, more, 0)}};
    r.payload.assign(body.begin() + from, body.begin() + std::min(body.size(), from + 16));
    out = {};
    ASSERT_EQ(u.receive(r.to(request), t0 + 10ms, out), Upstream::Received::Handled);
    if (!more) {
      break;
    }
  }
  ASSERT_EQ(out.events.size(), 1u);
  EXPECT_EQ(out.events[0].kind, Kind::Answered);
  EXPECT_EQ(out.events[0].answer.body, body);
  EXPECT_EQ(out.events[0].answer.options, (std::vector<OwnedOption>{{options::kETag, {7}}}));
}

TEST(CoapUpstream, ASize2BeyondTheLimitFailsAtTheFirstBlock) {
  Upstream u({}, counter());
  UpstreamOutput out;
  ASSERT_TRUE(u.send(1, get("huge", t0 + 5s), t0, out));
  Reply r;
  r.opts = {{options::kBlock2, block(0, true, 6)}, {options::kSize2, encodeUint(0xffffffff)}};
  r.payload.assign(1024, 'x');
  const Bytes request = out.datagrams[0];
  out = {};
  u.receive(r.to(request), t0 + 10ms, out);
  EXPECT_TRUE(out.datagrams.empty()) << "nothing more is asked";
  ASSERT_EQ(out.events.size(), 1u);
  EXPECT_EQ(out.events[0].failure, UpstreamFailure::TooLarge);
}

TEST(CoapUpstream, AnEndlessBlockWiseAnswerStopsAtTheLimit) {
  UpstreamSettings s;
  s.maxBodyBytes = 64 * 1024;
  Upstream u(s, counter());
  UpstreamOutput out;
  ASSERT_TRUE(u.send(1, get("endless", t0 + 5s), t0, out));
  int asked = 1;
  for (uint32_t n = 0; n < 10'000 && out.events.empty(); ++n) {
    ASSERT_EQ(out.datagrams.size(), 1u);
    const Bytes request = out.datagrams[0];
    Reply r;
    r.opts = {{options::kBlock2, block(n, true, 6)}};
    r.payload.assign(1024, 'x');
    out = {};
    u.receive(r.to(request), t0 + 10ms, out);
    asked += static_cast<int>(out.datagrams.size());
  }
  ASSERT_EQ(out.events.size(), 1u);
  EXPECT_EQ(out.events[0].failure, UpstreamFailure::TooLarge);
  EXPECT_EQ(asked, 64) << "the 64th block would have made the body reach the limit";
  EXPECT_TRUE(u.idle());
}

TEST(CoapUpstream, ARequestBodyGoesBlockWiseInTheSizeTheDeviceAsksFor) {
  Upstream u({}, counter());
  UpstreamOutput out;
  UpstreamRequest put;
  put.method = codes::kPut;
  put.options.push_back({options::kUriPath, {'d'}});
  for (int i = 0; i < 3000; ++i) {
    put.body.push_back(static_cast<uint8_t>(i));
  }
  put.deadline = t0 + 5s;
  const Bytes body = put.body;
  ASSERT_TRUE(u.send(1, std::move(put), t0, out));
  Bytes received;
  for (int round = 0; round < 20; ++round) {
    ASSERT_EQ(out.datagrams.size(), 1u);
    const Bytes request = out.datagrams[0];
    const Message m = *parse(request);
    const auto b1 = decodeBlock(optionOf(m, options::kBlock1)->value);
    ASSERT_TRUE(b1);
    EXPECT_EQ(b1->number << (b1->szx + 4), received.size()) << "blocks in order";
    EXPECT_EQ(optionOf(m, options::kSize1) != nullptr, received.empty()) << "Size1 on the first";
    received.insert(received.end(), m.payload.begin(), m.payload.end());
    Reply r;
    // The device takes the first block and asks for 256-byte blocks from then on.
    r.code = b1->more ? codes::kContinue : code(2, 4);
    r.opts = {{options::kBlock1, block(b1->number, b1->more, round == 0 ? 4 : b1->szx)}};
    out = {};
    u.receive(r.to(request), t0 + 10ms, out);
    if (!b1->more) {
      break;
    }
    EXPECT_EQ(decodeBlock(optionOf(*parse(out.datagrams[0]), options::kBlock1)->value)->szx, 4);
  }
  EXPECT_EQ(received, body);
  ASSERT_EQ(out.events.size(), 1u);
  EXPECT_EQ(out.events[0].answer.code, code(2, 4));
}

TEST(CoapUpstream, ObserveNotificationsAndTheirLimits) {
  Upstream u({}, counter());
  UpstreamOutput out;
  ASSERT_TRUE(u.send(7, get("temp", t0 + 5s, true), t0, out));
  const Bytes registration = out.datagrams[0];
  EXPECT_NE(optionOf(*parse(registration), options::kObserve), nullptr);
  Reply first;
  first.opts = {{options::kObserve, encodeUint(5)}};
  first.payload = {'1'};
  out = {};
  u.receive(first.to(registration), t0 + 10ms, out);
  ASSERT_EQ(out.events.size(), 1u);
  EXPECT_TRUE(out.events[0].answer.observing);
  EXPECT_EQ(u.relations(), 1u);

  auto notification = [&](uint32_t seq, std::vector<std::pair<uint16_t, Bytes>> extra,
                          uint16_t mid) {
    Reply n;
    n.type = Type::Confirmable;
    n.mid = mid;
    n.opts = {{options::kObserve, encodeUint(seq)}};
    n.opts.insert(n.opts.end(), extra.begin(), extra.end());
    std::sort(n.opts.begin(), n.opts.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    n.payload = {'2'};
    out = {};
    return u.receive(n.to(registration), t0 + 1s, out);
  };
  EXPECT_EQ(notification(6, {}, 100), Upstream::Received::Handled);
  ASSERT_EQ(out.events.size(), 1u);
  EXPECT_EQ(out.events[0].kind, Kind::Notified);
  EXPECT_EQ(out.events[0].id, 7u);
  EXPECT_EQ(parse(out.datagrams.at(0))->type, Type::Acknowledgement);
  notification(4, {}, 101); // older than 6
  ASSERT_EQ(out.events.size(), 1u);
  EXPECT_EQ(out.events[0].kind, Kind::Dropped);
  notification(8, {{options::kBlock2, block(0, true, 6)}}, 102);
  ASSERT_EQ(out.events.size(), 1u);
  EXPECT_EQ(out.events[0].kind, Kind::Dropped) << "the rest of a larger one is not fetched";
  EXPECT_EQ(out.datagrams.size(), 1u) << "only the ACK";
  notification(9, {{options::kBlock2, block(0, true, 6)}, {options::kSize2, encodeUint(1 << 30)}},
               103);
  ASSERT_EQ(out.events.size(), 1u);
  EXPECT_EQ(out.events[0].kind, Kind::Ended);
  EXPECT_EQ(out.events[0].failure, UpstreamFailure::TooLarge);
  EXPECT_EQ(parse(out.datagrams.at(0))->type, Type::Reset) << "the device forgets the observer";
  EXPECT_EQ(u.relations(), 0u);
  EXPECT_EQ(notification(10, {}, 104), Upstream::Received::Unexpected);
  EXPECT_EQ(parse(out.datagrams.at(0))->type, Type::Reset);
}

TEST(CoapUpstream, ACancelledRelationshipsNotificationsAreReset) {
  Upstream u({}, counter());
  UpstreamOutput out;
  ASSERT_TRUE(u.send(3, get("temp", t0 + 5s, true), t0, out));
  const Bytes registration = out.datagrams[0];
  Reply first;
  first.opts = {{options::kObserve, encodeUint(1)}};
  out = {};
  u.receive(first.to(registration), t0, out);
  u.cancel(3, t0, out);
  EXPECT_TRUE(u.idle());
  Reply n;
  n.type = Type::NonConfirmable;
  n.mid = 9;
  n.opts = {{options::kObserve, encodeUint(2)}};
  out = {};
  EXPECT_EQ(u.receive(n.to(registration), t0 + 1s, out), Upstream::Received::Unexpected);
  ASSERT_EQ(out.datagrams.size(), 1u);
  EXPECT_EQ(parse(out.datagrams[0])->type, Type::Reset);
}

TEST(CoapUpstream, ResetAndUnreachableFailTheRequest) {
  Upstream u({}, counter());
  UpstreamOutput out;
  ASSERT_TRUE(u.send(1, get("a", t0 + 5s), t0, out));
  Message rst;
  rst.type = Type::Reset;
  rst.messageId = parse(out.datagrams[0])->messageId;
  out = {};
  u.receive(encode(rst), t0 + 1ms, out);
  ASSERT_EQ(out.events.size(), 1u);
  EXPECT_EQ(out.events[0].failure, UpstreamFailure::Reset);
  out = {};
  ASSERT_TRUE(u.send(2, get("b", t0 + 5s), t0, out));
  ASSERT_TRUE(u.send(3, get("c", t0 + 5s), t0, out));
  out = {};
  u.unreachable(t0 + 2ms, out);
  ASSERT_GE(out.events.size(), 1u);
  EXPECT_EQ(out.events[0].id, 2u);
  EXPECT_EQ(out.events[0].failure, UpstreamFailure::Unreachable);
  EXPECT_EQ(out.datagrams.size(), 1u) << "the next one is tried";
}

TEST(CoapUpstream, CancelStopsRetransmissionsAndGivesTheTurnOn) {
  Upstream u({}, counter());
  UpstreamOutput out;
  ASSERT_TRUE(u.send(1, get("a", t0 + 5s), t0, out));
  ASSERT_TRUE(u.send(2, get("b", t0 + 5s), t0, out));
  out = {};
  u.cancel(1, t0 + 100ms, out);
  ASSERT_EQ(out.datagrams.size(), 1u);
  const Bytes second = out.datagrams[0];
  for (auto t = t0 + 100ms; t < t0 + 6s; t += 10ms) {
    out = {};
    u.expire(t, out);
    for (const auto& d : out.datagrams) {
      EXPECT_EQ(d, second);
    }
  }
}

TEST(CoapUpstream, StrayMessagesAreResetOrIgnored) {
  Upstream u({}, counter());
  UpstreamOutput out;
  Message stray;
  stray.type = Type::NonConfirmable;
  stray.code = codes::kContent;
  stray.messageId = 1;
  const uint8_t token[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  stray.token = token;
  EXPECT_EQ(u.receive(encode(stray), t0, out), Upstream::Received::Unexpected);
  ASSERT_EQ(out.datagrams.size(), 1u);
  EXPECT_EQ(parse(out.datagrams[0])->type, Type::Reset);
  out = {};
  stray.type = Type::Acknowledgement;
  EXPECT_EQ(u.receive(encode(stray), t0, out), Upstream::Received::Unexpected);
  EXPECT_TRUE(out.datagrams.empty()) << "an ACK is never reset";
  const uint8_t garbage[] = {0x80, 1};
  EXPECT_EQ(u.receive(View(garbage), t0, out), Upstream::Received::Malformed);
}

TEST(CoapUpstream, TheQueueIsBounded) {
  UpstreamSettings s;
  s.maxQueued = 2;
  Upstream u(s, counter());
  UpstreamOutput out;
  EXPECT_TRUE(u.send(1, get("a", t0 + 5s), t0, out));
  EXPECT_TRUE(u.send(2, get("a", t0 + 5s), t0, out));
  EXPECT_TRUE(u.send(3, get("a", t0 + 5s), t0, out));
  EXPECT_FALSE(u.send(4, get("a", t0 + 5s), t0, out));
  EXPECT_EQ(u.exchanges(), 3u);
}

} // namespace
} // namespace iotgw::coap
