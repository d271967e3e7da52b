// SPDX-License-Identifier: GPL-3.0-or-later
// Decision tables for the pure evaluator.
#include <gtest/gtest.h>

#include <tuple>

#include "policy/evaluator.h"
#include "policy/policy_parser.h"
#include "tests/unit/support/test_docs.h"

using namespace iotgw::policy;

namespace {

std::span<const uint8_t> bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

class Evaluator : public testing::Test {
protected:
  static void SetUpTestSuite() {
    hash_ =
        new std::string(PasswordHash::create("s3cret-thermo", PasswordHash::kMinIterations)->str());
  }
  static void TearDownTestSuite() { delete hash_; }

  void SetUp() override {
    std::vector<DevicePolicy> devices;
    auto thermo = parseDevicePolicy(iotgw::test::fullPolicy(*hash_), "thermo-01.toml");
    ASSERT_TRUE(thermo) << thermo.error().front().str();
    devices.push_back(std::move(*thermo));
    auto plug = parseDevicePolicy(R"([device]
id = "plug-7"
mac = "02:00:00:00:00:07"
addresses = ["192.168.50.7"]
[mqtt]
publish = ["plugs/%d/power"]
max_qos = 0
[violation]
action = "disconnect"
)",
                                  "plug-7.toml");
    ASSERT_TRUE(plug) << plug.error().front().str();
    devices.push_back(std::move(*plug));
    auto set = PolicySet::build(std::move(devices));
    ASSERT_TRUE(set);
    set_ = *set;
    thermo_ = set_->find(*DeviceId::parse("thermo-01"));
    plug_ = set_->find(*DeviceId::parse("plug-7"));
    ASSERT_NE(thermo_, nullptr);
    ASSERT_NE(plug_, nullptr);
  }

  PublishFacts pub(std::string_view topic, std::string_view payload, uint8_t qos = 0,
                   bool retain = false) const {
    return PublishFacts{"thermo", topic, qos, retain, bytes(payload)};
  }

  static std::string* hash_;
  std::shared_ptr<const PolicySet> set_;
  const DevicePolicy* thermo_ = nullptr;
  const DevicePolicy* plug_ = nullptr;
  DefaultCredentials defaults_;
};

std::string* Evaluator::hash_ = nullptr;

} // namespace

