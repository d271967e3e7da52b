// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The ruleset in nft's own language: what `nft -f` would need to build the identical table (the
// benchmark compares the two), and a readable form for people and test failures. iotgwd itself
// never runs nft.

#include <string>

#include "firewall/ruleset.h"

namespace iotgw::firewall {

// "table inet iotgw { ... }" (or "table bridge iotgw"), ready for `nft -f` (the bridge table's
// neighbour-discovery fields are raw payloads, which nft 1.0 prints but will not type-check in a
// concatenation).
[[nodiscard]] std::string toNftScript(const Ruleset& rs);

} // namespace iotgw::firewall
