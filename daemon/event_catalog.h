// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// How the journal shows each event type: its MESSAGE_ID (the key of its entry in
// systemd/iotgwd.catalog, never changed once released) and its syslog priority. The event types
// themselves, their names and provisions, are policy's (policy/events.h).

#include <span>
#include <string_view>

#include "policy/events.h"

namespace iotgw::daemon {

struct JournalEntry {
  policy::EventType type;
  std::string_view messageId; // 32 lowercase hex digits
  int priority;               // syslog priority (LOG_*)
};

[[nodiscard]] const JournalEntry& journalEntry(policy::EventType t) noexcept;
// In the order of policy::EventType.
[[nodiscard]] std::span<const JournalEntry> journalEntries() noexcept;

} // namespace iotgw::daemon
