// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

#include <cstdint>
#include <string_view>

namespace iotgw::mqtt {

// A violation of the MQTT specification, naming the normative statement it breaks
// ("MQTT-3.3.1-4"), the MQTT 5.0 reason code to send before closing (3.1.1 clients just see the
// connection closed), and a short fixed description. Never contains packet contents.
struct CodecError {
  std::string_view clause;
  uint8_t reasonCode = 0x81; // Malformed Packet
  std::string_view what;
  bool operator==(const CodecError&) const = default;
};

} // namespace iotgw::mqtt
