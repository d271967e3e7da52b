// SPDX-License-Identifier: GPL-3.0-or-later
// libFuzzer target: MQTT framing + decoding + validation over a byte stream, as a session reads
// it, and the same bytes fed to our upstream client as a hostile broker's. The first byte picks the
// protocol version. Whatever decodes and validates must survive an encode/decode round trip
// unchanged.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "policy/policy_parser.h"
#include "protocols/mqtt/client.h"
#include "protocols/mqtt/codec.h"
#include "protocols/mqtt/session.h"
#include "protocols/mqtt/validate.h"

using namespace iotgw::mqtt;

namespace {

// A session over the same bytes: whatever arrives, it must end in a consistent state.
void fuzzSession(std::span<const uint8_t> stream) {
  static const auto policies = [] {
    auto p = iotgw::policy::parseDevicePolicy(R"([device]
id = "plug"
mac = "02:00:00:00:00:01"
addresses = ["192.168.50.10"]
[mqtt]
publish = ["devices/%d/#", "t/+"]
subscribe = ["devices/%d/cmd/#", "#"]
max_qos = 2
[[mqtt.payload]]
topic = "t/json"
format = "json"
required = ["a"]
)",
                                              "fuzz.toml");
    std::vector<iotgw::policy::DevicePolicy> v;
    v.push_back(std::move(*p));
    return *iotgw::policy::PolicySet::build(std::move(v));
  }();
  static const auto defaults = std::make_shared<iotgw::policy::DefaultCredentials>();
  iotgw::policy::AuthThrottle throttle;
  const auto t0 = Clock::time_point{} + std::chrono::seconds(1000);
  Session session(SessionSettings{}, policies, defaults, throttle,
                  PeerInfo{iotgw::policy::IpAddress::parse("192.168.50.10"), "fuzz", std::nullopt},
                  t0);
  Effects out;
  // Feed in two pieces to exercise reassembly.
  const size_t half = stream.size() / 2;
  session.receive(stream.first(half), t0, out);
  if (out.passwordCheck) {
    // Whatever the check's outcome (not run here: PBKDF2 is slow by design).
    out.passwordCheck.reset();
    session.passwordChecked(static_cast<PasswordResult>(stream.size() % 3), t0, out);
  }
  session.receive(stream.subspan(half), t0, out);
  session.upstreamStatus(true, (stream.size() & 2) != 0, t0, out); // a persistent login's answer
  const auto commands = out.upstream;
  for (const auto& c : commands) {
    if (const auto* p = std::get_if<upstream::Publish>(&c)) {
      session.upstreamAcked(p->token, out);
    } else if (const auto* sub = std::get_if<upstream::Subscribe>(&c)) {
      SubscribeResult r{sub->token, {}};
      for (const auto& f : sub->filters) {
        r.codes.push_back(static_cast<uint8_t>(f.qos() ^ (stream.size() & 1))); // or a lower QoS
      }
      session.upstreamSubscribed(r, out);
    } else if (const auto* u = std::get_if<upstream::Unsubscribe>(&c)) {
      session.upstreamUnsubscribed(u->token, out);
    }
  }
  const auto head = stream.first(std::min<size_t>(stream.size(), 64));
  session.deliver(Delivery{7, "devices/plug/cmd/x", {head.begin(), head.end()}, 1, false}, out);
  session.tick(t0 + std::chrono::hours(1), out);
  if (session.state() == Session::State::Connected && session.device() == nullptr) {
    std::abort();
  }
}

// Our client over the same bytes as a hostile broker's: whatever arrives, nothing it holds may grow
// past its bounds, and a failure ends the connection.
void fuzzClient(std::span<const uint8_t> stream) {
  ClientSettings settings;
  settings.maxPacketBytes = 4096;
  Client client(settings, ClientLogin{"iotgw-plug", (stream.size() & 1) != 0, 30, {}, {}, {}});
  ClientOutput out;
  const auto t0 = ClientClock::time_point{} + std::chrono::seconds(1000);
  client.start(t0, out);
  (void)client.publish(Outgoing{1, "devices/plug/t", {1, 2, 3}, 1, false}, out);
  client.subscribe(2, {Subscription{"devices/plug/cmd/#", 1}}, out);
  const auto connack = encode(Connack{(stream.size() & 2) != 0, 0, {}}, Version::V311);
  client.received(connack, out);
  for (size_t at = 0; at < stream.size() && !out.failure; at += 7) {
    client.received(stream.subspan(at, std::min<size_t>(7, stream.size() - at)), out);
    for (const auto& d : out.deliveries) {
      client.acknowledge(d.id, out);
    }
    out.deliveries.clear();
  }
  client.tick(t0 + std::chrono::hours(1), out);
  if (client.queued() > settings.maxQueued || client.heldBytes() > settings.maxQueuedBytes) {
    std::abort();
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) {
    return 0;
  }
  Version version = (data[0] & 1) != 0 ? Version::V5 : Version::V311;
  std::span<const uint8_t> stream(data + 1, size - 1);
  fuzzSession(stream);
  fuzzClient(stream);
  while (!stream.empty()) {
    auto frame = readFrame(stream, 64 * 1024);
    if (!frame || !*frame) {
      return 0; // an error, or the stream ends mid-packet
    }
    if ((*frame)->size > stream.size() || (*frame)->size < 2) {
      std::abort();
    }
    auto packet = decodePacket(**frame, version);
    stream = stream.subspan((*frame)->size);
    if (!packet) {
      if (packet.error().clause.empty() || packet.error().reasonCode < 0x80) {
        std::abort(); // every refusal names its clause and a failure reason code
      }
      return 0;
    }
    if (const auto* c = std::get_if<Connect>(&*packet)) {
      version = c->version;
    }
    if (validateFromClient(*packet, version)) {
      return 0;
    }
    const auto bytes = encode(*packet, version);
    auto again = readFrame(bytes, 1u << 30);
    if (!again || !*again) {
      std::abort();
    }
    auto decoded = decodePacket(**again, version);
    if (!decoded || !(*decoded == *packet)) {
      std::abort();
    }
  }
  return 0;
}
