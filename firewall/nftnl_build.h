// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The tables as libnftnl messages (inside firewall/): what a transaction says to make each table
// what its Ruleset says. netlink.cc sends the transaction and reads the kernel's answer.

#include "firewall/nftnl_batch.h"
#include "firewall/ruleset.h"

namespace iotgw::firewall::nftnl {

// Create-if-missing, delete, create, then everything in it: whatever table is there is replaced.
void replaceTable(detail::Batch& b, const Ruleset& rs);
// The element and counter changes of one table whose sets exist as `target` describes them.
void updateTable(detail::Batch& b, const ElementDelta& d, const Ruleset& target);
// Both tables deleted (no error if they do not exist).
void removeTables(detail::Batch& b);

} // namespace iotgw::firewall::nftnl
