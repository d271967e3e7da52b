// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The client side of one MQTT 3.1.1 session with the broker, as a state machine: fed with the
// broker's bytes, the device side's publishes, subscriptions and acknowledgements, and the time,
// it says what to write and what happened in a ClientOutput, and does no I/O itself (the link in
// upstream.h carries it over TCP or TLS). Our own rather than libmosquitto's, because a gateway
// must
//   * acknowledge a broker's message only once the device has it (libmosquitto acknowledges
//     before its callback runs, so a persistent session could never redeliver what a device
//     dropped),
//   * bound what the broker can make it hold (libmosquitto allocates whatever remaining length
//     the broker announces, up to 256 MiB: a larger PUBLISH is skipped here, acknowledged and
//     counted, without being buffered),
//   * tell the device "subscribed" only once the broker has said so, and report session-present
//     as the broker does,
//   * never send anything but CONNECT before the CONNACK (brokers call that a protocol error).

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "protocols/mqtt/codec.h"
#include "protocols/mqtt/error.h"
#include "protocols/mqtt/packet.h"

namespace iotgw::mqtt {

using ClientClock = std::chrono::steady_clock;

struct ClientSettings {
  // The largest packet taken from the broker. A PUBLISH past it is read past (never held),
  // acknowledged so that the broker does not send it again, and reported in `skipped`.
  uint32_t maxPacketBytes = 256 * 1024 + 64 * 1024;
  uint16_t maxInflight = 20;           // QoS > 0 messages sent and not yet acknowledged
  size_t maxQueued = 1000;             // QoS > 0 messages held (in flight and waiting) ...
  size_t maxQueuedBytes = 1024 * 1024; // ... and the bytes of everything held, QoS 0 included
  // While an answer is due (a PUBACK, PUBREC, PUBCOMP, SUBACK, UNSUBACK or PINGRESP) and nothing
  // at all has come from the broker for this long, a PINGREQ goes; unanswered for as long
  // again, the connection has failed. A link that died without a FIN or RST (an uplink cut) is
  // found this way within about twice this, however long the keep alive (capped by it).
  std::chrono::seconds answerTimeout{5};
};

struct ClientLogin {
  std::string clientId;
  bool cleanSession = true;
  uint16_t keepAlive = 60;
  std::optional<Will> will;
  std::optional<std::string> username;
  std::optional<std::string> password;
};

// A message from the broker. `id` (QoS > 0: the broker's packet identifier, and in the high 16
// bits the connection it came on) is what Client::acknowledge takes once the device has it.
struct Delivery {
  uint32_t id = 0;
  std::string topic;
  std::vector<uint8_t> payload;
  uint8_t qos = 0;
  bool retain = false;
};

// One message handed to the client; `token` comes back in ClientOutput::acked (QoS > 0).
struct Outgoing {
  uint64_t token = 0;
  std::string topic;
  std::vector<uint8_t> payload;
  uint8_t qos = 0;
  bool retain = false;
  // The packet identifier to send it under (0: the client picks one). A message stored across a
  // restart keeps its identifier, so that the broker's session recognises a QoS 2 message it
  // already has (a DUP, not a second message).
  uint16_t packetId = 0;
  // QoS 2: the broker's PUBREC came on an earlier run; only PUBREL is sent.
  bool released = false;
  // Not the client's business but the device side's (outbox.h): a QoS 2 message's packet
  // identifier from the device (0: none), and whether the device sent it as a resend (DUP).
  uint16_t origin = 0;
  bool originDup = false;
};

struct SubscribeResult {
  uint64_t token = 0;
  std::vector<uint8_t> codes; // per filter: the granted QoS, or 0x80
};

struct ClientOutput {
  std::vector<uint8_t> toBroker;
  std::optional<Connack> connack; // the broker answered the CONNECT
  std::vector<uint64_t> acked;    // tokens the broker acknowledged (PUBACK, or PUBCOMP)
  // QoS 2 tokens whose PUBREC came: the broker has the message. Their PUBRELs are in toBroker; a
  // caller that stores messages makes this durable before writing toBroker.
  std::vector<uint64_t> received;
  std::vector<Delivery> deliveries;
  std::vector<SubscribeResult> subscribed;
  std::vector<uint64_t> unsubscribed;
  std::vector<std::string> skipped; // why messages from the broker were read past
  // The broker broke the protocol or stopped answering: close the connection.
  std::optional<CodecError> failure;
  bool silent = false; // the failure is a broker (or link) that stopped answering
};

class Client {
public:
  enum class State { Offline, AwaitingConnack, Up };

  Client(ClientSettings settings, ClientLogin login);

  // The transport is up: the CONNECT goes out.
  void start(ClientClock::time_point now, ClientOutput& out);
  // Bytes from the broker; every complete packet is taken.
  void received(std::span<const uint8_t> bytes, ClientOutput& out);
  // The transport has gone. Messages in flight are sent again (DUP) after the next CONNACK;
  // QoS 0 ones the caller had not yet written are gone with its buffer.
  void lost();
  // Keepalive: a PINGREQ every keep alive, or sooner when the broker has been silent for
  // answerTimeout while an answer is due; a failure when a PINGREQ is not answered within
  // answerTimeout. Called often while up (the MQTT service ticks every 100 ms).
  void tick(ClientClock::time_point now, ClientOutput& out);
  [[nodiscard]] ClientClock::time_point deadline() const;

