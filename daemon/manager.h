// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The control API over the running gateway (Control, what D-Bus asks): devices listed, enrolled,
// changed, removed, quarantined and released, the status, and the identities the policies ask
// for. The Daemon wires the parts (Wiring) and owns them; the manager works on them and changes
// the running snapshot only through commitDevices (prepare, apply, commit).
//
// Devices enrolled over the API live in <state_directory>/devices/<id>.toml, read at start-up and
// on reload together with devices.d/ (one parser, one validator for both).

#include <chrono>
#include <expected>
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
#include "daemon/state_files.h"
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

// The parts of the running gateway, as the Daemon wires them (in this order: each may use the
// ones before it, and they end in the reverse order).
struct Wiring {
  Options options;
  Snapshot current;
  std::unique_ptr<io::Reactor> reactor;
  std::unique_ptr<EventSink> sink;
  std::unique_ptr<FirewallService> firewall;
  std::unique_ptr<ExposureScan> scan;
  std::unique_ptr<Identities> identities;
  std::unique_ptr<MqttService> mqtt;
  std::unique_ptr<CoapService> coap; // after mqtt: it publishes through it
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  unsigned reloads = 0;
};

class Manager final : public Control {
public:
  // `reload` re-reads everything (the Daemon's; an error leaves the running state in force).
  Manager(Wiring& wiring, std::function<Outcome()> reload)
      : w_(wiring), reload_(std::move(reload)) {}

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

  // Issues the identities the running policies ask for (and renews those near expiry), revokes
  // those no device asks for any more; failures are events.
  void reconcileIdentities();

private:
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
  // Issues (or renews) one device's identity, with its event; an error is a sentence.
  [[nodiscard]] Outcome issueIdentity(const std::string& id);
  void identityIssued(const std::string& id, const Identities::Identity& identity, bool renewal);
  void identityFailed(const std::string& id, const std::string& why);

  Wiring& w_;
  std::function<Outcome()> reload_;
};

} // namespace iotgw::daemon
