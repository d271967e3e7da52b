// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/io/worker.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

namespace iotgw::io {

std::expected<std::unique_ptr<Worker>, std::error_code> Worker::create(Reactor& reactor,
                                                                       unsigned threads) {
  UniqueFd wake(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake.valid()) {
    return std::unexpected(std::error_code(errno, std::system_category()));
  }
  std::unique_ptr<Worker> w(new Worker(reactor, std::move(wake)));
  Worker* raw = w.get();
  if (auto ec = reactor.add(raw->wake_.get(), EPOLLIN, [raw](uint32_t) { raw->complete(); })) {
    return std::unexpected(ec);
  }
  try {
    for (unsigned i = 0; i < std::max(1u, threads); ++i) {
      raw->threads_.emplace_back([raw] { raw->run(); });
    }
  } catch (const std::system_error& e) {
    return std::unexpected(e.code()); // out of tasks (TasksMax=): the destructor joins any begun
  }
  return w;
}

Worker::~Worker() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  ready_.notify_all();
  for (auto& t : threads_) {
    t.join();
  }
  reactor_.remove(wake_.get());
}

void Worker::post(std::function<void()> job, std::function<void()> done, Priority priority) {
  {
    std::lock_guard lock(mutex_);
    Task task{std::move(job), std::move(done)};
    if (priority == Priority::First) {
      queue_.push_front(std::move(task));
    } else {
      queue_.push_back(std::move(task));
    }
  }
  ++pending_;
  ready_.notify_one();
}

void Worker::run() {
  // Best effort: the shipped unit's system call filter refuses it (@resources), and then the
  // workers run at the loop's priority; what keeps the loop responsive is the cap on checks in
  // progress and leaving a core to the loop.
  (void)::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), 10);
  while (true) {
    Task task;
    {
      std::unique_lock lock(mutex_);
      ready_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) {
        return;
      }
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task.job();
    {
      std::lock_guard lock(mutex_);
      finished_.push_back(std::move(task));
    }
    const uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one);
  }
}

void Worker::complete() {
  uint64_t count = 0;
  (void)!::read(wake_.get(), &count, sizeof count);
  std::deque<Task> done;
  {
    std::lock_guard lock(mutex_);
    done.swap(finished_);
  }
  for (auto& task : done) {
    --pending_;
    task.job = nullptr; // what the job captured goes before its completion runs
    task.done();
  }
}

} // namespace iotgw::io
