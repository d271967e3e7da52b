// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The MQTT codec: three pure steps, each testable on byte vectors.
//   framing    bytes → Frame (fixed header + body) | need more | error
//   decoding   Frame → Packet (structure, lengths, fixed-header flags) | error
//   validation Packet → ok | error (validate.h: UTF-8, wildcards, identifiers, flags, properties)
// and encoding, Packet → bytes, for every packet type in either direction.

#include <cstdint>
#include <expected>
#include <optional>
#include <span>
#include <vector>

#include "protocols/mqtt/error.h"
#include "protocols/mqtt/packet.h"

namespace iotgw::mqtt {

struct Frame {
  uint8_t header = 0;            // packet type (high nibble) and flags (low nibble)
  std::span<const uint8_t> body; // variable header and payload: `remaining length` bytes
  size_t size = 0;               // bytes the whole packet takes in the buffer

  [[nodiscard]] uint8_t typeBits() const { return static_cast<uint8_t>(header >> 4); }
  [[nodiscard]] uint8_t flags() const { return header & 0x0F; }
};

// The largest remaining length a 4-byte variable byte integer can carry.
inline constexpr uint32_t kMaxRemainingLength = 268'435'455;

// Finds the first complete packet in `buffer`. nullopt: not enough bytes yet. A remaining length
// longer than 4 bytes, or a packet larger than `maxPacketSize` (header included), is an error as
// soon as the header says so — the body is never waited for.
[[nodiscard]] std::expected<std::optional<Frame>, CodecError>
readFrame(std::span<const uint8_t> buffer, uint32_t maxPacketSize);

// Decodes a frame. `version` is the session's protocol version; CONNECT carries its own. Checks
// structure only: every length against what remains, fixed-header flags, no trailing bytes.
[[nodiscard]] std::expected<Packet, CodecError> decodePacket(const Frame& frame, Version version);

// Serialises any packet for `version` (5.0 fields are left out for 3.1.1).
[[nodiscard]] std::vector<uint8_t> encode(const Packet& packet, Version version);

// Appends a variable byte integer (at most 4 bytes; value ≤ kMaxRemainingLength).
void appendVarInt(std::vector<uint8_t>& out, uint32_t value);

} // namespace iotgw::mqtt
