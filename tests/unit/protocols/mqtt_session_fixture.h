// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The MQTT session engine's test fixture: scripted client bytes, a broker that answers at once
// unless told not to, and a device policy with a password.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "policy/policy_parser.h"
#include "protocols/mqtt/session.h"

namespace iotgw::test {

using namespace iotgw::mqtt;
using namespace iotgw::policy;
using namespace std::chrono_literals;

inline std::vector<uint8_t> bytesOf(std::string_view s) { return {s.begin(), s.end()}; }

inline std::string devicePolicy(const std::string& hash, const std::string& action) {
  return R"([device]
id = "thermo-01"
mac = "02:00:00:00:00:10"
addresses = ["192.168.50.10"]
[device.mqtt]
client_id = "thermo-01"
username = "thermo"
password_hash = ")" +
         hash + R"("
[mqtt]
publish = ["devices/%c/telemetry/#", "devices/%c/status"]
subscribe = ["devices/%c/cmd/#"]
max_qos = 2
[mqtt.rate]
messages_per_second = 1
message_burst = 50
[[mqtt.payload]]
topic = "devices/%c/telemetry/temp"
format = "json"
required = ["t"]
[violation]
action = ")" +
         action + "\"\n";
}

class SessionTest : public testing::Test {
protected:
  static void SetUpTestSuite() {
    hash_ = new std::string(PasswordHash::create("s3cret", PasswordHash::kMinIterations)->str());
  }
  static void TearDownTestSuite() { delete hash_; }

  // A new session (a reconnect) with the same policies and the same subscription memory.
  void makeSessionKeepingMemory() {
    session_ =
        std::make_unique<Session>(settings_, policies_, std::make_shared<DefaultCredentials>(),
                                  throttle_, peer(), now_, &memory_);
  }

  void makeSession(const std::string& action = "drop", const std::string& extraMqtt = "",
                   bool anyClientId = false) {
    std::string doc = devicePolicy(*hash_, action);
    doc.replace(doc.find("[mqtt]\n"), 7, "[mqtt]\n" + extraMqtt);
    if (anyClientId) {
      // No client_id pinned: any client of the device logs in (its topics are named by %d).
      doc.erase(doc.find("client_id = \"thermo-01\"\n"), 23);
      for (size_t at; (at = doc.find("%c")) != std::string::npos;) {
        doc.replace(at, 2, "%d");
      }
    }
    auto p = parseDevicePolicy(doc, "thermo-01.toml");
    ASSERT_TRUE(p) << p.error().front().str();
    std::vector<DevicePolicy> v;
    v.push_back(std::move(*p));
    policies_ = *PolicySet::build(std::move(v));
    session_ =
        std::make_unique<Session>(settings_, policies_, std::make_shared<DefaultCredentials>(),
                                  throttle_, peer(), now_, &memory_);
  }

  static PeerInfo peer() {
    return PeerInfo{IpAddress::parse("192.168.50.10"), "192.168.50.10:40000", std::nullopt};
  }

  // Sends packets, returns what the session did.
  Effects send(const std::vector<Packet>& packets, Version v = Version::V311) {
    std::vector<uint8_t> bytes;
    for (const auto& p : packets) {
      const auto b = encode(p, v);
      bytes.insert(bytes.end(), b.begin(), b.end());
    }
    return sendBytes(bytes);
  }
  Effects sendBytes(std::span<const uint8_t> bytes) {
    Effects out;
    session_->receive(bytes, now_, out);
    checkPasswords(out);
    if (brokerAnswers_) {
      answerAsBroker(out);
    }
    return out;
  }

