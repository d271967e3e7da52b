// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace iotgw::policy {

// Well-formed UTF-8 as RFC 3629 defines it: no overlong forms, no surrogates (U+D800..U+DFFF),
// nothing above U+10FFFF. With allowNul false, U+0000 is refused too (MQTT-1.5.4-2).
[[nodiscard]] bool isValidUtf8(std::string_view s, bool allowNul = false) noexcept;

// In well-formed UTF-8, the first code point that MQTT 5 §1.5.4 (and 3.1.1 §1.5.3) says a string
// should not contain and a receiver may treat as malformed: the control characters U+0001..U+001F
// and U+007F..U+009F, and the Unicode non-characters (U+FDD0..U+FDEF and every U+xxFFFE and
// U+xxFFFF). The legacy parsers behind the gateway are the ones most likely to break on them.
[[nodiscard]] std::optional<uint32_t> firstDiscouragedCodePoint(std::string_view s) noexcept;

} // namespace iotgw::policy
