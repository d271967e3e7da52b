// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/mqtt_service.h"

#include <sys/epoll.h>

#include <algorithm>
#include <thread>

#include <fmt/format.h>

#include "protocols/mqtt/client_id.h"

namespace iotgw::daemon {

using mqtt::Clock;
using policy::Event;
using policy::EventType;

namespace {

constexpr std::ptrdiff_t kMaxDrainingPerDevice = 4;
constexpr auto kPublisherIdle = std::chrono::seconds(60);

void add(mqtt::SessionCounters& to, const mqtt::SessionCounters& k) {
  to.packetsIn += k.packetsIn;
  to.publishesForwarded += k.publishesForwarded;
  to.publishesDenied += k.publishesDenied;
  to.deliveries += k.deliveries;
  to.deliveriesDenied += k.deliveriesDenied;
  to.malformed += k.malformed;
  to.dropped += k.dropped;
}

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

mqtt::ProxySettings proxySettings(const Limits& l, const mqtt::ByteBudget& budget, bool tls) {
  mqtt::ProxySettings s;
  s.protocol = tls ? "mqtts" : "mqtt";
  s.maxConnectBytes = l.maxConnectBytes;
  s.handshakeTimeout = std::chrono::duration_cast<std::chrono::milliseconds>(l.handshakeTimeout);
  s.budget = &budget;
  return s;
}

} // namespace

MqttService::MqttService(io::Reactor& reactor, EventSink& sink,
                         std::shared_ptr<const Config> config, PolicySource policies,
                         std::shared_ptr<const policy::DefaultCredentials> defaults)
    : reactor_(reactor), sink_(sink), config_(std::move(config)), policies_(std::move(policies)),
      defaults_(std::move(defaults)), throttle_(config_->limits.authThrottle),
      admission_(admissionLimits(config_->limits)),
      upstreamBudget_{config_->limits.maxQueuedBytesTotal, 0},
      reconnectPacer_(config_->limits.upstreamReconnectsPerSecond),
      plainSettings_(proxySettings(config_->limits, upstreamBudget_, false)),
      tlsSettings_(proxySettings(config_->limits, upstreamBudget_, true)) {
  hooks_.emit = [this](Event e) { sink_.emit(std::move(e)); };
  hooks_.newSession = [this](mqtt::PeerInfo peer) { return newSession(std::move(peer)); };
  hooks_.openUpstream = [this](mqtt::Proxy& p, const mqtt::upstream::Open& open) {
    takeOver(p, open.clientId);
    return createUpstream(p.device(), open, p);
  };
  hooks_.checkPassword = [this](mqtt::Proxy& p, mqtt::PasswordCheck check) {
    checkPassword(p, std::move(check));
  };
  hooks_.quarantine = [this](const policy::DeviceId& id, const std::string& rule) {
    if (!quarantine_) {
      return false;
    }
    quarantine_(id, rule); // closes the device's connections through closeDevice
    return true;
  };
  hooks_.handshakeBytes = [this](mqtt::Proxy& p) { admission_.sawBytes(p.id()); };
  hooks_.handshakeEnded = [this](mqtt::Proxy& p) { handshakeEnded(p); };
  hooks_.received = [this](mqtt::Proxy& p) { accountHeldBytes(p); };
  hooks_.closed = [this](mqtt::Proxy& p) { connectionClosed(p); };
  hooks_.settle = [this] { sweep(); };
  if (config_->store.acknowledge == StoreConfig::Acknowledge::Durable) {
    hooks_.store = [this](mqtt::Proxy& p, const mqtt::upstream::Publish& m, bool down) {
      return store(p, m, down);
    };
    hooks_.release = [this](mqtt::Proxy& p, uint16_t packetId, uint64_t token) {
      return release(p, packetId, token);
    };
  }
  diskBudget_.limit = config_->store.maxBytes;
}

MqttService::~MqttService() {
  if (timer_) {
    reactor_.cancelTimer(*timer_);
  }
  reactor_.setAfterEvents(nullptr);
  for (auto& [device, s] : outboxes_) {
    (void)s.box->commit(); // durable; the devices not told any more (they send it again)
  }
  connections_.clear(); // each stops watching its socket
  for (const auto& l : listeners_) {
    reactor_.remove(l.get());
  }
}

Outcome MqttService::start() {
  struct Bind {
    const ListenerConfig* listener;
    bool tls;
  };
  auto contexts = prepareTls(*config_);
  if (!contexts) {
    return failure(contexts.error());
  }
  (*contexts)();
  // Password checks take ~0.1 s of CPU each: a core is left to the loop.
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  auto worker = io::Worker::create(reactor_, std::clamp(cores - 1, 1u, 2u));
  if (!worker) {
    return failure("cannot start the password-check worker: " + worker.error().message());
  }
  worker_ = std::move(*worker);
  for (const Bind& b : {Bind{&config_->mqtt, false}, Bind{&config_->mqttTls, true}}) {
    if (!b.listener->enabled) {
      continue;
    }
    for (const auto& address : b.listener->addresses) {
      auto fd = io::listenTcp(address, b.listener->port);
      if (!fd) {
        return failure(fmt::format("cannot listen on {} port {}: {}", address.str(),
                                   b.listener->port, fd.error().message()));
      }
      const int raw = fd->get();
      const bool tls = b.tls;
      if (auto ec =
              reactor_.add(raw, EPOLLIN, [this, raw, tls](uint32_t) { onAccept(raw, tls); })) {
        return failure("cannot watch an MQTT listener: " + ec.message());
      }
      listeners_.push_back(std::move(*fd));
    }
  }
  auto t = reactor_.addTimer(std::chrono::milliseconds(100), std::chrono::milliseconds(100),
                             [this] { tick(); });
  if (!t) {
    return failure("cannot arm the MQTT timer");
  }
  timer_ = *t;
  reactor_.setAfterEvents([this] { commitOutboxes(); });
  openStoredOutboxes();
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
    const int fd = a->fd.get();
    std::unique_ptr<io::Stream> stream;
    if (tls) {
      auto s = tls::ServerStream::create(tlsContext_, fd);
      if (!s) {
        admission_.closed(id);
        continue;
      }
      stream = std::move(*s);
    } else {
      stream = std::make_unique<io::PlainStream>(fd);
    }
    auto p = std::make_unique<mqtt::Proxy>(reactor_, tls ? tlsSettings_ : plainSettings_, hooks_,
                                           stats_.proxied, id, std::move(*a), std::move(stream));
    mqtt::Proxy* raw = p.get();
    if (!raw->start(tls)) {
      admission_.closed(id);
      continue;
    }
    byId_.emplace(id, raw);
    connections_.emplace(raw, std::move(p));
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
    if (const auto it = byId_.find(id); it != byId_.end() && !it->second->dead()) {
      ++stats_.evictedUnauthenticated;
      it->second->close(false);
    }
  }
}

