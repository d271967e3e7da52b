// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// What a step of the daemon that can fail returns: nothing, or the sentence that says what
// failed ("cannot listen on 192.168.50.1 port 1883: Address already in use").

#include <expected>
#include <string>

namespace iotgw::daemon {

using Outcome = std::expected<void, std::string>;

[[nodiscard]] inline std::unexpected<std::string> failure(std::string why) {
  return std::unexpected(std::move(why));
}

} // namespace iotgw::daemon
