// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/state_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include <fmt/format.h>

#include "protocols/io/reactor.h"

namespace iotgw::daemon {

namespace {

Outcome syncDirectory(const std::filesystem::path& dir) {
  io::UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid() || ::fsync(fd.get()) != 0) {
    return failure(fmt::format("cannot flush {}: {}", dir.string(), std::strerror(errno)));
  }
  return {};
}

} // namespace

std::expected<StagedFile, std::string> StagedFile::write(const std::filesystem::path& path,
                                                         std::string_view content, mode_t mode) {
  const auto dir = path.parent_path();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return failure(fmt::format("cannot create {}: {}", dir.string(), ec.message()));
  }
  ::chmod(dir.c_str(), 0700);
  const auto tmp = dir / ("." + path.filename().string() + ".tmp");
  io::UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (fd.valid()) {
    ::fchmod(fd.get(), mode); // not subject to the umask, unlike open's mode
  }
  if (!fd.valid()) {
    return failure(fmt::format("cannot write {}: {}", tmp.string(), std::strerror(errno)));
  }
  StagedFile staged(path, tmp, Kind::Write); // from here on, a failure deletes the temporary
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return failure(fmt::format("cannot write {}: {}", tmp.string(), std::strerror(errno)));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) {
    return failure(fmt::format("cannot flush {}: {}", tmp.string(), std::strerror(errno)));
  }
  return staged;
}

std::expected<StagedFile, std::string> StagedFile::removal(const std::filesystem::path& path) {
  const auto aside = path.parent_path() / ("." + path.filename().string() + ".removed");
  if (::rename(path.c_str(), aside.c_str()) != 0) {
    if (errno == ENOENT) {
      return StagedFile(path, {}, Kind::Nothing);
    }
    return failure(fmt::format("cannot remove {}: {}", path.string(), std::strerror(errno)));
  }
  return StagedFile(path, aside, Kind::Removal);
}

StagedFile::StagedFile(StagedFile&& other) noexcept
    : path_(std::move(other.path_)), aside_(std::move(other.aside_)), kind_(other.kind_),
      pending_(std::exchange(other.pending_, false)) {}

StagedFile::~StagedFile() {
  if (!pending_) {
    return;
  }
  if (kind_ == Kind::Write) {
    ::unlink(aside_.c_str());
  } else if (kind_ == Kind::Removal) {
    ::rename(aside_.c_str(), path_.c_str()); // back where it was
  }
}

Outcome StagedFile::commit() {
  if (!pending_) {
    return {};
  }
  pending_ = false;
  switch (kind_) {
  case Kind::Nothing:
    return {};
  case Kind::Removal:
    // Off its name already: what is left is a hidden file nobody reads.
    return removeDurably(aside_);
  case Kind::Write:
    break;
  }
  if (::rename(aside_.c_str(), path_.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    ::unlink(aside_.c_str());
    return failure(fmt::format("cannot rename {} to {}: {}", aside_.string(), path_.string(), err));
  }
  return syncDirectory(path_.parent_path());
}

Outcome writeAtomically(const std::filesystem::path& path, std::string_view content, mode_t mode) {
  auto staged = StagedFile::write(path, content, mode);
  if (!staged) {
    return failure(staged.error());
  }
  return staged->commit();
}

Outcome removeDurably(const std::filesystem::path& path) {
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) {
      return {};
    }
    return failure(fmt::format("cannot remove {}: {}", path.string(), std::strerror(errno)));
  }
  return syncDirectory(path.parent_path());
}

} // namespace iotgw::daemon
