// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Wiring: configuration and policy snapshots, the event loop, signals, readiness and watchdog,
// and the event sink. Later capabilities (listeners, firewall, D-Bus) plug in here.

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "daemon/manager.h"
#include "daemon/outcome.h"
#include "iotgw/build_config.h"
#include "protocols/io/reactor.h"

namespace iotgw::daemon {

// Loads and checks everything; every diagnostic of every file on failure.
[[nodiscard]] std::expected<Snapshot, policy::Diagnostics> loadSnapshot(const Options& options);

class DbusService;

// Wiring: the configuration and policy snapshots, the event loop, signals, readiness and
// watchdog, the event sink, the services glued to the configuration, and the control API (the
// Manager) over them.
class Daemon final {
public:
  [[nodiscard]] static std::expected<std::unique_ptr<Daemon>, std::string> create(Options options);
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;
  ~Daemon();

  // Runs the event loop until SIGTERM or SIGINT; returns the process exit code.
  int run();

private:
  Daemon(Options options, Snapshot snapshot, std::unique_ptr<io::Reactor> reactor);

  [[nodiscard]] Outcome setUp();
  void onSignal();
  // Re-reads everything; an error leaves the running state in force.
  [[nodiscard]] Outcome reload();
  [[nodiscard]] std::string statusLine() const;
  void scheduleSummaries();

  Wiring w_;
  std::unique_ptr<Manager> manager_;
#if IOTGW_WITH_DBUS
  std::unique_ptr<DbusService> dbus_; // ends before the manager it calls
  std::string dbusError_;             // why there is no control API, if there is none
#endif
  io::UniqueFd signalFd_;
  std::optional<io::Reactor::TimerId> summaryTimer_;
  int exitCode_ = 0;
};

} // namespace iotgw::daemon
