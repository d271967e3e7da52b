// SPDX-License-Identifier: GPL-3.0-or-later
// libFuzzer target: MQTT framing + decoding + validation over a byte stream, as a session reads
// it. The first byte picks the protocol version. Whatever decodes and validates must survive an
// encode/decode round trip unchanged.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "policy/policy_parser.h"
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
  for (const auto& c : out.upstream) {
    if (const auto* p = std::get_if<upstream::Publish>(&c)) {
      session.upstreamAcked(p->token, out);
    }
  }
  session.deliver("devices/plug/cmd/x", stream.first(std::min<size_t>(stream.size(), 64)), 1, false,
                  out);
  session.tick(t0 + std::chrono::hours(1), out);
  if (session.state() == Session::State::Connected && session.device() == nullptr) {
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
