// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// What a step of the daemon that can fail returns: nothing, or the sentence that says what
// failed ("cannot listen on 192.168.50.1 port 1883: Address already in use").

#include <expected>
#include <functional>
#include <string>

namespace iotgw::daemon {

using Outcome = std::expected<void, std::string>;

// A change checked and built, waiting to be put in force: running it cannot fail. A reload
// prepares every part first and puts them in force only once all of them (and the firewall's
// transaction, the last step that can fail) have succeeded, so nothing is ever undone by hand.
using Prepared = std::move_only_function<void()>;

[[nodiscard]] inline std::unexpected<std::string> failure(std::string why) {
  return std::unexpected(std::move(why));
}

} // namespace iotgw::daemon