TEST_F(Evaluator, ConnectTable) {
  const auto peer = IpAddress::parse("192.168.50.10");
  const auto plugPeer = IpAddress::parse("192.168.50.7");
  const auto stranger = IpAddress::parse("192.168.50.99");
  CertificateFacts cert{"thermo-01", {}};
  CertificateFacts sanCert{"unrelated", {{SanType::Uri, "urn:dev:thermo-01"}}};
  CertificateFacts unknownCert{"someone", {{SanType::Dns, "else.hub.local"}}};
  // The device's URI as a DNS name is not the device.
  CertificateFacts wrongKindCert{"someone", {{SanType::Dns, "urn:dev:thermo-01"}}};

  struct Row {
    const char* name;
    ConnectFacts facts;
    Verdict verdict;
    const char* rule;
    const char* provision;
    const DevicePolicy* device;
    bool authFailure;
  };
  const Row rows[] = {
      {"good password",
       {"thermo-01", "thermo", "s3cret-thermo", nullptr, peer, false},
       Verdict::Allow,
       "connect.username",
       "",
       thermo_,
       false},
      {"wrong password",
       {"thermo-01", "thermo", "guess", nullptr, peer, false},
       Verdict::Deny,
       "auth.password",
       "5.5-4",
       nullptr,
       true},
      {"no password",
       {"thermo-01", "thermo", std::nullopt, nullptr, peer, false},
       Verdict::Deny,
       "auth.password",
       "5.5-4",
       nullptr,
       true},
      {"mirai default",
       {"x", "root", "xc3511", nullptr, stranger, false},
       Verdict::Deny,
       "credentials.default",
       "5.1-1",
       nullptr,
       true},
      {"admin/admin",
       {"x", "admin", "admin", nullptr, peer, false},
       Verdict::Deny,
       "credentials.default",
       "5.1-1",
       nullptr,
       true},
      {"locked out first",
       {"thermo-01", "thermo", "s3cret-thermo", nullptr, peer, true},
       Verdict::Deny,
       "auth.lockout",
       "5.1-5",
       nullptr,
       false},
      // The same answer as a wrong password, after the same work (a hash that matches nothing).
      {"unknown user",
       {"c", "nobody", "pw", nullptr, peer, false},
       Verdict::Deny,
       "auth.password",
       "5.5-4",
       nullptr,
       true},
      {"user name locked out",
       {"thermo-01", "thermo", "s3cret-thermo", nullptr, stranger, false, true},
       Verdict::Deny,
       "auth.lockout",
       "5.1-5",
       nullptr,
       false},
      {"user name locked out, from its own address",
       {"thermo-01", "thermo", "s3cret-thermo", nullptr, peer, false, true},
       Verdict::Allow,
       "connect.username",
       "",
       thermo_,
       false},
      {"password without username",
       {"c", std::nullopt, "pw", nullptr, peer, false},
       Verdict::Deny,
       "mqtt.password-without-username",
       "5.13-1",
       nullptr,
       true},
      {"wrong client id",
       {"thermo-02", "thermo", "s3cret-thermo", nullptr, peer, false},
       Verdict::Deny,
       "device.mqtt.client_id",
       "5.5-4",
       nullptr,
       false},
      {"wrong source address",
       {"thermo-01", "thermo", "s3cret-thermo", nullptr, stranger, false},
       Verdict::Deny,
       "device.addresses",
       "5.5-4",
       nullptr,
       false},
      {"certificate CN",
       {"thermo-01", std::nullopt, std::nullopt, &cert, std::nullopt, false},
       Verdict::Allow,
       "connect.certificate",
       "",
       thermo_,
       false},
      {"certificate SAN",
       {"thermo-01", std::nullopt, std::nullopt, &sanCert, stranger, false},
       Verdict::Allow,
       "connect.certificate",
       "",
       thermo_,
       false},
      {"unknown certificate",
       {"x", std::nullopt, std::nullopt, &unknownCert, peer, false},
       Verdict::Deny,
       "default-deny",
       "5.5-4",
       nullptr,
       false},
      {"certificate SAN of the wrong kind",
       {"x", std::nullopt, std::nullopt, &wrongKindCert, peer, false},
       Verdict::Deny,
       "default-deny",
       "5.5-4",
       nullptr,
       false},
      {"address-only device",
       {"any", std::nullopt, std::nullopt, nullptr, plugPeer, false},
       Verdict::Allow,
       "connect.address",
       "",
       plug_,
       false},
      {"address of a device with a password",
       {"thermo-01", std::nullopt, std::nullopt, nullptr, peer, false},
       Verdict::Deny,
       "auth.missing-credentials",
       "5.5-4",
       nullptr,
       true},
      {"anonymous stranger",
       {"x", std::nullopt, std::nullopt, nullptr, stranger, false},
       Verdict::Deny,
       "default-deny",
       "5.5-4",
       nullptr,
       false},
  };
  for (const auto& row : rows) {
    ConnectDecision d = evaluateConnect(*set_, defaults_, row.facts);
    if (d.passwordHash != nullptr) {
      // What the session does off the event loop.
      d = evaluateVerifiedConnect(d, d.passwordHash->verify(row.facts.password.value_or("")),
                                  row.facts);
    }
    EXPECT_EQ(d.decision.verdict, row.verdict) << row.name << ": " << d.decision.reason;
    EXPECT_EQ(d.decision.rule, row.rule) << row.name;
    EXPECT_EQ(d.decision.provision, row.provision) << row.name;
    EXPECT_EQ(d.device, row.device) << row.name;
    EXPECT_EQ(d.authenticationFailure, row.authFailure) << row.name;
  }
}

TEST_F(Evaluator, DefaultCredentialRefusedEvenWhenEnrolled) {
  // A device whose configured password happens to be a universal default is still refused.
  auto admin = parseDevicePolicy(R"([device]
id = "cam-1"
[device.mqtt]
username = "admin"
password_hash = ")" + PasswordHash::create("admin", PasswordHash::kMinIterations)->str() +
                                     R"("
)",
                                 "cam-1.toml");
  ASSERT_TRUE(admin) << admin.error().front().str();
  std::vector<DevicePolicy> v;
  v.push_back(std::move(*admin));
  auto set = PolicySet::build(std::move(v));
  ASSERT_TRUE(set);
  const auto d =
      evaluateConnect(**set, defaults_, {"cam-1", "admin", "admin", nullptr, std::nullopt, false});
  EXPECT_FALSE(d.decision.allowed());
  EXPECT_EQ(d.decision.provision, "5.1-1");
}

