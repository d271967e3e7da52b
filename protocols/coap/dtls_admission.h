// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Which DTLS peers (address and port) may reach the DTLS server behind the cookie gate: those
// that returned a valid cookie (they receive at their address, RFC 6347 §4.2.1) and are in their
// handshake, and those with an established session. Nothing else is remembered about anyone, so
// a forged source costs nothing.
//
// Half-open handshakes are bounded in total and per address. A full table never refuses a peer
// that has just proved its address: the oldest half-open handshake gives way (the same address's
// own oldest first, so one host cannot push out everybody else's), and the caller ends the
// handshakes it is told were evicted or expired. Established peers are not counted here: they
// mirror the server's sessions, which it bounds itself (limits.max_connections). Pure: the time
// is given.

#include <array>
#include <chrono>
#include <cstdint>
#include <list>
#include <optional>
#include <unordered_map>
#include <vector>

#include "policy/device.h"

namespace iotgw::coap::dtls {

// A peer as bytes: address family (4 or 6), the address (IPv4 in the first four bytes), the port.
struct PeerKey {
  std::array<uint8_t, 19> bytes{};

  [[nodiscard]] static PeerKey v4(const std::array<uint8_t, 4>& address, uint16_t port);
  [[nodiscard]] static PeerKey v6(const std::array<uint8_t, 16>& address, uint16_t port);
  [[nodiscard]] static PeerKey of(const policy::IpAddress& address, uint16_t port);
  [[nodiscard]] bool sameAddress(const PeerKey& other) const;
  bool operator==(const PeerKey&) const = default;
};

struct PeerKeyHash {
  size_t operator()(const PeerKey& k) const noexcept;
};

class Admission {
public:
  using Clock = std::chrono::steady_clock;

  struct Settings {
    size_t maxPending = 64;                                     // limits.max_handshakes
    size_t maxPendingPerAddress = 16;                           // limits.max_connections_per_source
    Clock::duration pendingLifetime = std::chrono::seconds(10); // limits.handshake_timeout_ms
  };

  enum class State : uint8_t { Unknown, Pending, Established };

  // A half-open handshake the caller must end; `tag` is what admit() was given with it.
  struct Ended {
    PeerKey peer;
    int tag = 0;
    bool expired = false; // past its lifetime, rather than making room for another peer
  };

  explicit Admission(Settings settings);

  // A pending entry past its lifetime is Unknown (and removed by the next expire or admit).
  [[nodiscard]] State state(const PeerKey& peer, Clock::time_point now) const;
  // state() for a datagram from `peer`: an established peer was heard from at `now`.
  [[nodiscard]] State touch(const PeerKey& peer, Clock::time_point now);
  // When an established peer last sent anything (its session's idle time is the server's to
  // judge: what the server sends does not count).
  [[nodiscard]] std::optional<Clock::time_point> lastHeard(const PeerKey& peer) const;

  // `peer` returned a valid cookie: it may start its handshake. Entries that had to give way,
  // and those past their lifetime, are appended to `ended`. A peer already known stays as it is.
  void admit(const PeerKey& peer, int tag, Clock::time_point now, std::vector<Ended>& ended);
  // The handshake completed at `now`: no longer half-open, no lifetime.
  void established(const PeerKey& peer, Clock::time_point now);
  // The server's session for `peer` is gone (closed, failed, expired or freed).
  void closed(const PeerKey& peer);
  // Removes the pending entries past their lifetime, appending them to `ended`.
  void expire(Clock::time_point now, std::vector<Ended>& ended);

  [[nodiscard]] size_t pending() const noexcept { return order_.size(); }
  [[nodiscard]] size_t established() const noexcept { return entries_.size() - order_.size(); }

private:
  struct Entry {
    State state = State::Pending;
    Clock::time_point deadline;
    int tag = 0;
    std::list<PeerKey>::iterator order; // valid while Pending
    Clock::time_point heard{};          // established: the last datagram from the peer
  };

  void dropPending(std::unordered_map<PeerKey, Entry, PeerKeyHash>::iterator it,
                   std::vector<Ended>* ended, bool expired);

  Settings settings_;
  std::unordered_map<PeerKey, Entry, PeerKeyHash> entries_;
  std::list<PeerKey> order_; // pending entries, oldest first (one lifetime for all)
};

} // namespace iotgw::coap::dtls
