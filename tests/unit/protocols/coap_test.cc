// SPDX-License-Identifier: GPL-3.0-or-later
// The CoAP codec and the proxy's request validation, on byte vectors (RFC 7252, 7641, 7959).
#include <gtest/gtest.h>

#include "protocols/coap/blockwise.h"
#include "protocols/coap/message.h"
#include "protocols/coap/reply.h"
#include "protocols/coap/validate.h"

namespace iotgw::coap {
namespace {

Bytes bytes(std::initializer_list<int> v) {
  Bytes out;
  for (int b : v) {
    out.push_back(static_cast<uint8_t>(b));
  }
  return out;
}

View text(const std::string& s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

// A request built option by option (kept alive by the test's own strings).
struct Builder {
  Message m;
  std::vector<std::string> keep;
  explicit Builder(uint8_t code = codes::kGet, Type type = Type::Confirmable) {
    m.type = type;
    m.code = code;
    m.messageId = 0x1234;
    static const uint8_t token[] = {0xca, 0xfe};
    m.token = token;
  }
  Builder& opt(uint16_t number, std::string value) {
    keep.reserve(64);
    keep.push_back(std::move(value));
    m.options.push_back({number, text(keep.back())});
    return *this;
  }
  Builder& path(const std::string& p) {
    size_t start = 1;
    while (start <= p.size()) {
      const size_t end = p.find('/', start);
      opt(options::kUriPath,
          p.substr(start, end == std::string::npos ? std::string::npos : end - start));
      if (end == std::string::npos) {
        break;
      }
      start = end + 1;
    }
    return *this;
  }
  Builder& payload(const std::string& p) {
    keep.reserve(64);
    keep.push_back(p);
    m.payload = text(keep.back());
    return *this;
  }
};

TEST(CoapCodec, ParsesWhatCoapClientSends) {
  // coap-client -m get coap://host/thermo-01/sensors/temp, as captured: CON GET MID 0x1a2b,
  // token 0x7a 0x21, Uri-Path "thermo-01", "sensors", "temp".
  const Bytes d =
      bytes({0x42, 0x01, 0x1a, 0x2b, 0x7a, 0x21, 0xb9, 't', 'h', 'e',  'r', 'm', 'o', '-', '0',
             '1',  0x07, 's',  'e',  'n',  's',  'o',  'r', 's', 0x04, 't', 'e', 'm', 'p'});
  auto m = parse(d);
  ASSERT_TRUE(m.has_value()) << describe(m.error());
  EXPECT_EQ(m->type, Type::Confirmable);
  EXPECT_EQ(m->code, codes::kGet);
  EXPECT_EQ(m->messageId, 0x1a2b);
  EXPECT_EQ(m->token.size(), 2u);
  ASSERT_EQ(m->options.size(), 3u);
  EXPECT_EQ(m->options[2].number, options::kUriPath);
  EXPECT_TRUE(m->payload.empty());
  EXPECT_EQ(encode(*m), d); // and back, byte for byte
}

TEST(CoapCodec, ExtendedDeltasAndLengthsRoundTrip) {
  Builder b(codes::kPost);
  b.opt(options::kUriPath, std::string(300, 'a')) // length 300: two extended bytes
      .opt(options::kContentFormat, "\x32")
      .opt(options::kSize1, "\x01\x00")
      .opt(options::kEcho, "12345678") // number 252: delta 192, one extended byte
      .opt(options::kRequestTag, "t")  // delta 40
      .opt(2049, "x")                  // delta 1757: two extended bytes
      .payload("{\"t\":21}");
  const Bytes wire = encode(b.m);
  auto m = parse(wire);
  ASSERT_TRUE(m.has_value()) << describe(m.error());
  ASSERT_EQ(m->options.size(), 6u);
  EXPECT_EQ(m->options[0].value.size(), 300u);
  EXPECT_EQ(m->options[3].number, options::kEcho);
  EXPECT_EQ(m->options[5].number, 2049);
  EXPECT_EQ(std::string(m->payload.begin(), m->payload.end()), "{\"t\":21}");
  EXPECT_EQ(encode(*m), wire);
}

TEST(CoapCodec, RefusesMalformedDatagrams) {
  const std::vector<std::pair<Bytes, ParseError>> cases = {
      {bytes({0x40, 0x01, 0x00}), ParseError::TooShort},
      {bytes({0x80, 0x01, 0x00, 0x01}), ParseError::BadVersion},
      {bytes({0x49, 0x01, 0x00, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9}), ParseError::BadTokenLength},
      {bytes({0x44, 0x01, 0x00, 0x01, 1, 2}), ParseError::TooShort},
      {bytes({0x40, 0x21, 0x00, 0x01}), ParseError::ReservedCode},
      {bytes({0x40, 0xe0, 0x00, 0x01}), ParseError::ReservedCode},
      {bytes({0x40, 0x01, 0x00, 0x01, 0xf1, 0x00}), ParseError::ReservedNibble},
      {bytes({0x40, 0x01, 0x00, 0x01, 0x1f}), ParseError::ReservedNibble},
      {bytes({0x40, 0x01, 0x00, 0x01, 0xd0}), ParseError::TruncatedOption},
      {bytes({0x40, 0x01, 0x00, 0x01, 0xe0, 0x01}), ParseError::TruncatedOption},
      {bytes({0x40, 0x01, 0x00, 0x01, 0xb5, 'a', 'b'}), ParseError::TruncatedOption},
      {bytes({0x40, 0x01, 0x00, 0x01, 0xe0, 0xff, 0x00, 0xe0, 0xff, 0x00}),
       ParseError::OptionNumberTooLarge},
      {bytes({0x40, 0x01, 0x00, 0x01, 0xff}), ParseError::EmptyPayload},
      {bytes({0x41, 0x00, 0x00, 0x01, 0x01}), ParseError::EmptyWithContent},
      {bytes({0x40, 0x00, 0x00, 0x01, 0xff, 0x01}), ParseError::EmptyWithContent},
  };
  for (const auto& [d, want] : cases) {
    auto m = parse(d);
    ASSERT_FALSE(m.has_value()) << "accepted " << d.size() << " bytes";
    EXPECT_EQ(m.error(), want) << describe(m.error()) << " instead of " << describe(want);
  }
  Bytes many = bytes({0x40, 0x01, 0x00, 0x01});
  for (size_t i = 0; i <= kMaxOptions; ++i) {
    many.push_back(0x00); // option delta 0, length 0: the same number again and again
  }
  ASSERT_FALSE(parse(many).has_value());
  EXPECT_EQ(parse(many).error(), ParseError::TooManyOptions);
  EXPECT_TRUE(parse(bytes({0x40, 0x00, 0x12, 0x34})).has_value()); // an empty CON (ping)
}

TEST(CoapCodec, Uints) {
  EXPECT_TRUE(encodeUint(0).empty());
  EXPECT_EQ(encodeUint(0x1234), bytes({0x12, 0x34}));
  EXPECT_EQ(decodeUint(encodeUint(0xabcdef)), 0xabcdefu);
  auto b = decodeBlock(encodeBlock({5, true, 6}));
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->number, 5u);
  EXPECT_TRUE(b->more);
  EXPECT_EQ(b->size(), 1024u);
  EXPECT_FALSE(decodeBlock(bytes({0x07})).has_value()); // szx 7 is reserved
}

Refusal refused(const Message& m, const Limits& l = {}) {
  auto r = validateRequest(m, l);
  EXPECT_FALSE(r.has_value()) << "accepted " << (r ? r->path : "");
  return r ? Refusal{} : r.error();
}

TEST(CoapValidate, AcceptsAndRebuildsARequest) {
  Builder b(codes::kPut);
  b.opt(options::kUriHost, "gw.local")
      .path("/thermo-01/config/interval")
      .opt(options::kContentFormat, "")
      .opt(options::kUriQuery, "unit=s")
      .opt(65000, "elective and unknown")
      .payload("30");
  auto r = validateRequest(b.m, Limits{});
  ASSERT_TRUE(r.has_value()) << r.error().reason;
  EXPECT_EQ(r->path, "/thermo-01/config/interval");
  EXPECT_EQ(r->segments.size(), 3u);
  EXPECT_EQ(r->query, std::vector<std::string>{"unit=s"});
  EXPECT_EQ(r->contentFormat, 0);
  EXPECT_EQ(r->droppedElective, 1u);
  for (const auto& o : r->forward) { // Uri-Host and the unknown option are not forwarded
    EXPECT_NE(o.number, options::kUriHost);
    EXPECT_NE(o.number, 65000);
  }
  EXPECT_EQ(r->forward.size(), 5u);
  Builder root(codes::kGet);
  auto top = validateRequest(root.m, Limits{});
  ASSERT_TRUE(top.has_value());
  EXPECT_EQ(top->path, "/");
}

TEST(CoapValidate, RefusesWithTheRightCode) {
  EXPECT_EQ(refused(Builder().path("/a").opt(65001, "x").m).code, codes::kBadOption);
  EXPECT_EQ(refused(Builder().opt(options::kOscore, "").path("/a").m).code, codes::kBadOption);
  EXPECT_EQ(refused(Builder().opt(options::kUriHost, "a").opt(options::kUriHost, "b").m).code,
            codes::kBadOption); // critical and repeated
  EXPECT_EQ(refused(Builder().opt(options::kUriHost, "").m).code, codes::kBadOption); // too short
  EXPECT_EQ(refused(Builder().opt(options::kProxyUri, "coap://10.0.0.1/x").m).code,
            codes::kProxyingNotSupported);
  EXPECT_EQ(refused(Builder().opt(options::kBlock2, "\x07").m).code, codes::kBadOption);
  EXPECT_EQ(refused(Builder().opt(options::kBlock2, "\x10\x06").m).code, // block 256 of 1 KiB
            codes::kRequestEntityTooLarge);
  EXPECT_EQ(refused(Builder(codes::kPost)
                        .path("/a")
                        .opt(options::kSize1, std::string("\x01\x00\x00\x00", 4))
                        .m)
                .code,
            codes::kRequestEntityTooLarge);
  Limits l;
  l.maxPathSegments = 3;
  EXPECT_EQ(refused(Builder().path("/a/b/c/d").m, l).code, codes::kBadRequest);
  EXPECT_EQ(refused(Builder().path("/" + std::string(65, 'x')).m).code, codes::kBadRequest);
  EXPECT_EQ(refused(Builder().path("/a\nb").m).code, codes::kBadRequest);
  l = {};
  l.maxPayloadBytes = 4;
  EXPECT_EQ(refused(Builder(codes::kPut).path("/a").payload("12345").m, l).code,
            codes::kRequestEntityTooLarge);
  // The content format is the device's policy (evaluator_test: CoapContentFormatOneRule).
  EXPECT_TRUE(validateRequest(
      Builder(codes::kPut).path("/a").opt(options::kContentFormat, "\x32").payload("{}").m, {}));
  EXPECT_EQ(refused(Builder(codes::kGet).path("/a").payload("x").m).code, codes::kBadRequest);
  EXPECT_EQ(refused(Builder(code(0, 8)).m).code, codes::kMethodNotAllowed);
  EXPECT_EQ(refused(Builder(codes::kContent).m).code, codes::kBadRequest);
  EXPECT_EQ(refused(Builder(codes::kGet, Type::Acknowledgement).m).code, codes::kBadRequest);
}

TEST(CoapValidate, ElectiveProblemsAreDroppedNotFatal) {
  Builder b;
  // On the wire options come in ascending order: Observe (6), Uri-Path (11), Size2 (28).
  b.opt(options::kObserve, "").opt(options::kObserve, "\x01"); // repeated elective
  b.path("/a").opt(options::kSize2, "12345");                  // too long, elective
  auto r = validateRequest(b.m, Limits{});
  ASSERT_TRUE(r.has_value()) << r.error().reason;
  EXPECT_EQ(r->observe, 0u);
  EXPECT_EQ(r->droppedElective, 2u);
  // The same faults in critical options are fatal: Accept (17) is critical.
  Builder c;
  c.path("/a").opt(options::kAccept, "\x01\x02\x03");
  EXPECT_EQ(refused(c.m).code, codes::kBadOption);
}

TEST(CoapValidate, LargeBlocksAreNegotiatedDown) {
  Builder b;
  b.path("/fw").opt(options::kBlock2, "\x00"); // block 0, szx 0 (16 bytes): fine
  auto r = validateRequest(b.m, Limits{});
  ASSERT_TRUE(r && r->block2);
  EXPECT_EQ(r->block2->size(), 16u);
  Limits small;
  small.maxBlockSzx = 2;
  Builder big;
  big.path("/fw").opt(options::kBlock2, "\x06"); // asks for 1 KiB blocks
  r = validateRequest(big.m, small);
  ASSERT_TRUE(r && r->block2);
  EXPECT_EQ(r->block2->size(), 64u);
}

} // namespace
} // namespace iotgw::coap

