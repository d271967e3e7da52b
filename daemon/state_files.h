// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Files in the state directory that must survive a crash whole or not at all: written to a
// temporary file beside the target, flushed, renamed over it, and the directory flushed, so a
// reader (or the next start) sees the old content or the new, never half of either.

#include <sys/types.h>

#include <cstdint>

#include <expected>
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

// A change to one file, prepared: the new content written and flushed under a temporary name
// beside the target, or the file renamed aside for a removal (hidden names, starting with '.',
// that no reader takes for a policy, a mark or an identity). commit() puts it in place (a rename
// in the same directory, or the unlink of what was set aside) and flushes the directory; a change
// never committed is undone (the temporary deleted, the file put back). What can fail (space,
// permissions) fails while preparing, before anything else of a change is put in force.
class StagedFile {
public:
  [[nodiscard]] static std::expected<StagedFile, std::string>
  write(const std::filesystem::path& path, std::string_view content, mode_t mode = 0600);
  // The file moved aside to a hidden name (put back if never committed); nothing to do if it
  // does not exist.
  [[nodiscard]] static std::expected<StagedFile, std::string>
  removal(const std::filesystem::path& path);

  StagedFile(StagedFile&& other) noexcept;
  StagedFile& operator=(StagedFile&&) = delete;
  StagedFile(const StagedFile&) = delete;
  ~StagedFile();

  // The rename (or unlink) and the directory's flush; an error (the disk failing under us) is
  // the caller's to report, the change is then as far as the kernel took it.
  [[nodiscard]] Outcome commit();
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

private:
  enum class Kind : uint8_t { Write, Removal, Nothing };
  StagedFile(std::filesystem::path path, std::filesystem::path aside, Kind kind)
      : path_(std::move(path)), aside_(std::move(aside)), kind_(kind) {}
  std::filesystem::path path_;
  std::filesystem::path aside_; // the new content, or the file being removed
  Kind kind_;
  bool pending_ = true;
};

} // namespace iotgw::daemon
