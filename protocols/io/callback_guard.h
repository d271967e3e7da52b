// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The boundary where a C library (libmosquitto, libcoap, OpenSSL) calls back into our code.
// Nothing may unwind through C frames: whatever escapes the body is caught here, said once on
// stderr (the service's journal), and the callback returns what the library takes as "failed".
// Our code throws nothing on purpose; what reaches this is std::bad_alloc or a bug.

#include <cstdio>
#include <exception>
#include <utility>

namespace iotgw::io {

template <typename R, typename F> R guarded(const char* where, R failed, F&& body) noexcept {
  try {
    return std::forward<F>(body)();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "iotgwd: %s: %s (the call was abandoned)\n", where, e.what());
  } catch (...) {
    std::fprintf(stderr, "iotgwd: %s: an unknown exception (the call was abandoned)\n", where);
  }
  return failed;
}

template <typename F> void guarded(const char* where, F&& body) noexcept {
  guarded<int>(where, 0, [&] {
    std::forward<F>(body)();
    return 0;
  });
}

} // namespace iotgw::io
