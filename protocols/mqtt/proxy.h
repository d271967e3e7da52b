// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// One device connection through the MQTT proxy: bytes read from its Stream go into its Session,
// the Effects that come out are carried out (to the device, to its upstream session, as events),
// and what is queued for the device is flushed as its socket takes it. Whoever accepted the
// connection (daemon/mqtt_service) keeps the limits across connections and hears of the
// connection's login and end through ProxyHooks; nothing here knows about other connections.

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "policy/events.h"
#include "protocols/io/reactor.h"
#include "protocols/io/socket.h"
#include "protocols/io/stream.h"
#include "protocols/mqtt/session.h"
#include "protocols/mqtt/upstream.h"

namespace iotgw::mqtt {

// Counted over all connections of a listener.
struct ProxyCounters {
  uint64_t forwarded = 0;           // publishes handed to the upstream session
  uint64_t qos0Dropped = 0;         // QoS 0 publishes a broker that does not read had no room for
  uint64_t upstreamStalls = 0;      // times a device was held back because its broker did not read
  uint64_t stored = 0;              // publishes handed to the device's outbox
  uint64_t storeRefused = 0;        // ... that a full outbox refused
  uint64_t tlsHandshakesFailed = 0; // failed, timed out, or a client that never said a word
};

struct ProxySettings {
  std::string protocol = "mqtt"; // as events name it: "mqtt" or "mqtts"
  // Read at once before the login: no more than a CONNECT may take.
  size_t maxConnectBytes = 8 * 1024;
  // A device that does not read what is delivered to it is cut off past this.
  size_t maxOutput = 4 * 1024 * 1024;
  std::chrono::milliseconds handshakeTimeout{10'000};
  const ByteBudget* budget = nullptr; // all upstreams' together, for the stall event's rule
};

class Proxy;

// What store-and-forward (outbox.h) did with a QoS > 0 message offered to it.
enum class StoreVerdict {
  Forward, // not needed: the upstream takes it
  Stored,  // written; acknowledged through Proxy::stored once durable
  Refused, // the device's outbox is full and its policy keeps what is there
};

// Opens the connection's upstream session (the connection observes it).
using UpstreamFactory = std::function<std::expected<std::unique_ptr<Upstream>, std::string>(
    Proxy& connection, const upstream::Open& open)>;

// What a connection asks of whoever accepted it; one set for all connections of a service.
struct ProxyHooks {
  std::function<void(policy::Event)> emit;
  // The connection's Session, once the stream is ready (the peer's certificate is known).
  std::function<std::unique_ptr<Session>(PeerInfo peer)> newSession;
  UpstreamFactory openUpstream;
  // Runs a password check off the loop; its result comes back through Proxy::passwordChecked.
  std::function<void(Proxy&, PasswordCheck)> checkPassword;
  // Carries out a quarantine the device's policy asks for (closing this connection too); false
  // when nobody can, and the request is only reported (the session closes itself).
  std::function<bool(const policy::DeviceId&, const std::string& rule)> quarantine;
  std::function<void(Proxy&)> handshakeBytes; // bytes arrived during the TLS handshake
  std::function<void(Proxy&)> handshakeEnded; // done, failed or abandoned
  std::function<void(Proxy&)> received;       // after each read: what it holds before login
  std::function<void(Proxy&)> closed;         // closed; the owner destroys it later
  // After each wake-up of a connection, outside every callback: the owner may destroy what has
  // closed, this connection included.
  std::function<void()> settle;
  // Store-and-forward: offered each QoS > 0 message before the upstream, with whether the
  // upstream is down (an attempt failed or the connection was lost, and it has not come back),
  // and what the upstream gave back when it went down. Unset: nothing is stored (the
  // acknowledgement waits for the broker).
  std::function<StoreVerdict(Proxy&, const upstream::Publish&, bool upstreamDown)> store;
  // The device's PUBREL for a QoS 2 message the outbox may hold the flow of: true when it does
  // (the PUBCOMP waits for Proxy::stored with the token); false, or unset: answered at once.
  std::function<bool(Proxy&, uint16_t packetId, uint64_t token)> release;
};

class Proxy final : public UpstreamObserver {
public:
  // `stream` reads and writes `accepted.fd`, which the proxy keeps open until it closes.
  Proxy(io::Reactor& reactor, const ProxySettings& settings, const ProxyHooks& hooks,
        ProxyCounters& counters, uint64_t id, io::Accepted accepted,
        std::unique_ptr<io::Stream> stream);
  ~Proxy() override;

