// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/mqtt_service.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <thread>

#include <fmt/format.h>

#include "daemon/mqtt_push.h"

namespace iotgw::daemon {

using mqtt::Clock;
using policy::Event;
using policy::EventType;

namespace {
constexpr size_t kReadChunk = 64 * 1024;

void add(mqtt::SessionCounters& to, const mqtt::SessionCounters& k) {
  to.packetsIn += k.packetsIn;
  to.publishesForwarded += k.publishesForwarded;
  to.publishesDenied += k.publishesDenied;
  to.deliveries += k.deliveries;
  to.deliveriesDenied += k.deliveriesDenied;
  to.malformed += k.malformed;
  to.dropped += k.dropped;
}
constexpr size_t kMaxOutput = 4 * 1024 * 1024; // a client that does not read is cut off
constexpr std::ptrdiff_t kMaxDrainingPerDevice = 4;

io::AdmissionLimits admissionLimits(const Limits& l) {
  io::AdmissionLimits a;
  a.maxConnections = l.maxConnections;
  a.maxConnectionsPerSource = l.maxConnectionsPerSource;
  a.maxHandshakes = l.maxHandshakes;
  a.maxHandshakesPerSource = l.maxHandshakesPerSource;
  a.firstByteTimeout = l.firstByteTimeout;
  a.maxUnauthenticatedBytes = l.maxUnauthenticatedBytes;
  a.maxChecks = l.maxPasswordChecks;
  a.maxChecksPerSource = l.maxPasswordChecksPerSource;
  return a;
}
} // namespace

struct MqttService::Connection final : mqtt::UpstreamObserver {
  Connection(MqttService& s, io::Accepted a, uint64_t connectionId)
      : service(s), id(connectionId), fd(std::move(a.fd)), address(a.address),
        source(a.address.str()), label(a.label()), accepted(Clock::now()) {}

  void upstreamAcked(uint64_t token) override {
    mqtt::Effects e;
    session->upstreamAcked(token, e);
    service.apply(*this, e);
  }
  void upstreamMessage(const std::string& topic, std::span<const uint8_t> payload, uint8_t qos,
                       bool retain) override {
    mqtt::Effects e;
    session->deliver(topic, payload, qos, retain, e);
    service.apply(*this, e);
  }
  void upstreamConnected(bool up, int) override {
    if (up && paused) {
      service.resume(*this);
    }
  }