std::unique_ptr<mqtt::Session> MqttService::newSession(mqtt::PeerInfo peer) {
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
  settings.storedFlows = static_cast<bool>(hooks_.release);
  settings.admit = [this](const policy::DevicePolicy& d, const std::string& upstreamId) {
    return admitClient(d, upstreamId);
  };
  return std::make_unique<mqtt::Session>(settings, policies_(), defaults_, throttle_,
                                         std::move(peer), Clock::now(), &subscriptions_);
}

bool MqttService::admitClient(const policy::DevicePolicy& d, const std::string& upstreamId) const {
  size_t others = 0;
  for (const auto& [raw, p] : connections_) {
    const mqtt::Session* s = p->session();
    if (p->dead() || s == nullptr || s->device() == nullptr || s->device()->id != d.id ||
        s->upstreamClientId().empty()) {
      continue;
    }
    if (s->upstreamClientId() == upstreamId) {
      return true; // the same client coming back takes its own session over
    }
    ++others;
  }
  return others < d.mqttRules.maxClients;
}

void MqttService::takeOver(const mqtt::Proxy& by, const std::string& upstreamId) {
  // MQTT-3.1.4-3: the connection already using the client identifier goes, and so does any
  // upstream of an earlier connection still draining under it (it would take the broker's
  // session back from the new one).
  for (const auto& [raw, p] : connections_) {
    if (p.get() != &by && !p->dead() && p->session() != nullptr &&
        p->session()->upstreamClientId() == upstreamId) {
      p->takenOver();
    }
  }
  const auto superseded =
      std::erase_if(draining_, [&](const Draining& d) { return d.clientId == upstreamId; });
  if (superseded > 0) {
    // What they still held was never acknowledged to the device, which sends it again.
    stats_.drainingGivenUp += superseded;
    reportDrainingGivenUp(by.device() != nullptr ? by.device()->id.str() : std::string(),
                          "the same client logged in again before its last session had "
                          "delivered everything: the new session takes the broker's over");
  }
}

