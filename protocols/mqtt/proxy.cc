// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/mqtt/proxy.h"

#include <sys/epoll.h>

#include <algorithm>

namespace iotgw::mqtt {

using policy::Event;
using policy::EventType;

namespace {
constexpr size_t kReadChunk = 64 * 1024;
constexpr uint32_t kReadable = EPOLLIN | EPOLLRDHUP;
} // namespace

Proxy::Proxy(io::Reactor& reactor, const ProxySettings& settings, const ProxyHooks& hooks,
             ProxyCounters& counters, uint64_t id, io::Accepted accepted,
             std::unique_ptr<io::Stream> stream)
    : reactor_(reactor), settings_(settings), hooks_(hooks), counters_(counters), id_(id),
      fd_(std::move(accepted.fd)), address_(accepted.address), source_(accepted.address.str()),
      label_(accepted.label()), accepted_(Clock::now()), stream_(std::move(stream)) {}

Proxy::~Proxy() {
  if (fd_.valid()) {
    reactor_.remove(fd_.get());
  }
}

bool Proxy::start(bool handshake) {
  handshaking_ = handshake;
  if (!handshaking_) {
    startSession();
  }
  armed_ = kReadable;
  if (reactor_.add(fd_.get(), armed_, [this](uint32_t ev) {
        onEvents(ev);
        hooks_.settle(); // may destroy this proxy: nothing after it
      })) {
    dead_ = true;
    stream_.reset();
    fd_ = io::UniqueFd(); // never watched: nothing to remove
    return false;
  }
  return true;
}

void Proxy::startSession() {
  PeerInfo peer{address_, label_, std::nullopt};
  if (const io::PeerCertificate* cert = stream_->peerCertificate()) {
    // The identity comes from the verified certificate, never from packet contents.
    peer.certificate = policy::CertificateFacts{cert->commonName, cert->subjectAltNames};
  }
  session_ = hooks_.newSession(std::move(peer));
}

void Proxy::onHandshake() {
  const io::IoStatus st = stream_->handshake();
  switch (st) {
  case io::IoStatus::Ok:
    handshaking_ = false;
    hooks_.handshakeEnded(*this);
    startSession();
    flush(); // back to plain read interest
    read();  // application data may have arrived with the last handshake flight
    return;
  case io::IoStatus::WantRead:
  case io::IoStatus::WantWrite:
    // WolfSSL writes handshake records through the socket itself; watch for writability only
    // when its non-blocking send could not finish.
    arm(kReadable | (st == io::IoStatus::WantWrite ? EPOLLOUT : 0u));
    return;
  case io::IoStatus::Closed:
  case io::IoStatus::Failed: {
    ++counters_.tlsHandshakesFailed;
    Event e;
    e.type = EventType::AuthenticationFailed;
    e.peer = label_;
    e.protocol = settings_.protocol;
    e.rule = "tls.handshake";
    e.provision = "5.5-4";
    e.action = "refuse";
    e.message = "TLS handshake failed: " + stream_->lastError();
    hooks_.emit(std::move(e));
    close(false);
    return;
  }
  }
}

void Proxy::onEvents(uint32_t events) {
  if (dead_) {
    return;
  }
  if (handshaking_) {
    if ((events & EPOLLIN) != 0) {
      hooks_.handshakeBytes(*this);
    }
    onHandshake();
    return;
  }
  if ((events & EPOLLOUT) != 0) {
    flush();
    if (dead_) {
      return;
    }
  }
  if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0) {
    read();
  }
}

bool Proxy::mayRead() const {
  return (!upstream_ || upstream_->acceptsMore()) && session_->wantsInput();
}

void Proxy::resume() {
  if (dead_ || !paused_ || !mayRead()) {
    return;
  }
  paused_ = false;
  {
    // What the session held back (a full window, packets behind a CONNECT) goes first.
    Effects e;
    session_->receive({}, Clock::now(), e);
    apply(e);
  }
  if (dead_ || paused_) {
    return;
  }
  flush(); // re-arms EPOLLIN
  read();
}

