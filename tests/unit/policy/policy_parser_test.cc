// SPDX-License-Identifier: GPL-3.0-or-later
#include <gtest/gtest.h>

#include "tests/unit/support/bad_document.h"

#include "policy/policy_parser.h"
#include "tests/unit/support/test_docs.h"

using namespace iotgw::policy;

namespace {

std::string hashFor(const char* password) {
  auto h = PasswordHash::create(password, PasswordHash::kMinIterations);
  EXPECT_TRUE(h.has_value());
  return h->str();
}

} // namespace

TEST(PolicyParser, ParsesEveryConstruct) {
  const auto doc = iotgw::test::fullPolicy(hashFor("s3cret-thermo"));
  auto p = parseDevicePolicy(doc, "thermo-01.toml");
  ASSERT_TRUE(p.has_value()) << (p ? "" : p.error().front().str());
  EXPECT_EQ(p->id.str(), "thermo-01");
  EXPECT_EQ(p->document, doc); // what GetDevice shows, even after the file changes
  ASSERT_TRUE(p->mac);
  EXPECT_EQ(p->mac->str(), "02:00:00:00:00:10");
  ASSERT_EQ(p->addresses.size(), 2u);
  EXPECT_EQ(p->addresses[0].str(), "192.168.50.10");
  EXPECT_EQ(p->addresses[1].family, AF_INET6);
  EXPECT_EQ(p->metadata.manufacturer, "Acme");
  EXPECT_EQ(p->metadata.model, "T-100");
  EXPECT_EQ(p->metadata.firmwareVersion, "1.2.3");
  ASSERT_TRUE(p->metadata.supportUntil);
  EXPECT_EQ(*p->metadata.supportUntil, (CivilDate{2027, 12, 31}));
  EXPECT_EQ(p->metadata.vulnerabilityContact, "https://acme.example/security");
  EXPECT_EQ(p->mqtt.clientId, "thermo-01");
  EXPECT_EQ(p->mqtt.username, "thermo");
  ASSERT_TRUE(p->mqtt.passwordHash);
  EXPECT_TRUE(p->mqtt.passwordHash->verify("s3cret-thermo"));
  EXPECT_FALSE(p->mqtt.passwordHash->verify("s3cret-thermO"));
  EXPECT_EQ(p->certificate.commonName, "thermo-01");
  EXPECT_EQ(p->certificate.subjectAltNames.size(), 2u);

  const auto& m = p->mqttRules;
  EXPECT_EQ(m.upstreamPrefix, "home/%d/");
  EXPECT_EQ(m.upstreamIdentity, UpstreamIdentity::Issued);
  EXPECT_EQ(m.publish, (std::vector<std::string>{"devices/%c/telemetry/#", "devices/%c/state"}));
  EXPECT_EQ(m.subscribe.size(), 2u);
  EXPECT_EQ(m.maxQos, 1);
  EXPECT_EQ(m.maxPayloadBytes, 1024u);
  EXPECT_TRUE(m.retainAllowed);
  EXPECT_EQ(m.upstreamUsername, "%d");
  EXPECT_EQ(m.maxClients, 2u);
  EXPECT_EQ(m.whenQueueFull, MqttRules::WhenQueueFull::DropOldest);
  EXPECT_DOUBLE_EQ(m.rate.messagesPerSecond, 5);
  EXPECT_DOUBLE_EQ(m.rate.messageBurst, 20);
  EXPECT_DOUBLE_EQ(m.rate.bytesPerSecond, 4096.5);
  EXPECT_DOUBLE_EQ(m.rate.byteBurst, 16384);
  ASSERT_EQ(m.payloadRules.size(), 2u);
  const auto& pr = m.payloadRules[0];
  EXPECT_EQ(pr.id, "mqtt.payload[0]");
  EXPECT_EQ(pr.format, PayloadFormat::Json);
  EXPECT_EQ(pr.kind, JsonKind::Object);
  EXPECT_EQ(pr.required, (std::vector<std::string>{"t", "unit"}));
  EXPECT_FALSE(pr.allowOtherKeys);
  ASSERT_EQ(pr.fields.size(), 3u);
  // toml++ keeps keys ordered by name.
  EXPECT_EQ(pr.fields[0].name, "seq");
  EXPECT_EQ(pr.fields[0].kind, JsonKind::Integer);
  EXPECT_EQ(pr.fields[1].name, "t");
  EXPECT_EQ(pr.fields[1].min, -40);
  EXPECT_EQ(pr.fields[1].max, 85.5);
  EXPECT_EQ(pr.fields[2].enumValues, (std::vector<std::string>{"C", "F"}));
  EXPECT_EQ(pr.fields[2].maxLength, 1u);
  EXPECT_EQ(m.payloadRules[1].format, PayloadFormat::Utf8);

  const auto& c = p->coapRules;
  EXPECT_EQ(c.maxPayloadBytes, 512u);
  EXPECT_EQ(c.contentFormats, (std::vector<uint16_t>{0, 50}));
  ASSERT_EQ(c.rules.size(), 2u);
  EXPECT_EQ(c.rules[0].methods, (std::vector<CoapMethod>{CoapMethod::Get}));
  EXPECT_EQ(c.rules[1].methods, (std::vector<CoapMethod>{CoapMethod::Put, CoapMethod::Post}));
  EXPECT_EQ(c.rules[1].path, "/config/**");

  ASSERT_EQ(p->network.outbound.size(), 3u);
  EXPECT_EQ(toString(p->network.outbound[0]), "203.0.113.10:8883/tcp");
  EXPECT_EQ(toString(p->network.outbound[1]), "198.51.100.0/24:123/udp");
  EXPECT_EQ(toString(p->network.outbound[2]), "[2001:db8::1]:443/tcp");
  ASSERT_EQ(p->network.services.size(), 2u);
  EXPECT_EQ(toString(p->network.services[1]), "5683/udp");
  EXPECT_EQ(p->onViolation, ViolationAction::Quarantine);
}

