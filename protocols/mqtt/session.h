// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The server side of one client's MQTT session: a state machine fed with the client's bytes, the
// upstream's acknowledgements and messages, and the time. It carries out the policy evaluator's
// decisions and says what to do in an Effects value — bytes for the client, commands for the
// upstream session, security events, whether to close — and does no I/O itself, so it is tested
// with scripted bytes and a fake upstream.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "policy/credentials.h"
#include "policy/evaluator.h"
#include "policy/events.h"
#include "policy/policy_set.h"
#include "policy/rate_limit.h"
#include "protocols/mqtt/client.h"
#include "protocols/mqtt/codec.h"
#include "protocols/mqtt/validate.h"

namespace iotgw::mqtt {

using Clock = policy::Clock;

struct SessionSettings {
  uint32_t maxPacketBytes = 256 * 1024;
  // Until the CONNECT is accepted nobody is known: packets (and what waits behind a CONNECT
  // whose password is being checked) may take this much at most.
  uint32_t maxConnectBytes = 8 * 1024;
  std::chrono::milliseconds connectTimeout{10'000};
  uint16_t receiveMaximum = 20; // QoS > 0 messages a client may have unacknowledged
  uint16_t sendMaximum = 20;    // ... and we at most towards it (a 5.0 client may ask fewer)
  uint32_t maxQueuedToClient = 1000;
  uint32_t maxQueuedBytesToClient = 1024 * 1024;
  uint32_t maxSubscriptions = 100;           // distinct filters per session ...
  uint32_t maxSubscriptionBytes = 64 * 1024; // ... and their bytes
  uint32_t maxFiltersPerSubscribe = 32;      // per SUBSCRIBE and per UNSUBSCRIBE
  uint32_t maxTopicBytes = 1024;             // topic names and filters, both directions
  std::string upstreamClientIdPrefix = "iotgw-";
  // Whether a device is quarantined (EN 303 645 5.3-15): its logins are refused, whatever
  // identity it presents. Unset: nothing is.
  std::function<bool(const policy::DeviceId&)> quarantined;
  // Whether one more client of the device may log in with this upstream client id (the device's
  // mqtt.max_clients; a client id already connected takes its own session over and is always
  // admitted). Unset: every one may.
  std::function<bool(const policy::DevicePolicy&, const std::string& upstreamClientId)> admit;
  // SUBSCRIBE and UNSUBSCRIBE waiting for the broker's answer; past it the client is not read.
  uint32_t maxPendingSubscribes = 8;
  // QoS 2 flows outlive the session (the device's outbox keeps them, outbox.h): a PUBREL goes
  // out as upstream::Release and its PUBCOMP waits for upstreamAcked (the flow's end is durable)
  // or upstreamReleaseUnknown. Unset: PUBCOMP at once.
  bool storedFlows = false;
};

// The filters persistent upstream sessions hold at the broker, as far as iotgwd knows (upstream
// client id → filters): a client that reconnects without a clean start finds its subscriptions
// counted again, so that reconnecting cannot grow the broker's session past the bounds. Owned by
// the caller, shared by the sessions it creates.
using SubscriptionMemory = std::map<std::string, std::set<std::string>>;

// Who is on the other end of the connection, as the transport knows it.
struct PeerInfo {
  std::optional<policy::IpAddress> address;
  std::string label;                                   // "192.168.50.10:53122", for events
  std::optional<policy::CertificateFacts> certificate; // verified TLS client certificate
};

// What the session asks of its upstream (the broker side).
namespace upstream {
struct Open {
  std::string clientId; // client_id.h: one device cannot take another's identity
  bool cleanStart = true;
  uint16_t keepAlive = 60;
  std::optional<Will> will;
};
// A message for the broker (client.h); its token is echoed in Session::upstreamAcked for QoS > 0.
using Publish = Outgoing;
// Answered with Session::upstreamSubscribed / upstreamUnsubscribed and the token.
struct Subscribe {
  uint64_t token = 0;
  std::vector<Subscription> filters; // already mapped to the broker's topics
};
struct Unsubscribe {
  uint64_t token = 0;
  std::vector<std::string> filters;
};
// The client's PUBREL for its QoS 2 message `packetId` (SessionSettings::storedFlows): answered
// with Session::upstreamAcked (the flow's end is durable) or upstreamReleaseUnknown, and the token.
struct Release {
  uint64_t token = 0;
  uint16_t packetId = 0;
};
// The device has the message the broker sent (its Delivery::id).
struct Acknowledge {
  uint32_t id = 0;
};
struct Close {
  bool publishWill = false;
};
using Command = std::variant<Open, Publish, Subscribe, Unsubscribe, Acknowledge, Close, Release>;
} // namespace upstream

// A password to check against a hash, off the event loop (PBKDF2 takes ~0.1 s by design). The
// caller answers with Session::passwordChecked; the password is wiped when this is destroyed.
struct PasswordCheck {
  policy::PasswordHash hash;
  std::string password;

