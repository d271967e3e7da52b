// SPDX-License-Identifier: GPL-3.0-or-later
// libFuzzer target: the daemon configuration parser. Any input must give a Config or diagnostics
// with positions inside the input, never a crash, a hang or a leak.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "daemon/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto c = iotgw::daemon::parseConfig(text, "fuzz.toml");
  if (!c) {
    for (const auto& d : c.error()) {
      if (d.message.empty() || d.source != "fuzz.toml") {
        std::abort();
      }
    }
  }
  return 0;
}