  MqttService& service;
  uint64_t id;
  io::UniqueFd fd;
  policy::IpAddress address;
  std::string source;
  std::string label;
  Clock::time_point accepted;
  std::unique_ptr<tls::ServerStream> tls; // null on the plaintext listener
  bool handshaking = false;
  std::unique_ptr<mqtt::Session> session; // created once the transport is ready
  std::unique_ptr<mqtt::MosquittoUpstream> upstream;
  std::vector<uint8_t> output;
  bool closeAfterFlush = false;
  bool dead = false;
  bool paused = false; // not reading: the upstream is connecting, or the broker is not reading
  bool stallReported = false; // the broker-not-reading event went out for this pause
  uint32_t armed = 0;
};

MqttService::MqttService(io::Reactor& reactor, EventSink& sink,
                         std::shared_ptr<const Config> config, PolicySource policies,
                         std::shared_ptr<const policy::DefaultCredentials> defaults)
    : reactor_(reactor), sink_(sink), config_(std::move(config)), policies_(std::move(policies)),
      defaults_(std::move(defaults)), throttle_(config_->limits.authThrottle),
      admission_(admissionLimits(config_->limits)),
      upstreamBudget_{config_->limits.maxQueuedBytesTotal, 0} {}

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
  struct Bind {
    const ListenerConfig* listener;
    bool tls;
  };
  if (auto err = reloadTls(*config_); !err.empty()) {
    return err;
  }
  // Password checks take ~0.1 s of CPU each: a core is left to the loop.
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  auto worker = io::Worker::create(reactor_, std::clamp(cores - 1, 1u, 2u));
  if (!worker) {
    return "cannot start the password-check worker: " + worker.error().message();
  }
  worker_ = std::move(*worker);
  for (const Bind& b : {Bind{&config_->mqtt, false}, Bind{&config_->mqttTls, true}}) {
    if (!b.listener->enabled) {
      continue;
    }
    for (const auto& address : b.listener->addresses) {
      auto fd = io::listenTcp(address, b.listener->port);
      if (!fd) {
        return fmt::format("cannot listen on {} port {}: {}", address.str(), b.listener->port,
                           fd.error().message());
      }
      const int raw = fd->get();
      const bool tls = b.tls;
      if (auto ec =
              reactor_.add(raw, EPOLLIN, [this, raw, tls](uint32_t) { onAccept(raw, tls); })) {
        return "cannot watch an MQTT listener: " + ec.message();
      }
      listeners_.push_back(std::move(*fd));
    }
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

void MqttService::onAccept(int listenFd, bool tls) {
  // Bounded work per wake-up, so that a flood of connections does not hold up the sessions
  // already up (their packets wait behind every accept in the batch).
  for (int i = 0; i < 16; ++i) {
    auto a = io::acceptTcp(listenFd);
    if (!a) {
      return; // EAGAIN, or a transient error such as EMFILE: try again on the next event
    }
    if (!tls && !fromDeviceSegment(*a)) {
      ++stats_.refusedOffSegment;
      Event e;
      e.type = EventType::AccessDenied;
      e.peer = a->label();
      e.protocol = "mqtt";
      e.provision = std::string(policy::provision::kAuthenticatedAccess);
      e.rule = "device_segment.interfaces";
      e.action = "refuse";
      e.message = fmt::format("connection to the device-side listener arrived on '{}', not on a "
                              "device-segment interface",
                              io::interfaceName(a->ifindex));
      sink_.emit(std::move(e));
      continue;
    }
    const uint64_t id = nextConnectionId_++;
    const auto verdict = admission_.admit(id, a->address.str(), tls, Clock::now());
    if (verdict.refusedBy != nullptr) {
      ++stats_.refusedByLimits;
      Event e;
      e.type = EventType::RateLimited;
      e.peer = a->label();
      e.protocol = tls ? "mqtts" : "mqtt";
      e.provision = "5.9-3";
      e.rule = verdict.refusedBy;
      e.action = "refuse";
      e.message = "connection refused: limit reached";
      sink_.emit(std::move(e));
      continue; // the accepted descriptor closes here
    }
    evict(verdict.evict);
    ++stats_.accepted;
    auto c = std::make_unique<Connection>(*this, std::move(*a), id);
    Connection* raw = c.get();
    if (tls) {
      auto stream = tls::ServerStream::create(tlsContext_, raw->fd.get());
      if (!stream) {
        admission_.closed(id);
        continue;
      }
      raw->tls = std::move(*stream);
      raw->handshaking = true;
    } else {
      startSession(*raw);
    }
    raw->armed = EPOLLIN | EPOLLRDHUP;
    if (reactor_.add(raw->fd.get(), raw->armed,
                     [this, raw](uint32_t ev) { onClientEvents(*raw, ev); })) {
      admission_.closed(id);
      continue;
    }
    byId_.emplace(raw->id, raw);
    connections_.emplace(raw, std::move(c));
  }
}

bool MqttService::fromDeviceSegment(const io::Accepted& a) const {
  // The firewall keeps other interfaces away from the device-side ports; this holds without it,
  // and whatever the routing and rp_filter settings: a LAN host spoofing or simply routing to
  // the device-side address is refused here. Loopback is this host itself.
  const std::string name = io::interfaceName(a.ifindex);
  if (name == "lo") {
    return true;
  }
  const auto& segment = config_->deviceSegment.interfaces;
  return !name.empty() && std::ranges::find(segment, name) != segment.end();
}

void MqttService::evict(const std::vector<io::Admission::Id>& ids) {
  for (const auto id : ids) {
    if (const auto it = byId_.find(id); it != byId_.end() && !it->second->dead) {
      ++stats_.evictedUnauthenticated;
      closeConnection(*it->second, false);
    }
  }
}

void MqttService::startSession(Connection& c) {
  const auto& limits = config_->limits;
  mqtt::SessionSettings settings;
  settings.maxPacketBytes = limits.maxPacketBytes;
  settings.maxConnectBytes = limits.maxConnectBytes;
  settings.connectTimeout = limits.connectTimeout;
  settings.maxQueuedToClient = limits.maxQueuedMessages;
  settings.maxQueuedBytesToClient = limits.maxQueuedBytes;
  settings.maxSubscriptions = limits.maxSubscriptionsPerSession;
  settings.maxFiltersPerSubscribe = limits.maxFiltersPerSubscribe;
  settings.maxTopicBytes = limits.maxTopicBytes;
  settings.upstreamClientIdPrefix = config_->upstream.clientIdPrefix;
  settings.quarantined = quarantined_;
  mqtt::PeerInfo peer{c.address, c.label, std::nullopt};
  if (c.tls) {
    // The identity comes from the verified certificate, never from packet contents.
    peer.certificate =
        policy::CertificateFacts{c.tls->peer().commonName, c.tls->peer().subjectAltNames};
  }
  c.session = std::make_unique<mqtt::Session>(settings, policies_(), defaults_, throttle_,
                                              std::move(peer), Clock::now(), &subscriptions_);
}

void MqttService::handshakeEnded(Connection& c) {
  admission_.handshakeEnded(c.id);
  lastHandshakeEnded_ = Clock::now();
  handshakeCachesHeld_ = true;
}

void MqttService::onHandshake(Connection& c) {
  const tls::IoStatus st = c.tls->handshake();
  switch (st) {
  case tls::IoStatus::Ok:
    c.handshaking = false;
    handshakeEnded(c);
    startSession(c);
    flush(c);      // back to plain read interest
    readClient(c); // application data may have arrived with the last handshake flight
    return;
  case tls::IoStatus::WantRead:
  case tls::IoStatus::WantWrite: {
    // WolfSSL writes handshake records through the socket itself; watch for writability only
    // when its non-blocking send could not finish.
    const uint32_t events = EPOLLIN | EPOLLRDHUP | (st == tls::IoStatus::WantWrite ? EPOLLOUT : 0u);
    if (events != c.armed) {
      (void)reactor_.modify(c.fd.get(), events);
      c.armed = events;
    }
    return;
  }
  case tls::IoStatus::Closed:
  case tls::IoStatus::Failed: {
    ++stats_.tlsHandshakesFailed;
    Event e;
    e.type = EventType::AuthenticationFailed;
    e.peer = c.label;
    e.protocol = "mqtts";
    e.rule = "tls.handshake";
    e.provision = "5.5-4";
    e.action = "refuse";
    e.message = "TLS handshake failed: " + c.tls->lastError();
    sink_.emit(std::move(e));
    closeConnection(c, false);
    return;
  }
  }
}

void MqttService::onClientEvents(Connection& c, uint32_t events) {
  if (c.dead) {
    return;
  }
  if (c.handshaking) {
    if ((events & EPOLLIN) != 0) {
      admission_.sawBytes(c.id);
    }
    onHandshake(c);
    sweep();
    return;
  }
  if ((events & EPOLLOUT) != 0) {
    flush(c);
    if (c.dead) {
      sweep();
      return;
    }
  }
  if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0) {
    readClient(c);
  }
  sweep();
}

void MqttService::resume(Connection& c) {
  if (c.dead || !c.paused) {
    return;
  }
  c.paused = false;
  flush(c); // re-arms EPOLLIN
  readClient(c);
}

void MqttService::readClient(Connection& c) {
  uint8_t buf[kReadChunk];
  // With TLS, read until WolfSSL wants more from the socket: it may hold decrypted records.
  for (int round = 0; round < 16 && !c.dead; ++round) {
    if (c.upstream && !c.upstream->acceptsMore()) {
      c.paused = true;
      flush(c); // drops EPOLLIN until the upstream is connected or the broker reads again
      if (c.upstream->stalled() && !c.stallReported) {
        c.stallReported = true;
        ++stats_.upstreamStalls;
        Event e;
        e.type = EventType::UpstreamUnavailable;
        e.device = c.session->device() != nullptr ? c.session->device()->id.str() : "";
        e.peer = c.label;
        e.protocol = "mqtt";
        e.rule = upstreamBudget_.exhausted() ? "limits.max_queued_bytes_total"
                                             : "limits.max_queued_bytes";
        e.action = "flow-control";
        e.message = "the broker is not reading: the device is held back until it does";
        sink_.emit(std::move(e));
      }
      return;
    }
    // While the upstream connects, small reads keep what one read can add to its queue small;
    // before the login, no more than a CONNECT may take is read at once.
    size_t chunk = c.upstream && !c.upstream->connected() ? 2048 : sizeof buf;
    if (!c.session->authenticated()) {
      chunk = std::min<size_t>(chunk, config_->limits.maxConnectBytes);
    }
    size_t n = 0;
    bool eof = false;
    if (c.tls) {
      const auto st = c.tls->read(std::span(buf, chunk), n);
      if (st == tls::IoStatus::WantRead || st == tls::IoStatus::WantWrite) {
        return;
      }
      eof = st != tls::IoStatus::Ok;
    } else {
      const ssize_t r = ::read(c.fd.get(), buf, chunk);
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
        return;
      }
      eof = r <= 0;
      n = r > 0 ? static_cast<size_t>(r) : 0;
    }
    if (eof) {
      mqtt::Effects e;
      c.session->connectionLost(e);
      apply(c, e);
      closeConnection(c, true);
      return;
    }
    mqtt::Effects e;
    c.session->receive(std::span(buf, n), Clock::now(), e);
    apply(c, e);
    accountHeldBytes(c);
    if (!c.tls) {
      return; // level-triggered epoll calls again if more is waiting
    }
  }
}