  PasswordCheck(policy::PasswordHash h, std::string_view p) : hash(std::move(h)), password(p) {}
  PasswordCheck(const PasswordCheck&) = delete;
  PasswordCheck& operator=(const PasswordCheck&) = delete;
  // A move leaves nothing of the password behind (a short one lives inside the string object).
  PasswordCheck(PasswordCheck&& o) noexcept : hash(std::move(o.hash)), password(o.password) {
    o.wipe();
  }
  PasswordCheck& operator=(PasswordCheck&&) = delete;
  ~PasswordCheck() { wipe(); }

private:
  void wipe() noexcept {
    policy::secureWipe(password.data(), password.size());
    password.clear();
  }
};

enum class PasswordResult { Matched, Mismatched, Busy };

struct Effects {
  std::vector<uint8_t> toClient;
  std::optional<PasswordCheck> passwordCheck; // run it, then call passwordChecked
  std::vector<upstream::Command> upstream;
  std::vector<policy::Event> events;
  bool closeClient = false;          // after writing toClient
  bool quarantineRequested = false;  // the device's policy asked for it (firewall carries it out)
  bool authenticationFailed = false; // count it against the source (AuthThrottle)
};

struct SessionCounters {
  uint64_t packetsIn = 0;
  uint64_t publishesForwarded = 0;
  uint64_t publishesDenied = 0;
  uint64_t deliveries = 0;
  uint64_t deliveriesDenied = 0;
  uint64_t malformed = 0;
  uint64_t dropped = 0;              // deliveries dropped because the client's queue was full
  uint64_t subscriptionsRefused = 0; // filters past the subscription limits
  uint64_t storeRefused = 0;         // publishes a full outbox could not take
};

class Session {
public:
  // Authenticating: the CONNECT waits for its password check; Opening: a persistent session's
  // CONNACK waits for the broker's (session-present is the broker's to say). What the client
  // sends meanwhile waits unread (bounded by maxConnectBytes).
  enum class State { AwaitingConnect, Authenticating, Opening, Connected, Closed };

  Session(SessionSettings settings, std::shared_ptr<const policy::PolicySet> policies,
          std::shared_ptr<const policy::DefaultCredentials> defaults,
          policy::AuthThrottle& throttle, PeerInfo peer, Clock::time_point now,
          SubscriptionMemory* subscriptionMemory = nullptr);

  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Bytes read from the client. Consumes every complete packet; keeps a partial one.
  void receive(std::span<const uint8_t> bytes, Clock::time_point now, Effects& out);
  // The broker acknowledged the forwarded message `token` (PUBACK, or PUBCOMP for QoS 2), or the
  // outbox made it (or the end of the flow an upstream::Release names) durable.
  void upstreamAcked(uint64_t token, Effects& out);
  // Nobody keeps the flow an upstream::Release names: PUBCOMP says what the session knows of it.
  void upstreamReleaseUnknown(uint64_t token, Effects& out);
  // The message `token` could not be taken (the device's outbox is full): a 5.0 client hears
  // "quota exceeded" (and may send it again later); a 3.1/3.1.1 client hears nothing, keeps the
  // message and sends it again when it reconnects (its window stays taken until then).
  void upstreamRefused(uint64_t token, Effects& out);
  // A message from the broker for this client; acknowledged upstream (Acknowledge) once the
  // client has it, or at once when it is not for the client.
  void deliver(const Delivery& message, Effects& out);
  // The broker's answers to the SUBSCRIBE / UNSUBSCRIBE with this token.
  void upstreamSubscribed(const SubscribeResult& result, Effects& out);
  void upstreamUnsubscribed(uint64_t token, Effects& out);
  // How the upstream session's attempt went: answers a persistent session's CONNACK; a broker
  // that refuses the login (`refused`) ends a session that is up, so that the client is not left
  // waiting for what can never be delivered.
  void upstreamStatus(bool up, bool sessionPresent, Clock::time_point now, Effects& out,
                      bool refused = false);
  // The outcome of the Effects::passwordCheck this session asked for (Busy: it could not be run).
  void passwordChecked(PasswordResult result, Clock::time_point now, Effects& out);
  // Keepalive and connect timeouts.
  void tick(Clock::time_point now, Effects& out);
  // The connection went away (reset, EOF): the will is published unless DISCONNECT said otherwise.
  void connectionLost(Effects& out);

