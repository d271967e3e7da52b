// SPDX-License-Identifier: GPL-3.0-or-later
// One device connection through the MQTT proxy: a real Session and a real reactor, over a scripted
// Stream and a scripted upstream (what the device and the broker do is chosen by each test).
#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <deque>

#include "policy/policy_parser.h"
#include "protocols/mqtt/proxy.h"

using namespace iotgw;
using namespace iotgw::mqtt;
using namespace std::chrono_literals;

namespace {

// The device's side of the socket, as the test scripts it.
struct Wire {
  std::deque<std::vector<uint8_t>> reads; // each read returns (at most) the next one
  bool peerGone = false;                  // once `reads` is empty
  size_t writeRoom = SIZE_MAX;            // bytes the socket takes before it would block
  std::vector<uint8_t> written;
  size_t readCalls = 0;
  io::IoStatus handshake = io::IoStatus::Ok;
  bool holdsRecords = false;
};

class ScriptedStream final : public io::Stream {
public:
  explicit ScriptedStream(std::shared_ptr<Wire> w) : w_(std::move(w)) {}
  io::IoStatus handshake() override { return w_->handshake; }
  io::IoStatus read(std::span<uint8_t> buf, size_t& n) override {
    ++w_->readCalls;
    n = 0;
    if (w_->reads.empty()) {
      return w_->peerGone ? io::IoStatus::Closed : io::IoStatus::WantRead;
    }
    auto& next = w_->reads.front();
    n = std::min(buf.size(), next.size());
    std::copy_n(next.begin(), n, buf.begin());
    next.erase(next.begin(), next.begin() + static_cast<std::ptrdiff_t>(n));
    if (next.empty()) {
      w_->reads.pop_front();
    }
    return io::IoStatus::Ok;
  }
  io::IoStatus write(std::span<const uint8_t> buf, size_t& n) override {
    n = std::min(buf.size(), w_->writeRoom);
    if (n == 0) {
      return io::IoStatus::WantWrite;
    }
    w_->writeRoom -= w_->writeRoom == SIZE_MAX ? 0 : n;
    w_->written.insert(w_->written.end(), buf.begin(),
                       buf.begin() + static_cast<std::ptrdiff_t>(n));
    return io::IoStatus::Ok;
  }
  bool holdsReadBytes() const override { return w_->holdsRecords; }
  std::string lastError() const override { return "-188 ASN_NO_SIGNER_E"; }

private:
  std::shared_ptr<Wire> w_;
};

// The broker's side, as the test scripts it.
struct Broker {
  std::vector<upstream::Publish> published;
  std::vector<std::string> subscribed;
  std::vector<uint32_t> acknowledged;
  std::optional<bool> closedWithWill;
  bool takes = true;
  bool acceptsMore = true;
  bool stalled = false;
  bool connected = true;
  UpstreamObserver* observer = nullptr;
};

class ScriptedUpstream final : public Upstream {
public:
  explicit ScriptedUpstream(std::shared_ptr<Broker> b) : b_(std::move(b)) {}
  bool publish(const upstream::Publish& p) override {
    if (b_->takes) {
      b_->published.push_back(p);
    }
    return b_->takes;
  }
  void subscribe(uint64_t token, std::vector<Subscription> filters) override {
    SubscribeResult r{token, {}};
    for (const auto& f : filters) {
      b_->subscribed.push_back(f.filter);
      r.codes.push_back(f.qos());
    }
    b_->observer->upstreamSubscribed(r); // a broker that answers at once
  }
  void unsubscribe(uint64_t token, std::vector<std::string>) override {
    b_->observer->upstreamUnsubscribed(token);
  }
  void acknowledge(uint32_t id) override { b_->acknowledged.push_back(id); }
  void close(bool publishWill) override { b_->closedWithWill = publishWill; }
  bool finished() const override { return b_->closedWithWill.has_value(); }
  void service(Clock::time_point) override {}
  bool connected() const override { return b_->connected; }
  size_t queued() const override { return 0; }
  bool acceptsMore() const override { return b_->acceptsMore; }
  bool stalled() const override { return b_->stalled; }

private:
  std::shared_ptr<Broker> b_;
};

std::vector<uint8_t> bytes(const Packet& p) { return encode(p, Version::V311); }

class ProxyTest : public testing::Test {
protected:
  static void SetUpTestSuite() {
    hash_ = new std::string(
        policy::PasswordHash::create("s3cret", policy::PasswordHash::kMinIterations)->str());
  }
  static void TearDownTestSuite() { delete hash_; }