TEST(PolicyParser, MinimalDeviceGetsSafeDefaults) {
  auto p = parseDevicePolicy(R"([device]
id = "plug-7"
mac = "02:00:00:00:00:07"
addresses = ["192.168.50.7"]
)",
                             "plug-7.toml");
  ASSERT_TRUE(p.has_value()) << p.error().front().str();
  EXPECT_TRUE(p->mqttRules.publish.empty());
  EXPECT_TRUE(p->mqttRules.subscribe.empty());
  EXPECT_FALSE(p->mqttRules.retainAllowed);
  EXPECT_EQ(p->mqttRules.upstreamIdentity, UpstreamIdentity::Shared);
  EXPECT_TRUE(p->mqttRules.upstreamUsername.empty());
  EXPECT_EQ(p->mqttRules.maxClients, 4u);
  EXPECT_EQ(p->mqttRules.whenQueueFull, MqttRules::WhenQueueFull::Refuse);
  EXPECT_TRUE(p->coapRules.rules.empty());
  EXPECT_TRUE(p->network.outbound.empty());
  EXPECT_EQ(p->onViolation, ViolationAction::Drop);
}

using iotgw::test::BadDocument;

class PolicyParserRejects : public testing::TestWithParam<BadDocument> {};

TEST_P(PolicyParserRejects, WithPosition) {
  iotgw::test::expectRejected(GetParam(), parseDevicePolicy(GetParam().text, "dev.toml"),
                              "dev.toml");
}

const std::string kHead = "[device]\nid = \"d1\"\nmac = \"02:00:00:00:00:01\"\n"
                          "addresses = [\"192.168.50.9\"]\n"; // 4 lines