TEST_F(Evaluator, PublishTable) {
  struct Row {
    const char* name;
    PublishFacts facts;
    Verdict verdict;
    const char* rule;
  };
  const std::string big(1025, 'x');
  const Row rows[] = {
      {"allowed telemetry",
       pub("devices/thermo-01/telemetry/temp", R"({"t": 21.5, "unit": "C"})", 1), Verdict::Allow,
       "mqtt.publish"},
      {"allowed state utf8", pub("devices/thermo-01/state", "on"), Verdict::Allow, "mqtt.publish"},
      {"state invalid utf8", pub("devices/thermo-01/state", "\xff\xfe"), Verdict::Deny,
       "mqtt.payload[1]"},
      {"other device's topic", pub("devices/thermo-02/telemetry/temp", "{}"), Verdict::Deny,
       "mqtt.publish"},
      {"not in list", pub("devices/thermo-01/cmd/set", "1"), Verdict::Deny, "mqtt.publish"},
      {"$SYS", pub("$SYS/broker/x", "1"), Verdict::Deny, "mqtt.publish"},
      {"wildcard in name", pub("devices/thermo-01/telemetry/+", "1"), Verdict::Deny, "mqtt.topic"},
      {"qos 2 above max", pub("devices/thermo-01/telemetry/x", "1", 2), Verdict::Deny,
       "mqtt.max_qos"},
      {"retain allowed", pub("devices/thermo-01/telemetry/x", "1", 0, true), Verdict::Allow,
       "mqtt.publish"},
      {"oversize", pub("devices/thermo-01/telemetry/x", big), Verdict::Deny,
       "mqtt.max_payload_bytes"},
      {"json broken", pub("devices/thermo-01/telemetry/temp", R"({"t": )"), Verdict::Deny,
       "mqtt.payload[0]"},
      {"json not object", pub("devices/thermo-01/telemetry/temp", "[1]"), Verdict::Deny,
       "mqtt.payload[0]"},
      {"json missing key", pub("devices/thermo-01/telemetry/temp", R"({"t": 1})"), Verdict::Deny,
       "mqtt.payload[0]"},
      {"json below min", pub("devices/thermo-01/telemetry/temp", R"({"t": -41, "unit": "C"})"),
       Verdict::Deny, "mqtt.payload[0]"},
      {"json above max", pub("devices/thermo-01/telemetry/temp", R"({"t": 85.6, "unit": "C"})"),
       Verdict::Deny, "mqtt.payload[0]"},
      {"json at max", pub("devices/thermo-01/telemetry/temp", R"({"t": 85.5, "unit": "F"})"),
       Verdict::Allow, "mqtt.publish"},
      {"json wrong type", pub("devices/thermo-01/telemetry/temp", R"({"t": "hot", "unit": "C"})"),
       Verdict::Deny, "mqtt.payload[0]"},
      {"json enum", pub("devices/thermo-01/telemetry/temp", R"({"t": 1, "unit": "K"})"),
       Verdict::Deny, "mqtt.payload[0]"},
      {"json integer",
       pub("devices/thermo-01/telemetry/temp", R"({"t": 1, "unit": "C", "seq": 1.5})"),
       Verdict::Deny, "mqtt.payload[0]"},
      {"json extra key",
       pub("devices/thermo-01/telemetry/temp", R"({"t": 1, "unit": "C", "cmd": "x"})"),
       Verdict::Deny, "mqtt.payload[0]"},
      {"json duplicate key",
       pub("devices/thermo-01/telemetry/temp", R"({"t": 1, "unit": "C", "t": 99})"), Verdict::Deny,
       "mqtt.payload[0]"},
      {"other telemetry binary", pub("devices/thermo-01/telemetry/raw", "\x00\x01"), Verdict::Allow,
       "mqtt.publish"},
  };
  for (const auto& row : rows) {
    const Decision d = evaluatePublish(*thermo_, row.facts);
    EXPECT_EQ(d.verdict, row.verdict) << row.name << ": " << d.reason;
    EXPECT_EQ(d.rule, row.rule) << row.name;
    if (!d.allowed()) {
      EXPECT_EQ(d.provision, "5.13-1") << row.name;
      EXPECT_EQ(d.action, ViolationAction::Quarantine) << row.name;
      EXPECT_FALSE(d.reason.empty()) << row.name;
    }
  }
}

