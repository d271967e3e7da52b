// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/coap_service.h"

namespace iotgw::daemon {

namespace {

coap::ProxySettings proxySettings(const Config& c) {
  coap::ProxySettings s;
  s.addresses = c.coapDtls.addresses;
  s.port = c.coapDtls.port;
  s.certificateFile = c.coapDtls.certificate.string();
  s.keyFile = c.coapDtls.privateKey.string();
  s.caFile = c.coapDtls.caFile.string();
  s.crlFile = c.coapDtls.crlFile.string();
  s.deviceInterfaces = c.deviceSegment.interfaces;
  s.maxConnections = c.limits.maxConnections;
  s.maxConnectionsPerSource = c.limits.maxConnectionsPerSource;
  s.maxHandshakes = c.limits.maxHandshakes;
  s.handshakeTimeout = c.limits.handshakeTimeout;
  s.idleSession = c.limits.idleSession;
  s.requestTimeout = c.limits.coapRequestTimeout;
  s.maxPendingPerSession = c.limits.coapMaxPendingPerSession;
  s.maxObservePerSession = c.limits.coapMaxObservePerSession;
  s.maxObserve = c.limits.coapMaxObserve;
  s.maxObservePerDevice = c.limits.coapMaxObservePerDevice;
  return s;
}

} // namespace

CoapService::CoapService(io::Reactor& reactor, EventSink& sink,
                         std::shared_ptr<const Config> config, PolicySource policies,
                         Publish publish, Quarantined quarantined)
    : reactor_(reactor), sink_(sink), config_(std::move(config)), policies_(std::move(policies)),
      publish_(std::move(publish)), quarantined_(std::move(quarantined)) {}

CoapService::~CoapService() = default;

Outcome CoapService::start() {
  auto emit = [this](policy::Event e) { sink_.emit(std::move(e)); };
  if (config_->coapDtls.enabled) {
    proxy_ = std::make_unique<coap::Proxy>(reactor_, proxySettings(*config_),
                                           coap::ProxyHooks{policies_, quarantined_, emit},
                                           proxyCounters_);
    if (auto started = proxy_->start(); !started) {
      proxy_.reset();
      return started;
    }
  }
  if (config_->coap.enabled) {
    coap::PushSettings settings{config_->coap.addresses, config_->coap.port,
                                config_->deviceSegment.interfaces};
    push_ = std::make_unique<coap::PushEndpoint>(
        reactor_, std::move(settings), coap::PushHooks{policies_, quarantined_, emit, publish_},
        pushCounters_);
    if (auto started = push_->start(); !started) {
      push_.reset();
      return started;
    }
  }
  return {};
}

void CoapService::closeDevice(const policy::DeviceId& id) {
  if (proxy_) {
    proxy_->closeDevice(id.str());
  }
  if (push_) {
    push_->forget(id.str());
  }
}

std::expected<Prepared, std::string> CoapService::prepareCrl(const Config& config) {
  if (!proxy_) {
    return Prepared([] {});
  }
  auto next = tls::CrlStore::load(config.coapDtls.crlFile.string(), "the DTLS listener's CRL");
  if (!next) {
    return std::unexpected(next.error());
  }
  return Prepared([this, crls = std::move(*next)]() mutable {
    proxy_->replaceCrls(std::move(crls)); // the next handshake checks against these
  });
}

std::vector<std::pair<std::string, uint64_t>> CoapService::counters() const {
  const coap::ProxyCounters& c = proxyCounters_;
  const coap::PushCounters& p = pushCounters_;
  const coap::DtlsGateStats g = proxy_ ? proxy_->gateStats() : coap::DtlsGateStats{};
  return {{"coap_sessions", c.sessions},
          {"coap_sessions_opened", c.sessionsOpened},
          {"coap_sessions_refused", c.sessionsRefused},
          {"coap_sessions_expired", c.sessionsExpired},
          {"coap_handshakes_failed", c.handshakesFailed},
          {"coap_certificates_refused", c.certificatesRefused},
          {"coap_hello_verify_sent", g.helloVerifySent},
          {"coap_dtls_admitted", g.admitted},
          {"coap_dtls_dropped", g.dropped + g.malformedHellos},
          {"coap_handshakes_evicted", g.evicted},
          {"coap_handshakes_expired", g.expired},
          {"coap_requests", c.requests},
          {"coap_malformed", c.malformed},
          {"coap_denied", c.denied},
          {"coap_forwarded", c.forwarded},
          {"coap_answered", c.answered},
          {"coap_timeouts", c.timeouts},
          {"coap_bad_responses", c.badResponses},
          {"coap_observing", c.observing},
          {"coap_notifications", c.notifications},
          {"coap_observe_refused", c.observeRefused},
          {"coap_rate_limited", c.rateLimited},
          {"coap_sessions_closed", c.sessionsClosed},
          {"coap_bodies_held_bytes", proxy_ ? proxy_->bodiesHeld() : 0},
          {"coap_device_links", proxy_ ? proxy_->deviceLinks() : 0},
          {"coap_device_datagrams", p.datagrams},
          {"coap_device_malformed", p.deviceMalformed},
          {"coap_device_wrong_interface", c.wrongInterface + p.wrongInterface},
          {"coap_unknown_sources", p.unknownSources},
          {"coap_pushes_denied", p.pushesDenied},
          {"coap_pushes_published", p.pushesPublished},
          {"coap_pushes_failed", p.pushesFailed},
          {"coap_pushes_bad_topic", p.pushesBadTopic},
          {"coap_pushes_rate_limited", p.pushesRateLimited},
          {"coap_unauthenticated_bytes_in", p.unauthenticatedBytesIn},
          {"coap_unauthenticated_bytes_out", p.unauthenticatedBytesOut},
          {"coap_budget_drops", p.budgetDrops}};
}

std::vector<uint16_t> CoapService::boundPorts() const {
  std::vector<uint16_t> ports;
  if (proxy_) {
    ports = proxy_->boundPorts();
  }
  if (push_) {
    const auto more = push_->boundPorts();
    ports.insert(ports.end(), more.begin(), more.end());
  }
  return ports;
}

} // namespace iotgw::daemon