  [[nodiscard]] State state() const { return state_; }
  // Whether the CONNECT has been accepted (until then the client is nobody).
  [[nodiscard]] bool authenticated() const { return state_ == State::Connected; }
  // Whether the client should be read from: not while its login is being decided, not while a
  // 3.1/3.1.1 client has as many QoS 1/2 messages in flight as we take (it is slowed down, not
  // disconnected: only 5.0 clients were told a Receive Maximum), not while too many SUBSCRIBEs
  // wait for the broker.
  [[nodiscard]] bool wantsInput() const;
  // The client identifier of the upstream session (client_id.h), once logged in.
  [[nodiscard]] const std::string& upstreamClientId() const { return upstreamClientId_; }
  // Bytes of partial packets held for the client.
  [[nodiscard]] size_t bufferedBytes() const { return buffer_.size(); }
  // The device a login in progress names (before the CONNECT is accepted), or nullptr.
  [[nodiscard]] const policy::DevicePolicy* pendingDevice() const {
    return pendingConnect_ ? pendingDecision_.device : nullptr;
  }
  [[nodiscard]] const policy::DevicePolicy* device() const { return device_; }
  [[nodiscard]] const SessionCounters& counters() const { return counters_; }
  [[nodiscard]] std::optional<Version> version() const { return version_; }
  // When tick() next needs to run.
  [[nodiscard]] Clock::time_point deadline() const;

private:
  void handle(Packet&& p, Clock::time_point now, Effects& out);
  void onConnect(Connect&& c, Clock::time_point now, Effects& out);
  [[nodiscard]] policy::ConnectFacts connectFacts(const Connect& c) const;
  void finishConnect(const policy::ConnectDecision& cd, Clock::time_point now, Effects& out);
  void acceptConnect(Clock::time_point now, Effects& out);
  void sendConnack(bool sessionPresent, Effects& out);
  [[nodiscard]] bool windowFull() const;
  void dropPendingConnect(); // wipes its password
  [[nodiscard]] bool lockedOut(const Connect& c, Clock::time_point now) const;
  void tooMuchBeforeLogin(Effects& out);
  void rememberSubscriptions();
  void onPublish(Publish&& p, Clock::time_point now, Effects& out);
  void onAck(const Ack& a, Effects& out);
  // A PUBCOMP's reason code: 5.0 says when the packet identifier was not known.
  [[nodiscard]] uint8_t pubcompCode(bool known) const;
  void onSubscribe(const Subscribe& s, Effects& out);
  void onUnsubscribe(const Unsubscribe& u, Effects& out);
  void protocolViolation(const CodecError& e, Effects& out);
  void refuseConnect(uint8_t v5Code, uint8_t v311Code, Effects& out);
  // A refused login with its event (action "refuse"); the pending CONNECT and its password go.
  void refuseLogin(policy::EventType type, std::string_view device, std::string_view provision,
                   std::string_view rule, std::string message, uint8_t v5Code, uint8_t v311Code,
                   Effects& out);
  void violation(const policy::Decision& d, Effects& out);
  [[nodiscard]] policy::Decision topicLength(std::string_view topic) const;
  void send(const Packet& p, Effects& out) const;
  void close(bool publishWill, Effects& out);
  void sendQueued(Effects& out);
  [[nodiscard]] uint16_t nextPacketId();
  [[nodiscard]] std::string deviceName() const;
  [[nodiscard]] std::string toUpstream(const std::string& topic) const {
    return upstreamPrefix_ + topic;
  }