void MqttService::handshakeEnded(mqtt::Proxy& p) {
  admission_.handshakeEnded(p.id());
  lastHandshakeEnded_ = Clock::now();
  handshakeCachesHeld_ = true;
}

void MqttService::checkPassword(mqtt::Proxy& p, mqtt::PasswordCheck check) {
  // A source that has logged in before has room kept for it, and goes first.
  const bool known = throttle_.knownSource(p.source());
  if (!admission_.startCheck(p.id(), known)) {
    ++stats_.passwordChecksBusy;
    p.passwordChecked(mqtt::PasswordResult::Busy);
    return;
  }
  ++stats_.passwordChecks;
  // The job owns its copy of the hash and the password (wiped when it goes); the completion
  // finds the connection again by its id, since it may have closed meanwhile.
  auto job = std::make_shared<mqtt::PasswordCheck>(std::move(check));
  auto matched = std::make_shared<bool>(false);
  worker_->post([job, matched] { *matched = job->hash.verify(job->password); },
                [this, id = p.id(), matched] {
                  admission_.endCheck(id);
                  const auto found = byId_.find(id);
                  if (found == byId_.end() || found->second->dead()) {
                    return;
                  }
                  mqtt::Proxy& conn = *found->second;
                  conn.passwordChecked(*matched ? mqtt::PasswordResult::Matched
                                                : mqtt::PasswordResult::Mismatched);
                  accountHeldBytes(conn);
                  sweep();
                },
                known ? io::Worker::Priority::First : io::Worker::Priority::Normal);
}

void MqttService::accountHeldBytes(mqtt::Proxy& p) {
  if (p.dead() || p.session() == nullptr) {
    return;
  }
  if (p.session()->authenticated()) {
    admission_.authenticated(p.id());
    return;
  }
  evict(admission_.held(p.id(), p.session()->bufferedBytes(), Clock::now()));
}

void MqttService::connectionClosed(mqtt::Proxy& p) {
  admission_.closed(p.id());
  closed_.push_back(&p);
  if (const mqtt::Session* s = p.session()) {
    const auto& k = s->counters();
    stats_.denied += k.publishesDenied + k.deliveriesDenied;
    stats_.malformed += k.malformed;
    stats_.delivered += k.deliveries;
    if (s->device() != nullptr) {
      add(closedCounters_[s->device()->id.str()], k);
    }
  }
}

void MqttService::closeLoginsInProgress() {
  for (auto& [ptr, p] : connections_) {
    if (!p->dead() && p->session() != nullptr && !p->session()->authenticated()) {
      p->close(false);
    }
  }
}

void MqttService::closeDevice(const policy::DeviceId& id) {
  for (auto& [ptr, p] : connections_) {
    if (!p->dead() && p->device() != nullptr && p->device()->id == id) {
      p->close(false); // swept by the caller's loop turn
    }
  }
  closeLoginsInProgress();
}

size_t MqttService::forgetDevice(const policy::DeviceId& id) {
  const std::string name = id.str();
  size_t dropped = 0;
  for (auto& [ptr, p] : connections_) {
    if (p->device() != nullptr && p->device()->id == id) {
      dropped += p->forget();
    }
  }
  closeLoginsInProgress();
  std::erase_if(draining_, [&](const Draining& d) {
    if (d.device != name) {
      return false;
    }
    dropped += d.upstream->queued();
    return true;
  });
  if (auto it = publishers_.find(name); it != publishers_.end()) {
    dropped += it->second->queued();
    publishers_.erase(it);
  }
  dropped += eraseOutbox(name); // 5.11-1: the payloads it stored go with it
  closedCounters_.erase(name);
  deviceContexts_.erase(name);
  endPersistentSessions(id, true); // nothing of it is kept at the broker either
  return dropped;
}

std::map<std::string, mqtt::SessionCounters> MqttService::deviceCounters() const {
  auto all = closedCounters_;
  for (const auto& [ptr, p] : connections_) {
    if (!p->dead() && p->device() != nullptr) {
      add(all[p->device()->id.str()], p->session()->counters());
    }
  }
  return all;
}

