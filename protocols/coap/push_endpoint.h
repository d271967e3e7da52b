// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The device-side CoAP endpoint ([listeners.coap], device segment only): enrolled devices, known
// by their address and the interface their datagrams arrive on, POST or PUT readings on their
// [[coap.push]] paths; each is checked against the device's policy and rate, and handed to
// `publish` (the device's MQTT upstream session, daemon/coap_service), and the device hears
// 2.04 once the broker has it. Our own sockets and codec, no libcoap. To a source that is not an
// enrolled device it never sends more than three times what it received (RFC 9175 §2.4), and
// what unknown sources and recent exchanges cost is bounded. Loop thread only.

#include <chrono>
#include <cstdint>
#include <deque>
#include <expected>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "policy/decision.h"
#include "policy/events.h"
#include "policy/policy_set.h"
#include "policy/rate_limit.h"
#include "protocols/coap/message.h"
#include "protocols/coap/reply.h"
#include "protocols/coap/validate.h"
#include "protocols/io/arrival.h"
#include "protocols/io/reactor.h"
#include "protocols/io/socket.h"

namespace iotgw::coap {

struct PushSettings {
  std::vector<policy::IpAddress> addresses; // listeners.coap
  uint16_t port = 5683;
  std::vector<std::string> deviceInterfaces; // device_segment.interfaces
};

struct PushHooks {
  std::function<std::shared_ptr<const policy::PolicySet>()> policies;
  std::function<bool(const policy::DeviceId&)> quarantined; // may be empty: nobody is
  std::function<void(policy::Event)> emit;
  // Publishes a reading for the device; `done(true)` once the broker has it (PUBACK for QoS 1),
  // `done(false)` when it was lost on the way. An error: nothing was taken (answered 5.03).
  std::function<std::expected<void, std::string>(
      const policy::DevicePolicy& device, const std::string& topic,
      std::span<const uint8_t> payload, uint8_t qos, std::function<void(bool)> done)>
      publish;
};

struct PushCounters {
  uint64_t datagrams = 0;
  uint64_t deviceMalformed = 0; // unparseable or invalid
  uint64_t unknownSources = 0;  // datagrams from addresses that are no enrolled device
  uint64_t wrongInterface = 0;  // from a device's address, not on device_segment.interfaces
  uint64_t pushesDenied = 0;
  uint64_t pushesPublished = 0;
  uint64_t pushesFailed = 0;      // the upstream could not take it (5.03)
  uint64_t pushesBadTopic = 0;    // the path would make no valid MQTT topic name (4.00)
  uint64_t pushesRateLimited = 0; // beyond the device's [mqtt.rate] (4.29)
  uint64_t unauthenticatedBytesIn = 0;
  uint64_t unauthenticatedBytesOut = 0;
  uint64_t budgetDrops = 0; // replies not sent: they would have broken the 3x budget
};

class PushEndpoint {
public:
  using Clock = std::chrono::steady_clock;

  PushEndpoint(io::Reactor& reactor, PushSettings settings, PushHooks hooks,
               PushCounters& counters);
  PushEndpoint(const PushEndpoint&) = delete;
  PushEndpoint& operator=(const PushEndpoint&) = delete;
  ~PushEndpoint();

  // Binds the sockets; the error names what failed.
  [[nodiscard]] std::expected<void, std::string> start();
  // Forgets the device's rate budget (quarantine, removal).
  void forget(const std::string& device);
  // The ports actually bound (tests bind port 0).
  [[nodiscard]] std::vector<uint16_t> boundPorts() const;

private:
  static constexpr size_t kMaxSources = 4096;
  static constexpr size_t kMaxRecent = 4096;
  static constexpr auto kExchangeLifetime = std::chrono::seconds(60);

  struct Source {
    AmplificationBudget budget;
    Clock::time_point lastSeen;
  };
  // A confirmable push seen recently: its answer, once there is one (deduplication, RFC 7252 §4.5).
  struct Recent {
    Bytes reply;
    Clock::time_point expires;
  };
  // A device's budget for pushes: its policy's [mqtt.rate] (5.10-1), as its MQTT session has.
  struct Rate {
    policy::RateLimit settings;
    policy::MessageRateLimiter limiter;
  };

  using RecentKey = std::pair<std::string, uint16_t>; // "ip:port", message id

  io::Reactor& reactor;
  const PushSettings settings;
  const PushHooks hooks;
  PushCounters& counters;
  std::vector<io::UniqueFd> sockets;
  io::DeviceInterfaces interfaces;
  std::unordered_map<std::string, Source> sources; // unauthenticated sources by IP
  std::map<RecentKey, Recent> recent;
  // The same entries by expiry (one lifetime for all: insertion order), so that pruning looks at
  // the expired ones only. An entry replaced in `recent` leaves a stale one here, skipped.
  std::deque<std::pair<Clock::time_point, RecentKey>> recentOrder;
  std::unordered_map<std::string, Rate> rates;     // by device id
  std::weak_ptr<const policy::PolicySet> ratesFor; // the snapshot `rates` was pruned against
  uint8_t buffer[2048];

  void onReadable(int fd);
  // `size` is the datagram's real size; `datagram` holds at most the buffer's worth of it.
  void handle(int fd, const sockaddr_storage& from, socklen_t fromLen, View datagram, size_t size);
  // Sends to a device (no budget), or to an unknown source within its 3x budget.
  void send(int fd, const sockaddr_storage& to, socklen_t toLen, const Bytes& bytes,
            Source* budget);
  Source& sourceFor(const std::string& ip, Clock::time_point now);
  // Remembers a confirmable push's answer (empty while it waits for the broker); at most
  // kMaxRecent entries, the oldest forgotten first.
  void remember(const RecentKey& key, Bytes reply, Clock::time_point now);
  void pruneRecent(Clock::time_point now);
  // Charges a push to its device's budget: the refusal, or nullopt when it may go.
  [[nodiscard]] std::optional<policy::Decision>
  charge(const policy::DevicePolicy& d, const std::shared_ptr<const policy::PolicySet>& set,
         size_t bytes, Clock::time_point now);
  void emit(policy::EventType type, std::string device, std::string peer, std::string rule,
            std::string provision, std::string action, std::string message);
};

} // namespace iotgw::coap
