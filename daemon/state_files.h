// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Files in the state directory that must survive a crash whole or not at all: written to a
// temporary file beside the target, flushed, renamed over it, and the directory flushed, so a
// reader (or the next start) sees the old content or the new, never half of either.

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <string_view>

#include "daemon/outcome.h"

namespace iotgw::daemon {

// Creates the directory (owner-only) if needed. The file gets `mode` (owner-only unless a public
// file such as a CA certificate asks otherwise). An error is a readable sentence.
[[nodiscard]] Outcome writeAtomically(const std::filesystem::path& path, std::string_view content,
                                      mode_t mode = 0600);
// Removes the file (absent is fine) and flushes its directory.
[[nodiscard]] Outcome removeDurably(const std::filesystem::path& path);

} // namespace iotgw::daemon
