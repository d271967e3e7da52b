// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/mqtt/upstream.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace iotgw::mqtt {

using policy::Event;
using policy::EventType;

namespace {

constexpr size_t kReadChunk = 16 * 1024;

std::string connackMeaning(uint8_t code) {
  switch (code) {
  case v311::kUnacceptableProtocolVersion:
    return "unacceptable protocol version";
  case v311::kIdentifierRejected:
    return "client identifier rejected";
  case v311::kServerUnavailable:
    return "server unavailable";
  case v311::kBadUserNameOrPassword:
    return "bad user name or password";
  case v311::kNotAuthorized:
    return "not authorized";
  default:
    return fmt::format("return code {}", code);
  }
}

} // namespace

std::expected<std::unique_ptr<BrokerLink>, std::string>
BrokerLink::create(io::Reactor& reactor, const UpstreamSettings& settings,
                   const upstream::Open& open, UpstreamObserver& observer) {
  if (settings.host.empty()) {
    return std::unexpected("no broker host");
  }
  std::unique_ptr<BrokerLink> link(new BrokerLink(reactor, settings, open, observer));
  // The observer hears nothing before it holds the link: a first attempt that fails at once
  // (no route, no name) is said with the next one's outcome.
  link->creating_ = true;
  link->connect(Clock::now());
  link->creating_ = false;
  return link;
}

BrokerLink::BrokerLink(io::Reactor& reactor, const UpstreamSettings& settings,
                       const upstream::Open& open, UpstreamObserver& observer)
    : reactor_(reactor), settings_(settings), observer_(observer),
      client_(
          ClientSettings{settings.maxPacketBytes, 20, settings.maxQueued, settings.maxQueuedBytes},
          ClientLogin{open.clientId, open.cleanStart,
                      static_cast<uint16_t>(
                          std::clamp<int>(open.keepAlive == 0 ? 60 : open.keepAlive, 5, 600)),
                      open.will, settings.username, settings.password}) {}

BrokerLink::~BrokerLink() {
  if (closeRequested_ && !publishWill_ && client_.up() && stream_) {
    // Given up before it had delivered everything, after a clean DISCONNECT from the device: the
    // broker must not publish the will for it.
    ClientOutput out;
    client_.disconnect(out);
    size_t n = 0;
    (void)stream_->write(out.toBroker, n);
  }
  if (fd_.valid()) {
    reactor_.remove(fd_.get());
  }
  stream_.reset(); // before the socket closes
  if (settings_.budget != nullptr) {
    settings_.budget->used -= held_;
  }
}

void BrokerLink::report(const std::string& rule, const std::string& message) {
  if (!settings_.emit) {
    return;
  }
  Event e;
  e.type = EventType::UpstreamUnavailable;
  e.protocol = "mqtt";
  e.rule = rule;
  e.action = "reconnect";
  e.message = message;
  settings_.emit(std::move(e));
}

void BrokerLink::connect(Clock::time_point now) {
  attemptDeadline_ = now + settings_.attemptTimeout;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  // A host name is looked up here, on the loop; an address costs nothing. Each attempt takes the
  // next of the addresses it has ("localhost": ::1, then 127.0.0.1).
  const std::string port = std::to_string(settings_.port);
  if (const int rc = ::getaddrinfo(settings_.host.c_str(), port.c_str(), &hints, &found);
      rc != 0 || found == nullptr) {
    drop(fmt::format("cannot resolve {}: {}", settings_.host, gai_strerror(rc)), true);
    return;
  }
  size_t count = 0;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    ++count;
  }
  addresses_ = count;
  const addrinfo* chosen = found;
  for (size_t i = 0; i < addressTurn_ % count; ++i) {
    chosen = chosen->ai_next;
  }
  const int fd = ::socket(chosen->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ::freeaddrinfo(found);
    drop(fmt::format("socket: {}", std::strerror(errno)), true);
    return;
  }
  fd_ = io::UniqueFd(fd);
  const int one = 1;
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  const int rc = ::connect(fd, chosen->ai_addr, chosen->ai_addrlen);
  const int err = errno;
  ::freeaddrinfo(found);
  if (rc != 0 && err != EINPROGRESS) {
    unreachable(err);
    return;
  }
  phase_ = Phase::Connecting;
  armed_ = EPOLLOUT;
  if (reactor_.add(fd, armed_, [this](uint32_t ev) { onEvents(ev); })) {
    drop("cannot watch the broker connection", true);
  }
}