INSTANTIATE_TEST_SUITE_P(
    Documents, PolicyParserRejects,
    testing::Values(
        BadDocument{"SyntaxError", "[device\nid = 1", 1, 8, "expected"},
        BadDocument{"MissingDeviceTable", "[mqtt]\nmax_qos = 1\n", 1, 1,
                    "missing required key 'device'"},
        BadDocument{"MissingId", "[device]\nmac = \"02:00:00:00:00:01\"\n", 1, 1, "'device.id'"},
        BadDocument{"IdWrongType", "[device]\nid = 42\n", 2, 6, "must be a string"},
        BadDocument{"MaxClientsRange", "[device]\nid = \"a\"\n[mqtt]\nmax_clients = 65\n", 4, 15,
                    "out of range"},
        BadDocument{"IdUppercase", "[device]\nid = \"Thermo\"\n", 2, 6, "[a-z0-9._-]"},
        BadDocument{"IdTooLong", "[device]\nid = \"" + std::string(64, 'a') + "\"\n", 2, 6,
                    "longer than 63"},
        BadDocument{"UnknownDeviceKeyAfterHead", kHead + "colour = \"red\"\n", 5, 1,
                    "unknown key 'device.colour'"},
        BadDocument{"UnknownTopKey", "colour = \"red\"\n" + kHead, 1, 1, "unknown key 'colour'"},
        BadDocument{"UnknownDeviceKey", "[device]\nid = \"d1\"\nserial = \"x\"\n", 3, 1,
                    "unknown key 'device.serial'"},
        BadDocument{"BadMac", "[device]\nid = \"d1\"\nmac = \"02:00:00:00:00\"\n", 3, 7,
                    "device.mac"},
        BadDocument{
            "BadAddress",
            "[device]\nid = \"d1\"\nmac = \"02:00:00:00:00:01\"\naddresses = [\"192.168.1.300\"]\n",
            4, 14, "not an IPv4 or IPv6"},
        BadDocument{"AddressesNeedMac", "[device]\nid = \"d1\"\naddresses = [\"192.168.1.3\"]\n", 3,
                    13, "needs 'device.mac'"},
        BadDocument{"NoIdentity", "[device]\nid = \"d1\"\n", 1, 1, "no way to be recognised"},
        BadDocument{"BadSupportDate", kHead + "support_until = \"2027\"\n", 5, 17,
                    "must be a date"},
        BadDocument{"UsernameWithoutHash",
                    "[device]\nid = \"d1\"\n[device.mqtt]\nusername = \"u\"\n", 3, 1,
                    "without 'password_hash'"},
        BadDocument{"BadHashScheme",
                    "[device]\nid = \"d1\"\n[device.mqtt]\nusername = \"u\"\npassword_hash = "
                    "\"md5$1$2$3\"\n",
                    5, 17, "scheme must be"},
        BadDocument{
            "HashTooFewIterations",
            "[device]\nid = \"d1\"\n[device.mqtt]\nusername = \"u\"\npassword_hash = "
            "\"pbkdf2-sha256$1000$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"\n",
            5, 17, "iteration count"},
        BadDocument{"HashBadBase64",
                    "[device]\nid = \"d1\"\n[device.mqtt]\nusername = \"u\"\npassword_hash = "
                    "\"pbkdf2-sha256$10000$!!$AAAA\"\n",
                    5, 17, "salt"},
        BadDocument{"PlainPasswordKey",
                    "[device]\nid = \"d1\"\n[device.mqtt]\npassword = \"admin\"\n", 4, 1,
                    "unknown key 'device.mqtt.password'"},
        BadDocument{"EmptyCertificate", kHead + "[device.certificate]\n", 5, 1,
                    "needs 'common_name'"},
        BadDocument{"PublishNotArray", kHead + "[mqtt]\npublish = \"a/b\"\n", 6, 11,
                    "array of strings"},
        BadDocument{"PublishMisplacedHash", kHead + "[mqtt]\npublish = [\"a/#/b\"]\n", 6, 12,
                    "MQTT-4.7.1-2"},
        BadDocument{"SubscribeMisplacedPlus", kHead + "[mqtt]\nsubscribe = [\"ok/x\", \"a+/b\"]\n",
                    6, 22, "MQTT-4.7.1-3"},
        BadDocument{"PartialSubstitution", kHead + "[mqtt]\npublish = [\"dev-%c/x\"]\n", 6, 12,
                    "%c"},
        // A scope the device would choose itself: %c without a pinned client id, %u without a
        // login.
        BadDocument{"ClientIdPlaceholderUnpinned",
                    kHead + "[mqtt]\npublish = [\"ok/x\", \"devices/%c/x\"]\n", 6, 20,
                    "'mqtt.publish' uses %c, but 'device.mqtt.client_id' is not set"},
        BadDocument{"UserPlaceholderWithoutLogin", kHead + "[mqtt]\nsubscribe = [\"users/%u/#\"]\n",
                    6, 14, "'mqtt.subscribe' uses %u, but 'device.mqtt.username' is not set"},
        BadDocument{"PayloadTopicClientIdUnpinned",
                    kHead + "[[mqtt.payload]]\ntopic = \"d/%c\"\nformat = \"utf8\"\n", 6, 9,
                    "'mqtt.payload[0].topic' uses %c"},
        BadDocument{"UpstreamPrefixWildcard", kHead + "[mqtt]\nupstream_prefix = \"home/+/\"\n", 6,
                    19, "upstream_prefix"},
        BadDocument{"UpstreamPrefixNoSlash", kHead + "[mqtt]\nupstream_prefix = \"home\"\n", 6, 19,
                    "ending in '/'"},
        BadDocument{"UpstreamPrefixPartialId", kHead + "[mqtt]\nupstream_prefix = \"home/x%d/\"\n",
                    6, 19, "whole level"},
        BadDocument{"UnknownUpstreamIdentity", kHead + "[mqtt]\nupstream_identity = \"own\"\n", 6,
                    21, "upstream_identity"},
        BadDocument{"QosOutOfRange", kHead + "[mqtt]\nmax_qos = 3\n", 6, 11, "out of range [0, 2]"},
        BadDocument{"QosWrongType", kHead + "[mqtt]\nmax_qos = 1.0\n", 6, 11, "must be an integer"},
        BadDocument{"NegativePayloadLimit", kHead + "[mqtt]\nmax_payload_bytes = -1\n", 6, 21,
                    "out of range"},
        BadDocument{"RetainNotBool", kHead + "[mqtt]\nretain = \"no\"\n", 6, 10,
                    "must be a boolean"},
        BadDocument{"NegativeRate", kHead + "[mqtt.rate]\nmessages_per_second = -5\n", 6, 23,
                    "[0, 1e9]"},
        BadDocument{"MessageBurstBelowOne",
                    kHead + "[mqtt.rate]\nmessages_per_second = 1\nmessage_burst = 0.5\n", 7, 17,
                    "at least 1"},
        BadDocument{"ByteBurstBelowPayload",
                    kHead + "[mqtt]\nmax_payload_bytes = 1000\n[mqtt.rate]\nbytes_per_second = "
                            "10\nbyte_burst = 500\n",
                    9, 14, "could never pass"},
        BadDocument{"UnknownRateKey", kHead + "[mqtt.rate]\nper_minute = 5\n", 6, 1,
                    "unknown key 'mqtt.rate.per_minute'"},
        BadDocument{"PayloadWithoutTopic", kHead + "[[mqtt.payload]]\nformat = \"json\"\n", 5, 1,
                    "'mqtt.payload[0].topic'"},
        BadDocument{"PayloadBadFormat",
                    kHead + "[[mqtt.payload]]\ntopic = \"a\"\nformat = \"xml\"\n", 7, 10,
                    "must be one of \"json\", \"utf8\", \"binary\""},
        BadDocument{
            "JsonKeyOnBinary",
            kHead + "[[mqtt.payload]]\ntopic = \"a\"\nformat = \"binary\"\nrequired = [\"x\"]\n", 8,
            12, "applies only to format"},
        BadDocument{"FieldBadType",
                    kHead + "[[mqtt.payload]]\ntopic = \"a\"\nformat = "
                            "\"json\"\n[mqtt.payload.fields.t]\ntype = \"float\"\n",
                    9, 8, "not a JSON type"},
        BadDocument{"FieldMinAboveMax",
                    kHead +
                        "[[mqtt.payload]]\ntopic = \"a\"\nformat = "
                        "\"json\"\n[mqtt.payload.fields.t]\ntype = \"number\"\nmin = 5\nmax = 1\n",
                    11, 7, "smaller than its min"},
        BadDocument{"EnumOnNumber",
                    kHead +
                        "[[mqtt.payload]]\ntopic = \"a\"\nformat = "
                        "\"json\"\n[mqtt.payload.fields.t]\ntype = \"number\"\nenum = [\"1\"]\n",
                    8, 1, "max_length/enum need type"},
        BadDocument{"PayloadNotArrayOfTables", kHead + "[mqtt.payload]\ntopic = \"a\"\n", 5, 1,
                    "array of tables"},
        BadDocument{"CoapBadMethod",
                    kHead + "[[coap.rule]]\nmethods = [\"GET\", \"FETCHALL\"]\npath = \"/a\"\n", 6,
                    19, "not a CoAP method"},
        BadDocument{"CoapRelativePath",
                    kHead + "[[coap.rule]]\nmethods = [\"GET\"]\npath = \"a/b\"\n", 7, 8,
                    "must start with '/'"},
        BadDocument{"CoapDoubleStarInMiddle",
                    kHead + "[[coap.rule]]\nmethods = [\"GET\"]\npath = \"/a/**/b\"\n", 7, 8,
                    "'**' may only be the last"},
        BadDocument{"CoapContentFormatRange", kHead + "[coap]\ncontent_formats = [0, 70000]\n", 6,
                    23, "out of range"},
        BadDocument{"EndpointWithoutProto",
                    kHead + "[network]\noutbound = [\"203.0.113.10:8883\"]\n", 6, 13,
                    "address:port/proto"},
        BadDocument{"EndpointPortZero", kHead + "[network]\noutbound = [\"203.0.113.10:0/tcp\"]\n",
                    6, 13, "address:port/proto"},
        BadDocument{"EndpointHostname",
                    kHead + "[network]\noutbound = [\"cloud.example:443/tcp\"]\n", 6, 13,
                    "address:port/proto"},
        BadDocument{"ServiceBadProto", kHead + "[network]\nservices = [\"80/sctp\"]\n", 6, 13,
                    "port/proto"},
        BadDocument{"BadViolationAction", kHead + "[violation]\naction = \"ignore\"\n", 6, 10,
                    "must be one of \"drop\", \"disconnect\", \"quarantine\""},
        BadDocument{"DuplicateKey", kHead + "[mqtt]\nmax_qos = 1\nmax_qos = 2\n", 7, 11,
                    "cannot redefine"}));

