// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/mqtt/upstream.h"

#include "protocols/io/callback_guard.h"

#include <sys/epoll.h>

#include <algorithm>

#include <fmt/format.h>
#include <mosquitto.h>

namespace iotgw::mqtt {

void initialiseMosquitto() {
  static const int once = mosquitto_lib_init();
  (void)once;
}

std::expected<std::unique_ptr<MosquittoUpstream>, std::string>
MosquittoUpstream::create(io::Reactor& reactor, const UpstreamSettings& settings,
                          const upstream::Open& open, UpstreamObserver& observer) {
  initialiseMosquitto();
  std::unique_ptr<MosquittoUpstream> u(new MosquittoUpstream(reactor, settings, observer));
  u->mosq_ = mosquitto_new(open.clientId.c_str(), open.cleanStart, u.get());
  if (u->mosq_ == nullptr) {
    return std::unexpected("mosquitto_new failed");
  }
  mosquitto_int_option(u->mosq_, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
  mosquitto_int_option(u->mosq_, MOSQ_OPT_TCP_NODELAY, 1);
  // Everything the broker has not acknowledged stays with us, bounded by maxQueued.
  mosquitto_max_inflight_messages_set(u->mosq_, 20);
  if (settings.sslContext) {
    // Ours as it is: libmosquitto 2.0 would otherwise re-apply its defaults to it on every
    // connect (and insist on a CA file of its own).
    mosquitto_int_option(u->mosq_, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0);
    mosquitto_void_option(u->mosq_, MOSQ_OPT_SSL_CTX, settings.sslContext.get());
  } else {
    if (const int rc =
            mosquitto_tls_set(u->mosq_, settings.caFile.c_str(), nullptr,
                              settings.certificate.c_str(), settings.privateKey.c_str(), nullptr);
        rc != MOSQ_ERR_SUCCESS) {
      return std::unexpected(fmt::format("TLS set-up: {}", mosquitto_strerror(rc)));
    }
    mosquitto_tls_opts_set(u->mosq_, 1 /* SSL_VERIFY_PEER */, "tlsv1.2", nullptr);
  }
  if (open.will) {
    const auto& w = *open.will;
    mosquitto_will_set(u->mosq_, w.topic.c_str(), static_cast<int>(w.payload.size()),
                       w.payload.data(), w.qos, w.retain);
  }
  mosquitto_connect_callback_set(u->mosq_, &MosquittoUpstream::onConnect);
  mosquitto_disconnect_callback_set(u->mosq_, &MosquittoUpstream::onDisconnect);
  mosquitto_publish_callback_set(u->mosq_, &MosquittoUpstream::onPublish);
  mosquitto_message_callback_set(u->mosq_, &MosquittoUpstream::onMessage);
  const int keepAlive = std::clamp<int>(open.keepAlive == 0 ? 60 : open.keepAlive, 5, 600);
  // Non-blocking connect; the TLS handshake proceeds in loop_read/loop_write.
  const int rc = mosquitto_connect_async(u->mosq_, settings.host.c_str(), settings.port, keepAlive);
  if (rc != MOSQ_ERR_SUCCESS) {
    u->scheduleReconnect(Clock::now());
  }
  u->syncSocket();
  return u;
}

MosquittoUpstream::MosquittoUpstream(io::Reactor& reactor, const UpstreamSettings& settings,
                                     UpstreamObserver& observer)
    : reactor_(reactor), settings_(settings), observer_(observer) {}

MosquittoUpstream::~MosquittoUpstream() {
  release(queuedBytes_);
  if (registeredFd_ >= 0) {
    reactor_.remove(registeredFd_);
  }
  if (mosq_ != nullptr) {
    mosquitto_destroy(mosq_);
  }
}

void MosquittoUpstream::syncSocket() {
  if (parked_) {
    return;
  }
  const int fd = mosquitto_socket(mosq_);
  if (registeredFd_ >= 0 && (fd != registeredFd_ || !reactor_.watching(fd))) {
    // libmosquitto closed it; the kernel has already dropped it from epoll.
    reactor_.forget(registeredFd_);
    registeredFd_ = -1;
  }
  if (fd < 0) {
    return;
  }
  const bool wantWrite = mosquitto_want_write(mosq_);
  const uint32_t events = EPOLLIN | (wantWrite ? EPOLLOUT : 0u);
  if (registeredFd_ < 0) {
    if (!reactor_.add(fd, events, [this](uint32_t ev) { onEvents(ev); })) {
      registeredFd_ = fd;
      wantWrite_ = wantWrite;
    }
    return;
  }
  if (wantWrite != wantWrite_) {
    if (reactor_.modify(fd, events)) {
      // Stale registration (closed and reopened under the same number): register afresh.
      reactor_.forget(fd);
      registeredFd_ = -1;
      if (!reactor_.add(fd, events, [this](uint32_t ev) { onEvents(ev); })) {
        registeredFd_ = fd;
      }
    }
    wantWrite_ = wantWrite;
  }
}

void MosquittoUpstream::onEvents(uint32_t events) {
  int rc = MOSQ_ERR_SUCCESS;
  if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0) {
    rc = mosquitto_loop_read(mosq_, 1);
  }
  if (rc == MOSQ_ERR_SUCCESS && (events & EPOLLOUT) != 0 && mosquitto_socket(mosq_) >= 0) {
    rc = mosquitto_loop_write(mosq_, 1);
  }
  if (!connected_ && mosquitto_socket(mosq_) >= 0 &&
      (rc != MOSQ_ERR_SUCCESS || (events & (EPOLLERR | EPOLLHUP)) != 0)) {
    // A connect that failed in its TLS phase: libmosquitto 2.0.11 neither closes the socket nor
    // calls on_disconnect (loop_read returns net__socket_connect_tls's error as it is), so the
    // socket would stay readable forever. Park it; the next reconnect closes it.
    park();
    scheduleReconnect(Clock::now());
    if (!closeRequested_) {
      observer_.upstreamConnected(false, rc);
    }
    return;
  }
  syncSocket();
}

void MosquittoUpstream::park() {
  if (registeredFd_ >= 0) {
    reactor_.remove(registeredFd_);
    registeredFd_ = -1;
  }
  parked_ = true;
}

void MosquittoUpstream::scheduleReconnect(Clock::time_point now) {
  // 0.5 s, 1 s, 2 s ... capped at 30 s, each ±25 %, so that a broker restart does not see every
  // device come back in the same instant (EN 303 645 5.9-3).
  const double base = std::min(30.0, 0.5 * static_cast<double>(1 << std::min(attempts_, 6)));
  std::uniform_real_distribution<double> jitter(0.75, 1.25);
  reconnectAt_ = now + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(base * jitter(rng_)));
  ++attempts_;
}

