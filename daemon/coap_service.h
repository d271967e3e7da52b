// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The CoAP capability wired into the daemon.
//
// * The DTLS endpoint (5684) is libcoap's (OpenSSL variant), driven from the reactor through
//   coap_context_get_coap_fd and COAP_IO_NO_WAIT. Clients authenticate with a certificate from
//   the endpoint's CA; a request names its target by its first Uri-Path segment
//   (coaps://gateway/<device-id>/<path on the device>), is validated (protocols/coap/validate.h),
//   checked against the device's [coap] policy, and forwarded as plain CoAP from the gateway to
//   the device with a guard timeout. The response is checked before it is relayed. Observe and
//   block-wise transfers work through the proxy; what one session may make the proxy hold is
//   bounded (observe relationships, requests waiting for devices, block-wise bodies: README).
//   A stateless cookie exchange runs in front of libcoap (coap_dtls_gate.h).
// * The device-side endpoint (5683, device segment only) is our own socket and codec: enrolled
//   devices (known by their address) POST/PUT readings on their [[coap.push]] paths, which are
//   published upstream over the MQTT capability's mutual-TLS session. To a source that is not an
//   enrolled device it never sends more than three times what it received (RFC 9175 §2.4).

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "daemon/config.h"
#include "daemon/event_sink.h"
#include "daemon/outcome.h"
#include "policy/policy_set.h"
#include "protocols/io/reactor.h"

namespace iotgw::daemon {

class MqttService;

struct CoapStats {
  // The DTLS endpoint.
  uint64_t sessions = 0;        // established now
  uint64_t sessionsOpened = 0;  // handshakes completed
  uint64_t sessionsRefused = 0; // over limits.max_connections or max_connections_per_source
  uint64_t sessionsExpired = 0; // nothing heard from the client for limits.idle_session_seconds
  uint64_t handshakesFailed = 0;
  uint64_t certificatesRefused = 0; // a CA certificate, or one not for TLS clients (of the failed)
  uint64_t requests = 0;            // requests that reached the proxy
  uint64_t malformed = 0;           // refused by validation (4.00, 4.02, 4.13, 4.15, 5.05)
  uint64_t denied = 0;              // refused by policy (4.03, 4.04, 5.03)
  uint64_t forwarded = 0;           // sent on to a device
  uint64_t answered = 0;            // device responses relayed
  uint64_t timeouts = 0;            // the device was silent: 5.04
  uint64_t badResponses = 0;        // the device's response broke its policy: 5.02
  uint64_t observing = 0;           // observe relationships now
  uint64_t observeRefused = 0; // registrations served without Observe (limits.coap_max_observe*)
  uint64_t notifications = 0;
  uint64_t rateLimited = 0;    // refused with 4.29 or 5.03 and Max-Age: a bound was reached
  uint64_t sessionsClosed = 0; // closed for going on past a bound after being refused
  // The device-side endpoint.
  uint64_t datagrams = 0;
  uint64_t deviceMalformed = 0; // unparseable or invalid
  uint64_t unknownSources = 0;  // datagrams from addresses that are no enrolled device
  uint64_t wrongInterface = 0;  // from a device's address, not on device_segment.interfaces
  uint64_t pushesDenied = 0;
  uint64_t pushesPublished = 0;
  uint64_t pushesFailed = 0;      // the upstream could not take it (5.03)
  uint64_t pushesBadTopic = 0;    // the path would make no valid MQTT topic name (4.00)
  uint64_t pushesRateLimited = 0; // beyond the device's [mqtt.rate] (4.29)
  uint64_t unauthenticatedBytesIn = 0;
  uint64_t unauthenticatedBytesOut = 0;
  uint64_t budgetDrops = 0; // replies not sent: they would have broken the 3x budget
};

class CoapService {
public:
  using PolicySource = std::function<std::shared_ptr<const policy::PolicySet>()>;
  using Quarantined = std::function<bool(const policy::DeviceId&)>;

  CoapService(io::Reactor& reactor, EventSink& sink, std::shared_ptr<const Config> config,
              PolicySource policies, MqttService* mqtt, Quarantined quarantined);
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
  [[nodiscard]] const CoapStats& stats() const { return stats_; }
  // Every counter under its GetStatus name ("coap_requests", ...).
  [[nodiscard]] std::vector<std::pair<std::string, uint64_t>> counters() const;
  // The ports actually bound (tests bind port 0): DTLS first, then device-side.
  [[nodiscard]] std::vector<uint16_t> boundPorts() const;

  struct Engine; // libcoap state and callbacks (coap_service.cc)
  struct DeviceEndpoint;

private:
  io::Reactor& reactor_;
  EventSink& sink_;
  std::shared_ptr<const Config> config_;
  PolicySource policies_;
  MqttService* mqtt_;
  Quarantined quarantined_;
  CoapStats stats_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<DeviceEndpoint> devices_;
};

} // namespace iotgw::daemon
