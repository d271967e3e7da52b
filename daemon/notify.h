// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The service manager's readiness protocol (sd_notify). In builds without systemd every call is
// a no-op and watchdogInterval() is nullopt.

#include <chrono>
#include <optional>
#include <string_view>

namespace iotgw::daemon::notify {

void ready(std::string_view status);
void reloading();
void stopping();
void status(std::string_view status);
void watchdog();
// The watchdog interval the service manager asked for (WATCHDOG_USEC), if any.
[[nodiscard]] std::optional<std::chrono::microseconds> watchdogInterval();

} // namespace iotgw::daemon::notify
