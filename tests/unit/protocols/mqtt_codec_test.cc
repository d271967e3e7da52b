// SPDX-License-Identifier: GPL-3.0-or-later
// The MQTT codec on byte vectors: framing, decoding, validation and encoding.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "protocols/mqtt/codec.h"
#include "protocols/mqtt/validate.h"

using namespace iotgw::mqtt;

namespace {

std::vector<uint8_t> hex(std::string_view h) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoi(std::string(h.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

// The whole pipeline a session runs on received bytes.
std::expected<Packet, CodecError> receive(std::span<const uint8_t> bytes, Version v,
                                          uint32_t maxPacket = 65536) {
  auto f = readFrame(bytes, maxPacket);
  if (!f) {
    return std::unexpected(f.error());
  }
  if (!*f) {
    return std::unexpected(CodecError{"incomplete", 0, "incomplete"});
  }
  if ((*f)->size != bytes.size()) {
    return std::unexpected(CodecError{"leftover", 0, "bytes after the frame"});
  }
  auto p = decodePacket(**f, v);
  if (!p) {
    return p;
  }
  const Version sv = std::holds_alternative<Connect>(*p) ? std::get<Connect>(*p).version : v;
  if (auto e = validateFromClient(*p, sv)) {
    return std::unexpected(*e);
  }
  return p;
}

Packet roundTrip(const Packet& p, Version v) {
  const auto bytes = encode(p, v);
  auto f = readFrame(bytes, 1 << 20);
  EXPECT_TRUE(f && *f) << "frame";
  EXPECT_EQ((*f)->size, bytes.size());
  auto d = decodePacket(**f, v);
  EXPECT_TRUE(d.has_value()) << (d ? "" : d.error().what);
  return *d;
}

} // namespace

TEST(MqttFraming, WaitsForCompletePackets) {
  const auto connect = hex("101000044d5154540402003c000474657374");
  for (size_t n = 0; n < connect.size(); ++n) {
    auto f = readFrame(std::span(connect).first(n), 1024);
    ASSERT_TRUE(f.has_value()) << n;
    EXPECT_FALSE(f->has_value()) << "complete after only " << n << " bytes";
  }
  auto f = readFrame(connect, 1024);
  ASSERT_TRUE(f && *f);
  EXPECT_EQ((*f)->size, connect.size());
  EXPECT_EQ((*f)->typeBits(), 1);
  EXPECT_EQ((*f)->body.size(), 16u);
}

TEST(MqttFraming, FindsFirstOfSeveralPackets) {
  auto two = hex("c000c000");
  auto f = readFrame(two, 1024);
  ASSERT_TRUE(f && *f);
  EXPECT_EQ((*f)->size, 2u);
}

TEST(MqttFraming, RemainingLengthBoundaries) {
  // 127 → 1 byte, 128 → 2 bytes, 16383 → 2 bytes, 16384 → 3 bytes, 268435455 → 4 bytes.
  for (uint32_t len : {0u, 127u, 128u, 16383u, 16384u, 2097151u, 2097152u, kMaxRemainingLength}) {
    std::vector<uint8_t> hdr{0x30};
    appendVarInt(hdr, len);
    auto f = readFrame(hdr, UINT32_MAX);
    ASSERT_TRUE(f.has_value()) << len;
    EXPECT_EQ(f->has_value(), len == 0) << len;
  }
  // The length alone decides "too large", before the body arrives.
  std::vector<uint8_t> big{0x30};
  appendVarInt(big, 5000);
  auto f = readFrame(big, 4096);
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().clause, "MQTT-3.2.2-15");
  EXPECT_EQ(f.error().reasonCode, reason::kPacketTooLarge);
  // A fifth length byte is an error even before it arrives.
  auto five = readFrame(hex("30ffffffff"), UINT32_MAX);
  ASSERT_FALSE(five);
  EXPECT_EQ(five.error().clause, "MQTT-1.5.5-1");
}

TEST(MqttDecode, KnownConnectFromMosquittoPub) {
  // mosquitto_pub -i test -k 60 (MQTT 3.1.1, clean session)
  auto p = receive(hex("101000044d5154540402003c000474657374"), Version::V311);
  ASSERT_TRUE(p) << p.error().clause;
  const auto& c = std::get<Connect>(*p);
  EXPECT_EQ(c.version, Version::V311);
  EXPECT_EQ(c.clientId, "test");
  EXPECT_EQ(c.keepAlive, 60);
  EXPECT_TRUE(c.cleanStart);
  EXPECT_FALSE(c.will);
  EXPECT_FALSE(c.username);
}

TEST(MqttDecode, Mqtt31ConnectIsLevel3UnderItsOwnName) {
  // mosquitto_pub -V mqttv31 -i test -k 60: protocol name "MQIsdp", level 3, clean session
  auto p = receive(hex("101200064d51497364700302003c000474657374"), Version::V311);
  ASSERT_TRUE(p) << p.error().clause << " " << p.error().what;
  const auto& c = std::get<Connect>(*p);
  EXPECT_EQ(c.version, Version::V31);
  EXPECT_EQ(c.protocolName, "MQIsdp");
  EXPECT_EQ(c.clientId, "test");
  EXPECT_EQ(c.keepAlive, 60);
  EXPECT_EQ(encode(c, Version::V31), hex("101200064d51497364700302003c000474657374"));
  // The names and the levels do not mix.
  for (const auto& [name, level] : {std::pair<std::string, Version>{"MQIsdp", Version::V311},
                                    {"MQIsdp", Version::V5},
                                    {"MQTT", Version::V31}}) {
    Connect wrong = c;
    wrong.protocolName = name;
    wrong.version = level;
    auto r = receive(encode(wrong, Version::V311), Version::V311);
    ASSERT_FALSE(r) << name;
    EXPECT_EQ(r.error().clause, "MQTT-3.1.2-2") << name;
  }
}

TEST(MqttDecode, ConnectWithEverything) {
  Connect c;
  c.version = Version::V5;
  c.cleanStart = false;
  c.keepAlive = 30;
  c.clientId = "thermo-01";
  c.properties = {Property{PropertyId::SessionExpiryInterval, 3600, {}, {}, {}},
                  Property{PropertyId::ReceiveMaximum, 20, {}, {}, {}},
                  Property{PropertyId::UserProperty, 0, "k", "v", {}},
                  Property{PropertyId::UserProperty, 0, "k", "w", {}}};
  c.will = Will{"devices/thermo-01/status",
                {'o', 'f', 'f'},
                1,
                true,
                {Property{PropertyId::WillDelayInterval, 5, {}, {}, {}}}};
  c.username = "thermo";
  c.password = std::vector<uint8_t>{'p', 'w'};
  const auto bytes = encode(c, Version::V5);
  auto p = receive(bytes, Version::V5);
  ASSERT_TRUE(p) << p.error().clause << " " << p.error().what;
  Connect back = std::get<Connect>(*p);
  EXPECT_EQ(back.flags, 0xEC); // username, password, will retain, will QoS 1, will
  back.flags = 0;
  EXPECT_EQ(back, c);
}

TEST(MqttCodec, EveryPacketTypeRoundTripsInBothVersions) {
  for (Version v : {Version::V311, Version::V5}) {
    const bool v5 = v == Version::V5;
    const Properties reasonProps =
        v5 ? Properties{Property{PropertyId::ReasonString, 0, "why", {}, {}}} : Properties{};
    std::vector<Packet> packets = {
        Connack{true, 0,
                v5 ? Properties{Property{PropertyId::ReceiveMaximum, 10, {}, {}, {}},
                                Property{PropertyId::TopicAliasMaximum, 0, {}, {}, {}}}
                   : Properties{}},
        Publish{false, 0, false, "a/b", 0, {}, {1, 2, 3}},
        Publish{true,
                1,
                true,
                "a/b",
                7,
                v5 ? Properties{Property{PropertyId::ContentType, 0, "application/json", {}, {}},
                                Property{PropertyId::CorrelationData, 0, {}, {}, {9, 9}}}
                   : Properties{},
                {}},
        Publish{false, 2, false, "x", 65535, {}, std::vector<uint8_t>(300, 'z')},
        Ack{PacketType::Puback, 1, 0, {}},
        Ack{PacketType::Pubrec, 2, v5 ? uint8_t{0x10} : uint8_t{0}, reasonProps},
        Ack{PacketType::Pubrel, 3, 0, {}},
        Ack{PacketType::Pubcomp, 4, 0, {}},
        Subscribe{
            5,
            v5 ? Properties{Property{PropertyId::SubscriptionIdentifier, 268435455, {}, {}, {}}}
               : Properties{},
            {Subscription{"a/+", 1}, Subscription{"b/#", v5 ? uint8_t{0x2E} : uint8_t{2}}}},
        SubAck{PacketType::Suback, 5, reasonProps, {0x01, 0x80}},
        Unsubscribe{6, {}, {"a/+", "b/#"}},
        SubAck{PacketType::Unsuback, 6, reasonProps,
               v5 ? std::vector<uint8_t>{0x00, 0x11} : std::vector<uint8_t>{}},
        Pingreq{},
        Pingresp{},
        Disconnect{v5 ? uint8_t{0x04} : uint8_t{0}, {}},
    };
    if (v5) {
      packets.push_back(
          Auth{0x18, {Property{PropertyId::AuthenticationMethod, 0, "SCRAM", {}, {}}}});
    }
    for (const auto& p : packets) {
      EXPECT_EQ(roundTrip(p, v), p) << toString(typeOf(p)) << " v" << static_cast<int>(v);
    }
  }
}

TEST(MqttEncode, KnownServerPackets) {
  EXPECT_EQ(encode(Connack{false, 0, {}}, Version::V311), hex("20020000"));
  EXPECT_EQ(encode(Connack{false, v311::kNotAuthorized, {}}, Version::V311), hex("20020005"));
  EXPECT_EQ(encode(Connack{false, reason::kNotAuthorized, {}}, Version::V5), hex("2003008700"));
  EXPECT_EQ(encode(Ack{PacketType::Puback, 0x1234, 0, {}}, Version::V311), hex("40021234"));
  EXPECT_EQ(encode(Ack{PacketType::Pubrel, 1, 0, {}}, Version::V311), hex("62020001"));
  EXPECT_EQ(encode(SubAck{PacketType::Suback, 1, {}, {0x01, 0x80}}, Version::V311),
            hex("900400010180"));
  EXPECT_EQ(encode(SubAck{PacketType::Unsuback, 1, {}, {}}, Version::V311), hex("b0020001"));
  EXPECT_EQ(encode(Pingresp{}, Version::V311), hex("d000"));
  EXPECT_EQ(encode(Disconnect{reason::kMalformedPacket, {}}, Version::V5), hex("e00181"));
  EXPECT_EQ(encode(Publish{false, 1, false, "a", 1, {}, {'x'}}, Version::V311),
            hex("3206000161000178"));
}

TEST(MqttValidate, AcceptsWhatTheSpecificationAllows) {
  // 5.0: a password without a user name, an empty client id with Clean Start 0, a topic alias
  // within the announced maximum, a shared subscription.
  Connect c;
  c.version = Version::V5;
  c.cleanStart = false;
  c.password = std::vector<uint8_t>{'x'};
  EXPECT_FALSE(validateFromClient(c, Version::V5));
  Publish p{false, 0, false, "", 0, {Property{PropertyId::TopicAlias, 3, {}, {}, {}}}, {}};
  EXPECT_TRUE(validateFromClient(p, Version::V5));
  EXPECT_FALSE(validateFromClient(p, Version::V5, ServerLimits{10}));
  Subscribe s{1, {}, {Subscription{"$share/group/sensors/+", 1}}};
  EXPECT_FALSE(validateFromClient(s, Version::V5));
  // '$' topics are valid names.
  EXPECT_FALSE(validateFromClient(Publish{false, 0, false, "$SYS/x", 0, {}, {}}, Version::V311));
}

struct MalformedCase {
  std::string name;
  Version version;
  std::string clause;
  std::vector<uint8_t> bytes;
};

void PrintTo(const MalformedCase& c, std::ostream* os) { *os << c.name; }

std::vector<MalformedCase> loadMalformedCases() {
  std::ifstream in(IOTGW_SOURCE_DIR "/tests/data/mqtt-malformed.txt");
  std::vector<MalformedCase> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') {
      continue;
    }
    std::istringstream ss(line);
    MalformedCase c;
    int v = 0;
    std::string h;
    ss >> c.name >> v >> c.clause >> h;
    c.version = static_cast<Version>(v);
    c.bytes = hex(h);
    out.push_back(std::move(c));
  }
  return out;
}

class MqttMalformed : public testing::TestWithParam<MalformedCase> {};

TEST_P(MqttMalformed, RefusedNamingTheClause) {
  const auto& c = GetParam();
  auto p = receive(c.bytes, c.version);
  ASSERT_FALSE(p.has_value()) << c.name << " was accepted";
  EXPECT_EQ(p.error().clause, c.clause) << c.name << ": " << p.error().what;
  EXPECT_GE(p.error().reasonCode, 0x80) << c.name;
}

INSTANTIATE_TEST_SUITE_P(Cases, MqttMalformed, testing::ValuesIn(loadMalformedCases()),
                         [](const testing::TestParamInfo<MalformedCase>& param) {
                           std::string n = param.param.name;
                           for (auto& ch : n) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) {
                               ch = '_';
                             }
                           }
                           return n;
                         });

TEST(MqttMalformedCorpus, HasAtLeastOneHundredCases) {
  EXPECT_GE(loadMalformedCases().size(), 100u);
}
