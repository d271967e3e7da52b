// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// One client's session re-originated to the real broker: our own MQTT client (client.h) over a
// non-blocking TCP connection, with TLS (OpenSSL, the shared client context) unless the broker
// is on this host's loopback, driven from the daemon's reactor, with our own reconnect
// (jittered exponential backoff).

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "policy/events.h"
#include "protocols/io/reactor.h"
#include "protocols/io/socket.h"
#include "protocols/io/stream.h"
#include "protocols/mqtt/client.h"
#include "protocols/mqtt/session.h"
#include "protocols/mqtt/upstream_tls.h"

namespace iotgw::mqtt {

// Bytes all upstream sessions together may hold for the broker (messages not yet written, or not
// yet acknowledged). Shared by the upstreams; loop thread only.
struct ByteBudget {
  size_t limit = 64 * 1024 * 1024;
  size_t used = 0;
  [[nodiscard]] bool exhausted() const { return used >= limit; }
};

// Reconnects of all upstream sessions together, as a token bucket (`rate` a second, a second's
// worth at once): after an outage they come back spread out, not all in the same instant
// (EN 303 645 5.9-3). Loop thread only.
class ReconnectPacer {
public:
  explicit ReconnectPacer(double rate) : rate_(rate), tokens_(rate) {}
  // Whether one more may reconnect now; if not, retry after wait().
  [[nodiscard]] bool take(Clock::time_point now);
  [[nodiscard]] Clock::duration wait() const;
  [[nodiscard]] uint64_t deferred() const { return deferred_; }

private:
  double rate_;
  double tokens_;
  Clock::time_point last_{};
  uint64_t deferred_ = 0;
};

struct UpstreamSettings {
  std::string host;
  uint16_t port = 8883;
  size_t maxQueued = 1000; // QoS > 0 messages waiting for the broker
  // Bytes this session may hold for a broker that does not take them: past it QoS 0 is refused
  // and the client is no longer read.
  size_t maxQueuedBytes = 1024 * 1024;
  // The largest packet taken from the broker; larger messages are read past and counted.
  uint32_t maxPacketBytes = 256 * 1024 + 64 * 1024;
  ByteBudget* budget = nullptr;    // all sessions together; none: only the session's own bound
  ReconnectPacer* pacer = nullptr; // reconnects of all sessions together; none: unpaced
  SslContext sslContext;           // the client context; null: plaintext (a loopback broker only)
  std::optional<std::string> username; // what the broker's password_file knows
  std::optional<std::string> password;
  // What the broker did that the operator should hear of: a refused login, a protocol error, a
  // message read past. None: not reported.
  std::function<void(policy::Event)> emit;
  std::chrono::milliseconds attemptTimeout{10'000}; // TCP, TLS and CONNACK together
};

// How the broker answered, or that it could not be reached.
struct UpstreamStatus {
  bool up = false;
  bool sessionPresent = false; // with up: the broker had the session (clean session 0)
  bool refused = false;        // the broker answered the CONNECT with `code`
  uint8_t code = 0;
};

class UpstreamObserver {
public:
  virtual ~UpstreamObserver() = default;
  virtual void upstreamAcked(uint64_t token) = 0;
  // QoS 2 messages whose PUBREC came (the broker has them); their PUBRELs are written after
  // this returns, so that an observer that stores messages can make that durable first.
  virtual void upstreamReceived(const std::vector<uint64_t>& /*tokens*/) {}
  // A message for the device; acknowledge it with Upstream::acknowledge(id) once the device
  // has it (QoS > 0).
  virtual void upstreamMessage(const Delivery& message) = 0;
  virtual void upstreamSubscribed(const SubscribeResult&) {}
  virtual void upstreamUnsubscribed(uint64_t) {}
  // After each attempt: up (with the broker's session-present), refused, or unreachable.
  virtual void upstreamConnected(const UpstreamStatus& status) = 0;
};

// An upstream session as a device connection uses it: BrokerLink below, or a test's.
class Upstream {
public:
  Upstream() = default;
  Upstream(const Upstream&) = delete;
  Upstream& operator=(const Upstream&) = delete;
  virtual ~Upstream() = default;

