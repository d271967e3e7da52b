// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The daemon's one event loop: epoll over file descriptors, with timers as timerfds. Every
// capability plugs its descriptors in here; nothing runs on another thread.

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <system_error>
#include <unordered_map>

namespace iotgw::io {

// Owns a file descriptor; closes it on destruction.
class UniqueFd {
public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();

  [[nodiscard]] int get() const { return fd_; }
  [[nodiscard]] bool valid() const { return fd_ >= 0; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

private:
  int fd_ = -1;
};

class Reactor {
public:
  using Handler = std::function<void(uint32_t events)>;
  using TimerId = uint64_t;

  [[nodiscard]] static std::expected<std::unique_ptr<Reactor>, std::error_code> create();

  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;
  ~Reactor();

  // The handler runs on the loop thread when `fd` has any of `events` (EPOLLIN, EPOLLOUT, ...).
  // The reactor does not own `fd`. A handler may remove any descriptor, including its own.
  [[nodiscard]] std::error_code add(int fd, uint32_t events, Handler handler);
  [[nodiscard]] std::error_code modify(int fd, uint32_t events);
  void remove(int fd);
  // Drops the handler of a descriptor that someone else has already closed (the kernel removed it
  // from epoll then), without touching epoll: the number may already belong to a new descriptor.
  void forget(int fd) { handlers_.erase(fd); }
  [[nodiscard]] bool watching(int fd) const { return handlers_.contains(fd); }

  // Calls `fn` after `delay`, then every `interval` if that is non-zero.
  [[nodiscard]] std::expected<TimerId, std::error_code> addTimer(std::chrono::milliseconds delay,
                                                                 std::chrono::milliseconds interval,
                                                                 std::function<void()> fn);
  void cancelTimer(TimerId id);

  // Runs after the handlers of each wake-up, before the loop sleeps again: what is batched
  // across the descriptors that woke it (the outbox's one fdatasync for all devices). One; none
  // unsets it.
  void setAfterEvents(std::function<void()> fn) { afterEvents_ = std::move(fn); }

  // Runs until stop(); returns an error only if epoll itself fails.
  std::error_code run();
  void stop() { running_ = false; }

private:
  explicit Reactor(UniqueFd epoll) : epoll_(std::move(epoll)) {}

  struct Timer {
    UniqueFd fd;
    std::function<void()> fn;
    bool repeating = false;
  };

  std::function<void()> afterEvents_;
  UniqueFd epoll_;
  // shared_ptr so that a handler removing itself does not destroy the function it runs in.
  std::unordered_map<int, std::shared_ptr<Handler>> handlers_;
  std::unordered_map<TimerId, std::unique_ptr<Timer>> timers_;
  TimerId nextTimer_ = 1;
  bool running_ = false;
};

} // namespace iotgw::io
