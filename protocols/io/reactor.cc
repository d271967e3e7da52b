// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/io/reactor.h"

#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <array>
#include <cerrno>

namespace iotgw::io {

namespace {
std::error_code lastError() { return {errno, std::generic_category()}; }

timespec toTimespec(std::chrono::milliseconds ms) {
  const auto s = std::chrono::duration_cast<std::chrono::seconds>(ms);
  return timespec{static_cast<time_t>(s.count()),
                  static_cast<long>(std::chrono::nanoseconds(ms - s).count())};
}
} // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    fd_ = o.release();
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

std::expected<std::unique_ptr<Reactor>, std::error_code> Reactor::create() {
  UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep.valid()) {
    return std::unexpected(lastError());
  }
  return std::unique_ptr<Reactor>(new Reactor(std::move(ep)));
}

Reactor::~Reactor() = default;

std::error_code Reactor::add(int fd, uint32_t events, Handler handler) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
    return lastError();
  }
  handlers_[fd] = std::make_shared<Handler>(std::move(handler));
  return {};
}

std::error_code Reactor::modify(int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) {
    return lastError();
  }
  return {};
}

void Reactor::remove(int fd) {
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  handlers_.erase(fd);
}

std::expected<Reactor::TimerId, std::error_code>
Reactor::addTimer(std::chrono::milliseconds delay, std::chrono::milliseconds interval,
                  std::function<void()> fn) {
  UniqueFd tfd(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!tfd.valid()) {
    return std::unexpected(lastError());
  }
  itimerspec spec{};
  // A zero it_value disarms a timerfd, so "now" is one nanosecond.
  spec.it_value = delay.count() > 0 ? toTimespec(delay) : timespec{0, 1};
  spec.it_interval = toTimespec(interval);
  if (::timerfd_settime(tfd.get(), 0, &spec, nullptr) != 0) {
    return std::unexpected(lastError());
  }
  const TimerId id = nextTimer_++;
  auto timer = std::make_unique<Timer>(Timer{std::move(tfd), std::move(fn), interval.count() > 0});
  const int fd = timer->fd.get();
  if (auto ec = add(fd, EPOLLIN, [this, id, fd](uint32_t) {
        uint64_t expirations = 0;
        if (::read(fd, &expirations, sizeof expirations) < 0) {
          return;
        }
        auto it = timers_.find(id);
        if (it == timers_.end()) {
          return;
        }
        // Keep the timer alive while it runs, even if fn cancels it.
        auto fnCopy = it->second->fn;
        const bool repeating = it->second->repeating;
        if (!repeating) {
          cancelTimer(id);
        }
        fnCopy();
      })) {
    return std::unexpected(ec);
  }
  timers_.emplace(id, std::move(timer));
  return id;
}

void Reactor::cancelTimer(TimerId id) {
  auto it = timers_.find(id);
  if (it == timers_.end()) {
    return;
  }
  remove(it->second->fd.get());
  timers_.erase(it);
}

std::error_code Reactor::run() {
  running_ = true;
  std::array<epoll_event, 64> events{};
  while (running_) {
    const int n = ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()), -1);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return lastError();
    }
    for (int i = 0; i < n && running_; ++i) {
      auto it = handlers_.find(events[static_cast<size_t>(i)].data.fd);
      if (it == handlers_.end()) {
        continue; // removed by an earlier handler in this batch
      }
      const std::shared_ptr<Handler> h = it->second;
      (*h)(events[static_cast<size_t>(i)].events);
    }
    if (afterEvents_) {
      afterEvents_();
    }
  }
  return {};
}

} // namespace iotgw::io