  void SetUp() override {
    auto r = io::Reactor::create();
    ASSERT_TRUE(r);
    reactor_ = std::move(*r);
    auto p = policy::parseDevicePolicy(R"([device]
id = "thermo-01"
mac = "02:00:00:00:00:10"
addresses = ["192.168.50.10"]
[device.mqtt]
client_id = "thermo-01"
username = "thermo"
password_hash = ")" + *hash_ + R"("
[mqtt]
publish = ["devices/%c/telemetry/#", "devices/%c/status"]
subscribe = ["devices/%c/cmd/#"]
max_qos = 1
)",
                                       "thermo-01.toml");
    ASSERT_TRUE(p) << p.error().front().str();
    std::vector<policy::DevicePolicy> v;
    v.push_back(std::move(*p));
    policies_ = *policy::PolicySet::build(std::move(v));

    hooks_.emit = [this](policy::Event e) { events_.push_back(std::move(e)); };
    hooks_.newSession = [this](PeerInfo peer) {
      return std::make_unique<Session>(SessionSettings{}, policies_,
                                       std::make_shared<policy::DefaultCredentials>(), throttle_,
                                       std::move(peer), Clock::now(), &memory_);
    };
    hooks_.openUpstream = [this](Proxy& o, const upstream::Open& open)
        -> std::expected<std::unique_ptr<Upstream>, std::string> {
      opened_.push_back(open.clientId);
      if (!brokerError_.empty()) {
        return std::unexpected(brokerError_);
      }
      broker_->observer = static_cast<UpstreamObserver*>(&o);
      return std::make_unique<ScriptedUpstream>(broker_);
    };
    hooks_.checkPassword = [](Proxy& proxy, PasswordCheck check) {
      proxy.passwordChecked(check.hash.verify(check.password) ? PasswordResult::Matched
                                                              : PasswordResult::Mismatched);
    };
    hooks_.quarantine = [](const policy::DeviceId&, const std::string&) { return false; };
    hooks_.handshakeBytes = [this](Proxy&) { ++handshakeBytes_; };
    hooks_.handshakeEnded = [this](Proxy&) { ++handshakesEnded_; };
    hooks_.received = [this](Proxy&) { ++received_; };
    hooks_.closed = [this](Proxy&) { ++closed_; };
    hooks_.settle = [] {};
  }

  // A proxy over one end of a socket pair (the reactor watches it; the stream is scripted).
  void open(bool handshake = false) {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    peer_ = io::UniqueFd(sv[1]);
    io::Accepted a;
    a.fd = io::UniqueFd(sv[0]);
    a.address = *policy::IpAddress::parse("192.168.50.10");
    a.port = 40000;
    proxy_ = std::make_unique<Proxy>(*reactor_, settings_, hooks_, counters_, 1, std::move(a),
                                     std::make_unique<ScriptedStream>(wire_));
    ASSERT_TRUE(proxy_->start(handshake));
  }

  void deviceSends(const Packet& p) { wire_->reads.push_back(bytes(p)); }
  void readable() { proxy_->onEvents(EPOLLIN); }

  void connect() {
    Connect c;
    c.clientId = "thermo-01";
    c.keepAlive = 30;
    c.username = "thermo";
    c.password = {'s', '3', 'c', 'r', 'e', 't'};
    deviceSends(c);
    readable();
    ASSERT_NE(proxy_->session(), nullptr);
    ASSERT_TRUE(proxy_->session()->authenticated());
  }

  // What the device has been sent, as packets (and forgotten, so the next call sees only new ones).
  std::vector<Packet> toDevice() {
    std::vector<Packet> out;
    std::span<const uint8_t> rest(wire_->written);
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
    wire_->written.clear();
    return out;
  }

