// SPDX-License-Identifier: GPL-3.0-or-later
// The device-side CoAP push endpoint over real loopback sockets and a real reactor, with the
// publishing side scripted by each test (the broker takes a reading, refuses it, or acknowledges
// it later).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <functional>
#include <optional>

#include "policy/policy_parser.h"
#include "protocols/coap/push_endpoint.h"

using namespace iotgw;
using namespace iotgw::coap;
using namespace std::chrono_literals;

namespace {

struct Published {
  std::string device;
  std::string topic;
  std::string payload;
  uint8_t qos = 0;
  std::function<void(bool)> done;
};

// A device's (or an impostor's) UDP socket on a loopback address.
class Client {
public:
  explicit Client(const char* address) : fd_(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    ::inet_pton(AF_INET, address, &a.sin_addr);
    EXPECT_EQ(::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    timeval tv{0, 1000};
    ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  void send(uint16_t port, const Bytes& datagram) {
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::sendto(fd_.get(), datagram.data(), datagram.size(), 0,
                       reinterpret_cast<sockaddr*>(&to), sizeof to),
              static_cast<ssize_t>(datagram.size()));
  }
  // Every answer that has arrived, as parsed messages' codes, and their bytes.
  std::vector<Bytes> answers() {
    std::vector<Bytes> out;
    uint8_t buf[2048];
    for (;;) {
      const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n < 0) {
        return out;
      }
      out.emplace_back(buf, buf + n);
    }
  }

private:
  io::UniqueFd fd_;
};

// A push with the device's content format (50, JSON) unless `format` says otherwise.
Bytes push(uint16_t messageId, std::string_view path, std::string_view payload,
           Type type = Type::Confirmable, uint8_t code = codes::kPost,
           std::optional<uint8_t> format = 50) {
  Message m;
  m.type = type;
  m.code = code;
  m.messageId = messageId;
  static const uint8_t token[] = {0xa1, 0xb2};
  m.token = View(token, sizeof token);
  std::vector<std::string> segments;
  for (size_t start = 1; start <= path.size();) {
    const size_t end = std::min(path.find('/', start), path.size());
    segments.emplace_back(path.substr(start, end - start));
    start = end + 1;
  }
  static std::vector<std::string> keep; // the views must outlive the encoding
  keep = segments;
  for (const auto& s : keep) {
    m.options.push_back({11, View(reinterpret_cast<const uint8_t*>(s.data()), s.size())});
  }
  static uint8_t cf = 0;
  if (format) {
    cf = *format;
    m.options.push_back({12, View(&cf, 1)});
  }
  m.payload = View(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
  return encode(m);
}

uint8_t codeOf(const Bytes& datagram) {
  auto m = parse(View(datagram.data(), datagram.size()));
  return m ? m->code : 0xff;
}

class CoapPush : public ::testing::Test {
protected:
  void SetUp() override {
    auto r = io::Reactor::create();
    ASSERT_TRUE(r);
    reactor_ = std::move(*r);
    auto p = policy::parseDevicePolicy(R"([device]
id = "thermo-01"
mac = "02:00:00:00:00:10"
addresses = ["127.0.0.1"]
[coap]
max_payload_bytes = 64
content_formats = [50]
[[coap.push]]
path = "/readings/*"
topic = "sensors/%d/%p"
qos = 1
)",
                                       "thermo-01.toml");
    ASSERT_TRUE(p) << p.error().front().str();
    std::vector<policy::DevicePolicy> v;
    v.push_back(std::move(*p));
    policies_ = *policy::PolicySet::build(std::move(v));

    PushSettings settings;
    settings.addresses = {*policy::IpAddress::parse("127.0.0.1")};
    settings.port = 0;
    settings.deviceInterfaces = {"br-iot"};
    PushHooks hooks;
    hooks.policies = [this] { return policies_; };
    hooks.quarantined = [this](const policy::DeviceId& id) { return quarantined_ == id.str(); };
    hooks.emit = [this](policy::Event e) { events_.push_back(std::move(e)); };
    hooks.publish = [this](const policy::DevicePolicy& d, const std::string& topic,
                           std::span<const uint8_t> payload, uint8_t qos,
                           std::function<void(bool)> done) -> std::expected<void, std::string> {
      if (brokerRefuses_) {
        return std::unexpected("the broker is unreachable");
      }
      published_.push_back(
          {d.id.str(), topic, std::string(payload.begin(), payload.end()), qos, std::move(done)});
      return {};
    };
    endpoint_ = std::make_unique<PushEndpoint>(*reactor_, settings, hooks, counters_);
    ASSERT_TRUE(endpoint_->start());
    port_ = endpoint_->boundPorts().at(0);
  }

  // Lets the endpoint read what was sent and answer.
  void pump() {
    auto t = reactor_->addTimer(20ms, 0ms, [this] { reactor_->stop(); });
    ASSERT_TRUE(t);
    (void)reactor_->run();
  }

  [[nodiscard]] bool eventWithRule(std::string_view rule) const {
    return std::ranges::any_of(events_, [&](const policy::Event& e) { return e.rule == rule; });
  }

  std::unique_ptr<io::Reactor> reactor_;
  std::shared_ptr<const policy::PolicySet> policies_;
  std::string quarantined_;
  bool brokerRefuses_ = false;
  std::vector<Published> published_;
  std::vector<policy::Event> events_;
  PushCounters counters_;
  std::unique_ptr<PushEndpoint> endpoint_;
  uint16_t port_ = 0;
};

TEST_F(CoapPush, AReadingIsPublishedAndAcknowledgedOnlyOnceTheBrokerHasIt) {
  Client device("127.0.0.1");
  device.send(port_, push(7, "/readings/temp", "21.5"));
  pump();
  ASSERT_EQ(published_.size(), 1u);
  EXPECT_EQ(published_[0].device, "thermo-01");
  EXPECT_EQ(published_[0].topic, "sensors/thermo-01/readings/temp");
  EXPECT_EQ(published_[0].payload, "21.5");
  EXPECT_EQ(published_[0].qos, 1);
  EXPECT_TRUE(device.answers().empty()) << "2.04 before the broker acknowledged";

  published_[0].done(true);
  const auto answers = device.answers();
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(codeOf(answers[0]), code(2, 4));
  EXPECT_EQ(counters_.pushesPublished, 1u);
}

TEST_F(CoapPush, ARetransmissionIsNotPublishedTwiceAndGetsTheFirstAnswer) {
  Client device("127.0.0.1");
  device.send(port_, push(9, "/readings/temp", "21.5"));
  pump();
  device.send(port_, push(9, "/readings/temp", "21.5")); // waiting: nothing yet
  pump();
  EXPECT_EQ(published_.size(), 1u);
  EXPECT_TRUE(device.answers().empty());
  published_[0].done(true);
  ASSERT_EQ(device.answers().size(), 1u);
  device.send(port_, push(9, "/readings/temp", "21.5")); // answered: the same 2.04 again
  pump();
  const auto again = device.answers();
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(codeOf(again[0]), code(2, 4));
  EXPECT_EQ(published_.size(), 1u);
}

TEST_F(CoapPush, AReadingTheBrokerLostIsNeverAcknowledged) {
  Client device("127.0.0.1");
  device.send(port_, push(11, "/readings/temp", "21.5"));
  pump();
  ASSERT_EQ(published_.size(), 1u);
  published_[0].done(false);
  pump();
  EXPECT_TRUE(device.answers().empty());
}

TEST_F(CoapPush, AnUnreachableBrokerIsA503AndAnEvent) {
  brokerRefuses_ = true;
  Client device("127.0.0.1");
  device.send(port_, push(12, "/readings/temp", "21.5"));
  pump();
  const auto answers = device.answers();
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(codeOf(answers[0]), codes::kServiceUnavailable);
  EXPECT_EQ(counters_.pushesFailed, 1u);
  EXPECT_TRUE(eventWithRule("upstream"));
}

TEST_F(CoapPush, AnotherAddressIsNoDeviceAndGetsNoMoreThanThreeTimesWhatItSent) {
  Client stranger("127.0.0.2");
  // Six bytes each (a POST to /r, no token), answered by a 4.03 with its reason: the answers
  // would be more than three times what came in, so some are not sent.
  for (uint8_t id = 0; id < 20; ++id) {
    stranger.send(port_, Bytes{0x40, codes::kPost, 0x00, id, 0xb1, 'r'});
  }
  pump();
  EXPECT_TRUE(published_.empty());
  EXPECT_EQ(counters_.unknownSources, 20u);
  EXPECT_TRUE(eventWithRule("coap.source"));
  const auto answers = stranger.answers();
  EXPECT_FALSE(answers.empty());
  EXPECT_LT(answers.size(), 20u);
  EXPECT_GT(counters_.budgetDrops, 0u);
  for (const auto& a : answers) {
    EXPECT_EQ(codeOf(a), codes::kForbidden);
  }
  EXPECT_EQ(counters_.unauthenticatedBytesIn, 20u * 6);
  EXPECT_LE(counters_.unauthenticatedBytesOut, 3 * counters_.unauthenticatedBytesIn);
}

TEST_F(CoapPush, AReadingInAFormatTheDeviceDoesNotSendIsMalformedInput) {
  Client device("127.0.0.1");
  device.send(port_, push(40, "/readings/temp", "21.5", Type::Confirmable, codes::kPost, 0));
  device.send(port_,
              push(41, "/readings/temp", "21.5", Type::Confirmable, codes::kPost, std::nullopt));
  pump();
  const auto answers = device.answers();
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_EQ(codeOf(answers[0]), codes::kUnsupportedContentFormat);
  EXPECT_EQ(codeOf(answers[1]), codes::kUnsupportedContentFormat);
  EXPECT_TRUE(published_.empty());
  EXPECT_EQ(counters_.deviceMalformed, 2u);
  EXPECT_EQ(counters_.pushesDenied, 0u);
  EXPECT_TRUE(eventWithRule("coap.content_formats"));
}

TEST_F(CoapPush, PathsMethodsAndSizesOutsideThePolicyAreRefusedWithTheirCodes) {
  Client device("127.0.0.1");
  device.send(port_, push(20, "/config/wifi", "x"));
  device.send(port_, push(21, "/readings/temp", "", Type::Confirmable, codes::kGet));
  device.send(port_, push(22, "/readings/temp", std::string(100, 'x')));
  device.send(port_, push(23, "/readings/+", "x"));
  pump();
  const auto answers = device.answers();
  ASSERT_EQ(answers.size(), 4u);
  EXPECT_EQ(codeOf(answers[0]), codes::kForbidden);
  EXPECT_EQ(codeOf(answers[1]), codes::kMethodNotAllowed);
  EXPECT_EQ(codeOf(answers[2]), codes::kRequestEntityTooLarge);
  EXPECT_EQ(codeOf(answers[3]), codes::kBadRequest);
  EXPECT_TRUE(published_.empty());
  EXPECT_EQ(counters_.pushesBadTopic, 1u);
  EXPECT_TRUE(eventWithRule("coap.push.topic"));
}

TEST_F(CoapPush, AQuarantinedDeviceIsRefused) {
  quarantined_ = "thermo-01";
  Client device("127.0.0.1");
  device.send(port_, push(30, "/readings/temp", "21.5"));
  pump();
  const auto answers = device.answers();
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(codeOf(answers[0]), codes::kServiceUnavailable);
  EXPECT_TRUE(published_.empty());
  EXPECT_TRUE(eventWithRule("quarantine"));
}

TEST_F(CoapPush, MalformedDatagramsAreCountedAndDropped) {
  Client device("127.0.0.1");
  device.send(port_, Bytes{0x40});                   // shorter than a header
  device.send(port_, Bytes{0x80, 0x01, 0x00, 0x01}); // version 2
  pump();
  EXPECT_EQ(counters_.deviceMalformed, 2u);
  EXPECT_TRUE(device.answers().empty());
  EXPECT_TRUE(eventWithRule("coap.message"));
}

} // namespace
