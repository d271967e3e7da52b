// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Validation of decoded packets that a client sent to the server: what the MQTT specification
// says a server MUST check, each failure naming its normative statement. Pure: no session state
// beyond what the caller passes in.

#include <optional>

#include "protocols/mqtt/error.h"
#include "protocols/mqtt/packet.h"

namespace iotgw::mqtt {

struct ServerLimits {
  // What the gateway announces in CONNACK (5.0) and so may hold clients to.
  uint16_t topicAliasMaximum = 0; // 0: topic aliases are not accepted
};

// `version` is the session's version (for CONNECT, the packet's own). Checks, among others:
// UTF-8 well-formed with no U+0000 in every string; topic names without wildcards; filter
// wildcard placement; non-zero packet identifiers; DUP only with QoS > 0; will, user name and
// password flag rules; subscription option bits; for 5.0, properties allowed for the packet
// type, no duplicates, values in range. Packets only a server sends are refused.
[[nodiscard]] std::optional<CodecError> validateFromClient(const Packet& packet, Version version,
                                                           const ServerLimits& limits = {});

} // namespace iotgw::mqtt