void BrokerLink::unreachable(int err) {
  if (++addressTurn_ % std::max<size_t>(addresses_, 1) != 0) {
    // The host has another address: try it now, not after the backoff.
    if (fd_.valid()) {
      reactor_.remove(fd_.get());
    }
    fd_ = io::UniqueFd();
    phase_ = Phase::Waiting;
    reconnectAt_ = Clock::now();
    return;
  }
  drop(fmt::format("connect to {} port {}: {}", settings_.host, settings_.port, std::strerror(err)),
       true);
}

void BrokerLink::onEvents(uint32_t events) {
  if (phase_ == Phase::Connecting) {
    int err = 0;
    socklen_t len = sizeof err;
    (void)::getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0 || (events & (EPOLLERR | EPOLLHUP)) != 0) {
      unreachable(err != 0 ? err : ECONNREFUSED);
      return;
    }
    if (settings_.sslContext) {
      auto s = makeUpstreamTlsStream(settings_.sslContext, fd_.get(), settings_.host);
      if (!s) {
        drop(s.error(), true);
        return;
      }
      stream_ = std::move(*s);
    } else {
      stream_ = std::make_unique<io::PlainStream>(fd_.get());
    }
    phase_ = Phase::Handshaking;
    handshake();
    return;
  }
  if (phase_ == Phase::Handshaking) {
    handshake();
    return;
  }
  if (phase_ != Phase::Session) {
    return;
  }
  if ((events & EPOLLOUT) != 0) {
    flush();
    if (phase_ != Phase::Session) {
      return;
    }
  }
  if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) != 0) {
    readBroker();
  }
}

void BrokerLink::handshake() {
  const io::IoStatus st = stream_->handshake();
  if (st == io::IoStatus::WantRead || st == io::IoStatus::WantWrite) {
    const uint32_t want = st == io::IoStatus::WantRead ? EPOLLIN : EPOLLOUT;
    if (want != armed_ && !reactor_.modify(fd_.get(), want)) {
      armed_ = want;
    }
    return;
  }
  if (st != io::IoStatus::Ok) {
    drop("TLS handshake with the broker failed: " + stream_->lastError(), true);
    return;
  }
  phase_ = Phase::Session;
  ClientOutput out;
  client_.start(Clock::now(), out);
  if (process(out)) {
    readBroker(); // the CONNACK may have come with the last handshake flight
  }
}

void BrokerLink::readBroker() {
  uint8_t buf[kReadChunk];
  for (int round = 0; round < 16 && phase_ == Phase::Session; ++round) {
    if (output_.size() >= settings_.maxQueuedBytes) {
      arm(); // a broker that does not read what we send is not read either (its acks pile up)
      return;
    }
    size_t n = 0;
    const io::IoStatus st = stream_->read(buf, n);
    if (st == io::IoStatus::WantRead || st == io::IoStatus::WantWrite) {
      return;
    }
    if (st != io::IoStatus::Ok) {
      drop(st == io::IoStatus::Closed ? "the broker closed the connection"
                                      : "connection to the broker lost: " + stream_->lastError(),
           false);
      return;
    }
    ClientOutput out;
    client_.received(std::span(buf, n), out);
    if (!process(out)) {
      return;
    }
    if (!stream_->holdsReadBytes()) {
      return; // level-triggered: called again when more is waiting
    }
  }
}

