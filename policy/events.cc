// SPDX-License-Identifier: GPL-3.0-or-later
#include "policy/events.h"

#include <array>

namespace iotgw::policy {

namespace {

// What each type is called (IOTGW_EVENT) and the provision it cites by default. How the journal
// shows it (MESSAGE_ID, priority) is the daemon's: daemon/event_catalog.cc.
constexpr std::array<EventTypeInfo, kEventTypeCount> kTypes = {{
    {EventType::DaemonStarted, "daemon-started", ""},
    {EventType::DaemonStopping, "daemon-stopping", ""},
    {EventType::ConfigReloaded, "config-reloaded", ""},
    {EventType::ConfigRejected, "config-rejected", ""},
    {EventType::DefaultCredentialRefused, "default-credential-refused", "5.1-1"},
    {EventType::AuthenticationFailed, "authentication-failed", "5.5-4"},
    {EventType::AuthenticationLockout, "authentication-lockout", "5.1-5"},
    {EventType::AccessDenied, "access-denied", "5.13-1"},
    {EventType::PayloadRejected, "payload-rejected", "5.13-1"},
    {EventType::RateLimited, "rate-limited", "5.10-1"},
    {EventType::MalformedPacket, "malformed-packet", "5.13-1"},
    {EventType::DeviceQuarantined, "device-quarantined", "5.3-15"},
    {EventType::DeviceReleased, "device-released", "5.3-15"},
    {EventType::DeviceChanged, "device-changed", ""},
    {EventType::FirewallRepaired, "firewall-repaired", "5.6-1"},
    {EventType::ExposedService, "exposed-service", "5.6-1"},
    {EventType::EventsSuppressed, "events-suppressed", ""},
    {EventType::UpstreamUnavailable, "upstream-unavailable", "5.9-1"},
    {EventType::TrafficSurge, "traffic-surge", "5.10-1"},
    {EventType::DevicePortBound, "device-port-bound", ""},
    {EventType::DevicePortConflict, "device-port-conflict", "5.10-1"},
    {EventType::NeighbourSpoofing, "neighbour-spoofing", "5.10-1"},
    {EventType::InsecureUpstream, "insecure-upstream", "5.5-1"},
    {EventType::OutboxQueuing, "outbox-queuing", "5.9-1"},
    {EventType::OutboxDrained, "outbox-drained", "5.9-1"},
    {EventType::OutboxFull, "outbox-full", "5.9-2"},
}};

} // namespace

const EventTypeInfo& info(EventType t) noexcept { return kTypes[static_cast<size_t>(t)]; }

std::span<const EventTypeInfo> allEventTypes() noexcept { return kTypes; }

Event violationEvent(EventType type, const Decision& d, std::string device, std::string peer,
                     std::string protocol) {
  Event e;
  e.type = type;
  e.device = std::move(device);
  e.provision = d.provision.empty() ? std::string(info(type).provision) : d.provision;
  e.rule = d.rule;
  e.peer = std::move(peer);
  e.protocol = std::move(protocol);
  e.action = std::string(toString(d.action));
  e.message = d.reason;
  return e;
}

} // namespace iotgw::policy