  // False when it cannot be held (past maxQueued or maxQueuedBytes).
  [[nodiscard]] bool publish(Outgoing&& message, ClientOutput& out);
  // The answer comes in `subscribed` / `unsubscribed` with the token, once the broker's does;
  // while offline they wait for the connection.
  void subscribe(uint64_t token, std::vector<Subscription> filters, ClientOutput& out);
  void unsubscribe(uint64_t token, std::vector<std::string> filters, ClientOutput& out);
  // The device has the message with this Delivery::id: PUBACK (QoS 1) or PUBREC (QoS 2) to the
  // broker. A QoS 1 message delivered on an earlier connection is not acknowledged on this one
  // (the broker sends it again, or the id is another message's now).
  void acknowledge(uint32_t id, ClientOutput& out);
  // A DISCONNECT, when up: the broker discards the will.
  void disconnect(ClientOutput& out);
  // Gives up the QoS > 0 messages the broker has not acknowledged (in the order they were
  // handed over) and forgets them: someone else delivers them now. A QoS 2 message whose PUBREC
  // came stays (the broker has it; only its PUBREL is left to complete).
  [[nodiscard]] std::vector<Outgoing> takeUnacknowledged();

  [[nodiscard]] State state() const { return state_; }
  [[nodiscard]] bool up() const { return state_ == State::Up; }
  [[nodiscard]] size_t queued() const { return queuedQos_; } // QoS > 0 held
  [[nodiscard]] size_t heldBytes() const { return heldBytes_; }
  [[nodiscard]] bool full() const { return heldBytes_ >= settings_.maxQueuedBytes; }
  // Nothing held for the broker, nothing waiting for its answer.
  [[nodiscard]] bool drained() const {
    return queuedQos_ == 0 && waiting_.empty() && operations_.empty();
  }
  [[nodiscard]] const std::string& clientId() const { return login_.clientId; }

private:
  struct InFlight {
    Outgoing message;
    bool released = false; // QoS 2: PUBREC came, PUBREL sent
    uint64_t order = 0;    // when it was sent first: resent (and given up) in that order
  };
  // A SUBSCRIBE or UNSUBSCRIBE waiting for the broker's answer (sent again after a reconnect).
  struct Operation {
    uint16_t packetId = 0;
    uint64_t token = 0; // 0: our own (subscriptions restored in a new broker session)
    bool subscribe = true;
    std::vector<Subscription> filters; // for UNSUBSCRIBE only the filter is used
  };

  void handle(Packet&& p, ClientOutput& out);
  void onConnack(const Connack& c, ClientOutput& out);
  void onPublish(Publish&& p, ClientOutput& out);
  void onAck(const Ack& a, ClientOutput& out);
  void onSubAck(const SubAck& a, ClientOutput& out);
  // Reads the header of a PUBLISH too large to take and acknowledges it; false: not yet enough
  // bytes.
  [[nodiscard]] bool skipOversized(std::span<const uint8_t> view, uint8_t header, size_t headerSize,
                                   uint32_t remaining, size_t& consumed, ClientOutput& out);
  void send(const Packet& p, ClientOutput& out);
  void sendPublish(uint16_t packetId, const InFlight& f, bool dup, ClientOutput& out);
  void sendWaiting(ClientOutput& out);
  [[nodiscard]] std::vector<uint16_t> inFlightInOrder() const;
  [[nodiscard]] std::chrono::seconds answerTimeout() const;
  [[nodiscard]] bool answerDue() const; // something sent that the broker must answer
  void sendOperation(const Operation& op, ClientOutput& out);
  [[nodiscard]] uint16_t nextPacketId();
  void fail(std::string_view clause, std::string_view what, ClientOutput& out);
  static size_t bytesOf(const Outgoing& m) { return m.topic.size() + m.payload.size(); }

  ClientSettings settings_;
  ClientLogin login_;
  State state_ = State::Offline;
  std::vector<uint8_t> buffer_;
  uint32_t skipping_ = 0;              // bytes still to be read past of an oversized PUBLISH
  ClientClock::time_point lastPing_{}; // a PINGREQ goes every keep alive
  std::optional<ClientClock::time_point> pingSent_;
  uint64_t heard_ = 0;     // reads that brought bytes from the broker
  uint64_t heardSeen_ = 0; // ... as of silentSince_
  ClientClock::time_point silentSince_{};

  // Towards the broker: in flight by packet id, and what waits for room (in order; QoS 0 too).
  std::map<uint16_t, InFlight> inFlight_;
  std::deque<Outgoing> waiting_;
  uint16_t generation_ = 0; // connections so far (the high half of Delivery::id)
  size_t queuedQos_ = 0;
  size_t heldBytes_ = 0;
  uint16_t lastPacketId_ = 0;
  uint64_t sent_ = 0;                            // messages put in flight so far (InFlight::order)
  std::deque<Operation> operations_;             // in the order asked
  std::map<std::string, uint8_t> subscriptions_; // what the broker granted, for a new session

  // From the broker: QoS 1 ids the device has not acknowledged yet (this connection), and QoS 2
  // ids until the broker's PUBREL (value: PUBREC sent).
  std::set<uint16_t> qos1Unacknowledged_;
  std::map<uint16_t, bool> qos2Received_;
};

} // namespace iotgw::mqtt
