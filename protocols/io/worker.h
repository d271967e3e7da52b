// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Work that must not run on the event loop (password hashing: ~0.1 s of CPU each, by design)
// runs on a few background threads; its completion runs back on the loop thread, woken through
// an eventfd in the reactor. The loop stays the only thread that touches the daemon's state: a
// job sees only what it captured, and its completion does the rest.

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <expected>
#include <functional>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "protocols/io/reactor.h"

namespace iotgw::io {

class Worker {
public:
  // `threads` background threads, run at a lower priority than the loop where the system lets
  // us (nice 10), so that a flood of jobs slows the jobs and not the loop.
  [[nodiscard]] static std::expected<std::unique_ptr<Worker>, std::error_code>
  create(Reactor& reactor, unsigned threads);
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  // Stops and joins the threads; jobs not yet run are dropped and their completions never run.
  ~Worker();

  enum class Priority { Normal, First };
  // `job` runs on a worker thread, then `done` on the loop thread; a job posted First runs before
  // every Normal one still waiting. Callers bound how much they post (pending() tells how many
  // have not completed).
  void post(std::function<void()> job, std::function<void()> done,
            Priority priority = Priority::Normal);
  [[nodiscard]] size_t pending() const { return pending_; }

private:
  Worker(Reactor& reactor, UniqueFd wake) : reactor_(reactor), wake_(std::move(wake)) {}
  void run();
  void complete();

  struct Task {
    std::function<void()> job;
    std::function<void()> done;
  };

  Reactor& reactor_;
  UniqueFd wake_; // eventfd: a job finished
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Task> queue_;    // waiting for a thread
  std::deque<Task> finished_; // waiting for the loop
  bool stopping_ = false;
  size_t pending_ = 0; // loop thread only: posted and not yet completed
};

} // namespace iotgw::io