TEST_F(Evaluator, ReasonsNeverEchoPayloads) {
  const Decision d = evaluatePublish(
      *thermo_, pub("devices/thermo-01/telemetry/temp", R"({"t": 1, "unit": "SECRET-VALUE"})"));
  ASSERT_FALSE(d.allowed());
  EXPECT_EQ(d.reason.find("SECRET"), std::string::npos) << d.reason;
}

TEST_F(Evaluator, RetainRefusedWhenNotAllowed) {
  const PublishFacts f{"", "plugs/plug-7/power", 0, true, bytes("1")};
  const Decision d = evaluatePublish(*plug_, f);
  EXPECT_EQ(d.rule, "mqtt.retain");
  EXPECT_EQ(d.action, ViolationAction::Disconnect);
  const PublishFacts ok{"", "plugs/plug-7/power", 0, false, bytes("1")};
  EXPECT_TRUE(evaluatePublish(*plug_, ok).allowed());
  // %d is the device's own id: another plug's topic is not within it.
  const PublishFacts other{"", "plugs/plug-8/power", 0, false, bytes("1")};
  EXPECT_FALSE(evaluatePublish(*plug_, other).allowed());
}

TEST_F(Evaluator, PasswordCheckIsLeftToTheCaller) {
  const auto peer = IpAddress::parse("192.168.50.10");
  const ConnectFacts known{"thermo-01", "thermo", "guess", nullptr, peer, false};
  const ConnectFacts unknown{"thermo-01", "nobody", "guess", nullptr, peer, false};
  const ConnectDecision k = evaluateConnect(*set_, defaults_, known);
  const ConnectDecision u = evaluateConnect(*set_, defaults_, unknown);
  ASSERT_NE(k.passwordHash, nullptr);
  ASSERT_NE(u.passwordHash, nullptr);
  EXPECT_EQ(k.device, thermo_);
  EXPECT_EQ(u.passwordHash, &set_->unmatchableHash());
  // As costly as the enrolled devices' hashes (these tests' use the minimum).
  EXPECT_EQ(u.passwordHash->iterations(), k.passwordHash->iterations());
  // Until the check, the decision is a refusal.
  EXPECT_FALSE(k.decision.allowed());
  // Even a "matched" answer for an unknown user name is a refusal.
  EXPECT_EQ(evaluateVerifiedConnect(u, true, unknown).decision.rule, "auth.password");
  EXPECT_EQ(evaluateVerifiedConnect(k, true, known).device, thermo_);
}

namespace {

// A device that can log in with a certificate or with its user name and password.
std::expected<DevicePolicy, Diagnostics> twoWayDevice(const std::string& hash,
                                                      const std::string& mqtt) {
  return parseDevicePolicy(R"([device]
id = "dev-c"
[device.certificate]
common_name = "dev-c"
[device.mqtt]
username = "dev-c"
password_hash = ")" + hash + "\"\n[mqtt]\n" +
                               mqtt,
                           "dev-c.toml");
}

} // namespace

TEST_F(Evaluator, UserNamePlaceholderOnlyFromAVerifiedLogin) {
  auto dev = twoWayDevice(*hash_, "publish = [\"users/%u/#\", \"devices/%d/#\"]\n");
  ASSERT_TRUE(dev) << dev.error().front().str();
  // Logged in with its password: %u is its own user name.
  EXPECT_TRUE(evaluatePublish(*dev, {"dev-c", "users/dev-c/x", 0, false, bytes("1")}).allowed());
  // Another name, or none (a certificate login), never stands for %u.
  EXPECT_FALSE(evaluatePublish(*dev, {"dev-b", "users/dev-b/x", 0, false, bytes("1")}).allowed());
  EXPECT_FALSE(evaluatePublish(*dev, {"", "users/dev-c/x", 0, false, bytes("1")}).allowed());
  EXPECT_TRUE(evaluatePublish(*dev, {"", "devices/dev-c/x", 0, false, bytes("1")}).allowed());
}

