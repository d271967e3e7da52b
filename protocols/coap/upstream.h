// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The proxy as a CoAP client of one legacy device (RFC 7252 over plain UDP): the requests it
// forwards, their retransmissions, block-wise bodies both ways (RFC 7959) and observe
// relationships (RFC 7641). Datagrams in, datagrams and events out; the time and the random bytes
// are given, so it runs without sockets or a clock (tests/unit/coap_upstream_test.cc).
//
// What it promises the proxy:
// * Every request has a deadline (the client's guard). By then it is answered or failed, and
//   nothing of it is sent at or after the deadline: a request that waits for its turn (NSTART,
//   RFC 7252 §4.7) past its deadline is never sent at all, and a retransmission or the next
//   block of a request that has failed is never sent. A client told 5.04 is never followed by
//   the device executing the request later.
// * An answer body never grows beyond `maxBodyBytes`: a Size2 beyond it fails the exchange at the
//   first block, and so does the block that would take the body past it. Nothing more is asked
//   of the device then. A notification is relayed only whole in one datagram; the rest of a
//   larger one is never fetched, and one whose Size2 is beyond the limit ends its relationship.
// * Tokens are 8 random bytes for every datagram (RFC 9175 §4.2: a neighbour spoofing the device
//   cannot guess which answer is awaited); anything that matches no exchange or relationship is
//   reset (or ignored, for acknowledgements), never taken as an answer.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "protocols/coap/message.h"

namespace iotgw::coap {

using UpstreamClock = std::chrono::steady_clock;

struct OwnedOption {
  uint16_t number = 0;
  Bytes value;
  bool operator==(const OwnedOption&) const = default;
};

// Bytes of bodies the proxy holds at once, shared by the clients of every device (and charged by
// the proxy for the bodies it holds itself).
struct BodyBudget {
  size_t used = 0;
  size_t limit = SIZE_MAX;
};

struct UpstreamSettings {
  // The first retransmission of a confirmable datagram comes after this times a random factor
  // of 1 to 1.5, each further one after twice the time before (RFC 7252 §4.2), at most
  // `maxRetransmit` times and never at or after the request's deadline.
  std::chrono::milliseconds ackTimeout{1000};
  unsigned maxRetransmit = 4;
  // Confirmable requests awaiting their acknowledgement at once (RFC 7252 §4.7); the others wait
  // in order, at most `maxQueued` of them.
  size_t nstart = 1;
  size_t maxQueued = 64;
  // A body collected from the device's block-wise answer (RFC 7959 §2.4).
  size_t maxBodyBytes = 64 * 1024;
  // Request bodies larger than one block of this size go block-wise (Block1).
  uint8_t blockSzx = 6;
  // Charged with every block of an answer while it is collected; an answer that finds no room
  // fails (NoRoom). Null: unbounded but for maxBodyBytes.
  BodyBudget* budget = nullptr;
};

// A request for the device. `options` are the ones to send, in ascending number order, without
// Observe, Block1, Block2 and Size1 (the client sets those itself).
struct UpstreamRequest {
  uint8_t method = codes::kGet;
  std::vector<OwnedOption> options;
  Bytes body;
  bool observe = false; // register an observation (Observe = 0; GET only)
  UpstreamClock::time_point deadline;
};

// What the device answered: its code, its options but Observe, Block1, Block2, Size1 and Size2,
// and the whole body.
struct UpstreamAnswer {
  uint8_t code = 0;
  std::vector<OwnedOption> options;
  Bytes body;
  bool observing = false; // a 2.xx answer to a registration that carries Observe
};

enum class UpstreamFailure : uint8_t {
  Timeout,     // nothing by the deadline, or no acknowledgement after every retransmission
  Unreachable, // the network said nobody listens there (ICMP)
  Reset,       // the device reset the request
  TooLarge,    // the answer's body, or its announced Size2, exceeds maxBodyBytes
  BadBlock,    // blocks out of order, a body that changed while it was fetched, a stray 2.31
  NoRoom,      // the shared BodyBudget has no room for the next block
};

[[nodiscard]] std::string_view describe(UpstreamFailure f) noexcept;

struct UpstreamEvent {
  enum class Kind : uint8_t {
    Answered, // an exchange is done: `answer`; when answer.observing, its relationship lives on
    Failed,   // an exchange failed: `failure`, `reason`
    Notified, // a relationship's notification: `answer`; `ended` when it was the last one
    Dropped,  // a notification that cannot be relayed (`reason`); the relationship stays
    Ended,    // a relationship ended by the device or its limits: `failure`, `reason`
  };
  Kind kind = Kind::Answered;
  uint64_t id = 0;
  UpstreamAnswer answer;
  UpstreamFailure failure = UpstreamFailure::Timeout;
  bool ended = false;
  std::string reason;
};

struct UpstreamOutput {
  std::vector<Bytes> datagrams; // to the device, in order
  std::vector<UpstreamEvent> events;
};

class Upstream {
public:
  using Clock = UpstreamClock;
  using Random = std::function<void(std::span<uint8_t>)>;

