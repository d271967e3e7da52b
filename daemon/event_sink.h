// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Where security events go: journald (structured fields), syslog (OpenWrt) or stderr. The sink
// rate-limits per device and event type so that a hostile device cannot flood the journal, and
// reports what it suppressed in a periodic summary.

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "daemon/config.h"
#include "policy/events.h"
#include "policy/rate_limit.h"

namespace iotgw::daemon {

class EventBackend {
public:
  virtual ~EventBackend() = default;
  virtual void write(const policy::Event& e) = 0;
  [[nodiscard]] virtual std::string_view name() const = 0;
};

// journald through sd_journal_sendv (only in builds with systemd).
std::unique_ptr<EventBackend> makeJournalBackend();
std::unique_ptr<EventBackend> makeSyslogBackend();
std::unique_ptr<EventBackend> makeStderrBackend();
// Auto: journald if its socket exists (sd_journal_send drops messages silently otherwise), then
// syslog if /dev/log exists, else stderr.
std::unique_ptr<EventBackend> makeBackend(EventTarget target);

// One line for syslog and stderr: the message followed by the structured fields as key=value.
[[nodiscard]] std::string formatEventLine(const policy::Event& e);

class EventSink {
public:
  using Now = std::function<policy::Clock::time_point()>;

  EventSink(
      std::unique_ptr<EventBackend> backend, EventsConfig settings,
      Now now = [] { return policy::Clock::now(); });

  // Emits the event unless its (device, type) has used up its budget; then it is only counted.
  void emit(policy::Event e);
  // Emits one EventsSuppressed event per (device, type) that lost events since the last call.
  void flushSuppressed();

  void reconfigure(const EventsConfig& settings) { settings_ = settings; }
  // Sees every event, before the rate limit: D-Bus signals. `journaled` says whether the event
  // also went to the backend; a state change the companion app must hear of (DeviceChanged) is
  // never lost to a flood's budget, while signals for what devices do can follow that budget.
  using Observer = std::function<void(const policy::Event&, bool journaled)>;
  void setObserver(Observer observer) { observer_ = std::move(observer); }
  [[nodiscard]] uint64_t emitted() const { return emitted_; }
  [[nodiscard]] uint64_t suppressed() const { return suppressedTotal_; }
  [[nodiscard]] EventBackend& backend() { return *backend_; }

private:
  using Key = std::tuple<std::string, policy::EventType>;
  static constexpr size_t kMaxKeys = 4096;

  std::unique_ptr<EventBackend> backend_;
  EventsConfig settings_;
  Now now_;
  std::map<Key, policy::TokenBucket> buckets_;
  std::map<Key, uint64_t> suppressed_;
  uint64_t emitted_ = 0;
  uint64_t suppressedTotal_ = 0;
  Observer observer_;
};

} // namespace iotgw::daemon