bool BrokerLink::process(ClientOutput& out) {
  if (!out.toBroker.empty()) {
    if (output_.empty()) {
      output_ = std::move(out.toBroker);
    } else {
      output_.insert(output_.end(), out.toBroker.begin(), out.toBroker.end());
    }
  }
  if (out.connack) {
    if (out.connack->reasonCode != v311::kAccepted) {
      const uint8_t code = out.connack->reasonCode;
      const std::string why = "the broker refused the login: " + connackMeaning(code);
      if (attempts_ == 0) {
        report("upstream.connect", why); // once per outage, not per attempt
      }
      drop(why, false, UpstreamStatus{false, false, true, code});
      return false;
    }
    attempts_ = 0;
    if (!closeRequested_) {
      observer_.upstreamConnected(UpstreamStatus{true, out.connack->sessionPresent, false, 0});
    }
  }
  for (const auto& why : out.skipped) {
    report("limits.max_packet_bytes", why + " (read past and acknowledged)");
  }
  if (out.failure) {
    const std::string why =
        out.silent ? "the broker stopped answering (no PINGRESP, nothing else either): the "
                     "connection is taken as lost"
                   : fmt::format("the broker broke the protocol ({}): {}", out.failure->clause,
                                 out.failure->what);
    report(out.silent ? "upstream.keepalive" : "upstream.protocol", why);
    drop(why, false);
    return false;
  }
  if (!closeRequested_) {
    if (!out.received.empty()) {
      observer_.upstreamReceived(out.received); // before the PUBRELs are written (flush below)
    }
    for (const uint64_t token : out.acked) {
      observer_.upstreamAcked(token);
    }
    for (const auto& d : out.deliveries) {
      observer_.upstreamMessage(d); // acknowledged once the device has it
    }
    for (const auto& s : out.subscribed) {
      observer_.upstreamSubscribed(s);
    }
    for (const uint64_t token : out.unsubscribed) {
      observer_.upstreamUnsubscribed(token);
    }
  }
  // Deliveries after close() are left unacknowledged: a persistent session at the broker keeps
  // them for the device's next connection.
  flush();
  if (phase_ == Phase::Session) {
    finishIfDrained();
  }
  return phase_ == Phase::Session;
}

void BrokerLink::flush() {
  while (!output_.empty() && phase_ == Phase::Session) {
    size_t n = 0;
    const io::IoStatus st = stream_->write(output_, n);
    if (st == io::IoStatus::WantWrite || st == io::IoStatus::WantRead) {
      break;
    }
    if (st != io::IoStatus::Ok) {
      drop("connection to the broker lost: " + stream_->lastError(), false);
      return;
    }
    output_.erase(output_.begin(), output_.begin() + static_cast<std::ptrdiff_t>(n));
  }
  if (output_.empty() && output_.capacity() > 4096) {
    std::vector<uint8_t>().swap(output_);
  }
  account();
  arm();
}

void BrokerLink::arm() {
  if (phase_ != Phase::Session || !fd_.valid()) {
    return;
  }
  const uint32_t in = output_.size() < settings_.maxQueuedBytes ? EPOLLIN | EPOLLRDHUP : 0u;
  const uint32_t want = in | (output_.empty() ? 0u : EPOLLOUT);
  if (want != armed_ && !reactor_.modify(fd_.get(), want)) {
    armed_ = want;
  }
}

std::vector<Outgoing> BrokerLink::takeUnacknowledged() {
  if (connected()) {
    return {};
  }
  auto taken = client_.takeUnacknowledged();
  account();
  return taken;
}

void BrokerLink::account() {
  const size_t now = client_.heldBytes() + output_.size();
  if (settings_.budget != nullptr) {
    settings_.budget->used = settings_.budget->used - held_ + now;
  }
  held_ = now;
  if (held_ >= settings_.maxQueuedBytes) {
    full_ = true;
  } else if (held_ <= settings_.maxQueuedBytes / 2) {
    full_ = false;
  }
}

void BrokerLink::drop(const std::string& why, bool report, UpstreamStatus status) {
  const bool wasUp = client_.up();
  if (fd_.valid()) {
    reactor_.remove(fd_.get());
    // Reset, not closed: what this connection had not yet sent must not reach the broker
    // later (a cut link that comes back), behind what goes again on the next connection.
    const linger reset{1, 0};
    (void)::setsockopt(fd_.get(), SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
  }
  stream_.reset();
  fd_ = io::UniqueFd();
  output_.clear(); // QoS 0 not yet written goes with it; QoS 1/2 stays with the client
  std::vector<uint8_t>().swap(output_);
  client_.lost();
  account();
  if (phase_ == Phase::Finished) {
    return;
  }
  if (report && attempts_ == 0) {
    this->report("upstream.connect", why); // once per outage, not per attempt
  }
  if (closeRequested_ && (!wasUp || publishWill_)) {
    finish(); // nothing to deliver to a broker that is gone, or a will for it to publish
    return;
  }
  phase_ = Phase::Waiting;
  scheduleReconnect(Clock::now());
  if (!closeRequested_ && !creating_) {
    observer_.upstreamConnected(status); // down, or refused
  }
}

void BrokerLink::scheduleReconnect(Clock::time_point now) {
  // 0.5 s, 1 s, 2 s ... capped at 30 s, each ±25 %, so that a broker restart does not see every
  // device come back in the same instant (EN 303 645 5.9-3).
  const double base = std::min(30.0, 0.5 * static_cast<double>(1 << std::min(attempts_, 6)));
  std::uniform_real_distribution<double> jitter(0.75, 1.25);
  reconnectAt_ = now + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(base * jitter(rng_)));
  ++attempts_;
}