void MosquittoUpstream::service(Clock::time_point now) {
  if (closing_) {
    return;
  }
  finishIfDrained();
  if (closing_) {
    return;
  }
  if (reconnectAt_ && now >= *reconnectAt_) {
    reconnectAt_.reset();
    forgetUnwritten(); // libmosquitto drops what QoS 0 it had not written with the old socket
    // reconnect closes the old socket and may open the new one under the same number.
    park();
    parked_ = false;
    if (mosquitto_reconnect_async(mosq_) != MOSQ_ERR_SUCCESS) {
      scheduleReconnect(now);
    }
  } else if (mosquitto_socket(mosq_) >= 0) {
    mosquitto_loop_misc(mosq_);
  }
  syncSocket();
}

void MosquittoUpstream::hold(size_t bytes) {
  queuedBytes_ += bytes;
  if (settings_.budget != nullptr) {
    settings_.budget->used += bytes;
  }
}

void MosquittoUpstream::release(size_t bytes) {
  queuedBytes_ -= bytes;
  if (settings_.budget != nullptr) {
    settings_.budget->used -= bytes;
  }
}

void MosquittoUpstream::forgetUnwritten() {
  for (const auto& [mid, bytes] : unwritten_) {
    release(bytes);
  }
  unwritten_.clear();
}

bool MosquittoUpstream::publish(const upstream::Publish& p) {
  const size_t bytes = p.topic.size() + p.payload.size();
  if (p.qos > 0 && pending_.size() >= settings_.maxQueued) {
    return false;
  }
  if (p.qos == 0 && full()) {
    // The broker is not taking what it has (or all sessions hold their budget). QoS 1/2 stays
    // bounded by its count, and the client is no longer read from (acceptsMore).
    return false;
  }
  if (p.qos == 0 && !connected_) {
    // libmosquitto drops QoS 0 while disconnected; the session has only just been opened (or
    // the broker is coming back), so hold a bounded number until the CONNACK.
    if (waiting_.size() >= settings_.maxQueued) {
      return false;
    }
    waiting_.push_back(p);
    hold(bytes);
    return true;
  }
  int mid = 0;
  // libmosquitto may write a QoS 0 message before mosquitto_publish returns, and say so
  // (on_publish) before we know its mid: onPublish keeps such mids for us.
  publishing_ = true;
  const int rc = mosquitto_publish(mosq_, &mid, p.topic.c_str(), static_cast<int>(p.payload.size()),
                                   p.payload.data(), p.qos, p.retain);
  publishing_ = false;
  const bool writtenAlready =
      std::ranges::find(writtenDuringPublish_, mid) != writtenDuringPublish_.end();
  writtenDuringPublish_.clear();
  // QoS > 0 while disconnected: libmosquitto returns NO_CONN but has queued the message, and
  // sends it after the reconnect (on_publish fires then). Treating it as a failure would
  // duplicate it.
  if (rc != MOSQ_ERR_SUCCESS && !(rc == MOSQ_ERR_NO_CONN && p.qos > 0)) {
    return false;
  }
  if (p.qos > 0) {
    hold(bytes);
    pending_.emplace(mid, Pending{p.token, bytes});
  } else if (!writtenAlready) {
    hold(bytes);
    unwritten_.emplace(mid, bytes);
  }
  syncSocket();
  return true;
}