void MqttService::apply(Connection& c, mqtt::Effects& e) {
  std::string violated = "policy"; // the rule behind a quarantine request
  if (e.quarantineRequested && !e.events.empty()) {
    violated = e.events.back().rule;
  }
  for (auto& ev : e.events) {
    sink_.emit(std::move(ev));
  }
  if (e.quarantineRequested && c.session->device() != nullptr && quarantine_) {
    const policy::DeviceId id = c.session->device()->id;
    quarantine_(id, violated); // closes this session too, through closeDevice
    if (c.dead) {
      return;
    }
  } else if (e.quarantineRequested && c.session->device() != nullptr) {
    Event q;
    q.type = EventType::DeviceQuarantined;
    q.device = c.session->device()->id.str();
    q.peer = c.label;
    q.protocol = "mqtt";
    q.action = "request";
    q.message = "quarantine requested by the device's policy; its session was closed";
    sink_.emit(std::move(q));
  }
  if (e.passwordCheck) {
    checkPassword(c, std::move(*e.passwordCheck));
    e.passwordCheck.reset();
    if (c.dead) {
      return;
    }
  }
  for (auto& cmd : e.upstream) {
    if (auto* open = std::get_if<mqtt::upstream::Open>(&cmd)) {
      auto created = createUpstream(c.session->device(), *open, c);
      if (created) {
        c.upstream = std::move(*created);
      } else {
        // Without an upstream nothing the client sends could be delivered: say so and close.
        Event ev;
        ev.type = EventType::UpstreamUnavailable;
        ev.device = c.session->device() != nullptr ? c.session->device()->id.str() : "";
        ev.peer = c.label;
        ev.protocol = "mqtt";
        ev.rule = "upstream";
        ev.action = "disconnect";
        ev.message = "cannot open the upstream session: " + created.error();
        sink_.emit(std::move(ev));
        c.closeAfterFlush = true;
      }
    } else if (auto* pub = std::get_if<mqtt::upstream::Publish>(&cmd)) {
      if (c.upstream && c.upstream->publish(*pub)) {
        ++stats_.forwarded;
      } else if (pub->qos > 0) {
        // The broker side cannot take it: the client keeps it and retries after reconnecting.
        c.closeAfterFlush = true;
      } else {
        ++stats_.qos0Dropped; // at most once, by definition; counted
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
  bool wantWrite = false;
  while (!c.output.empty() && !c.handshaking) {
    size_t n = 0;
    if (c.tls) {
      const auto st = c.tls->write(c.output, n);
      if (st == tls::IoStatus::WantWrite || st == tls::IoStatus::WantRead) {
        wantWrite = st == tls::IoStatus::WantWrite;
        break;
      }
      if (st != tls::IoStatus::Ok) {
        closeConnection(c, true);
        return;
      }
    } else {
      const ssize_t r = ::write(c.fd.get(), c.output.data(), c.output.size());
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
        wantWrite = true;
        break;
      }
      if (r <= 0) {
        closeConnection(c, true);
        return;
      }
      n = static_cast<size_t>(r);
    }
    c.output.erase(c.output.begin(), c.output.begin() + static_cast<std::ptrdiff_t>(n));
  }
  if (c.handshaking) {
    return; // onHandshake arms the descriptor as WolfSSL asks
  }
  const uint32_t events = (c.paused ? 0u : EPOLLIN | EPOLLRDHUP) | (wantWrite ? EPOLLOUT : 0u);
  if (events != c.armed) {
    (void)reactor_.modify(c.fd.get(), events);
    c.armed = events;
  }
  if (c.output.empty() && c.closeAfterFlush) {
    closeConnection(c, true);
  }
}

void MqttService::checkPassword(Connection& c, mqtt::PasswordCheck check) {
  // A source that has logged in before has room kept for it, and goes first.
  const bool known = throttle_.knownSource(c.source);
  if (!admission_.startCheck(c.id, known)) {
    ++stats_.passwordChecksBusy;
    mqtt::Effects e;
    c.session->passwordChecked(mqtt::PasswordResult::Busy, Clock::now(), e);
    apply(c, e);
    return;
  }
  ++stats_.passwordChecks;
  // The job owns its copy of the hash and the password (wiped when it goes); the completion
  // finds the connection again by its id, since it may have closed meanwhile.
  auto job = std::make_shared<mqtt::PasswordCheck>(std::move(check));
  auto matched = std::make_shared<bool>(false);
  worker_->post([job, matched] { *matched = job->hash.verify(job->password); },
                [this, id = c.id, matched] {
                  admission_.endCheck(id);
                  const auto found = byId_.find(id);
                  if (found == byId_.end() || found->second->dead) {
                    return;
                  }
                  Connection& conn = *found->second;
                  mqtt::Effects e;
                  conn.session->passwordChecked(*matched ? mqtt::PasswordResult::Matched
                                                         : mqtt::PasswordResult::Mismatched,
                                                Clock::now(), e);
                  apply(conn, e);
                  accountHeldBytes(conn);
                  sweep();
                },
                known ? io::Worker::Priority::First : io::Worker::Priority::Normal);
}

void MqttService::accountHeldBytes(Connection& c) {
  if (c.dead || !c.session) {
    return;
  }
  if (c.session->authenticated()) {
    admission_.authenticated(c.id);
    return;
  }
  evict(admission_.held(c.id, c.session->bufferedBytes(), Clock::now()));
}

void MqttService::closeLoginsInProgress() {
  for (auto& [ptr, c] : connections_) {
    if (!c->dead && c->session && !c->session->authenticated()) {
      closeConnection(*c, false);
    }
  }
}

void MqttService::closeDevice(const policy::DeviceId& id) {
  for (auto& [ptr, c] : connections_) {
    if (!c->dead && c->session && c->session->device() != nullptr &&
        c->session->device()->id == id) {
      closeConnection(*c, false); // swept by the caller's loop turn
    }
  }
  closeLoginsInProgress();
}

size_t MqttService::forgetDevice(const policy::DeviceId& id) {
  const std::string name = id.str();
  size_t dropped = 0;
  for (auto& [ptr, c] : connections_) {
    if (c->session && c->session->device() != nullptr && c->session->device()->id == id) {
      closeConnection(*c, false);
      if (c->upstream) {
        dropped += c->upstream->queued();
        c->upstream.reset(); // not inside a libmosquitto callback: called from the control API
      }
    }
  }
  closeLoginsInProgress();
  subscriptions_.erase(name);
  std::erase_if(draining_, [&](const Draining& d) {
    if (d.device != name) {
      return false;
    }
    dropped += d.upstream->queued();
    return true;
  });
  if (auto it = pushers_.find(name); it != pushers_.end()) {
    dropped += it->second->upstream->queued();
    pushers_.erase(it);
  }
  closedCounters_.erase(name);
  deviceContexts_.erase(name);
  return dropped;
}

void MqttService::closeConnection(Connection& c, bool publishWill) {
  if (c.dead) {
    return;
  }
  if (c.session && c.session->state() != mqtt::Session::State::Closed) {
    mqtt::Effects e;
    c.session->connectionLost(e);
    for (auto& ev : e.events) {
      sink_.emit(std::move(ev));
    }
  }
  if (c.upstream) {
    c.upstream->close(publishWill);
  }
  if (c.handshaking) {
    c.handshaking = false;
    handshakeEnded(c);
  }
  admission_.closed(c.id);
  c.tls.reset(); // before the socket closes: close_notify goes out if the session was up
  reactor_.remove(c.fd.get());
  c.fd = io::UniqueFd();
  c.dead = true;
  closed_.push_back(&c);

  if (c.session) {
    const auto& k = c.session->counters();
    stats_.denied += k.publishesDenied + k.deliveriesDenied;
    stats_.malformed += k.malformed;
    stats_.delivered += k.deliveries;
    if (c.session->device() != nullptr) {
      add(closedCounters_[c.session->device()->id.str()], k);
    }
  }
}

std::map<std::string, mqtt::SessionCounters> MqttService::deviceCounters() const {
  auto all = closedCounters_;
  for (const auto& [ptr, c] : connections_) {
    if (!c->dead && c->session && c->session->device() != nullptr) {
      add(all[c->session->device()->id.str()], c->session->counters());
    }
  }
  return all;
}

void MqttService::tick() {
  const auto now = Clock::now();
  for (const auto id : admission_.silentHandshakes(now)) {
    if (const auto it = byId_.find(id); it != byId_.end() && !it->second->dead) {
      ++stats_.tlsHandshakesFailed; // a client that never said a word
      closeConnection(*it->second, false);
    }
  }
  for (auto& [ptr, c] : connections_) {
    if (c->dead) {
      continue;
    }
    if (c->handshaking) {
      if (now - c->accepted > config_->limits.handshakeTimeout) {
        ++stats_.tlsHandshakesFailed;
        closeConnection(*c, false);
      }
      continue;
    }
    if (c->session->deadline() <= now) { // keepalive or connect timeout due
      mqtt::Effects e;
      c->session->tick(now, e);
      apply(*c, e);
    }
    if (c->upstream && !c->dead) {
      c->upstream->service(now);
      if (c->paused && c->upstream->acceptsMore()) {
        c->stallReported = false;
        resume(*c);
      }
    }
  }
  for (auto& d : draining_) {
    d.upstream->service(now);
  }
  servicePushers(now);
  sweep();
  releaseIdleMemory(now);
}

void MqttService::sweep() {
  // Runs only from the reactor's client and timer handlers, never inside a libmosquitto
  // callback, so destroying an upstream here is safe.
  const auto now = Clock::now();
  std::erase_if(draining_,
                [now](const auto& d) { return d.upstream->finished() || now >= d.deadline; });
  if (closed_.empty()) {
    return; // nothing closed since the last sweep: no walk over every connection
  }
  for (Connection* c : closed_) {
    if (c->upstream && !c->upstream->finished()) {
      const std::string device = c->session && c->session->device() != nullptr
                                     ? c->session->device()->id.str()
                                     : std::string();
      // A device that reconnects in a loop must not pile up upstream connections: past a few
      // draining for it, the oldest goes (what it still held was never acknowledged to the
      // device, which sends it again).
      const auto mine = [&](const Draining& d) { return d.device == device; };
      if (std::ranges::count_if(draining_, mine) >= kMaxDrainingPerDevice) {
        draining_.erase(std::ranges::find_if(draining_, mine));
        ++stats_.drainingGivenUp;
      } else if (draining_.size() >= maxDraining()) {
        draining_.erase(draining_.begin()); // all devices together: the oldest goes
        ++stats_.drainingGivenUp;
        reportDrainingGivenUp(device);
      }
      draining_.push_back({std::move(c->upstream), now + std::chrono::seconds(10), device});
    }
    byId_.erase(c->id);
    connections_.erase(c);
  }
  closed_.clear();
}

} // namespace iotgw::daemon