  static Publish publish(uint8_t qos, uint16_t id = 0, size_t size = 8) {
    Publish p;
    p.qos = qos;
    p.packetId = id;
    p.topic = "devices/thermo-01/status";
    p.payload.assign(size, 'x');
    return p;
  }

  size_t eventsOf(policy::EventType t) const {
    return std::ranges::count_if(events_, [t](const auto& e) { return e.type == t; });
  }

  static std::string* hash_;
  std::unique_ptr<io::Reactor> reactor_;
  std::shared_ptr<const policy::PolicySet> policies_;
  policy::AuthThrottle throttle_;
  SubscriptionMemory memory_;
  ProxySettings settings_;
  ProxyHooks hooks_;
  ProxyCounters counters_;
  std::shared_ptr<Wire> wire_ = std::make_shared<Wire>();
  std::shared_ptr<Broker> broker_ = std::make_shared<Broker>();
  std::string brokerError_;
  std::vector<std::string> opened_;
  std::vector<policy::Event> events_;
  int handshakeBytes_ = 0, handshakesEnded_ = 0, received_ = 0, closed_ = 0;
  io::UniqueFd peer_;
  std::unique_ptr<Proxy> proxy_;
};

std::string* ProxyTest::hash_ = nullptr;

} // namespace

TEST_F(ProxyTest, ALoginOpensTheUpstreamAsTheDeviceAndAnswersIt) {
  open();
  connect();
  ASSERT_EQ(opened_, std::vector<std::string>{"iotgw-thermo-01"});
  auto r = toDevice();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(std::get<Connack>(r[0]).reasonCode, 0);
  EXPECT_GE(received_, 1); // the owner heard of every read (its pre-login accounting)
}

TEST_F(ProxyTest, APubackWaitsForTheBroker) {
  open();
  connect();
  toDevice();
  deviceSends(publish(1, 7));
  readable();
  ASSERT_EQ(broker_->published.size(), 1u);
  EXPECT_EQ(counters_.forwarded, 1u);
  EXPECT_TRUE(toDevice().empty()); // not acknowledged before the broker has it
  broker_->observer->upstreamAcked(broker_->published[0].token);
  auto r = toDevice();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(std::get<Ack>(r[0]).packetId, 7);
}

TEST_F(ProxyTest, ABrokerThatDoesNotReadHoldsTheDeviceBackAndSaysSoOnce) {
  open();
  connect();
  broker_->acceptsMore = false;
  broker_->stalled = true;
  deviceSends(publish(0));
  const size_t before = wire_->readCalls;
  readable();
  readable();
  EXPECT_EQ(wire_->readCalls, before); // the device's bytes stay in its socket
  EXPECT_TRUE(broker_->published.empty());
  EXPECT_EQ(counters_.upstreamStalls, 1u);
  ASSERT_EQ(eventsOf(policy::EventType::UpstreamUnavailable), 1u);
  EXPECT_EQ(events_.back().action, "flow-control");
  EXPECT_EQ(events_.back().rule, "limits.max_queued_bytes");

  broker_->acceptsMore = true; // the broker reads again: the next tick resumes the device
  broker_->stalled = false;
  proxy_->tick(Clock::now());
  EXPECT_EQ(broker_->published.size(), 1u);
  EXPECT_FALSE(proxy_->dead());
}

TEST_F(ProxyTest, WhatTheBrokerCannotTakeIsDroppedAtQos0AndClosesTheConnectionAtQos1) {
  open();
  connect();
  broker_->takes = false;
  deviceSends(publish(0));
  readable();
  EXPECT_EQ(counters_.qos0Dropped, 1u);
  EXPECT_FALSE(proxy_->dead());
  deviceSends(publish(1, 9));
  readable();
  // The device keeps its QoS 1 message (never acknowledged) and sends it again on reconnecting.
  EXPECT_TRUE(proxy_->dead());
  EXPECT_TRUE(toDevice().size() == 1); // the CONNACK only, no PUBACK
  EXPECT_EQ(broker_->closedWithWill, std::optional<bool>(true));
  EXPECT_EQ(closed_, 1);
}