void MosquittoUpstream::subscribe(const std::string& filter, uint8_t qos) {
  subscriptions_[filter] = qos;
  if (connected_) {
    mosquitto_subscribe(mosq_, nullptr, filter.c_str(), qos);
    syncSocket();
  }
}

void MosquittoUpstream::unsubscribe(const std::string& filter) {
  subscriptions_.erase(filter);
  if (connected_) {
    mosquitto_unsubscribe(mosq_, nullptr, filter.c_str());
    syncSocket();
  }
}

void MosquittoUpstream::close(bool publishWill) {
  if (closeRequested_) {
    return;
  }
  closeRequested_ = true;
  publishWill_ = publishWill;
  finishIfDrained();
}

bool MosquittoUpstream::drained() const {
  return waiting_.empty() && pending_.empty() && !mosquitto_want_write(mosq_);
}

void MosquittoUpstream::finishIfDrained() {
  if (!closeRequested_ || closing_ || !(drained() || !connected_)) {
    return;
  }
  const bool connecting = !connected_ && !parked_ && mosquitto_socket(mosq_) >= 0;
  if (connecting && (!waiting_.empty() || !publishWill_)) {
    // Still connecting: what the client sent goes first, and a clean end must be a DISCONNECT —
    // dropping a connection the broker may already have accepted would publish the will.
    return;
  }
  closing_ = true;
  if (!publishWill_ && connected_) {
    mosquitto_disconnect(mosq_);
    mosquitto_loop_write(mosq_, 1);
  }
  // Without DISCONNECT the broker sees the connection drop and publishes the will.
  park();
}

void MosquittoUpstream::onConnect(mosquitto*, void* self, int rc) noexcept {
  io::guarded("libmosquitto's connect callback", [&] {
    auto* u = static_cast<MosquittoUpstream*>(self);
    u->connected_ = rc == 0;
    if (rc == 0) {
      u->attempts_ = 0;
      for (const auto& [filter, qos] : u->subscriptions_) {
        mosquitto_subscribe(u->mosq_, nullptr, filter.c_str(), qos);
      }
      for (const auto& p : u->waiting_) {
        int mid = 0;
        const size_t bytes = p.topic.size() + p.payload.size();
        if (mosquitto_publish(u->mosq_, &mid, p.topic.c_str(), static_cast<int>(p.payload.size()),
                              p.payload.data(), 0, p.retain) == MOSQ_ERR_SUCCESS) {
          u->unwritten_.emplace(mid, bytes); // still held, now by libmosquitto
        } else {
          u->release(bytes);
        }
      }
      u->waiting_.clear();
    } else {
      u->scheduleReconnect(Clock::now());
    }
    if (!u->closeRequested_) {
      u->observer_.upstreamConnected(rc == 0, rc);
    }
  });
}

void MosquittoUpstream::onDisconnect(mosquitto*, void* self, int rc) noexcept {
  io::guarded("libmosquitto's disconnect callback", [&] {
    auto* u = static_cast<MosquittoUpstream*>(self);
    u->connected_ = false;
    u->forgetUnwritten();
    if (!u->closing_) {
      u->scheduleReconnect(Clock::now());
      if (!u->closeRequested_) {
        u->observer_.upstreamConnected(false, rc);
      }
    }
  });
}

void MosquittoUpstream::onPublish(mosquitto*, void* self, int mid) noexcept {
  io::guarded("libmosquitto's publish callback", [&] {
    auto* u = static_cast<MosquittoUpstream*>(self);
    if (const auto q0 = u->unwritten_.find(mid); q0 != u->unwritten_.end()) {
      u->release(q0->second); // a QoS 0 message, written
      u->unwritten_.erase(q0);
      return;
    }
    const auto it = u->pending_.find(mid);
    if (it == u->pending_.end()) {
      if (u->publishing_) {
        u->writtenDuringPublish_.push_back(mid); // written inside mosquitto_publish
      }
      return;
    }
    const uint64_t token = it->second.token;
    u->release(it->second.bytes);
    u->pending_.erase(it);
    if (!u->closeRequested_) {
      u->observer_.upstreamAcked(token);
    }
  });
}

void MosquittoUpstream::onMessage(mosquitto*, void* self, const mosquitto_message* msg) noexcept {
  io::guarded("libmosquitto's message callback", [&] {
    auto* u = static_cast<MosquittoUpstream*>(self);
    if (u->closeRequested_ || msg == nullptr || msg->topic == nullptr || msg->payloadlen < 0) {
      return;
    }
    u->observer_.upstreamMessage(
        msg->topic,
        std::span(static_cast<const uint8_t*>(msg->payload), static_cast<size_t>(msg->payloadlen)),
        static_cast<uint8_t>(msg->qos), msg->retain);
  });
}

} // namespace iotgw::mqtt
