// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/event_catalog.h"

#include <syslog.h>

#include <array>

namespace iotgw::daemon {

namespace {

using policy::EventType;

// Keep in step with systemd/iotgwd.catalog; a unit test checks that every id is there.
constexpr std::array<JournalEntry, policy::kEventTypeCount> kEntries = {{
    {EventType::DaemonStarted, "374298564b8a4ae3ada4bd102481fc30", LOG_NOTICE},
    {EventType::DaemonStopping, "34de99166a50412092525355db56601a", LOG_NOTICE},
    {EventType::ConfigReloaded, "b29e8957707b4045838e586f6327ea49", LOG_NOTICE},
    {EventType::ConfigRejected, "ea544e8e870e44f3ac4cde967ee935ae", LOG_ERR},
    {EventType::DefaultCredentialRefused, "82a5b708305e476e862d01e061731b22", LOG_WARNING},
    {EventType::AuthenticationFailed, "f18ad8b668cc49ea891510cf35fc8fb3", LOG_WARNING},
    {EventType::AuthenticationLockout, "9d9b5baf7fbc450a881b61e69d96c096", LOG_WARNING},
    {EventType::AccessDenied, "ebe4e7671e0849c987d61e94eb2b3ae1", LOG_WARNING},
    {EventType::PayloadRejected, "4c31305079dd471bbdbf77af769157c3", LOG_WARNING},
    {EventType::RateLimited, "3f99a652b0364100bba7e39e8d35d894", LOG_WARNING},
    {EventType::MalformedPacket, "467ff063bbdb42a5a4c35834b4c78758", LOG_WARNING},
    {EventType::DeviceQuarantined, "6381c778dd024890b23890b40d68ff20", LOG_WARNING},
    {EventType::DeviceReleased, "d392eeb5f1ee416ba1e798d96dee6057", LOG_NOTICE},
    {EventType::DeviceChanged, "dffbab56beff4b65925cbe4fb7734afb", LOG_NOTICE},
    {EventType::FirewallRepaired, "686f12665b444aaebc08a5036a819f01", LOG_WARNING},
    {EventType::ExposedService, "b21d58ea331f45f7b5a8a8d0c7963f08", LOG_WARNING},
    {EventType::EventsSuppressed, "5e97e4bf6285446593b840b5c897e586", LOG_NOTICE},
    {EventType::UpstreamUnavailable, "736e815b77c64f94948555a9570be238", LOG_ERR},
    {EventType::TrafficSurge, "29ab130ecae04256a1e453ff86720a38", LOG_WARNING},
    {EventType::DevicePortBound, "b623e4de99274dcfb632b032af6afdda", LOG_NOTICE},
    {EventType::DevicePortConflict, "bb34600f2add4e4d8f681a8a041da118", LOG_WARNING},
    {EventType::NeighbourSpoofing, "aedefb2bce3e4d678924fe23deb7b35d", LOG_WARNING},
    {EventType::InsecureUpstream, "5c0f3b1e9a8d4e27b6f1d2a4c8e97b31", LOG_WARNING},
    {EventType::OutboxQueuing, "d828e7ec05d84bf9831118bf5e16ef96", LOG_WARNING},
    {EventType::OutboxDrained, "6905a8a262354074aa21d497b1969e65", LOG_NOTICE},
    {EventType::OutboxFull, "bdb688ce6588421a9e42ebfab5c38905", LOG_ERR},
}};

static_assert(kEntries.size() == policy::kEventTypeCount);

} // namespace

const JournalEntry& journalEntry(EventType t) noexcept { return kEntries[static_cast<size_t>(t)]; }

std::span<const JournalEntry> journalEntries() noexcept { return kEntries; }

} // namespace iotgw::daemon
