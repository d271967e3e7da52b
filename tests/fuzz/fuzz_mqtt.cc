// SPDX-License-Identifier: GPL-3.0-or-later
// libFuzzer target: MQTT framing + decoding + validation over a byte stream, as a session reads
// it. The first byte picks the protocol version. Whatever decodes and validates must survive an
// encode/decode round trip unchanged.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "protocols/mqtt/codec.h"
#include "protocols/mqtt/validate.h"

using namespace iotgw::mqtt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) {
    return 0;
  }
  Version version = (data[0] & 1) != 0 ? Version::V5 : Version::V311;
  std::span<const uint8_t> stream(data + 1, size - 1);
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