bool ReconnectPacer::take(Clock::time_point now) {
  if (last_ != Clock::time_point{}) {
    tokens_ = std::min(rate_, tokens_ + rate_ * std::chrono::duration<double>(now - last_).count());
  }
  last_ = now;
  if (tokens_ >= 1.0) {
    tokens_ -= 1.0;
    return true;
  }
  ++deferred_;
  return false;
}

Clock::duration ReconnectPacer::wait() const {
  return std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>((1.0 - tokens_) / rate_));
}

void BrokerLink::service(Clock::time_point now) {
  if (phase_ == Phase::Finished) {
    return;
  }
  if (phase_ == Phase::Waiting) {
    if (now < reconnectAt_) {
      return;
    }
    if (settings_.pacer != nullptr && !settings_.pacer->take(now)) {
      // Behind the others waiting: a little jitter so that the deferred do not line up again.
      std::uniform_real_distribution<double> jitter(1.0, 2.0);
      reconnectAt_ =
          now + std::chrono::duration_cast<Clock::duration>(settings_.pacer->wait() * jitter(rng_));
      return;
    }
    connect(now);
    return;
  }
  if (!client_.up()) {
    if (now >= attemptDeadline_) {
      drop(fmt::format("no answer from the broker at {} port {} within {} s", settings_.host,
                       settings_.port, settings_.attemptTimeout.count() / 1000),
           true);
    }
    return;
  }
  ClientOutput out;
  client_.tick(now, out);
  (void)process(out);
}

bool BrokerLink::publish(const upstream::Publish& p) {
  if (phase_ == Phase::Finished || closeRequested_ || (p.qos == 0 && full())) {
    return false;
  }
  ClientOutput out;
  if (!client_.publish(upstream::Publish(p), out)) {
    return false;
  }
  (void)process(out);
  return true;
}

void BrokerLink::subscribe(uint64_t token, std::vector<Subscription> filters) {
  ClientOutput out;
  client_.subscribe(token, std::move(filters), out);
  (void)process(out);
}

void BrokerLink::unsubscribe(uint64_t token, std::vector<std::string> filters) {
  ClientOutput out;
  client_.unsubscribe(token, std::move(filters), out);
  (void)process(out);
}

void BrokerLink::acknowledge(uint32_t id) {
  ClientOutput out;
  client_.acknowledge(id, out);
  (void)process(out);
}

void BrokerLink::close(bool publishWill) {
  if (closeRequested_) {
    return;
  }
  closeRequested_ = true;
  publishWill_ = publishWill;
  if (phase_ == Phase::Waiting && (publishWill || client_.drained())) {
    finish(); // never connected this time: nothing can be delivered now
    return;
  }
  finishIfDrained();
}

void BrokerLink::finishIfDrained() {
  if (!closeRequested_ || phase_ != Phase::Session || !client_.up() || !client_.drained() ||
      !output_.empty()) {
    // Still connecting: what the client sent goes first, and a clean end must be a DISCONNECT
    // after the CONNACK (anything else before it is a protocol error to the broker).
    return;
  }
  if (!publishWill_) {
    ClientOutput out;
    client_.disconnect(out);
    size_t n = 0;
    (void)stream_->write(out.toBroker, n); // a few bytes into an empty socket buffer
  }
  // Without DISCONNECT the broker sees the connection drop and publishes the will.
  finish();
}

void BrokerLink::finish() {
  if (fd_.valid()) {
    reactor_.remove(fd_.get());
  }
  stream_.reset();
  fd_ = io::UniqueFd();
  output_.clear();
  phase_ = Phase::Finished;
  account();
}

} // namespace iotgw::mqtt
