// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/io/stream.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace iotgw::io {

IoStatus PlainStream::read(std::span<uint8_t> buf, size_t& n) {
  n = 0;
  const ssize_t r = ::read(fd_, buf.data(), buf.size());
  if (r > 0) {
    n = static_cast<size_t>(r);
    return IoStatus::Ok;
  }
  if (r == 0) {
    return IoStatus::Closed;
  }
  if (errno == EAGAIN || errno == EINTR) {
    return IoStatus::WantRead;
  }
  errno_ = errno;
  return IoStatus::Failed;
}

IoStatus PlainStream::write(std::span<const uint8_t> buf, size_t& n) {
  n = 0;
  const ssize_t r = ::write(fd_, buf.data(), buf.size());
  if (r > 0) {
    n = static_cast<size_t>(r);
    return IoStatus::Ok;
  }
  if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
    return IoStatus::WantWrite;
  }
  errno_ = r < 0 ? errno : 0;
  return r == 0 ? IoStatus::Closed : IoStatus::Failed;
}

std::string PlainStream::lastError() const { return errno_ != 0 ? std::strerror(errno_) : ""; }

} // namespace iotgw::io
