// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Wiring: configuration and policy snapshots, the event loop, signals, readiness and watchdog,
// and the event sink. Later capabilities (listeners, firewall, D-Bus) plug in here.

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "daemon/config.h"
#include "daemon/event_sink.h"
#include "daemon/exposure_scan.h"
#include "daemon/firewall_service.h"
#include "daemon/mqtt_service.h"
#include "policy/credentials.h"
#include "policy/policy_set.h"
#include "protocols/io/reactor.h"

namespace iotgw::daemon {

struct Options {
  // nullopt: the default path, and the built-in default if that file does not exist.
  std::optional<std::filesystem::path> configPath;
};

// A configuration and the device policies it points at, checked together.
struct Snapshot {
  std::shared_ptr<const Config> config;
  std::shared_ptr<const policy::PolicySet> policies;
  std::shared_ptr<const policy::DefaultCredentials> defaultCredentials;
};

// Loads and checks everything; every diagnostic of every file on failure.
[[nodiscard]] std::expected<Snapshot, policy::Diagnostics> loadSnapshot(const Options& options);

class Daemon {
public:
  [[nodiscard]] static std::expected<std::unique_ptr<Daemon>, std::string> create(Options options);
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;
  ~Daemon();

  // Runs the event loop until SIGTERM or SIGINT; returns the process exit code.
  int run();

private:
  Daemon(Options options, Snapshot snapshot, std::unique_ptr<io::Reactor> reactor);

  std::string setUp();
  void onSignal();
  void reload();
  [[nodiscard]] std::string statusLine() const;
  void scheduleSummaries();

  Options options_;
  Snapshot current_;
  std::unique_ptr<io::Reactor> reactor_;
  std::unique_ptr<EventSink> sink_;
  std::unique_ptr<FirewallService> firewall_;
  std::unique_ptr<ExposureScan> scan_;
  std::unique_ptr<MqttService> mqtt_;
  io::UniqueFd signalFd_;
  std::optional<io::Reactor::TimerId> summaryTimer_;
  unsigned reloads_ = 0;
  int exitCode_ = 0;
};

} // namespace iotgw::daemon
