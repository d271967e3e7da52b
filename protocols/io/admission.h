// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Who may connect to a listener, and whom to close to make room: the bookkeeping behind the
// limits on connections nobody has authenticated yet, with no sockets of its own. The caller
// tells it what happens to each connection and closes what it is told to; time is injected.
//
// Everything a connection costs before its login is bounded here: connections in total and per
// source, TLS handshakes in total and per source, the bytes of partial packets all such
// connections hold, and password checks in progress. When a table is full the connection that
// has waited longest without getting anywhere is closed rather than a new one refused, so that
// idle or slow connections cannot keep a device out.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace iotgw::io {

struct AdmissionLimits {
  uint32_t maxConnections = 1024;
  uint32_t maxConnectionsPerSource = 16;
  uint32_t maxHandshakes = 64;
  uint32_t maxHandshakesPerSource = 4;
  // A handshake that has not sent a byte by then is closed; one older than `handshakeGrace` may
  // be closed to make room (a real one takes milliseconds).
  std::chrono::milliseconds firstByteTimeout{3'000};
  std::chrono::milliseconds handshakeGrace{1'000};
  size_t maxUnauthenticatedBytes = 4 * 1024 * 1024;
  uint32_t maxChecks = 16;
  uint32_t maxChecksPerSource = 2;
};

class Admission {
public:
  using Id = uint64_t;
  using Clock = std::chrono::steady_clock;

  explicit Admission(AdmissionLimits limits) : limits_(limits) {}

  struct Verdict {
    const char* refusedBy = nullptr; // the limit that refuses the connection ("limits.…")
    std::vector<Id> evict;           // to close first, to make room for it
  };
  // A new connection from `source`. Unless refused, it is recorded as `id` (the caller closes
  // the connections in `evict` and tells closed() of them).
  [[nodiscard]] Verdict admit(Id id, const std::string& source, bool tls, Clock::time_point now);
  void handshakeEnded(Id id);
  void sawBytes(Id id);
  // Logged in: no longer counted as unauthenticated, never closed to make room.
  void authenticated(Id id);
  void closed(Id id);

  // Bytes of partial packets `id` holds before its login. Returns the connections to close to
  // keep all of them within the budget: those whose partial packet has waited longest (a slow
  // sender's; a device's CONNECT arrives whole), never one whose password is being checked.
  [[nodiscard]] std::vector<Id> held(Id id, size_t bytes, Clock::time_point now);

  // Whether `id` may start a password check now. Sources with an earlier successful login may
  // use the whole capacity; others leave a quarter of it to them, so that a flood of guesses
  // from new addresses cannot keep the devices that were here before out.
  [[nodiscard]] bool startCheck(Id id, bool knownSource);
  // Its check has completed (also after the connection closed: the work was done).
  void endCheck(Id id);

  // Handshakes past the first-byte deadline, to close.
  [[nodiscard]] std::vector<Id> silentHandshakes(Clock::time_point now) const;

  [[nodiscard]] size_t connections() const { return entries_.size(); }
  [[nodiscard]] uint32_t handshakes() const { return handshakes_; }
  [[nodiscard]] uint32_t checks() const { return checks_; }
  [[nodiscard]] size_t unauthenticatedBytes() const { return heldBytes_; }

private:
  struct Entry {
    std::string source;
    Clock::time_point accepted;
    bool handshaking = false;
    bool gotBytes = false;
    bool authenticated = false;
    bool checking = false;
    size_t held = 0;
    Clock::time_point partialSince{};
  };
  using Counts = std::unordered_map<std::string, uint32_t>;
  static void drop(Counts& counts, const std::string& key);
  void endHandshake(Entry& e);
  // The oldest entry `candidate` accepts, or nullopt.
  template <typename Pred> [[nodiscard]] std::optional<Id> oldest(Pred&& candidate) const;

  AdmissionLimits limits_;
  std::unordered_map<Id, Entry> entries_;
  Counts perSource_;
  Counts handshakesPerSource_;
  Counts checksPerSource_;
  std::unordered_map<Id, std::string>
      checking_; // checks in progress, by connection, to their source
  uint32_t handshakes_ = 0;
  uint32_t checks_ = 0;
  size_t heldBytes_ = 0;
};

} // namespace iotgw::io