TEST_F(Evaluator, PayloadRuleWithoutItsPlaceholderStillApplies) {
  auto dev = twoWayDevice(*hash_, "publish = [\"sensors/#\"]\n[[mqtt.payload]]\n"
                                  "topic = \"sensors/%u/temp\"\nformat = \"json\"\n");
  ASSERT_TRUE(dev) << dev.error().front().str();
  // Logged in by certificate, %u has no value: the rule covers every user-name level, so the
  // payload is still checked (it fails closed, never open).
  EXPECT_EQ(evaluatePublish(*dev, {"", "sensors/anyone/temp", 0, false, bytes("not json")}).rule,
            "mqtt.payload[0]");
  EXPECT_TRUE(evaluatePublish(*dev, {"", "sensors/anyone/temp", 0, false, bytes("{}")}).allowed());
}

TEST_F(Evaluator, SubscribeTable) {
  struct Row {
    const char* filter;
    uint8_t qos;
    Verdict verdict;
    uint8_t granted;
  };
  const Row rows[] = {
      {"devices/thermo-01/cmd/#", 1, Verdict::Allow, 1},
      {"devices/thermo-01/cmd/set", 2, Verdict::Allow, 1}, // granted no more than max_qos
      {"devices/thermo-01/cmd/+", 0, Verdict::Allow, 0},
      {"broadcast/all", 1, Verdict::Allow, 1},
      {"broadcast/#", 1, Verdict::Deny, 0},
      {"devices/#", 0, Verdict::Deny, 0},
      {"devices/+/cmd/#", 0, Verdict::Deny, 0},
      {"#", 0, Verdict::Deny, 0},
      {"$SYS/#", 0, Verdict::Deny, 0},
      {"devices/thermo-01/cmd/#/x", 0, Verdict::Deny, 0},
  };
  for (const auto& row : rows) {
    const Decision d = evaluateSubscribe(*thermo_, {"thermo", row.filter, row.qos});
    EXPECT_EQ(d.verdict, row.verdict) << row.filter << ": " << d.reason;
    if (d.allowed()) {
      EXPECT_EQ(d.grantedQos, row.granted) << row.filter;
    }
  }
  EXPECT_EQ(evaluateSubscribe(*thermo_, {"thermo", "a/#/b", 0}).rule, "mqtt.topic");
}

TEST_F(Evaluator, DeliveryToDeviceIsValidated) {
  EXPECT_TRUE(evaluateDelivery(*thermo_, pub("devices/thermo-01/cmd/set", "1")).allowed());
  EXPECT_FALSE(evaluateDelivery(*thermo_, pub("devices/thermo-02/cmd/set", "1")).allowed());
  EXPECT_EQ(
      evaluateDelivery(*thermo_, pub("devices/thermo-01/cmd/set", std::string(2000, 'x'))).rule,
      "mqtt.max_payload_bytes");
}

TEST_F(Evaluator, CoapTable) {
  struct Row {
    CoapMethod method;
    const char* path;
    size_t payload;
    std::optional<uint16_t> cf;
    Verdict verdict;
    const char* rule;
  };
  const Row rows[] = {
      {CoapMethod::Get, "/sensors/temp", 0, std::nullopt, Verdict::Allow, "coap.rule[0]"},
      {CoapMethod::Put, "/sensors/temp", 0, std::nullopt, Verdict::Deny, "coap.rule"},
      {CoapMethod::Get, "/sensors/temp/raw", 0, std::nullopt, Verdict::Deny, "coap.rule"},
      {CoapMethod::Put, "/config/interval", 4, 0, Verdict::Allow, "coap.rule[1]"},
      {CoapMethod::Post, "/config", 4, 50, Verdict::Allow, "coap.rule[1]"},
      {CoapMethod::Delete, "/config/interval", 0, std::nullopt, Verdict::Deny, "coap.rule"},
      {CoapMethod::Put, "/config/interval", 4, 42, Verdict::Deny, "coap.content_formats"},
      {CoapMethod::Put, "/config/interval", 513, 0, Verdict::Deny, "coap.max_payload_bytes"},
      {CoapMethod::Get, "/", 0, std::nullopt, Verdict::Deny, "coap.rule"},
  };
  for (const auto& row : rows) {
    const Decision d = evaluateCoapRequest(*thermo_, {row.method, row.path, row.payload, row.cf});
    EXPECT_EQ(d.verdict, row.verdict) << row.path;
    EXPECT_EQ(d.rule, row.rule) << row.path;
  }
}

