// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/state_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

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

Outcome writeAtomically(const std::filesystem::path& path, std::string_view content, mode_t mode) {
  const auto dir = path.parent_path();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return failure(fmt::format("cannot create {}: {}", dir.string(), ec.message()));
  }
  ::chmod(dir.c_str(), 0700);
  const auto tmp = dir / ("." + path.filename().string() + ".tmp");
  {
    io::UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (fd.valid()) {
      ::fchmod(fd.get(), mode); // not subject to the umask, unlike open's mode
    }
    if (!fd.valid()) {
      return failure(fmt::format("cannot write {}: {}", tmp.string(), std::strerror(errno)));
    }
    size_t done = 0;
    while (done < content.size()) {
      const ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n <= 0) {
        const std::string err = std::strerror(errno);
        ::unlink(tmp.c_str());
        return failure(fmt::format("cannot write {}: {}", tmp.string(), err));
      }
      done += static_cast<size_t>(n);
    }
    if (::fsync(fd.get()) != 0) {
      const std::string err = std::strerror(errno);
      ::unlink(tmp.c_str());
      return failure(fmt::format("cannot flush {}: {}", tmp.string(), err));
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    ::unlink(tmp.c_str());
    return failure(fmt::format("cannot rename {} to {}: {}", tmp.string(), path.string(), err));
  }
  return syncDirectory(dir);
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
