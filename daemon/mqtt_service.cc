// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/mqtt_service.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>

namespace iotgw::daemon {

using mqtt::Clock;
using policy::Event;
using policy::EventType;

namespace {
constexpr size_t kReadChunk = 64 * 1024;
constexpr size_t kMaxOutput = 4 * 1024 * 1024; // a client that does not read is cut off
} // namespace

struct MqttService::Connection final : mqtt::UpstreamObserver {
  Connection(MqttService& s, io::Accepted a, mqtt::SessionSettings settings,
             std::shared_ptr<const policy::PolicySet> policies)
      : service(s), fd(std::move(a.fd)), source(a.address.str()), label(a.label()),
        session(std::move(settings), std::move(policies), s.defaults_, s.throttle_,
                mqtt::PeerInfo{a.address, a.label(), std::nullopt}, Clock::now()) {}

  void upstreamAcked(uint64_t token) override {
    mqtt::Effects e;
    session.upstreamAcked(token, e);
    service.apply(*this, e);
  }
  void upstreamMessage(const std::string& topic, std::span<const uint8_t> payload, uint8_t qos,
                       bool retain) override {
    mqtt::Effects e;
    session.deliver(topic, payload, qos, retain, e);
    service.apply(*this, e);
  }
  void upstreamConnected(bool, int) override {}

  MqttService& service;
  io::UniqueFd fd;
  std::string source;
  std::string label;
  mqtt::Session session;
  std::unique_ptr<mqtt::MosquittoUpstream> upstream;
  std::vector<uint8_t> output;
  bool closeAfterFlush = false;
  bool dead = false;
  bool writeArmed = false;
};

MqttService::MqttService(io::Reactor& reactor, EventSink& sink, std::shared_ptr<const Config> config,
                         PolicySource policies,
                         std::shared_ptr<const policy::DefaultCredentials> defaults)
    : reactor_(reactor), sink_(sink), config_(std::move(config)), policies_(std::move(policies)),
      defaults_(std::move(defaults)), throttle_(config_->limits.authThrottle) {}

MqttService::~MqttService() {
  if (timer_) {
    reactor_.cancelTimer(*timer_);
  }
  for (auto& [ptr, c] : connections_) {
    if (c->fd.valid()) {
      reactor_.remove(c->fd.get());
    }
  }
  for (const auto& l : listeners_) {
    reactor_.remove(l.get());
  }
}

std::string MqttService::start() {
  const auto& l = config_->mqtt;
  for (const auto& address : l.addresses) {
    auto fd = io::listenTcp(address, l.port);
    if (!fd) {
      return fmt::format("cannot listen on {} port {}: {}", address.str(), l.port,
                         fd.error().message());
    }
    const int raw = fd->get();
    if (auto ec = reactor_.add(raw, EPOLLIN, [this, raw](uint32_t) { onAccept(raw); })) {
      return "cannot watch the MQTT listener: " + ec.message();
    }
    listeners_.push_back(std::move(*fd));
  }
  auto t = reactor_.addTimer(std::chrono::milliseconds(100), std::chrono::milliseconds(100),
                             [this] { tick(); });
  if (!t) {
    return "cannot arm the MQTT timer";
  }
  timer_ = *t;
  return {};
}

std::vector<uint16_t> MqttService::boundPorts() const {
  std::vector<uint16_t> ports;
  for (const auto& l : listeners_) {
    ports.push_back(io::boundPort(l.get()));
  }
  return ports;
}

void MqttService::onAccept(int listenFd) {
  const auto& limits = config_->limits;
  for (int i = 0; i < 64; ++i) { // bounded work per wake-up
    auto a = io::acceptTcp(listenFd);
    if (!a) {
      return; // EAGAIN, or a transient error such as EMFILE: try again on the next event
    }
    const std::string source = a->address.str();
    if (connections_.size() >= limits.maxConnections ||
        perSource_[source] >= limits.maxConnectionsPerSource) {
      ++stats_.refusedByLimits;
      Event e;
      e.type = EventType::RateLimited;
      e.peer = a->label();
      e.protocol = "mqtt";
      e.provision = "5.9-3";
      e.rule = connections_.size() >= limits.maxConnections ? "limits.max_connections"
                                                            : "limits.max_connections_per_source";
      e.action = "refuse";
      e.message = "connection refused: connection limit reached";
      sink_.emit(std::move(e));
      continue; // the accepted descriptor closes here
    }
    ++stats_.accepted;
    ++perSource_[source];
    mqtt::SessionSettings settings;
    settings.maxPacketBytes = limits.maxPacketBytes;
    settings.connectTimeout = limits.connectTimeout;
    settings.maxQueuedToClient = limits.maxQueuedMessages;
    settings.upstreamClientIdPrefix = config_->upstream.clientIdPrefix;
    auto c = std::make_unique<Connection>(*this, std::move(*a), settings, policies_());
    Connection* raw = c.get();
    if (reactor_.add(raw->fd.get(), EPOLLIN | EPOLLRDHUP,
                     [this, raw](uint32_t ev) { onClientEvents(*raw, ev); })) {
      --perSource_[source];
      continue;
    }
    connections_.emplace(raw, std::move(c));
  }
}

void MqttService::onClientEvents(Connection& c, uint32_t events) {
  if (c.dead) {
    return;
  }
  if ((events & EPOLLOUT) != 0) {
    flush(c);
    if (c.dead) {
      return;
    }
  }
  if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0) {
    uint8_t buf[kReadChunk];
    const ssize_t n = ::read(c.fd.get(), buf, sizeof buf);
    if (n > 0) {
      mqtt::Effects e;
      c.session.receive(std::span(buf, static_cast<size_t>(n)), Clock::now(), e);
      apply(c, e);
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
      mqtt::Effects e;
      c.session.connectionLost(e);
      apply(c, e);
      closeConnection(c, true);
    }
  }
  sweep();
}

