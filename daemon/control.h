// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// What the control API (D-Bus) may ask of the daemon, as plain values: the D-Bus layer is a thin
// adapter over this, translating ControlError codes to org.iotgw.Gateway1.Error.* names.

#include <cstdint>
#include <expected>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace iotgw::daemon {

enum class ControlErrorCode : uint8_t {
  InvalidArgument, // a malformed id or an empty reason
  InvalidPolicy,   // the document does not parse or validate
  NoSuchDevice,
  DeviceExists,
  ReadOnly, // defined by a devices.d/ file
  Rejected, // the next state as a whole was refused; nothing changed
  Failed,   // persisting or applying failed; nothing changed
};

struct ControlError {
  ControlErrorCode code;
  std::string message;
};

using ControlResult = std::expected<void, ControlError>;

struct DeviceSummary {
  std::string id;
  bool fromApi = false; // enrolled over the API (state directory) rather than a devices.d/ file
  bool quarantined = false;
};

struct DeviceDetail {
  DeviceSummary summary;
  std::string policy; // the TOML document in force
  uint64_t txPackets = 0, txBytes = 0, rxPackets = 0, rxBytes = 0;
  double txBytesPerSecond = 0, rxBytesPerSecond = 0;
  // The client certificate its upstream presents: "shared" (the gateway's) or "issued" (its own,
  // from the gateway CA), with the issued one's serial and expiry (unix seconds).
  std::string identity = "shared";
  std::string certificateSerial;
  int64_t certificateExpires = 0;
  // Its outbox (store-and-forward): messages waiting for the broker, their bytes, the oldest's
  // age in seconds (0 when none waits).
  uint64_t queuedMessages = 0, queuedBytes = 0, queuedOldestAgeSeconds = 0;
};

struct GatewayStatus {
  std::string version;
  std::string config;
  uint32_t devices = 0;
  uint32_t quarantined = 0;
  uint32_t mqttConnections = 0;
  bool firewall = false;
  uint32_t reloads = 0;
  uint64_t uptimeSeconds = 0;
  std::string ca;            // the gateway CA's name
  std::string caCertificate; // where its certificate and CRL are (for the broker)
  std::string crl;
  uint32_t issuedIdentities = 0;
  std::vector<std::pair<std::string, uint64_t>> counters; // "coap_requests", ... (GetStatus keys)
};

class Control {
public:
  virtual ~Control() = default;
  [[nodiscard]] virtual std::vector<DeviceSummary> listDevices() const = 0;
  [[nodiscard]] virtual std::expected<DeviceDetail, ControlError>
  device(std::string_view id) const = 0;
  [[nodiscard]] virtual ControlResult enrollDevice(std::string_view id,
                                                   std::string_view policy) = 0;
  [[nodiscard]] virtual ControlResult setDevicePolicy(std::string_view id,
                                                      std::string_view policy) = 0;
  [[nodiscard]] virtual ControlResult removeDevice(std::string_view id) = 0;
  [[nodiscard]] virtual ControlResult quarantineDevice(std::string_view id,
                                                       std::string_view reason) = 0;
  [[nodiscard]] virtual ControlResult releaseDevice(std::string_view id) = 0;
  [[nodiscard]] virtual ControlResult reloadAll() = 0;
  [[nodiscard]] virtual GatewayStatus status() const = 0;
};

} // namespace iotgw::daemon
