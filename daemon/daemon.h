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

#include "daemon/coap_service.h"
#include "daemon/config.h"
#include "daemon/control.h"
#include "daemon/event_sink.h"
#include "daemon/exposure_scan.h"
#include "daemon/firewall_service.h"
#include "daemon/identities.h"
#include "daemon/mqtt_service.h"
#include "daemon/outcome.h"
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

class DbusService;

class Daemon final : public Control {
public:
  [[nodiscard]] static std::expected<std::unique_ptr<Daemon>, std::string> create(Options options);
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;
  ~Daemon();

  // Runs the event loop until SIGTERM or SIGINT; returns the process exit code.
  int run();

  // Control (device_admin.cc): what the D-Bus API asks.
  [[nodiscard]] std::vector<DeviceSummary> listDevices() const override;
  [[nodiscard]] std::expected<DeviceDetail, ControlError>
  device(std::string_view id) const override;
  [[nodiscard]] ControlResult enrollDevice(std::string_view id, std::string_view policy) override;
  [[nodiscard]] ControlResult setDevicePolicy(std::string_view id,
                                              std::string_view policy) override;
  [[nodiscard]] ControlResult removeDevice(std::string_view id) override;
  [[nodiscard]] ControlResult quarantineDevice(std::string_view id,
                                               std::string_view reason) override;
  [[nodiscard]] ControlResult releaseDevice(std::string_view id) override;
  [[nodiscard]] ControlResult reloadAll() override;
  [[nodiscard]] GatewayStatus status() const override;

private:
  Daemon(Options options, Snapshot snapshot, std::unique_ptr<io::Reactor> reactor);

  [[nodiscard]] Outcome setUp();
  void onSignal();
  // Re-reads everything; an error leaves the running state in force.
  [[nodiscard]] Outcome reload();
  // The device-admin path: a whole next set of devices and its identities prepared, the change
  // to the state file staged (`stage`), the firewall applied, then everything put in place and
  // the snapshot swapped. On a failure the running policy stays and nothing was written.
  using Stage = std::function<std::expected<StagedFile, std::string>()>;
  [[nodiscard]] ControlResult commitDevices(std::vector<policy::DevicePolicy> next,
                                            const Stage& stage);
  [[nodiscard]] std::expected<policy::DevicePolicy, ControlError>
  parseForApi(std::string_view id, std::string_view text) const;
  [[nodiscard]] bool fromApi(const policy::DevicePolicy& d) const;
  // The running policy of an enrolled device (InvalidArgument, NoSuchDevice otherwise).
  [[nodiscard]] std::expected<const policy::DevicePolicy*, ControlError>
  enrolled(std::string_view idText) const;
  [[nodiscard]] std::filesystem::path apiPolicyPath(const std::string& id) const;
  [[nodiscard]] std::string statusLine() const;
  // Issues the identities the running policies ask for (and renews those near expiry), revokes
  // those no device asks for any more; failures are events.
  void reconcileIdentities();
  // Issues (or renews) one device's identity, with its event; an error is a sentence.
  [[nodiscard]] Outcome issueIdentity(const std::string& id);
  void identityIssued(const std::string& id, const Identities::Identity& identity, bool renewal);
  void identityFailed(const std::string& id, const std::string& why);
  void scheduleSummaries();

  Options options_;
  Snapshot current_;
  std::unique_ptr<io::Reactor> reactor_;
  std::unique_ptr<EventSink> sink_;
  std::unique_ptr<FirewallService> firewall_;
  std::unique_ptr<ExposureScan> scan_;
  std::unique_ptr<Identities> identities_;
  std::unique_ptr<MqttService> mqtt_;
  std::unique_ptr<CoapService> coap_; // after mqtt_: it publishes through it
  std::unique_ptr<DbusService> dbus_;
  std::string dbusError_; // why there is no control API, if there is none
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  io::UniqueFd signalFd_;
  std::optional<io::Reactor::TimerId> summaryTimer_;
  unsigned reloads_ = 0;
  int exitCode_ = 0;
};

} // namespace iotgw::daemon
