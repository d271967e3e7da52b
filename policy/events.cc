// SPDX-License-Identifier: GPL-3.0-or-later
#include "policy/events.h"

#include <syslog.h>

#include <array>

namespace iotgw::policy {

namespace {

// Keep in step with systemd/iotgwd.catalog; a unit test checks that every id is there.
constexpr std::array<EventTypeInfo, 22> kTypes = {{
    {EventType::DaemonStarted, "daemon-started", "374298564b8a4ae3ada4bd102481fc30", LOG_NOTICE,
     ""},
    {EventType::DaemonStopping, "daemon-stopping", "34de99166a50412092525355db56601a", LOG_NOTICE,
     ""},
    {EventType::ConfigReloaded, "config-reloaded", "b29e8957707b4045838e586f6327ea49", LOG_NOTICE,
     ""},
    {EventType::ConfigRejected, "config-rejected", "ea544e8e870e44f3ac4cde967ee935ae", LOG_ERR, ""},
    {EventType::DefaultCredentialRefused, "default-credential-refused",
     "82a5b708305e476e862d01e061731b22", LOG_WARNING, "5.1-1"},
    {EventType::AuthenticationFailed, "authentication-failed", "f18ad8b668cc49ea891510cf35fc8fb3",
     LOG_WARNING, "5.5-4"},
    {EventType::AuthenticationLockout, "authentication-lockout", "9d9b5baf7fbc450a881b61e69d96c096",
     LOG_WARNING, "5.1-5"},
    {EventType::AccessDenied, "access-denied", "ebe4e7671e0849c987d61e94eb2b3ae1", LOG_WARNING,
     "5.13-1"},
    {EventType::PayloadRejected, "payload-rejected", "4c31305079dd471bbdbf77af769157c3",
     LOG_WARNING, "5.13-1"},
    {EventType::RateLimited, "rate-limited", "3f99a652b0364100bba7e39e8d35d894", LOG_WARNING,
     "5.10-1"},
    {EventType::MalformedPacket, "malformed-packet", "467ff063bbdb42a5a4c35834b4c78758",
     LOG_WARNING, "5.13-1"},
    {EventType::DeviceQuarantined, "device-quarantined", "6381c778dd024890b23890b40d68ff20",
     LOG_WARNING, "5.3-15"},
    {EventType::DeviceReleased, "device-released", "d392eeb5f1ee416ba1e798d96dee6057", LOG_NOTICE,
     "5.3-15"},
    {EventType::DeviceChanged, "device-changed", "dffbab56beff4b65925cbe4fb7734afb", LOG_NOTICE,
     ""},
    {EventType::FirewallRepaired, "firewall-repaired", "686f12665b444aaebc08a5036a819f01",
     LOG_WARNING, "5.6-1"},
    {EventType::ExposedService, "exposed-service", "b21d58ea331f45f7b5a8a8d0c7963f08", LOG_WARNING,
     "5.6-1"},
    {EventType::EventsSuppressed, "events-suppressed", "5e97e4bf6285446593b840b5c897e586",
     LOG_NOTICE, ""},
    {EventType::UpstreamUnavailable, "upstream-unavailable", "736e815b77c64f94948555a9570be238",
     LOG_ERR, "5.9-1"},
    {EventType::TrafficSurge, "traffic-surge", "29ab130ecae04256a1e453ff86720a38", LOG_WARNING,
     "5.10-1"},
    {EventType::DevicePortBound, "device-port-bound", "b623e4de99274dcfb632b032af6afdda",
     LOG_NOTICE, ""},
    {EventType::DevicePortConflict, "device-port-conflict", "bb34600f2add4e4d8f681a8a041da118",
     LOG_WARNING, "5.10-1"},
    {EventType::NeighbourSpoofing, "neighbour-spoofing", "aedefb2bce3e4d678924fe23deb7b35d",
     LOG_WARNING, "5.10-1"},
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