  // What a broker that takes everything answers: a SUBACK granting what was asked, an UNSUBACK,
  // and a CONNACK (session present as `sessionPresent_` says) for a persistent session.
  void answerAsBroker(Effects& out) {
    for (size_t i = 0; i < out.upstream.size(); ++i) {
      Effects more;
      if (const auto* s = std::get_if<upstream::Subscribe>(&out.upstream[i])) {
        SubscribeResult r{s->token, {}};
        for (const auto& f : s->filters) {
          r.codes.push_back(f.qos());
        }
        session_->upstreamSubscribed(r, more);
      } else if (const auto* u = std::get_if<upstream::Unsubscribe>(&out.upstream[i])) {
        session_->upstreamUnsubscribed(u->token, more);
      } else if (const auto* o = std::get_if<upstream::Open>(&out.upstream[i]);
                 o != nullptr && !o->cleanStart) {
        session_->upstreamStatus(true, sessionPresent_, now_, more);
      }
      merge(out, std::move(more));
    }
  }

  // A message from the broker, with a packet id of its own for QoS > 0.
  void deliver(const std::string& topic, std::vector<uint8_t> payload, uint8_t qos, bool retain,
               Effects& out) {
    session_->deliver(
        Delivery{qos > 0 ? nextBrokerId_++ : uint16_t{0}, topic, std::move(payload), qos, retain},
        out);
  }

  // What the service does with a password check: here at once, on this thread.
  void checkPasswords(Effects& out) {
    while (out.passwordCheck) {
      const bool ok = out.passwordCheck->hash.verify(out.passwordCheck->password);
      out.passwordCheck.reset();
      ++passwordChecks_;
      Effects more;
      session_->passwordChecked(ok ? PasswordResult::Matched : PasswordResult::Mismatched, now_,
                                more);
      merge(out, std::move(more));
    }
  }
  static void merge(Effects& out, Effects&& more) {
    out.toClient.insert(out.toClient.end(), more.toClient.begin(), more.toClient.end());
    std::move(more.upstream.begin(), more.upstream.end(), std::back_inserter(out.upstream));
    std::move(more.events.begin(), more.events.end(), std::back_inserter(out.events));
    out.closeClient = out.closeClient || more.closeClient;
    out.quarantineRequested = out.quarantineRequested || more.quarantineRequested;
    out.authenticationFailed = out.authenticationFailed || more.authenticationFailed;
    out.passwordCheck.reset();
    if (more.passwordCheck) {
      out.passwordCheck.emplace(std::move(*more.passwordCheck));
    }
  }

  // Parses what the session wrote to the client.
  static std::vector<Packet> replies(const Effects& e, Version v = Version::V311) {
    std::vector<Packet> out;
    std::span<const uint8_t> rest(e.toClient);
    while (!rest.empty()) {
      auto f = readFrame(rest, 1 << 20);
      EXPECT_TRUE(f && *f);
      if (!f || !*f) {
        break;
      }
      auto p = decodePacket(**f, v);
      EXPECT_TRUE(p.has_value());
      out.push_back(*p);
      rest = rest.subspan((*f)->size);
    }
    return out;
  }

  static Connect connect(Version v = Version::V311, std::string user = "thermo",
                         std::string pass = "s3cret") {
    Connect c;
    c.version = v;
    c.clientId = "thermo-01";
    c.keepAlive = 10;
    c.username = std::move(user);
    c.password = bytesOf(pass);
    return c;
  }

  Effects connected(Version v = Version::V311) {
    Effects e = send({connect(v)}, v);
    EXPECT_EQ(session_->state(), Session::State::Connected);
    return e;
  }

  template <typename T> static std::vector<T> commands(const Effects& e) {
    std::vector<T> out;
    for (const auto& c : e.upstream) {
      if (const auto* t = std::get_if<T>(&c)) {
        out.push_back(*t);
      }
    }
    return out;
  }

  static inline std::string* hash_ = nullptr;
  bool brokerAnswers_ = true;
  bool sessionPresent_ = false;
  uint16_t nextBrokerId_ = 100;
  int passwordChecks_ = 0;
  SessionSettings settings_;
  SubscriptionMemory memory_;
  Clock::time_point now_ = Clock::time_point{} + 1000s;
  AuthThrottle throttle_;
  std::shared_ptr<const PolicySet> policies_;
  std::unique_ptr<Session> session_;
};

} // namespace iotgw::test