// One content-format rule for requests, pushes and answers: a declared format must be listed, a
// body must declare one, and the refusal is the same Reason wherever it is decided.
TEST(CoapPolicy, CoapContentFormatOneRule) {
  auto parsed = parseDevicePolicy(R"([device]
id = "sensor-9"
mac = "02:00:00:00:00:09"
addresses = ["192.168.50.9"]
[coap]
content_formats = [50]
[[coap.rule]]
methods = ["GET", "PUT"]
path = "/a"
[[coap.push]]
path = "/r"
topic = "r/%d"
)",
                                  "sensor-9.toml");
  ASSERT_TRUE(parsed.has_value()) << parsed.error().front().str();
  const DevicePolicy& p = *parsed;
  const CoapPush* push = nullptr;
  for (const auto& [bytes, format, allowed] :
       {std::tuple<size_t, std::optional<uint16_t>, bool>{1, 50, true},
        {1, 0, false},
        {1, std::nullopt, false},
        {0, std::nullopt, true},
        {0, 0, false}}) {
    const Decision request = evaluateCoapRequest(p, {CoapMethod::Put, "/a", bytes, format});
    const Decision pushed = evaluateCoapPush(p, {CoapMethod::Post, "/r", bytes, format}, &push);
    const Decision answer = evaluateCoapResponse(p, {0x45, bytes, format}); // 2.05
    for (const Decision* d : {&request, &pushed, &answer}) {
      EXPECT_EQ(d->allowed(), allowed) << bytes << " " << format.value_or(0);
      if (!allowed) {
        EXPECT_EQ(d->why, Reason::CoapContentFormat);
        EXPECT_EQ(d->rule, "coap.content_formats");
        EXPECT_EQ(d->provision, "5.13-1");
      }
    }
    EXPECT_EQ(request.reason, answer.reason);
  }
  // An error answer carries a diagnostic, whatever its format.
  EXPECT_TRUE(evaluateCoapResponse(p, {0x84, 9, std::nullopt}).allowed()); // 4.04
}

TEST(Reasons, EachHasItsRuleAndProvision) {
  EXPECT_EQ(describe(Reason::DefaultCredentials).rule, "credentials.default");
  EXPECT_EQ(describe(Reason::DefaultCredentials).provision, "5.1-1");
  EXPECT_EQ(describe(Reason::Lockout).provision, "5.1-5");
  EXPECT_EQ(describe(Reason::MessageRate).rule, "mqtt.rate.messages_per_second");
  EXPECT_EQ(describe(Reason::CoapClientNotAllowed).provision, "5.5-4");
  EXPECT_TRUE(isRate(Reason::ByteRate));
  EXPECT_FALSE(isRate(Reason::PayloadRule));
  for (int r = static_cast<int>(Reason::DefaultDeny); r <= static_cast<int>(Reason::CoapNoPush);
       ++r) {
    const ReasonInfo info = describe(static_cast<Reason>(r));
    EXPECT_FALSE(info.rule.empty()) << r;
    EXPECT_FALSE(info.provision.empty()) << r;
  }
}