void MqttService::apply(Connection& c, mqtt::Effects& e) {
  for (auto& ev : e.events) {
    sink_.emit(std::move(ev));
  }
  if (e.quarantineRequested && c.session.device() != nullptr) {
    Event q;
    q.type = EventType::DeviceQuarantined;
    q.device = c.session.device()->id.str();
    q.peer = c.label;
    q.protocol = "mqtt";
    q.action = "request";
    q.message = "quarantine requested by the device's policy; its session was closed";
    sink_.emit(std::move(q));
  }
  for (auto& cmd : e.upstream) {
    if (auto* open = std::get_if<mqtt::upstream::Open>(&cmd)) {
      const auto& u = config_->upstream;
      mqtt::UpstreamSettings us{u.host, u.port, u.caFile.string(), u.certificate.string(),
                                u.privateKey.string(), config_->limits.maxQueuedMessages};
      auto created = mqtt::MosquittoUpstream::create(reactor_, us, *open, c);
      if (created) {
        c.upstream = std::move(*created);
      }
    } else if (auto* pub = std::get_if<mqtt::upstream::Publish>(&cmd)) {
      if (c.upstream && c.upstream->publish(*pub)) {
        ++stats_.forwarded;
      } else if (pub->qos > 0) {
        // The broker side cannot take it: the client keeps it and retries after reconnecting.
        c.closeAfterFlush = true;
      }
    } else if (auto* sub = std::get_if<mqtt::upstream::Subscribe>(&cmd)) {
      if (c.upstream) {
        c.upstream->subscribe(sub->filter, sub->qos);
      }
    } else if (auto* unsub = std::get_if<mqtt::upstream::Unsubscribe>(&cmd)) {
      if (c.upstream) {
        c.upstream->unsubscribe(unsub->filter);
      }
    } else if (auto* close = std::get_if<mqtt::upstream::Close>(&cmd)) {
      if (c.upstream) {
        c.upstream->close(close->publishWill);
      }
    }
  }
  if (!e.toClient.empty() && !c.dead) {
    c.output.insert(c.output.end(), e.toClient.begin(), e.toClient.end());
    if (c.output.size() > kMaxOutput) {
      closeConnection(c, true);
      return;
    }
  }
  if (e.closeClient) {
    c.closeAfterFlush = true;
  }
  flush(c);
}

void MqttService::flush(Connection& c) {
  if (c.dead) {
    return;
  }
  while (!c.output.empty()) {
    const ssize_t n = ::write(c.fd.get(), c.output.data(), c.output.size());
    if (n > 0) {
      c.output.erase(c.output.begin(), c.output.begin() + n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      break;
    }
    closeConnection(c, true);
    return;
  }
  const bool wantWrite = !c.output.empty();
  if (wantWrite != c.writeArmed) {
    (void)reactor_.modify(c.fd.get(), EPOLLIN | EPOLLRDHUP | (wantWrite ? EPOLLOUT : 0u));
    c.writeArmed = wantWrite;
  }
  if (!wantWrite && c.closeAfterFlush) {
    closeConnection(c, true);
  }
}

void MqttService::closeConnection(Connection& c, bool publishWill) {
  if (c.dead) {
    return;
  }
  if (c.session.state() != mqtt::Session::State::Closed) {
    mqtt::Effects e;
    c.session.connectionLost(e);
    for (auto& ev : e.events) {
      sink_.emit(std::move(ev));
    }
  }
  if (c.upstream) {
    c.upstream->close(publishWill && c.session.state() == mqtt::Session::State::Closed);
  }
  reactor_.remove(c.fd.get());
  c.fd = io::UniqueFd();
  c.dead = true;
  if (auto it = perSource_.find(c.source); it != perSource_.end() && --it->second == 0) {
    perSource_.erase(it);
  }
  const auto& k = c.session.counters();
  stats_.denied += k.publishesDenied + k.deliveriesDenied;
  stats_.malformed += k.malformed;
  stats_.delivered += k.deliveries;
}

void MqttService::tick() {
  const auto now = Clock::now();
  for (auto& [ptr, c] : connections_) {
    if (c->dead) {
      continue;
    }
    mqtt::Effects e;
    c->session.tick(now, e);
    apply(*c, e);
    if (c->upstream && !c->dead) {
      c->upstream->service(now);
    }
  }
  for (auto& [upstream, deadline] : draining_) {
    upstream->service(now);
  }
  sweep();
}

void MqttService::sweep() {
  // Runs only from the reactor's client and timer handlers, never inside a libmosquitto
  // callback, so destroying an upstream here is safe.
  const auto now = Clock::now();
  for (auto& [ptr, c] : connections_) {
    if (c->dead && c->upstream && !c->upstream->finished()) {
      draining_.emplace_back(std::move(c->upstream), now + std::chrono::seconds(10));
    }
  }
  std::erase_if(connections_, [](const auto& kv) { return kv.second->dead; });
  std::erase_if(draining_, [now](const auto& d) { return d.first->finished() || now >= d.second; });
}

} // namespace iotgw::daemon
