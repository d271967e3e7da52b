// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The daemon's configuration (TOML). Every key is known, typed and range-checked: an unknown key,
// a wrong type or an out-of-range value is an error with its file:line:column, never ignored.
// builtinDefault() is what runs with no configuration file: nothing listens on the device side,
// no device is trusted, and the firewall denies by default.

#include <chrono>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <string>
#include <vector>

#include "iotgw/build_config.h"
#include "policy/credentials.h"
#include "policy/device.h"
#include "policy/diagnostic.h"
#include "policy/rate_limit.h"

namespace iotgw::daemon {

inline constexpr const char* kDefaultConfigPath = "/etc/iotgw/iotgw.toml";

struct ListenerConfig {
  bool enabled = false;
  std::vector<policy::IpAddress> addresses;
  uint16_t port = 0;
  // TLS/DTLS listeners only.
  std::filesystem::path certificate;
  std::filesystem::path privateKey;
  std::filesystem::path caFile;
  std::filesystem::path crlFile;
};

struct UpstreamConfig {
  bool enabled = false;
  std::string host;
  uint16_t port = 8883;
  // false: plaintext, which the configuration takes only for a broker on this host's loopback.
  bool tls = true;
  std::filesystem::path caFile;
  // Both or neither: without them the TLS is server-authenticated and the broker is given a
  // user name (and password) instead.
  std::filesystem::path certificate;
  std::filesystem::path privateKey;
  // The user name at the broker; "%d" is the device id (broker ACLs then tell devices apart). A
  // device's policy may name its own ([mqtt] upstream_username).
  std::string username;
  // "user:password" lines ("*:password" for any user name not listed); mode 0600 or 0640, never
  // readable by others, so that passwords stay out of the world-readable configuration.
  std::filesystem::path passwordFile;
  uint16_t keepaliveSeconds = 60;
  std::string clientIdPrefix = "iotgw-";
};

struct DeviceSegment {
  std::vector<std::string> interfaces{"br-iot"}; // OpenWrt's name for an isolated device segment
  std::vector<policy::IpPrefix> subnets;
};

struct FirewallConfig {
  bool enabled = true;
  bool keepRulesOnExit = true; // fail closed
  // The exposure scan of enrolled devices' well-known ports: how often (0: never) and how many
  // probes per second at most.
  std::chrono::seconds scanInterval{3600};
  uint32_t scanProbesPerSecond = 20;
  // Per-device counters read back this often (0: never) for rates and traffic-surge events
  // (5.10-1); a surge can also quarantine the device.
  std::chrono::seconds telemetryInterval{10};
  bool quarantineOnSurge = false;
};

struct Limits {
  uint32_t maxConnections = 1024;
  uint32_t maxConnectionsPerSource = 16;
  uint32_t maxHandshakes = 64;
  uint32_t maxHandshakesPerSource = 4;
  std::chrono::milliseconds handshakeTimeout{10'000};
  // A TLS client that has not sent its first byte by then is closed (an idle handshake).
  std::chrono::milliseconds firstByteTimeout{3'000};
  std::chrono::milliseconds connectTimeout{10'000};
  uint32_t maxPacketBytes = 256 * 1024;
  // Before a CONNECT has been accepted nobody is known: its packets may be this large at most,
  // and all such connections together may hold this many bytes of partial packets (the slowest
  // are closed first beyond it).
  uint32_t maxConnectBytes = 8 * 1024;
  uint32_t maxUnauthenticatedBytes = 4 * 1024 * 1024;
  // Password checks (PBKDF2, ~0.1 s each) run off the event loop; at most this many wait or run,
  // in total and per source. More CONNECTs are refused as "server unavailable" and counted.
  uint32_t maxPasswordChecks = 16;
  uint32_t maxPasswordChecksPerSource = 2;
  uint32_t maxSubscriptionsPerSession = 100;
  uint32_t maxFiltersPerSubscribe = 32;
  // What a session may hold for its client that the client has not read, and for the broker
  // that the broker has not taken (bytes of messages) ...
  uint32_t maxQueuedBytes = 1024 * 1024;
  // ... and what all upstream sessions together may hold for the broker.
  uint32_t maxQueuedBytesTotal = 64 * 1024 * 1024;
  // Upstream sessions that may reconnect per second, all together, after they were lost or an
  // attempt failed (EN 303 645 5.9-3: a broker that restarts is not hit by every device at once).
  uint32_t upstreamReconnectsPerSecond = 50;
  // Topic names and filters, both directions (the parsers behind us rarely expect 64 KiB ones).
  uint32_t maxTopicBytes = 1024;
  uint32_t maxDevices = 10'000;
  uint32_t maxQueuedMessages = 1000;
  // How long the CoAP proxy waits for a device before answering 5.04 Gateway Timeout.
  std::chrono::milliseconds coapRequestTimeout{5'000};
  // Requests one DTLS session may have waiting for devices at once (beyond: 4.29).
  uint32_t coapMaxPendingPerSession = 16;
  // Observe relationships one DTLS session, and all together, may hold (beyond: answered
  // without Observe, RFC 7641 §4.1).
  uint32_t coapMaxObservePerSession = 32;
  uint32_t coapMaxObserve = 1024;
  // Observe relationships of all clients together with one device (each one is an observer the
  // device itself keeps).
  uint32_t coapMaxObservePerDevice = 32;
  // DTLS sessions with nothing in flight are closed after this long without traffic.
  std::chrono::seconds idleSession{300};
  policy::ThrottleSettings authThrottle;
};

enum class EventTarget { Auto, Journal, Syslog, Stderr };

struct EventsConfig {
  EventTarget target = EventTarget::Auto;
  uint32_t burst = 10;                      // events per device and type ...
  std::chrono::seconds interval{60};        // ... per interval
  std::chrono::seconds summaryInterval{60}; // how often suppressed counts are reported
};

// Store-and-forward (protocols/mqtt/outbox.h): what a device's QoS 1/2 messages wait in while its
// broker cannot take them, in the state directory's outbox/.
struct StoreConfig {
  // When a device is told it has a message (PUBACK, PUBREC): once it is durable here (default;
  // nothing acknowledged is lost, also across a crash or power cut), or only once the broker
  // has it (no outbox; a device waits, unacknowledged, for as long as the broker is away).
  enum class Acknowledge { Durable, Broker };
  Acknowledge acknowledge = Acknowledge::Durable;
  size_t maxMessagesPerDevice = 10'000;
  size_t maxBytesPerDevice = 4 * 1024 * 1024;
  size_t maxBytes = 64 * 1024 * 1024; // all devices' outboxes together, on disk
};

// The control API, org.iotgw.Gateway1 on the system bus.
struct DbusConfig {
  bool enabled = IOTGW_WITH_DBUS != 0;    // a build without D-Bus has no control API
  std::string adminGroup = "iotgw-admin"; // who may change the gateway (besides root)
  std::string readerGroup = "iotgw";      // who may read it (besides root and the admin group)
};

struct Config {
  std::filesystem::path source; // empty for the built-in default
  std::filesystem::path stateDirectory = "/var/lib/iotgw";
  std::filesystem::path devicesDirectory = "/etc/iotgw/devices.d";
  DeviceSegment deviceSegment;
  ListenerConfig mqtt;
  ListenerConfig mqttTls;
  ListenerConfig coap;
  ListenerConfig coapDtls;
  UpstreamConfig upstream;
  FirewallConfig firewall;
  Limits limits;
  EventsConfig events;
  StoreConfig store;
  DbusConfig dbus;
  std::vector<policy::CredentialPair> extraDefaultCredentials;

  // Where device policies live: devices.d/ and the state directory's devices/ (those set over
  // D-Bus).
  [[nodiscard]] std::vector<std::filesystem::path> policyDirectories() const;
};

[[nodiscard]] Config builtinDefault();

[[nodiscard]] std::expected<Config, policy::Diagnostics> parseConfig(std::string_view text,
                                                                     const std::string& source);
[[nodiscard]] std::expected<Config, policy::Diagnostics> loadConfig(const std::filesystem::path& p);

[[nodiscard]] std::string_view toString(EventTarget t) noexcept;

} // namespace iotgw::daemon