TEST_F(Evaluator, RateLimitFromPolicy) {
  // thermo-01: 5 msg/s with a burst of 20; 4096.5 B/s with a burst of 16384.
  const auto t0 = Clock::time_point{} + std::chrono::seconds(100);
  auto limiter = makeRateLimiter(*thermo_, t0);
  int allowed = 0;
  for (int i = 0; i < 50; ++i) {
    if (rateDecision(*thermo_, limiter.take(10, t0)).allowed()) {
      ++allowed;
    }
  }
  EXPECT_EQ(allowed, 20);
  const Decision d = rateDecision(*thermo_, limiter.take(10, t0));
  EXPECT_EQ(d.rule, "mqtt.rate.messages_per_second");
  EXPECT_EQ(d.provision, "5.10-1");
  EXPECT_EQ(d.action, ViolationAction::Quarantine);
  // One second later five more messages fit; a large one trips the byte budget instead.
  const auto t1 = t0 + std::chrono::seconds(1);
  EXPECT_EQ(rateDecision(*thermo_, limiter.take(20000, t1)).rule, "mqtt.rate.bytes_per_second");
  for (int i = 0; i < 5; ++i) {
    EXPECT_TRUE(rateDecision(*thermo_, limiter.take(10, t1)).allowed()) << i;
  }
  EXPECT_FALSE(rateDecision(*thermo_, limiter.take(10, t1)).allowed());
  // A device without [mqtt.rate] is not limited.
  auto unlimited = makeRateLimiter(*plug_, t0);
  for (int i = 0; i < 10000; ++i) {
    ASSERT_EQ(unlimited.take(1000, t0), MessageRateLimiter::Result::Allowed);
  }
}

// CoAP pushes (device → gateway → MQTT) and the DTLS client list: parsed from a document, so
// the parser's new keys are covered too.
TEST(CoapPolicy, PushRulesClientsAndTopic) {
  auto parsed = parseDevicePolicy(R"([device]
id = "sensor-9"
mac = "02:00:00:00:00:09"
addresses = ["192.168.50.9"]
[coap]
port = 15683
max_payload_bytes = 64
content_formats = [50]
clients = ["app.hub.local"]
[[coap.push]]
path = "/readings/*"
topic = "home/%d/%p"
[[coap.push]]
path = "/alarm"
topic = "alarms/%d"
qos = 0
)",
                                  "sensor-9.toml");
  ASSERT_TRUE(parsed.has_value());
  const DevicePolicy& p = *parsed;
  EXPECT_EQ(p.coapRules.port, 15683);
  ASSERT_EQ(p.coapRules.push.size(), 2u);
  EXPECT_EQ(p.coapRules.push[1].qos, 0);

  EXPECT_TRUE(evaluateCoapClient(p, "app.hub.local").allowed());
  const Decision other = evaluateCoapClient(p, "other.hub.local");
  EXPECT_FALSE(other.allowed());
  EXPECT_EQ(other.rule, "coap.clients");

  const CoapPush* push = nullptr;
  EXPECT_TRUE(evaluateCoapPush(p, {CoapMethod::Post, "/readings/temp", 10, 50}, &push).allowed());
  ASSERT_NE(push, nullptr);
  EXPECT_EQ(coapPushTopic(p, *push, "/readings/temp"), "home/sensor-9/readings/temp");
  EXPECT_TRUE(evaluateCoapPush(p, {CoapMethod::Put, "/alarm", 1, 50}, &push).allowed());
  EXPECT_EQ(coapPushTopic(p, *push, "/alarm"), "alarms/sensor-9");

  EXPECT_EQ(evaluateCoapPush(p, {CoapMethod::Get, "/readings/temp", 0, std::nullopt}, &push).rule,
            "coap.push");
  EXPECT_EQ(push, nullptr);
  EXPECT_EQ(evaluateCoapPush(p, {CoapMethod::Post, "/readings/a/b", 1, 50}, &push).rule,
            "coap.push");
  EXPECT_EQ(evaluateCoapPush(p, {CoapMethod::Post, "/readings/t", 65, 50}, &push).rule,
            "coap.max_payload_bytes");
  EXPECT_EQ(evaluateCoapPush(p, {CoapMethod::Post, "/readings/t", 1, 0}, &push).rule,
            "coap.content_formats");
}

TEST(CoapPolicy, PushTopicMustBeAName) {
  const auto bad = parseDevicePolicy(R"([device]
id = "sensor-9"
addresses = []
[[coap.push]]
path = "/readings/*"
topic = "home/+/x"
)",
                                     "sensor-9.toml");
  ASSERT_FALSE(bad.has_value());
  bool named = false;
  for (const auto& d : bad.error()) {
    named = named || d.message.find("without wildcards") != std::string::npos;
  }
  EXPECT_TRUE(named);
}
