// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/config.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fmt/format.h>
#include <tuple>

#include "iotgw/build_config.h"
#include "policy/policy_set.h"
#include "policy/toml_schema.h"

namespace iotgw::daemon {

using policy::Diagnostic;
using policy::Diagnostics;
using policy::Need;
using policy::TableReader;

namespace {

constexpr size_t kMaxConfigBytes = 1024 * 1024;

bool isWildcard(const policy::IpAddress& a) {
  return std::ranges::all_of(a.bytes, [](uint8_t b) { return b == 0; });
}

class ConfigParser {
public:
  ConfigParser(const std::string& source, Diagnostics& diags) : source_(source), diags_(diags) {}

  Config parse(const toml::table& root) {
    Config c;
    c.source = source_;
    TableReader top(root, "", source_, diags_);
    if (const auto* t = top.table("daemon")) {
      TableReader r(*t, "daemon", source_, diags_);
      path(r, *t, "state_directory", c.stateDirectory, true);
      path(r, *t, "devices_directory", c.devicesDirectory, true);
      r.finish();
    }
    if (const auto* t = top.table("device_segment")) {
      TableReader r(*t, "device_segment", source_, diags_);
      if (auto ifs = r.strings("interfaces", Need::Optional, 64, 15)) {
        c.deviceSegment.interfaces.clear(); // given: replaces the default
        const auto& arr = *t->get("interfaces")->as_array();
        for (size_t i = 0; i < ifs->size(); ++i) {
          const auto& name = (*ifs)[i];
          const bool ok = !name.empty() && std::ranges::all_of(name, [](char ch) {
            return std::isalnum(static_cast<unsigned char>(ch)) != 0 || ch == '-' || ch == '_' ||
                   ch == '.';
          });
          if (!ok) {
            r.error(arr[i], fmt::format("\"{}\" is not a network interface name", name));
          } else {
            c.deviceSegment.interfaces.push_back(name);
          }
        }
      }
      if (auto subnets = r.strings("subnets", Need::Optional, 64, 64)) {
        const auto& arr = *t->get("subnets")->as_array();
        for (size_t i = 0; i < subnets->size(); ++i) {
          if (auto p = policy::IpPrefix::parse((*subnets)[i])) {
            c.deviceSegment.subnets.push_back(*p);
          } else {
            r.error(arr[i], fmt::format("\"{}\" is not a subnet such as 192.168.50.0/24 (host "
                                        "bits must be zero)",
                                        (*subnets)[i]));
          }
        }
      }
      r.finish();
    }
    if (const auto* t = top.table("listeners")) {
      TableReader r(*t, "listeners", source_, diags_);
      listener(r, "mqtt", 1883, false, c.mqtt);
      listener(r, "mqtt_tls", 8883, true, c.mqttTls);
      listener(r, "coap", 5683, false, c.coap);
      listener(r, "coap_dtls", 5684, true, c.coapDtls);
      r.finish();
    } else {
      c.mqtt.port = 1883;
      c.mqttTls.port = 8883;
      c.coap.port = 5683;
      c.coapDtls.port = 5684;
    }
    if (const auto* t = top.table("upstream")) {
      TableReader r(*t, "upstream", source_, diags_);
      c.upstream.enabled = r.boolean("enabled").value_or(true);
      c.upstream.host =
          r.string("host", c.upstream.enabled ? Need::Required : Need::Optional, 253).value_or("");
      if (auto p = r.integer("port", 1, 65535)) {
        c.upstream.port = static_cast<uint16_t>(*p);
      }
      c.upstream.tls = r.boolean("tls").value_or(true);
      const Need files = c.upstream.enabled && c.upstream.tls ? Need::Required : Need::Optional;
      file(r, *t, "ca_file", c.upstream.caFile, files);
      file(r, *t, "certificate", c.upstream.certificate, Need::Optional);
      file(r, *t, "private_key", c.upstream.privateKey, Need::Optional);
      c.upstream.username = r.string("username", Need::Optional, 256).value_or("");
      file(r, *t, "password_file", c.upstream.passwordFile, Need::Optional);
      upstreamAuthentication(r, *t, c.upstream);
      if (auto k = r.integer("keepalive_seconds", 5, 65535)) {
        c.upstream.keepaliveSeconds = static_cast<uint16_t>(*k);
      }
      c.upstream.clientIdPrefix =
          r.string("client_id_prefix", Need::Optional, 32).value_or(c.upstream.clientIdPrefix);
      r.finish();
    }
    if (const auto* t = top.table("firewall")) {
      TableReader r(*t, "firewall", source_, diags_);
      c.firewall.enabled = r.boolean("enabled").value_or(c.firewall.enabled);
      c.firewall.keepRulesOnExit = r.boolean("keep_rules_on_exit").value_or(true);
      if (auto v = r.integer("scan_interval_seconds", 0, 7 * 24 * 3600)) {
        c.firewall.scanInterval = std::chrono::seconds(*v);
      }
      if (auto v = r.integer("scan_probes_per_second", 1, 1000)) {
        c.firewall.scanProbesPerSecond = static_cast<uint32_t>(*v);
      }
      if (auto v = r.integer("telemetry_interval_seconds", 0, 3600)) {
        c.firewall.telemetryInterval = std::chrono::seconds(*v);
      }
      c.firewall.quarantineOnSurge =
          r.choice<bool>("surge_action", {{"event", false}, {"quarantine", true}}).value_or(false);
      r.finish();
    }
    if (const auto* t = top.table("limits")) {
      parseLimits(*t, c.limits);
    }
    if (const auto* t = top.table("events")) {
      TableReader r(*t, "events", source_, diags_);
      c.events.target = r.choice<EventTarget>("target", {{"auto", EventTarget::Auto},
                                                         {"journal", EventTarget::Journal},
                                                         {"syslog", EventTarget::Syslog},
                                                         {"stderr", EventTarget::Stderr}})
                            .value_or(EventTarget::Auto);
      if (c.events.target == EventTarget::Journal && !IOTGW_WITH_SYSTEMD) {
        r.error(*t->get("target"),
                "'events.target' = \"journal\" needs a build with systemd support");
      }
      if (auto b = r.integer("burst", 1, 100'000)) {
        c.events.burst = static_cast<uint32_t>(*b);
      }
      if (auto s = r.integer("interval_seconds", 1, 86'400)) {
        c.events.interval = std::chrono::seconds(*s);
      }
      if (auto s = r.integer("summary_interval_seconds", 1, 86'400)) {
        c.events.summaryInterval = std::chrono::seconds(*s);
      }
      r.finish();
    }
    if (const auto* t = top.table("store")) {
      TableReader r(*t, "store", source_, diags_);
      c.store.acknowledge = r.choice<StoreConfig::Acknowledge>(
                                 "acknowledge", {{"durable", StoreConfig::Acknowledge::Durable},
                                                 {"broker", StoreConfig::Acknowledge::Broker}})
                                .value_or(StoreConfig::Acknowledge::Durable);
      if (auto v = r.integer("max_messages_per_device", 1, 1'000'000)) {
        c.store.maxMessagesPerDevice = static_cast<size_t>(*v);
      }
      if (auto v = r.integer("max_bytes_per_device", 4096, int64_t{1} << 32)) {
        c.store.maxBytesPerDevice = static_cast<size_t>(*v);
      }
      if (auto v = r.integer("max_bytes", 4096, int64_t{1} << 40)) {
        c.store.maxBytes = static_cast<size_t>(*v);
      }
      r.finish();
    }
    if (const auto* t = top.table("dbus")) {
      TableReader r(*t, "dbus", source_, diags_);
      c.dbus.enabled = r.boolean("enabled").value_or(c.dbus.enabled);
      if (c.dbus.enabled && !IOTGW_WITH_DBUS) {
        r.error(*t->get("enabled"), "'dbus.enabled' = true needs a build with D-Bus support");
      }
      c.dbus.adminGroup = r.string("admin_group", Need::Optional, 64).value_or(c.dbus.adminGroup);
      c.dbus.readerGroup =
          r.string("reader_group", Need::Optional, 64).value_or(c.dbus.readerGroup);
      r.finish();
    }
    if (const auto* t = top.table("credentials")) {
      TableReader r(*t, "credentials", source_, diags_);
      for (const toml::table* pair : r.tables("refuse", 10'000)) {
        TableReader pr(*pair, "credentials.refuse", source_, diags_);
        auto user = pr.string("username", Need::Required, 256);
        auto pass = pr.string("password", Need::Required, 256);
        if (user && pass) {
          c.extraDefaultCredentials.push_back({*user, *pass});
        }
        pr.finish();
      }
      r.finish();
    }
    top.finish();
    if (diags_.empty()) {
      crossCheck(root, c);
    }
    return c;
  }

private:
  void path(TableReader& r, const toml::table& t, std::string_view key, std::filesystem::path& out,
            bool absolute) {
    if (auto s = r.string(key, Need::Optional, 4096)) {
      if (s->empty() || (absolute && s->front() != '/')) {
        r.error(*t.get(key), fmt::format("'{}' must be an absolute path", r.child(key)));
      } else {
        out = *s;
      }
    }
  }

  void file(TableReader& r, const toml::table& t, std::string_view key, std::filesystem::path& out,
            Need need) {
    if (auto s = r.string(key, need, 4096)) {
      if (s->empty()) {
        r.error(*t.get(key), fmt::format("'{}' must name a file", r.child(key)));
        return;
      }
      std::filesystem::path p(*s);
      if (p.is_relative()) {
        // Relative to the configuration file's directory.
        p = std::filesystem::path(source_).parent_path() / p;
      }
      p = credentialCopy(p);
      if (::access(p.c_str(), R_OK) != 0) {
        r.error(*t.get(key), fmt::format("'{}': cannot read {}", r.child(key), p.string()));
      }
      out = p;
    }
  }

  // A file in credentials/ beside the configuration file is root's alone. The unit hands that
  // directory to iotgwd as systemd credentials (LoadCredential=credentials:/etc/iotgw/credentials),
  // so under it the file is read from its copy, $CREDENTIALS_DIRECTORY/credentials_<name>; run
  // by hand as root, from the file itself. Only there: no other path is ever redirected.
  [[nodiscard]] std::filesystem::path credentialCopy(const std::filesystem::path& p) const {
    const char* dir = std::getenv("CREDENTIALS_DIRECTORY");
    if (dir == nullptr || *dir == '\0') {
      return p;
    }
    const auto normal = p.lexically_normal();
    const auto store =
        (std::filesystem::path(source_).parent_path() / "credentials").lexically_normal();
    if (normal.parent_path() != store) {
      return p;
    }
    auto copy = std::filesystem::path(dir) / ("credentials_" + normal.filename().string());
    return ::access(copy.c_str(), R_OK) == 0 ? copy : p;
  }

  // How iotgwd proves itself to the broker, and over what: checked as a whole.
  void upstreamAuthentication(TableReader& r, const toml::table& t, const UpstreamConfig& u) {
    if (!u.enabled) {
      return;
    }
    const bool certificate = !u.certificate.empty();
    if (certificate != !u.privateKey.empty()) {
      r.error(*t.get(certificate ? "certificate" : "private_key"),
              "'upstream.certificate' and 'upstream.private_key' go together");
    }
    if (!certificate && u.username.empty() && u.tls) {
      r.error(t, "[upstream] needs a client certificate ('certificate', 'private_key') or a "
                 "'username' (with 'password_file') for the broker");
    }
    if (!u.passwordFile.empty() && u.username.empty()) {
      r.error(*t.get("password_file"), "'upstream.password_file' needs 'upstream.username'");
    }
    if (!u.tls && certificate) {
      r.error(*t.get("certificate"), "'upstream.certificate' needs 'upstream.tls' = true");
    }
    if (!u.tls && !loopbackHost(u.host) && t.get("host") != nullptr) {
      r.error(*t.get("host"),
              fmt::format("'upstream.tls' = false only to a broker on this host's loopback "
                          "(127.0.0.1, ::1 or localhost), not \"{}\": anything else would carry "
                          "device data and passwords in the clear",
                          u.host));
    }
  }

  static bool loopbackHost(const std::string& host) {
    if (host == "localhost" || host == "::1") {
      return true;
    }
    const auto a = policy::IpAddress::parse(host);
    return a && a->family == AF_INET && a->bytes[0] == 127;
  }

  void listener(TableReader& parent, std::string_view name, uint16_t defaultPort, bool tls,
                ListenerConfig& l) {
    l.port = defaultPort;
    const toml::table* t = parent.table(name);
    if (t == nullptr) {
      return;
    }
    TableReader r(*t, parent.child(name), source_, diags_);
    l.enabled = r.boolean("enabled").value_or(true);
    if (auto p = r.integer("port", 1, 65535)) {
      l.port = static_cast<uint16_t>(*p);
    }
    if (auto addrs = r.strings("addresses", l.enabled ? Need::Required : Need::Optional, 16, 64)) {
      const auto& arr = *t->get("addresses")->as_array();
      for (size_t i = 0; i < addrs->size(); ++i) {
        if (auto a = policy::IpAddress::parse((*addrs)[i])) {
          l.addresses.push_back(*a);
        } else {
          r.error(arr[i], fmt::format("\"{}\" is not an IPv4 or IPv6 address", (*addrs)[i]));
        }
      }
      if (l.enabled && addrs->empty()) {
        r.error(*t->get("addresses"), fmt::format("'{}.addresses' is empty", r.path()));
      }
    }
    if (tls) {
      const Need files = l.enabled ? Need::Required : Need::Optional;
      file(r, *t, "certificate", l.certificate, files);
      file(r, *t, "private_key", l.privateKey, files);
      file(r, *t, "ca_file", l.caFile, files);
      file(r, *t, "crl_file", l.crlFile, Need::Optional);
    } else {
      // Device-side listeners speak plaintext, so they must face the device segment only.
      for (size_t i = 0; i < l.addresses.size() && l.enabled; ++i) {
        const auto& a = l.addresses[i];
        const auto& at = (*t->get("addresses")->as_array())[i];
        if (isWildcard(a)) {
          r.error(at, fmt::format("'{}' is a plaintext device-side listener and must not bind "
                                  "to the wildcard address {}",
                                  r.path(), a.str()));
        } else {
          pendingDeviceSide_.push_back({&at, a, r.path()});
        }
      }
    }
    r.finish();
  }

  void parseLimits(const toml::table& t, Limits& l) {
    TableReader r(t, "limits", source_, diags_);
    const auto u32 = [&](std::string_view key, int64_t min, int64_t max, uint32_t& out) {
      if (auto v = r.integer(key, min, max)) {
        out = static_cast<uint32_t>(*v);
      }
    };
    const auto ms = [&](std::string_view key, int64_t min, int64_t max,
                        std::chrono::milliseconds& out) {
      if (auto v = r.integer(key, min, max)) {
        out = std::chrono::milliseconds(*v);
      }
    };
    u32("max_connections", 1, 1'000'000, l.maxConnections);
    u32("max_connections_per_source", 1, 1'000'000, l.maxConnectionsPerSource);
    u32("max_handshakes", 1, 100'000, l.maxHandshakes);
    u32("max_handshakes_per_source", 1, 100'000, l.maxHandshakesPerSource);
    ms("handshake_timeout_ms", 100, 600'000, l.handshakeTimeout);
    ms("first_byte_timeout_ms", 100, 600'000, l.firstByteTimeout);
    ms("connect_timeout_ms", 100, 600'000, l.connectTimeout);
    u32("max_packet_bytes", 64, 256 * 1024 * 1024, l.maxPacketBytes);
    u32("max_connect_bytes", 64, 256 * 1024 * 1024, l.maxConnectBytes);
    u32("max_unauthenticated_bytes", 4096, 1024 * 1024 * 1024, l.maxUnauthenticatedBytes);
    u32("max_password_checks", 1, 10'000, l.maxPasswordChecks);
    u32("max_password_checks_per_source", 1, 10'000, l.maxPasswordChecksPerSource);
    u32("max_subscriptions_per_session", 1, 1'000'000, l.maxSubscriptionsPerSession);
    u32("max_filters_per_subscribe", 1, 65'535, l.maxFiltersPerSubscribe);
    u32("max_queued_bytes", 1024, 1024 * 1024 * 1024, l.maxQueuedBytes);
    u32("max_queued_bytes_total", 1024, 4'294'967'295, l.maxQueuedBytesTotal);
    u32("upstream_reconnects_per_second", 1, 100'000, l.upstreamReconnectsPerSecond);
    u32("max_topic_bytes", 16, 65'535, l.maxTopicBytes);
    u32("max_devices", 1, 1'000'000, l.maxDevices);
    u32("max_queued_messages", 0, 10'000'000, l.maxQueuedMessages);
    ms("coap_request_timeout_ms", 100, 120'000, l.coapRequestTimeout);
    u32("coap_max_pending_per_session", 1, 100'000, l.coapMaxPendingPerSession);
    u32("coap_max_observe_per_session", 0, 100'000, l.coapMaxObservePerSession);
    u32("coap_max_observe", 0, 1'000'000, l.coapMaxObserve);
    u32("coap_max_observe_per_device", 0, 1'000'000, l.coapMaxObservePerDevice);
    if (auto v = r.integer("idle_session_seconds", 5, 86'400)) {
      l.idleSession = std::chrono::seconds(*v);
    }
    if (auto v = r.integer("auth_failures_before_lockout", 1, 1000)) {
      l.authThrottle.failuresBeforeLockout = static_cast<unsigned>(*v);
    }
    if (auto v = r.integer("auth_failure_window_seconds", 1, 86'400)) {
      l.authThrottle.failureWindow = std::chrono::seconds(*v);
    }
    if (auto v = r.integer("auth_lockout_seconds", 1, 86'400)) {
      l.authThrottle.lockout = std::chrono::seconds(*v);
    }
    // A bound for one source above the bound for all, or a budget smaller than one packet, would
    // never work as written.
    // A default that the configuration's own bound undercuts follows it.
    const auto atMost = [&](uint32_t& part, uint32_t whole, std::string_view partKey,
                            std::string_view wholeKey) {
      if (part <= whole) {
        return;
      }
      if (const toml::node* at = t.get(partKey)) {
        r.error(*at, fmt::format("'limits.{}' exceeds 'limits.{}'", partKey, wholeKey));
      } else {
        part = whole;
      }
    };
    atMost(l.maxConnectBytes, l.maxPacketBytes, "max_connect_bytes", "max_packet_bytes");
    atMost(l.maxHandshakesPerSource, l.maxHandshakes, "max_handshakes_per_source",
           "max_handshakes");
    atMost(l.maxPasswordChecksPerSource, l.maxPasswordChecks, "max_password_checks_per_source",
           "max_password_checks");
    atMost(l.maxConnectBytes, l.maxUnauthenticatedBytes, "max_connect_bytes",
           "max_unauthenticated_bytes");
    atMost(l.coapMaxObservePerDevice, l.coapMaxObserve, "coap_max_observe_per_device",
           "coap_max_observe");
    atMost(l.maxQueuedBytes, l.maxQueuedBytesTotal, "max_queued_bytes", "max_queued_bytes_total");
    if (l.maxConnectionsPerSource > l.maxConnections) {
      const toml::node* at = t.get("max_connections_per_source");
      r.error(at != nullptr ? *at : static_cast<const toml::node&>(t),
              "'limits.max_connections_per_source' exceeds 'limits.max_connections'");
    }
    r.finish();
  }

  void crossCheck(const toml::table& root, const Config& c) {
    if (c.firewall.enabled && c.deviceSegment.interfaces.empty()) {
      const toml::node* at = root["firewall"].node();
      at = at != nullptr ? at : root["device_segment"].node();
      const auto pos = at != nullptr ? at->source().begin : toml::source_position{1, 1};
      diags_.push_back(Diagnostic{source_, pos.line, pos.column,
                                  "the firewall (on unless '[firewall] enabled = false') needs "
                                  "'device_segment.interfaces' to tell device traffic apart"});
    }
    for (const char* name : {"mqtt", "mqtt_tls"}) {
      const bool enabled = std::string_view(name) == "mqtt" ? c.mqtt.enabled : c.mqttTls.enabled;
      if (!enabled || c.upstream.enabled) {
        continue;
      }
      const toml::node* at = root["listeners"][name].node();
      diags_.push_back(Diagnostic{source_, at->source().begin.line, at->source().begin.column,
                                  fmt::format("'listeners.{}' forwards to a broker: configure "
                                              "[upstream]",
                                              name)});
    }
    for (const auto& [node, address, listenerPath] : pendingDeviceSide_) {
      const bool inSegment = std::ranges::any_of(
          c.deviceSegment.subnets, [&](const policy::IpPrefix& p) { return p.contains(address); });
      if (!inSegment) {
        diags_.push_back(Diagnostic{
            source_, node->source().begin.line, node->source().begin.column,
            fmt::format("'{}' address {} is not inside any 'device_segment.subnets': plaintext "
                        "listeners face the device segment only",
                        listenerPath, address.str())});
      }
    }
  }

  struct PendingAddress {
    const toml::node* node;
    policy::IpAddress address;
    std::string listener;
  };

  const std::string& source_;
  Diagnostics& diags_;
  std::vector<PendingAddress> pendingDeviceSide_;
};

} // namespace

std::vector<std::filesystem::path> Config::policyDirectories() const {
  return {devicesDirectory, stateDirectory / "devices"};
}

Config builtinDefault() {
  Config c;
  c.mqtt.port = 1883;
  c.mqttTls.port = 8883;
  c.coap.port = 5683;
  c.coapDtls.port = 5684;
  return c;
}

std::expected<Config, Diagnostics> parseConfig(std::string_view text, const std::string& source) {
  Diagnostics diags;
  auto root = policy::parseToml(text, source, diags);
  if (!root) {
    return std::unexpected(std::move(diags));
  }
  ConfigParser parser(source, diags);
  Config c = parser.parse(*root);
  if (!diags.empty()) {
    policy::sortByPosition(diags);
    return std::unexpected(std::move(diags));
  }
  return c;
}

std::expected<Config, Diagnostics> loadConfig(const std::filesystem::path& p) {
  auto text = policy::readFile(p, kMaxConfigBytes);
  if (!text) {
    return std::unexpected(Diagnostics{Diagnostic{p.string(), 1, 1, text.error()}});
  }
  return parseConfig(*text, p.string());
}

std::string_view toString(EventTarget t) noexcept {
  switch (t) {
  case EventTarget::Auto:
    return "auto";
  case EventTarget::Journal:
    return "journal";
  case EventTarget::Syslog:
    return "syslog";
  case EventTarget::Stderr:
    return "stderr";
  }
  return "auto";
}

} // namespace iotgw::daemon
