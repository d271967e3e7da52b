// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

#include <string_view>

namespace iotgw::policy {

// Well-formed UTF-8 as RFC 3629 defines it: no overlong forms, no surrogates (U+D800..U+DFFF),
// nothing above U+10FFFF. With allowNul false, U+0000 is refused too (MQTT-1.5.4-2).
[[nodiscard]] bool isValidUtf8(std::string_view s, bool allowNul = false) noexcept;

} // namespace iotgw::policy