std::vector<std::pair<std::string, uint64_t>> MqttService::counters() const {
  const MqttStats& m = stats_;
  mqtt::SessionCounters live;
  for (const auto& [ptr, p] : connections_) {
    if (!p->dead() && p->session() != nullptr) {
      add(live, p->session()->counters());
    }
  }
  std::vector<std::pair<std::string, uint64_t>> out{
      {"mqtt_accepted", m.accepted},
      {"mqtt_refused_by_limits", m.refusedByLimits},
      {"mqtt_refused_off_segment", m.refusedOffSegment},
      {"mqtt_evicted_unauthenticated", m.evictedUnauthenticated},
      {"mqtt_tls_handshakes_failed", m.proxied.tlsHandshakesFailed},
      {"mqtt_password_checks", m.passwordChecks},
      {"mqtt_password_checks_busy", m.passwordChecksBusy},
      {"mqtt_forwarded", m.proxied.forwarded},
      {"mqtt_denied", m.denied + live.publishesDenied + live.deliveriesDenied},
      {"mqtt_malformed", m.malformed + live.malformed},
      {"mqtt_delivered", m.delivered + live.deliveries},
      {"mqtt_qos0_dropped", m.proxied.qos0Dropped},
      {"mqtt_upstream_stalls", m.proxied.upstreamStalls},
      {"mqtt_draining_given_up", m.drainingGivenUp},
      {"mqtt_pushes_forwarded", m.pushesForwarded},
      {"mqtt_stored", m.proxied.stored},
      {"mqtt_store_refused", m.proxied.storeRefused},
      {"mqtt_store_dropped", m.storeDropped},
      {"mqtt_qos2_resends_absorbed", m.storeResends},
      {"mqtt_store_failed", m.storeFailed},
      {"mqtt_reconnects_deferred", reconnectPacer_.deferred()}};
  for (auto& c : outboxCounters()) {
    out.push_back(std::move(c));
  }
  return out;
}

Outcome MqttService::publishFor(const policy::DevicePolicy& device, const std::string& topic,
                                std::span<const uint8_t> payload, uint8_t qos,
                                std::function<void(bool)> done) {
  if (!config_->upstream.enabled) {
    return failure("no upstream broker is configured");
  }
  const std::string id = device.id.str();
  auto it = publishers_.find(id);
  if (it == publishers_.end()) {
    mqtt::upstream::Open open;
    open.clientId = mqtt::pushClientId(config_->upstream.clientIdPrefix, id);
    open.keepAlive = config_->upstream.keepaliveSeconds;
    auto created = mqtt::Publisher::create(
        [&](mqtt::UpstreamObserver& o) { return createUpstream(&device, open, o); });
    if (!created) {
      return failure("cannot open the upstream session: " + created.error());
    }
    it = publishers_.emplace(id, std::move(*created)).first;
  }
  if (auto taken = it->second->publish(topic, payload, qos, std::move(done)); !taken) {
    return taken;
  }
  ++stats_.pushesForwarded;
  return {};
}

void MqttService::tick() {
  const auto now = Clock::now();
  for (const auto id : admission_.silentHandshakes(now)) {
    if (const auto it = byId_.find(id); it != byId_.end() && !it->second->dead()) {
      ++stats_.proxied.tlsHandshakesFailed; // a client that never said a word
      it->second->close(false);
    }
  }
  for (auto& [ptr, p] : connections_) {
    p->tick(now);
  }
  for (auto& d : draining_) {
    d.upstream->service(now);
  }
  serviceOutboxes(now);
  std::erase_if(publishers_,
                [now](const auto& kv) { return kv.second->service(now, kPublisherIdle); });
  sweep();
  endRequestedSessions();
  releaseIdleMemory(now);
}

void MqttService::sweep() {
  // Runs only from the reactor's client and timer handlers, never inside an upstream's or a
  // connection's callbacks, so destroying either here is safe.
  const auto now = Clock::now();
  std::erase_if(draining_,
                [now](const auto& d) { return d.upstream->finished() || now >= d.deadline; });
  if (closed_.empty()) {
    return; // nothing closed since the last sweep: no walk over every connection
  }
  for (mqtt::Proxy* p : closed_) {
    if (p->upstream() != nullptr && !p->upstream()->finished()) {
      const std::string device = p->device() != nullptr ? p->device()->id.str() : std::string();
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
        reportDrainingGivenUp(device, "too many are waiting for the broker");
      }
      const std::string clientId = p->session()->upstreamClientId();
      draining_.push_back({p->takeUpstream(), now + std::chrono::seconds(10), device, clientId});
    }
    byId_.erase(p->id());
    connections_.erase(p);
  }
  closed_.clear();
}

} // namespace iotgw::daemon