TEST(PolicyParser, ReportsEveryErrorInLineOrder) {
  auto p = parseDevicePolicy(
      kHead + "[mqtt]\nmax_qos = 9\nretain = 1\n[violation]\naction = \"x\"\n", "dev.toml");
  ASSERT_FALSE(p);
  ASSERT_EQ(p.error().size(), 3u);
  EXPECT_EQ(p.error()[0].line, 6u);
  EXPECT_EQ(p.error()[1].line, 7u);
  EXPECT_EQ(p.error()[2].line, 9u);
  EXPECT_EQ(p.error()[0].str().rfind("dev.toml:6:11: ", 0), 0u);
}

TEST(PolicyParser, RefusesOversizeDocuments) {
  PolicyLimits limits;
  limits.maxDocumentBytes = 64;
  auto p = parseDevicePolicy(kHead + std::string(100, '#'), "big.toml", limits);
  ASSERT_FALSE(p);
  EXPECT_NE(p.error().front().message.find("at most 64"), std::string::npos);
}

TEST(Endpoints, ParseAndPrint) {
  EXPECT_FALSE(parseEndpoint("1.2.3.4:65536/tcp"));
  EXPECT_FALSE(parseEndpoint("[::1:443/tcp"));
  EXPECT_FALSE(parseEndpoint("10.0.0.1/8:443/tcp")); // host bits set
  auto e = parseEndpoint("10.0.0.0/8:443/tcp");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->address->length, 8);
  EXPECT_EQ(toString(*e), "10.0.0.0/8:443/tcp");
  EXPECT_EQ(toString(*parseService("23/tcp")), "23/tcp");
}