  // False when the message cannot be taken (queue full — in messages or bytes —, or QoS 0 while
  // disconnected past what is held for the CONNACK).
  virtual bool publish(const upstream::Publish& p) = 0;
  // Answered through upstreamSubscribed / upstreamUnsubscribed with the token.
  virtual void subscribe(uint64_t token, std::vector<Subscription> filters) = 0;
  virtual void unsubscribe(uint64_t token, std::vector<std::string> filters) = 0;
  // The device has the message the broker sent (Delivery::id).
  virtual void acknowledge(uint32_t id) = 0;
  // Ends the session once what the client sent has reached the broker: then with a DISCONNECT
  // (the broker discards the will), or by closing the connection (the broker publishes the
  // will). The observer hears nothing more after this call.
  virtual void close(bool publishWill) = 0;
  // Closed, and nothing left to send: the object may be destroyed.
  [[nodiscard]] virtual bool finished() const = 0;
  // While not connected: gives up the QoS > 0 messages the broker has not acknowledged
  // (Client::takeUnacknowledged), in order, for someone else to deliver.
  [[nodiscard]] virtual std::vector<Outgoing> takeUnacknowledged() { return {}; }

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

class BrokerLink final : public Upstream {
public:
  [[nodiscard]] static std::expected<std::unique_ptr<BrokerLink>, std::string>
  create(io::Reactor& reactor, const UpstreamSettings& settings, const upstream::Open& open,
         UpstreamObserver& observer);

  ~BrokerLink() override;

  bool publish(const upstream::Publish& p) override;
  void subscribe(uint64_t token, std::vector<Subscription> filters) override;
  void unsubscribe(uint64_t token, std::vector<std::string> filters) override;
  void acknowledge(uint32_t id) override;
  void close(bool publishWill) override;
  [[nodiscard]] bool finished() const override { return phase_ == Phase::Finished; }
  [[nodiscard]] std::vector<Outgoing> takeUnacknowledged() override;
  void service(Clock::time_point now) override;
  [[nodiscard]] bool connected() const override { return client_.up(); }
  [[nodiscard]] size_t queued() const override { return client_.queued(); }
  [[nodiscard]] bool acceptsMore() const override {
    return (connected() || queued() < settings_.maxQueued / 4) && !full();
  }
  [[nodiscard]] bool stalled() const override { return connected() && full(); }

private:
  // Waiting: for the next attempt. Connecting: TCP. Handshaking: TLS. Session: MQTT (the
  // client waits for CONNACK, or is up).
  enum class Phase { Waiting, Connecting, Handshaking, Session, Finished };

  BrokerLink(io::Reactor& reactor, const UpstreamSettings& settings, const upstream::Open& open,
             UpstreamObserver& observer);

  void connect(Clock::time_point now);
  // TCP to the chosen address failed with `err`: the next address, or the backoff.
  void unreachable(int err);
  void onEvents(uint32_t events);
  void handshake();
  void readBroker();
  void flush();
  void arm();
  // Carries out what the client said; false when the connection was dropped.
  bool process(ClientOutput& out);
  // The connection is gone (or given up): everything unwritten goes, the client goes offline,
  // the observer hears `status`. `report`: an attempt failed (said once per outage).
  void drop(const std::string& why, bool report, UpstreamStatus status = {});
  void scheduleReconnect(Clock::time_point now);
  void finishIfDrained();
  void finish();
  void account();
  void report(const std::string& rule, const std::string& message);
  [[nodiscard]] bool full() const {
    return full_ || (settings_.budget != nullptr && settings_.budget->exhausted());
  }

  io::Reactor& reactor_;
  UpstreamSettings settings_;
  UpstreamObserver& observer_;
  Client client_;
  Phase phase_ = Phase::Waiting;
  io::UniqueFd fd_;
  std::unique_ptr<io::Stream> stream_;
  std::vector<uint8_t> output_; // bytes for the broker not yet written
  uint32_t armed_ = 0;
  Clock::time_point attemptDeadline_{};
  Clock::time_point reconnectAt_{};
  int attempts_ = 0;
  size_t addresses_ = 1;        // what the host name resolved to, last time
  size_t addressTurn_ = 0;      // which of them the next attempt takes
  bool closeRequested_ = false; // the client is gone; drain, then finish
  bool creating_ = false;       // inside create(): the observer does not hold the link yet
  bool publishWill_ = false;
  size_t held_ = 0; // what this link counts against the budget
  // At its bound, until half of it has been taken by the broker (so that a broker that reads a
  // little at a time does not wake the device for every few kilobytes).
  bool full_ = false;
  std::mt19937 rng_{std::random_device{}()};
};

} // namespace iotgw::mqtt