void Proxy::reportStall() {
  stallReported_ = true;
  ++counters_.upstreamStalls;
  Event e;
  e.type = EventType::UpstreamUnavailable;
  e.device = device() != nullptr ? device()->id.str() : "";
  e.peer = label_;
  e.protocol = "mqtt";
  e.rule = settings_.budget != nullptr && settings_.budget->exhausted()
               ? "limits.max_queued_bytes_total"
               : "limits.max_queued_bytes";
  e.action = "flow-control";
  e.message = "the broker is not reading: the device is held back until it does";
  hooks_.emit(std::move(e));
}

void Proxy::read() {
  uint8_t buf[kReadChunk];
  // A stream that holds decrypted records is read until it wants more from the socket.
  for (int round = 0; round < 16 && !dead_; ++round) {
    if (!mayRead()) {
      pause();
      return;
    }
    // While the upstream connects, small reads keep what one read can add to its queue small;
    // before the login, no more than a CONNECT may take is read at once.
    size_t chunk = upstream_ && !upstream_->connected() ? 2048 : sizeof buf;
    if (!session_->authenticated()) {
      chunk = std::min(chunk, settings_.maxConnectBytes);
    }
    size_t n = 0;
    const io::IoStatus st = stream_->read(std::span(buf, chunk), n);
    if (st == io::IoStatus::WantRead || st == io::IoStatus::WantWrite) {
      return;
    }
    if (st != io::IoStatus::Ok) {
      Effects e;
      session_->connectionLost(e);
      apply(e);
      close(true);
      return;
    }
    Effects e;
    session_->receive(std::span(buf, n), Clock::now(), e);
    apply(e);
    if (!dead_) {
      hooks_.received(*this);
    }
    if (!stream_ || !stream_->holdsReadBytes()) {
      return; // level-triggered epoll calls again if more is waiting
    }
  }
}

void Proxy::passwordChecked(PasswordResult result) {
  if (dead_) {
    return;
  }
  Effects e;
  session_->passwordChecked(result, Clock::now(), e);
  apply(e);
}

void Proxy::upstreamAcked(uint64_t token) {
  Effects e;
  session_->upstreamAcked(token, e);
  apply(e);
}

void Proxy::upstreamMessage(const Delivery& message) {
  Effects e;
  session_->deliver(message, e);
  apply(e);
}

void Proxy::upstreamSubscribed(const SubscribeResult& result) {
  Effects e;
  session_->upstreamSubscribed(result, e);
  apply(e);
}

void Proxy::upstreamUnsubscribed(uint64_t token) {
  Effects e;
  session_->upstreamUnsubscribed(token, e);
  apply(e);
}

void Proxy::stored(uint64_t token) {
  if (dead_ || !session_) {
    return;
  }
  Effects e;
  session_->upstreamAcked(token, e);
  apply(e);
}

void Proxy::upstreamConnected(const UpstreamStatus& status) {
  if (dead_) {
    return;
  }
  upstreamDown_ = !status.up;
  if (upstreamDown_ && upstream_ && hooks_.store) {
    // What the broker has not acknowledged goes to the outbox first, in order, so that what the
    // device sends from now on comes after it.
    for (auto& m : upstream_->takeUnacknowledged()) {
      const StoreVerdict v = hooks_.store(*this, m, true);
      if (v == StoreVerdict::Stored) {
        ++counters_.stored;
      } else if (v == StoreVerdict::Refused) {
        ++counters_.storeRefused;
        refused_.push_back(m.token);
      } else {
        (void)upstream_->publish(m); // nowhere to store it: back where it was
      }
    }
  }
  Effects e;
  session_->upstreamStatus(status.up, status.sessionPresent, Clock::now(), e, status.refused);
  apply(e);
}