TEST(CoapPaths, MatchSegments) {
  EXPECT_TRUE(coapPathMatches("/sensors/*", "/sensors/temp"));
  EXPECT_FALSE(coapPathMatches("/sensors/*", "/sensors/temp/raw"));
  EXPECT_FALSE(coapPathMatches("/sensors/*", "/sensors"));
  EXPECT_TRUE(coapPathMatches("/fw/**", "/fw"));
  EXPECT_TRUE(coapPathMatches("/fw/**", "/fw/a/b/c"));
  EXPECT_FALSE(coapPathMatches("/fw/**", "/fwx"));
  EXPECT_TRUE(coapPathMatches("/a", "/a"));
  EXPECT_FALSE(coapPathMatches("/a", "/a/"));
  EXPECT_FALSE(coapPathMatches("/a", "a"));
}

TEST(RedactSecrets, ReplacesExactlyThePasswordHashWhereverItIsWritten) {
  const std::string hash = "pbkdf2-sha256$100000$c2FsdHNhbHRzYWx0c2FsdA==$aGFzaGhhc2g=";
  struct Case {
    std::string in;
    std::string out;
  };
  const Case cases[] = {
      {"[device.mqtt]\npassword_hash = \"" + hash + "\"  # set at install\nusername = \"u\"\n",
       "[device.mqtt]\npassword_hash = \"(redacted)\"  # set at install\nusername = \"u\"\n"},
      {"[device]\nmqtt = { username = \"é\", password_hash = '" + hash + "', client_id = \"c\" }\n",
       "[device]\nmqtt = { username = \"é\", password_hash = \"(redacted)\", client_id = \"c\" "
       "}\n"},
      {"[device.mqtt]\n\"password\\u005Fhash\" = \"" + hash + "\"\n",
       "[device.mqtt]\n\"password\\u005Fhash\" = \"(redacted)\"\n"},
      {"[device.mqtt]\npassword_hash = \"\"\"\n" + hash + "\"\"\"\nusername = \"u\"\n",
       "[device.mqtt]\npassword_hash = \"(redacted)\"\nusername = \"u\"\n"},
      // A mention elsewhere is not the key.
      {"# password_hash = \"x\"\n[device]\nid = \"password_hash\"\n",
       "# password_hash = \"x\"\n[device]\nid = \"password_hash\"\n"},
  };
  for (const auto& c : cases) {
    const std::string out = redactSecrets(c.in);
    EXPECT_EQ(out, c.out);
    EXPECT_EQ(out.find(hash), std::string::npos);
    EXPECT_EQ(out.find("aGFzaGhhc2g"), std::string::npos);
  }
  EXPECT_EQ(redactSecrets("[device\npassword_hash = \"" + hash + "\"\n").find(hash),
            std::string::npos);
}