namespace iotgw::coap {
namespace {

TEST(CoapReply, RefusalIsPiggybackedWithTheTokenAndATrimmedReason) {
  const Bytes get = {0x42, 0x01, 0x1a, 0x2b, 0x7a, 0x21, 0xb1, 'x'};
  auto request = parse(get);
  ASSERT_TRUE(request.has_value());
  const std::string reason = std::string(70, 'a') + "\xc3\xa9"; // 'é' straddles no cut here
  // Messages are views into their datagram: keep each reply's bytes alive while reading it.
  const Bytes replyBytes = refusalFor(*request, codes::kBadOption, reason);
  auto reply = parse(replyBytes);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->type, Type::Acknowledgement);
  EXPECT_EQ(reply->code, codes::kBadOption);
  EXPECT_EQ(reply->messageId, 0x1a2b);
  EXPECT_EQ(Bytes(reply->token.begin(), reply->token.end()), Bytes({0x7a, 0x21}));
  EXPECT_EQ(reply->payload.size(), kMaxDiagnosticBytes);
  // A cut inside a UTF-8 sequence backs off to its start.
  const Bytes cutBytes = refusalFor(*request, codes::kBadRequest, "ab\xc3\xa9", 3);
  auto cut = parse(cutBytes);
  ASSERT_TRUE(cut.has_value());
  EXPECT_EQ(cut->payload.size(), 2u);
  Message non = *request;
  non.type = Type::NonConfirmable;
  const Bytes nonBytes = refusalFor(non, codes::kNotFound, "");
  auto nonReply = parse(nonBytes);
  ASSERT_TRUE(nonReply.has_value());
  EXPECT_EQ(nonReply->type, Type::NonConfirmable);
  EXPECT_TRUE(nonReply->payload.empty());
}

TEST(CoapReply, ResetOnlyForConAndNon) {
  const Bytes conBytes = {0x40, 0x01, 0x00, 0x09};
  auto con = parse(conBytes);
  ASSERT_TRUE(con.has_value());
  const Bytes rstBytes = resetFor(*con);
  auto rst = parse(rstBytes);
  ASSERT_TRUE(rst.has_value());
  EXPECT_EQ(rst->type, Type::Reset);
  EXPECT_EQ(rst->messageId, 9);
  EXPECT_TRUE(rst->isEmpty());
  const Bytes ackBytes = {0x60, 0x00, 0x00, 0x09};
  auto ack = parse(ackBytes);
  ASSERT_TRUE(ack.has_value());
  EXPECT_TRUE(resetFor(*ack).empty());
}

TEST(CoapReply, AmplificationBudgetIsThreeTimesWhatCameIn) {
  AmplificationBudget b;
  EXPECT_FALSE(b.allows(1)); // nothing received, nothing may go out
  b.received(20);
  EXPECT_TRUE(b.allows(60));
  EXPECT_FALSE(b.allows(61));
  b.sent(50);
  EXPECT_TRUE(b.allows(10));
  EXPECT_FALSE(b.allows(11));
  b.received(7);
  EXPECT_TRUE(b.allows(31));
  EXPECT_FALSE(b.allows(32));
}

} // namespace
} // namespace iotgw::coap

namespace iotgw::coap {
namespace {

TEST(CoapBlockBody, CollectsInOrderAndStopsAtTheLimit) {
  BlockBody body(40);
  const Bytes a(16, 'a'), b(16, 'b'), c(16, 'c');
  EXPECT_EQ(body.add(0, a, true), BlockBody::Step::More);
  EXPECT_EQ(body.add(0, a, true), BlockBody::Step::Repeat) << "a retransmitted block";
  EXPECT_EQ(body.add(32, c, true).error(), BlockBody::Error::Gap) << "block 1 is missing";
  EXPECT_EQ(body.add(16, b, true), BlockBody::Step::More);
  EXPECT_EQ(body.add(32, c, false).error(), BlockBody::Error::TooLarge) << "48 bytes > 40";
  EXPECT_EQ(body.size(), 32U);
  BlockBody whole(64);
  ASSERT_EQ(whole.add(0, a, true), BlockBody::Step::More);
  ASSERT_EQ(whole.add(16, b, false), BlockBody::Step::Complete);
  Bytes expected = a;
  expected.insert(expected.end(), b.begin(), b.end());
  EXPECT_EQ(whole.take(), expected);
}

} // namespace
} // namespace iotgw::coap