  Upstream(UpstreamSettings settings, Random random);

  // Starts exchange `id` (the caller's, unique among its exchanges and relationships while they
  // live). False, with nothing sent, when `maxQueued` requests wait already.
  [[nodiscard]] bool send(uint64_t id, UpstreamRequest request, Clock::time_point now,
                          UpstreamOutput& out);

  enum class Received : uint8_t {
    Handled,    // part of an exchange or a relationship
    Malformed,  // no CoAP message (RFC 7252 §3): dropped
    Unexpected, // matched nothing (a late answer, a stray request): reset or ignored
  };
  Received receive(View datagram, Clock::time_point now, UpstreamOutput& out);

  // Deadlines and retransmissions due by `now`.
  void expire(Clock::time_point now, UpstreamOutput& out);
  // Every exchange that was sent fails, and every relationship ends (the network reported that
  // nothing listens at the device's address and port).
  void unreachable(Clock::time_point now, UpstreamOutput& out);
  // Ends exchange or relationship `id` without an event: nothing more is sent for it, and what
  // the device sends for it later is reset.
  void cancel(uint64_t id, Clock::time_point now, UpstreamOutput& out);

  [[nodiscard]] std::optional<Clock::time_point> nextWake() const;
  [[nodiscard]] size_t exchanges() const noexcept { return exchanges_.size(); }
  [[nodiscard]] size_t relations() const noexcept { return relations_.size(); }
  [[nodiscard]] bool idle() const noexcept { return exchanges_.empty() && relations_.empty(); }

private:
  using Token = uint64_t;
  enum class Phase : uint8_t { Queued, AwaitingAck, AwaitingResponse };

  struct Exchange {
    uint64_t id = 0;
    UpstreamRequest request;
    Phase phase = Phase::Queued;
    // The datagram on the wire: its message id and token, for retransmissions and matching.
    Bytes datagram;
    uint16_t mid = 0;
    Token token = 0;
    Token registration = 0; // the first datagram's token: an observation's notifications use it
    unsigned retransmits = 0;
    Clock::duration timeout{};
    Clock::time_point nextSend;
    Clock::time_point wake; // its entry in wakes_
    // Block1: whether the body goes block-wise, the offset of the block in flight, its size.
    bool upload = false;
    size_t sentOffset = 0;
    uint8_t szx1 = 6;
    // Block2: the answer so far.
    bool collecting = false;
    uint8_t szx2 = 6;
    std::optional<Bytes> etag;
    UpstreamAnswer answer;
    size_t charged = 0; // of the budget: the answer's body collected so far
  };
  struct Relation {
    uint64_t id = 0;
    std::optional<uint32_t> lastObserve;
    Clock::time_point lastAt;
  };
  // A confirmable message from the device that was answered (acknowledged or reset), so that a
  // repeat of it (the answer was lost) gets the same answer and is not handled twice.
  struct Seen {
    uint16_t mid = 0;
    Bytes reply;
  };

  Token newToken();
  void start(Exchange& ex, Clock::time_point now, UpstreamOutput& out);
  void transmit(Exchange& ex, Message m, Clock::time_point now, UpstreamOutput& out);
  void sendBlock1(Exchange& ex, Clock::time_point now, UpstreamOutput& out);
  void sendBlock2(Exchange& ex, uint32_t number, Clock::time_point now, UpstreamOutput& out);
  void onResponse(Exchange& ex, const Message& m, Clock::time_point now, UpstreamOutput& out);
  // A response or notification on a relationship; the reply to a confirmable one is in `reply`.
  void onNotification(Relation& rel, const Message& m, Clock::time_point now, UpstreamOutput& out,
                      bool& reset);
  void fail(uint64_t id, UpstreamFailure f, std::string reason, UpstreamOutput& out);
  void finish(uint64_t id, UpstreamOutput& out);
  // Removes an exchange from every index (its event is the caller's).
  void drop(std::map<uint64_t, Exchange>::iterator it);
  void endRelation(Token token);
  void rewake(Exchange& ex);
  void pump(Clock::time_point now, UpstreamOutput& out);
  void remember(uint16_t mid, Bytes reply);
  [[nodiscard]] const Seen* seen(uint16_t mid) const;

  UpstreamSettings settings_;
  Random random_;
  uint16_t nextMid_ = 0;
  std::map<uint64_t, Exchange> exchanges_;
  std::unordered_map<Token, uint64_t> byToken_;  // current and registration tokens
  std::unordered_map<uint16_t, uint64_t> byMid_; // confirmable datagrams awaiting their ACK
  std::deque<uint64_t> queue_;                   // waiting for an NSTART slot, oldest first
  size_t inFlight_ = 0;
  std::set<std::pair<Clock::time_point, uint64_t>> wakes_; // each exchange's next deadline
  std::unordered_map<Token, Relation> relations_;
  std::unordered_map<uint64_t, Token> relationTokens_;
  std::deque<Seen> seen_; // the last kSeen, oldest first
};

} // namespace iotgw::coap