void Proxy::apply(Effects& e) {
  std::string violated = "policy"; // the rule behind a quarantine request
  if (e.quarantineRequested && !e.events.empty()) {
    violated = e.events.back().rule;
  }
  for (auto& ev : e.events) {
    hooks_.emit(std::move(ev));
  }
  if (e.quarantineRequested && device() != nullptr &&
      hooks_.quarantine(policy::DeviceId(device()->id), violated)) {
    if (dead_) {
      return; // closed with the rest of the device's connections
    }
  } else if (e.quarantineRequested && device() != nullptr) {
    Event q;
    q.type = EventType::DeviceQuarantined;
    q.device = device()->id.str();
    q.peer = label_;
    q.protocol = "mqtt";
    q.action = "request";
    q.message = "quarantine requested by the device's policy; its session was closed";
    hooks_.emit(std::move(q));
  }
  if (e.passwordCheck) {
    hooks_.checkPassword(*this, std::move(*e.passwordCheck));
    e.passwordCheck.reset();
    if (dead_) {
      return;
    }
  }
  for (auto& cmd : e.upstream) {
    carryOut(cmd);
  }
  if ((!refused_.empty() || !unknownReleases_.empty()) && !dead_) {
    Effects r;
    for (const uint64_t token : refused_) {
      session_->upstreamRefused(token, r);
    }
    for (const uint64_t token : unknownReleases_) {
      session_->upstreamReleaseUnknown(token, r);
    }
    refused_.clear();
    unknownReleases_.clear();
    e.toClient.insert(e.toClient.end(), r.toClient.begin(), r.toClient.end());
  }
  if (!e.toClient.empty() && !dead_) {
    output_.insert(output_.end(), e.toClient.begin(), e.toClient.end());
    if (output_.size() > settings_.maxOutput) {
      close(true);
      return;
    }
  }
  if (e.closeClient) {
    closeAfterFlush_ = true;
  }
  flush();
  if (dead_ || closeAfterFlush_ || handshaking_ || !session_) {
    return;
  }
  if (paused_) {
    resume(); // an acknowledgement or an answer may have made room
  } else if (!mayRead()) {
    // The session holds back what it has (a full window, a login being decided), or the broker
    // is not reading: the socket is not read until there is room, and what the session holds is
    // given to it then (resume).
    pause();
  }
}

void Proxy::pause() {
  paused_ = true;
  flush(); // drops EPOLLIN
  if (upstream_ && upstream_->stalled() && !stallReported_) {
    reportStall();
  }
}

void Proxy::carryOut(upstream::Command& cmd) {
  if (auto* open = std::get_if<upstream::Open>(&cmd)) {
    auto created = hooks_.openUpstream(*this, *open);
    if (created) {
      upstream_ = std::move(*created);
      if (dead_) {
        upstream_->close(false); // closed meanwhile: the link must not outlive it unclosed
      }
      return;
    }
    // Without an upstream nothing the client sends could be delivered: say so and close.
    Event ev;
    ev.type = EventType::UpstreamUnavailable;
    ev.device = device() != nullptr ? device()->id.str() : "";
    ev.peer = label_;
    ev.protocol = "mqtt";
    ev.rule = "upstream";
    ev.action = "disconnect";
    ev.message = "cannot open the upstream session: " + created.error();
    hooks_.emit(std::move(ev));
    closeAfterFlush_ = true;
  } else if (auto* pub = std::get_if<upstream::Publish>(&cmd)) {
    if (pub->qos > 0 && hooks_.store) {
      const StoreVerdict v = hooks_.store(*this, *pub, upstreamDown_);
      if (v == StoreVerdict::Stored) {
        ++counters_.stored;
        return;
      }
      if (v == StoreVerdict::Refused) {
        ++counters_.storeRefused;
        refused_.push_back(pub->token);
        return;
      }
    }
    if (upstream_ && upstream_->publish(*pub)) {
      ++counters_.forwarded;
    } else if (pub->qos > 0) {
      // The broker side cannot take it: the client keeps it and retries after reconnecting.
      closeAfterFlush_ = true;
    } else {
      ++counters_.qos0Dropped; // at most once, by definition; counted
    }
  } else if (auto* sub = std::get_if<upstream::Subscribe>(&cmd)) {
    if (upstream_) {
      upstream_->subscribe(sub->token, std::move(sub->filters));
    }
  } else if (auto* unsub = std::get_if<upstream::Unsubscribe>(&cmd)) {
    if (upstream_) {
      upstream_->unsubscribe(unsub->token, std::move(unsub->filters));
    }
  } else if (const auto* ack = std::get_if<upstream::Acknowledge>(&cmd)) {
    if (upstream_) {
      upstream_->acknowledge(ack->id);
    }
  } else if (auto* end = std::get_if<upstream::Close>(&cmd)) {
    if (upstream_) {
      upstream_->close(end->publishWill);
    }
  } else if (const auto* rel = std::get_if<upstream::Release>(&cmd)) {
    if (!hooks_.release || !hooks_.release(*this, rel->packetId, rel->token)) {
      unknownReleases_.push_back(rel->token);
    }
  }
}