  SessionSettings settings_;
  std::shared_ptr<const policy::PolicySet> policies_; // the snapshot this session started with
  std::shared_ptr<const policy::DefaultCredentials> defaults_;
  policy::AuthThrottle& throttle_;
  PeerInfo peer_;
  State state_ = State::AwaitingConnect;
  std::optional<Version> version_;
  const policy::DevicePolicy* device_ = nullptr;
  std::string clientId_;
  std::string upstreamClientId_;
  bool cleanStart_ = true;
  std::string username_; // verified with the password; empty for certificate and address logins
  // The CONNECT whose password is being checked, and what evaluateConnect said before the check.
  std::optional<Connect> pendingConnect_;
  policy::ConnectDecision pendingDecision_;
  std::string upstreamPrefix_; // the policy's upstream_prefix with %d substituted
  uint16_t keepAlive_ = 0;
  uint16_t clientReceiveMaximum_ = 20;
  uint32_t clientMaximumPacket_ = 256 * 1024; // what the client accepts (5.0: it says)
  Clock::time_point connectDeadline_;
  Clock::time_point lastPacket_;
  std::vector<uint8_t> buffer_;
  policy::MessageRateLimiter rate_;
  bool willSuppressed_ = false;

  // Client → broker, QoS > 0, awaiting the broker's acknowledgement: token → client packet.
  struct Inbound {
    uint16_t packetId;
    uint8_t qos;
  };
  std::map<uint64_t, Inbound> awaitingBroker_;
  uint64_t nextToken_ = 1;
  // QoS 2 packet ids taken from the client, until its PUBREL (exactly once); the value says
  // whether the message counts against Receive Maximum (it was forwarded).
  std::map<uint16_t, bool> qos2Received_;
  // PUBRELs whose PUBCOMP waits (upstream::Release): packet id → whether the session knew it.
  // Their tokens are the packet id with kReleaseToken set, apart from every publish's.
  static constexpr uint64_t kReleaseToken = uint64_t{1} << 63;
  std::map<uint16_t, bool> releasing_;
  size_t unacknowledgedFromClient_ = 0;

  // Broker → client, QoS > 0, awaiting the client's PUBACK / PUBREC / PUBCOMP; `upstream` is
  // the broker's packet id, acknowledged once the client has the message (0: already done).
  struct Outbound {
    uint8_t qos;
    bool released = false; // PUBREL sent
    uint32_t upstream = 0;
  };
  std::map<uint16_t, Outbound> awaitingClient_;
  struct Queued {
    Publish publish;
    uint32_t upstream;
  };
  std::vector<Queued> queuedToClient_;
  // SUBSCRIBE / UNSUBSCRIBE forwarded, by token: the client's packet and the reason codes
  // decided here; `forwarded` are the positions the broker's answer fills in.
  struct PendingAck {
    bool subscribe = true;
    uint16_t packetId = 0;
    std::vector<uint8_t> codes;
    std::vector<size_t> forwarded;
    std::vector<uint8_t> policyQos;   // granted by the policy, per forwarded filter
    std::vector<std::string> filters; // the client's own names of the forwarded filters
    std::vector<bool> wasHeld;        // ... and whether the session held each one already
  };
  std::map<uint64_t, PendingAck> pendingAcks_;
  uint64_t nextOperation_ = 1;
  size_t queuedBytes_ = 0;
  std::set<std::string> subscriptions_; // the client's filters (its own topic names)
  size_t subscriptionBytes_ = 0;
  SubscriptionMemory* subscriptionMemory_;
  bool persistent_ = false; // the upstream session outlives this connection (no clean start)
  uint16_t lastPacketId_ = 0;

  SessionCounters counters_;
};

} // namespace iotgw::mqtt