  // Watches the socket; with `handshake`, the stream's handshake comes first. False when the
  // socket cannot be watched: the proxy is dead, no hook has run, and it may be destroyed.
  [[nodiscard]] bool start(bool handshake);
  void onEvents(uint32_t events);
  // Keepalive and connect deadlines, the handshake's timeout, the upstream's timers.
  void tick(Clock::time_point now);
  void passwordChecked(PasswordResult result);
  // The message `token` that ProxyHooks::store took (or the end of the flow ProxyHooks::release
  // took) is durable: the device is told.
  void stored(uint64_t token);
  // Ends the connection: the session ends (its events go out), the upstream delivers what it
  // holds and then disconnects (with the will published when `publishWill`).
  void close(bool publishWill);
  // Erase: closes without delivering what the upstream still queues; how many were dropped.
  size_t forget();
  // Another connection logged in with the same client identifier (MQTT-3.1.4-3): this one is
  // closed (5.0: DISCONNECT "session taken over") and its upstream dropped at once, so that the
  // new one's takes the broker's session over; the broker publishes the will, as it would.
  void takenOver();
  // The upstream of a closed connection, to be serviced until it has delivered everything.
  [[nodiscard]] std::unique_ptr<Upstream> takeUpstream() { return std::move(upstream_); }

  [[nodiscard]] uint64_t id() const { return id_; }
  [[nodiscard]] bool dead() const { return dead_; }
  [[nodiscard]] bool handshaking() const { return handshaking_; }
  [[nodiscard]] const Session* session() const { return session_.get(); }
  [[nodiscard]] const policy::DevicePolicy* device() const {
    return session_ ? session_->device() : nullptr;
  }
  [[nodiscard]] const Upstream* upstream() const { return upstream_.get(); }
  [[nodiscard]] const std::string& source() const { return source_; }
  [[nodiscard]] const std::string& label() const { return label_; }

private:
  void upstreamAcked(uint64_t token) override;
  void upstreamMessage(const Delivery& message) override;
  void upstreamSubscribed(const SubscribeResult& result) override;
  void upstreamUnsubscribed(uint64_t token) override;
  void upstreamConnected(const UpstreamStatus& status) override;

  void startSession();
  void onHandshake();
  void read();
  void resume();
  void pause();
  [[nodiscard]] bool mayRead() const;
  void apply(Effects& e);
  void carryOut(upstream::Command& cmd);
  void flush();
  void arm(uint32_t events);
  void reportStall();

  io::Reactor& reactor_;
  const ProxySettings& settings_;
  const ProxyHooks& hooks_;
  ProxyCounters& counters_;
  uint64_t id_;
  io::UniqueFd fd_;
  policy::IpAddress address_;
  std::string source_; // the peer's address
  std::string label_;  // address and port
  Clock::time_point accepted_;
  std::unique_ptr<io::Stream> stream_;
  std::unique_ptr<Session> session_; // created once the stream is ready
  std::unique_ptr<Upstream> upstream_;
  std::vector<uint8_t> output_;
  bool handshaking_ = false;
  bool closeAfterFlush_ = false;
  bool dead_ = false;
  // Not reading: the upstream is connecting, the broker is not reading, or the session waits
  // (a login being decided, a full window).
  bool paused_ = false;
  bool stallReported_ = false;    // the broker-not-reading event went out for this pause
  bool upstreamDown_ = false;     // the upstream's last attempt failed, or it was lost
  std::vector<uint64_t> refused_; // tokens the outbox could not take, answered after carryOut
  std::vector<uint64_t> unknownReleases_; // PUBRELs the outbox has no flow for, likewise
  uint32_t armed_ = 0;
};

} // namespace iotgw::mqtt
