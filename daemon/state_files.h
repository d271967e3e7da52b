// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Files in the state directory that must survive a crash whole or not at all: written to a
// temporary file beside the target, flushed, renamed over it, and the directory flushed, so a
// reader (or the next start) sees the old content or the new, never half of either.

#include <sys/types.h>

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
// beside the target (or, for a removal, nothing yet). commit() puts it in place (a rename in the
// same directory, or the unlink) and flushes the directory; a change never committed is dropped
// with its temporary file. What can fail (space, permissions) fails in write(), before anything
// else of a change is put in force.
class StagedFile {
public:
  [[nodiscard]] static std::expected<StagedFile, std::string>
  write(const std::filesystem::path& path, std::string_view content, mode_t mode = 0600);
  [[nodiscard]] static StagedFile removal(const std::filesystem::path& path);

  StagedFile(StagedFile&& other) noexcept;
  StagedFile& operator=(StagedFile&&) = delete;
  StagedFile(const StagedFile&) = delete;
  ~StagedFile();

  // The rename (or unlink) and the directory's flush; an error (the disk failing under us) is
  // the caller's to report, the change is then as far as the kernel took it.
  [[nodiscard]] Outcome commit();
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

private:
  StagedFile(std::filesystem::path path, std::filesystem::path temporary)
      : path_(std::move(path)), temporary_(std::move(temporary)) {}
  std::filesystem::path path_;
  std::filesystem::path temporary_; // empty: a removal, or committed
  bool pending_ = true;
};

} // namespace iotgw::daemon
