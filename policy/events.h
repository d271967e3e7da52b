// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The security-event vocabulary. Each type has a stable journald MESSAGE_ID (documented in
// systemd/iotgwd.catalog) and a default EN 303 645 provision. An Event carries only identifiers
// and short reasons: never payloads, passwords or keys.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "policy/decision.h"

namespace iotgw::policy {

enum class EventType : uint8_t {
  DaemonStarted,
  DaemonStopping,
  ConfigReloaded,
  ConfigRejected,
  DefaultCredentialRefused,
  AuthenticationFailed,
  AuthenticationLockout,
  AccessDenied,
  PayloadRejected,
  RateLimited,
  MalformedPacket,
  DeviceQuarantined,
  DeviceReleased,
  DeviceChanged,
  FirewallRepaired,
  ExposedService,
  EventsSuppressed,
  UpstreamUnavailable,
  TrafficSurge,
  DevicePortBound,
  DevicePortConflict,
  NeighbourSpoofing,
  InsecureUpstream,
  OutboxQueuing,
  OutboxDrained,
  OutboxFull,
};

inline constexpr size_t kEventTypeCount = static_cast<size_t>(EventType::OutboxFull) + 1;

struct EventTypeInfo {
  EventType type;
  std::string_view name;      // "default-credential-refused"
  std::string_view provision; // default provision, may be empty
};

[[nodiscard]] const EventTypeInfo& info(EventType t) noexcept;
[[nodiscard]] std::span<const EventTypeInfo> allEventTypes() noexcept;

struct Event {
  EventType type = EventType::DaemonStarted;
  std::string message;   // one line for humans
  std::string device;    // IOTGW_DEVICE
  std::string provision; // IOTGW_PROVISION (defaults to the type's)
  std::string rule;      // IOTGW_RULE
  std::string peer;      // IOTGW_PEER: address[:port]
  std::string protocol;  // IOTGW_PROTOCOL: mqtt, coap, nftables, config
  std::string action;    // IOTGW_ACTION: drop, disconnect, quarantine, refuse, repair, ...
};

// A violation decided by the evaluator, as an event.
[[nodiscard]] Event violationEvent(EventType type, const Decision& d, std::string device,
                                   std::string peer, std::string protocol);

} // namespace iotgw::policy
