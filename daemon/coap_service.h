// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The CoAP capability wired into the daemon: the DTLS reverse proxy (protocols/coap/proxy.h) on
// listeners.coap_dtls and the device-side push endpoint (protocols/coap/push_endpoint.h) on
// listeners.coap, given their settings from the configuration, the current policy snapshot, the
// quarantine check and the event sink, and their counters exported under their GetStatus names.
// Readings pushed by devices are published through `publish` (the MQTT capability's upstream
// session of the device).

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "daemon/config.h"
#include "daemon/event_sink.h"
#include "daemon/outcome.h"
#include "policy/policy_set.h"
#include "protocols/coap/proxy.h"
#include "protocols/coap/push_endpoint.h"
#include "protocols/io/reactor.h"

namespace iotgw::daemon {

class CoapService {
public:
  using PolicySource = std::function<std::shared_ptr<const policy::PolicySet>()>;
  using Quarantined = std::function<bool(const policy::DeviceId&)>;
  using Publish = decltype(coap::PushHooks::publish);

  CoapService(io::Reactor& reactor, EventSink& sink, std::shared_ptr<const Config> config,
              PolicySource policies, Publish publish, Quarantined quarantined);
  CoapService(const CoapService&) = delete;
  CoapService& operator=(const CoapService&) = delete;
  ~CoapService();

  // Binds the endpoints the configuration enables; the error names what failed.
  [[nodiscard]] Outcome start();
  // Ends the device's observe relationships and its upstream session (quarantine, removal).
  void closeDevice(const policy::DeviceId& id);
  // Reads the DTLS listener's crl_file of a reloaded configuration; once the result runs, every
  // later handshake is checked against it (other listener settings take effect at restart).
  [[nodiscard]] std::expected<Prepared, std::string> prepareCrl(const Config& config);
  [[nodiscard]] uint64_t dtlsSessions() const { return proxyCounters_.sessions; }
  // Every counter under its GetStatus name ("coap_requests", ...).
  [[nodiscard]] std::vector<std::pair<std::string, uint64_t>> counters() const;
  // The ports actually bound (tests bind port 0): DTLS first, then device-side.
  [[nodiscard]] std::vector<uint16_t> boundPorts() const;

private:
  io::Reactor& reactor_;
  EventSink& sink_;
  std::shared_ptr<const Config> config_;
  PolicySource policies_;
  Publish publish_;
  Quarantined quarantined_;
  coap::ProxyCounters proxyCounters_;
  coap::PushCounters pushCounters_;
  std::unique_ptr<coap::Proxy> proxy_;
  std::unique_ptr<coap::PushEndpoint> push_;
};

} // namespace iotgw::daemon