void Proxy::flush() {
  if (dead_) {
    return;
  }
  bool wantWrite = false;
  while (!output_.empty() && !handshaking_) {
    size_t n = 0;
    const io::IoStatus st = stream_->write(output_, n);
    if (st == io::IoStatus::WantWrite || st == io::IoStatus::WantRead) {
      wantWrite = st == io::IoStatus::WantWrite;
      break;
    }
    if (st != io::IoStatus::Ok) {
      close(true);
      return;
    }
    output_.erase(output_.begin(), output_.begin() + static_cast<std::ptrdiff_t>(n));
  }
  if (handshaking_) {
    return; // onHandshake arms the descriptor as the stream asks
  }
  arm((paused_ ? 0u : kReadable) | (wantWrite ? EPOLLOUT : 0u));
  if (output_.empty() && closeAfterFlush_) {
    close(true);
  }
}

void Proxy::arm(uint32_t events) {
  if (events != armed_ && fd_.valid()) {
    (void)reactor_.modify(fd_.get(), events);
    armed_ = events;
  }
}

void Proxy::tick(Clock::time_point now) {
  if (dead_) {
    return;
  }
  if (handshaking_) {
    if (now - accepted_ > settings_.handshakeTimeout) {
      ++counters_.tlsHandshakesFailed;
      close(false);
    }
    return;
  }
  if (session_->deadline() <= now) { // keepalive or connect timeout due
    Effects e;
    session_->tick(now, e);
    apply(e);
  }
  if (upstream_ && !dead_) {
    upstream_->service(now);
    if (paused_ && upstream_->acceptsMore()) {
      stallReported_ = false;
      resume();
    }
  }
}

void Proxy::close(bool publishWill) {
  if (dead_) {
    return;
  }
  dead_ = true;
  // The socket first (nothing here allocates): whatever follows, a closed connection is never
  // left watched. The stream goes before the socket closes: a TLS close_notify goes out if the
  // session was up.
  stream_.reset();
  if (fd_.valid()) {
    reactor_.remove(fd_.get());
    fd_ = io::UniqueFd();
  }
  if (session_ && session_->state() != Session::State::Closed) {
    Effects e;
    session_->connectionLost(e);
    for (auto& ev : e.events) {
      hooks_.emit(std::move(ev));
    }
  }
  if (upstream_) {
    upstream_->close(publishWill);
  }
  if (handshaking_) {
    handshaking_ = false;
    hooks_.handshakeEnded(*this);
  }
  hooks_.closed(*this);
}

void Proxy::takenOver() {
  if (dead_) {
    return;
  }
  upstream_.reset(); // dropped without a DISCONNECT: the broker sees the session taken over
  if (session_ && session_->version() == Version::V5) {
    const auto bye = encode(Disconnect{0x8E, {}}, Version::V5); // Session taken over
    output_.insert(output_.end(), bye.begin(), bye.end());
    flush(); // best effort: the socket closes right after
  }
  close(true);
}

size_t Proxy::forget() {
  close(false);
  size_t dropped = 0;
  if (upstream_) {
    dropped = upstream_->queued();
    upstream_.reset(); // not inside one of its callbacks: called from the control API
  }
  return dropped;
}

} // namespace iotgw::mqtt
