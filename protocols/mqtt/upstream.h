// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// One client's session re-originated to the real broker with libmosquitto over mutual TLS,
// driven from the daemon's reactor: mosquitto_socket / loop_read / loop_write / loop_misc, and
// our own reconnect with jittered exponential backoff (libmosquitto's threaded loop dies with
// TLS when the broker goes away; see shared notes).

#include <chrono>
#include <cstdint>
#include <expected>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "protocols/io/reactor.h"
#include "protocols/mqtt/session.h"
#include "protocols/mqtt/upstream_tls.h"

struct mosquitto;
struct mosquitto_message;

namespace iotgw::mqtt {

// Bytes all upstream sessions together may hold for the broker (messages handed to libmosquitto
// and not yet written, or not yet acknowledged). Shared by the upstreams; loop thread only.
struct ByteBudget {
  size_t limit = 64 * 1024 * 1024;
  size_t used = 0;
  [[nodiscard]] bool exhausted() const { return used >= limit; }
};

struct UpstreamSettings {
  std::string host;
  uint16_t port = 8883;
  std::string caFile;
  std::string certificate;
  std::string privateKey;
  size_t maxQueued = 1000; // QoS > 0 messages waiting for the broker
  // Bytes this session may hold for a broker that does not take them (libmosquitto queues
  // QoS 0 without limit): past it QoS 0 is refused and the client is no longer read.
  size_t maxQueuedBytes = 1024 * 1024;
  ByteBudget* budget = nullptr; // all sessions together; none: only the session's own bound
  SslContext sslContext;        // shared client context; when null, libmosquitto builds its own
};

class UpstreamObserver {
public:
  virtual ~UpstreamObserver() = default;
  virtual void upstreamAcked(uint64_t token) = 0;
  virtual void upstreamMessage(const std::string& topic, std::span<const uint8_t> payload,
                               uint8_t qos, bool retain) = 0;
  virtual void upstreamConnected(bool connected, int code) = 0;
};

// Call once per process before creating upstreams.
void initialiseMosquitto();

// An upstream session as a device connection uses it: MosquittoUpstream below, or a test's.
class Upstream {
public:
  Upstream() = default;
  Upstream(const Upstream&) = delete;
  Upstream& operator=(const Upstream&) = delete;
  virtual ~Upstream() = default;

  // False when the message cannot be taken (queue full — in messages or bytes —, or QoS 0 while
  // disconnected past what is held for the CONNACK).
  virtual bool publish(const upstream::Publish& p) = 0;
  virtual void subscribe(const std::string& filter, uint8_t qos) = 0;
  virtual void unsubscribe(const std::string& filter) = 0;
  // Ends the session once what the client sent has reached the broker: then with a DISCONNECT
  // (the broker discards the will), or by closing the connection (the broker publishes the
  // will). The observer hears nothing more after this call.
  virtual void close(bool publishWill) = 0;
  // Closed, and nothing left to send: the object may be destroyed.
  [[nodiscard]] virtual bool finished() const = 0;

  // Keepalive, reconnect timer, write interest. Call a few times a second.
  virtual void service(Clock::time_point now) = 0;

  [[nodiscard]] virtual bool connected() const = 0;
  [[nodiscard]] virtual size_t queued() const = 0;
  // Whether the client should be read from: not while a session that is still connecting has
  // a quarter of its queue filled (TCP then holds the client back instead of us dropping QoS 0).
  // Not either while the bytes it holds are at their bound (the broker is not reading), or all
  // sessions' together are.
  [[nodiscard]] virtual bool acceptsMore() const = 0;
  // Connected, and holding as many bytes as it may: the broker is not reading.
  [[nodiscard]] virtual bool stalled() const = 0;
};

class MosquittoUpstream final : public Upstream {
public:
  [[nodiscard]] static std::expected<std::unique_ptr<MosquittoUpstream>, std::string>
  create(io::Reactor& reactor, const UpstreamSettings& settings, const upstream::Open& open,
         UpstreamObserver& observer);

  ~MosquittoUpstream() override;

  bool publish(const upstream::Publish& p) override;
  void subscribe(const std::string& filter, uint8_t qos) override;
  void unsubscribe(const std::string& filter) override;
  void close(bool publishWill) override;
  [[nodiscard]] bool finished() const override { return closing_; }
  void service(Clock::time_point now) override;
  [[nodiscard]] bool connected() const override { return connected_; }
  [[nodiscard]] size_t queued() const override { return pending_.size() + waiting_.size(); }
  [[nodiscard]] bool acceptsMore() const override {
    return (connected_ || queued() < settings_.maxQueued / 4) && !full();
  }
  [[nodiscard]] bool stalled() const override { return connected_ && full(); }

private:
  MosquittoUpstream(io::Reactor& reactor, const UpstreamSettings& settings,
                    UpstreamObserver& observer);

  static void onConnect(mosquitto* m, void* self, int rc) noexcept;
  static void onDisconnect(mosquitto* m, void* self, int rc) noexcept;
  static void onPublish(mosquitto* m, void* self, int mid) noexcept;
  static void onMessage(mosquitto* m, void* self, const mosquitto_message* msg) noexcept;

  void onEvents(uint32_t events);
  void syncSocket();
  void park();
  [[nodiscard]] bool drained() const;
  void finishIfDrained();
  void scheduleReconnect(Clock::time_point now);
  [[nodiscard]] bool full() const {
    return queuedBytes_ >= settings_.maxQueuedBytes ||
           (settings_.budget != nullptr && settings_.budget->exhausted());
  }
  void hold(size_t bytes);
  void release(size_t bytes);
  // QoS 0 messages libmosquitto had not written when the connection went: it drops them.
  void forgetUnwritten();

  io::Reactor& reactor_;
  UpstreamSettings settings_;
  UpstreamObserver& observer_;
  mosquitto* mosq_ = nullptr;
  int registeredFd_ = -1;
  bool wantWrite_ = false;
  bool connected_ = false;
  bool closing_ = false;        // finished: nothing more will be sent
  bool closeRequested_ = false; // the client is gone; drain, then finish
  bool publishWill_ = false;
  bool parked_ = false; // socket not watched until the next reconnect
  int attempts_ = 0;
  std::optional<Clock::time_point> reconnectAt_;
  struct Pending {
    uint64_t token;
    size_t bytes;
  };
  std::map<int, Pending> pending_;        // mid → a QoS > 0 publish
  std::map<int, size_t> unwritten_;       // mid → bytes of a QoS 0 publish
  bool publishing_ = false;               // inside mosquitto_publish
  std::vector<int> writtenDuringPublish_; // mids libmosquitto wrote meanwhile
  size_t queuedBytes_ = 0;
  std::vector<upstream::Publish> waiting_;       // QoS 0 held until connected
  std::map<std::string, uint8_t> subscriptions_; // re-subscribed after each reconnect
  std::mt19937 rng_{std::random_device{}()};
};

} // namespace iotgw::mqtt
