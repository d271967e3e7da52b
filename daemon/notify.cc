// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/notify.h"

#include <ctime>
#include <fmt/format.h>
#include <string>

#include "iotgw/build_config.h"

#if IOTGW_WITH_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace iotgw::daemon::notify {

#if IOTGW_WITH_SYSTEMD
namespace {
void send(const std::string& s) { sd_notify(0, s.c_str()); }

uint64_t monotonicUsec() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}
} // namespace

void ready(std::string_view s) { send(fmt::format("READY=1\nSTATUS={}", s)); }
// MONOTONIC_USEC lets systemd ≥ 253 (Type=notify-reload) match the reload to its request.
void reloading() { send(fmt::format("RELOADING=1\nMONOTONIC_USEC={}", monotonicUsec())); }
void stopping() { send("STOPPING=1\nSTATUS=stopping"); }
void status(std::string_view s) { send(fmt::format("STATUS={}", s)); }
void watchdog() { send("WATCHDOG=1"); }

std::optional<std::chrono::microseconds> watchdogInterval() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    return std::chrono::microseconds(usec);
  }
  return std::nullopt;
}
#else
void ready(std::string_view) {}
void reloading() {}
void stopping() {}
void status(std::string_view) {}
void watchdog() {}
std::optional<std::chrono::microseconds> watchdogInterval() { return std::nullopt; }
#endif

} // namespace iotgw::daemon::notify