TEST_F(ProxyTest, ADeviceThatDoesNotReadIsCutOff) {
  settings_.maxOutput = 300; // two of the deliveries below (129 bytes each), not three
  open();
  connect();
  Subscribe s;
  s.packetId = 1;
  s.subscriptions.push_back({"devices/thermo-01/cmd/#", 1});
  deviceSends(s);
  readable();
  ASSERT_EQ(broker_->subscribed, std::vector<std::string>{"devices/thermo-01/cmd/#"});
  wire_->writeRoom = 0; // the device stops reading
  const std::vector<uint8_t> payload(100, 'c');
  broker_->observer->upstreamMessage(Delivery{0, "devices/thermo-01/cmd/set", payload, 0, false});
  broker_->observer->upstreamMessage(Delivery{0, "devices/thermo-01/cmd/set", payload, 0, false});
  EXPECT_FALSE(proxy_->dead());
  broker_->observer->upstreamMessage(Delivery{0, "devices/thermo-01/cmd/set", payload, 0, false});
  EXPECT_TRUE(proxy_->dead()); // past 300 bytes waiting for it
  EXPECT_EQ(closed_, 1);
}

TEST_F(ProxyTest, AnUpstreamThatCannotOpenIsAnEventAndTheConnectionCloses) {
  brokerError_ = "device identity: none has been issued";
  open();
  Connect c;
  c.clientId = "thermo-01";
  c.username = "thermo";
  c.password = {'s', '3', 'c', 'r', 'e', 't'};
  deviceSends(c);
  readable();
  ASSERT_EQ(eventsOf(policy::EventType::UpstreamUnavailable), 1u);
  EXPECT_NE(events_.back().message.find("none has been issued"), std::string::npos);
  EXPECT_TRUE(proxy_->dead());
  EXPECT_EQ(closed_, 1);
}

TEST_F(ProxyTest, ThePeerGoingEndsTheConnectionOnceAndPublishesTheWill) {
  open();
  connect();
  wire_->peerGone = true;
  readable();
  EXPECT_TRUE(proxy_->dead());
  EXPECT_EQ(broker_->closedWithWill, std::optional<bool>(true));
  proxy_->close(false);
  readable();
  EXPECT_EQ(closed_, 1);
}

TEST_F(ProxyTest, AStreamThatHoldsRecordsIsReadUntilItWantsMore) {
  for (bool holds : {false, true}) {
    wire_ = std::make_shared<Wire>();
    broker_ = std::make_shared<Broker>();
    wire_->holdsRecords = holds;
    open();
    connect();
    for (int i = 0; i < 3; ++i) {
      deviceSends(publish(0));
    }
    readable();
    // A plain socket is read once per wake-up (epoll is level-triggered and calls again); a TLS
    // stream's decrypted records are invisible to epoll, so all of them are read now.
    EXPECT_EQ(broker_->published.size(), holds ? 3u : 1u) << "holdsReadBytes " << holds;
  }
}

TEST_F(ProxyTest, AFailedHandshakeIsAnAuthenticationFailure) {
  wire_->handshake = io::IoStatus::Failed;
  open(true);
  EXPECT_TRUE(proxy_->handshaking());
  readable();
  EXPECT_EQ(handshakeBytes_, 1);
  EXPECT_EQ(handshakesEnded_, 1);
  EXPECT_EQ(counters_.tlsHandshakesFailed, 1u);
  ASSERT_EQ(eventsOf(policy::EventType::AuthenticationFailed), 1u);
  EXPECT_EQ(events_.back().rule, "tls.handshake");
  EXPECT_NE(events_.back().message.find("ASN_NO_SIGNER_E"), std::string::npos);
  EXPECT_TRUE(proxy_->dead());
  EXPECT_EQ(proxy_->session(), nullptr); // no session ever started
}

TEST_F(ProxyTest, AHandshakeThatNeverEndsTimesOut) {
  settings_.handshakeTimeout = 0ms;
  wire_->handshake = io::IoStatus::WantRead;
  open(true);
  readable();
  EXPECT_FALSE(proxy_->dead());
  proxy_->tick(Clock::now() + 1ms);
  EXPECT_TRUE(proxy_->dead());
  EXPECT_EQ(counters_.tlsHandshakesFailed, 1u);
  EXPECT_EQ(handshakesEnded_, 1);
}
