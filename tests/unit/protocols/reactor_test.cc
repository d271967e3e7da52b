// SPDX-License-Identifier: GPL-3.0-or-later
#include <gtest/gtest.h>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

#include "protocols/io/reactor.h"
#include "protocols/io/worker.h"

using namespace iotgw::io;
using namespace std::chrono_literals;

TEST(Reactor, RunsTimersInOrderAndStops) {
  auto r = Reactor::create();
  ASSERT_TRUE(r);
  std::vector<int> order;
  ASSERT_TRUE((*r)->addTimer(30ms, 0ms, [&] { order.push_back(2); }));
  ASSERT_TRUE((*r)->addTimer(10ms, 0ms, [&] { order.push_back(1); }));
  ASSERT_TRUE((*r)->addTimer(60ms, 0ms, [&] {
    order.push_back(3);
    (*r)->stop();
  }));
  EXPECT_FALSE((*r)->run());
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
}

TEST(Reactor, RepeatingTimerCanCancelItself) {
  auto r = Reactor::create();
  ASSERT_TRUE(r);
  int ticks = 0;
  Reactor::TimerId id = 0;
  auto t = (*r)->addTimer(1ms, 2ms, [&] {
    if (++ticks == 5) {
      (*r)->cancelTimer(id);
      ASSERT_TRUE((*r)->addTimer(10ms, 0ms, [&] { (*r)->stop(); }));
    }
  });
  ASSERT_TRUE(t);
  id = *t;
  EXPECT_FALSE((*r)->run());
  EXPECT_EQ(ticks, 5);
}

TEST(Reactor, DispatchesFdEventsAndHandlerMayRemoveItself) {
  auto r = Reactor::create();
  ASSERT_TRUE(r);
  UniqueFd efd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  ASSERT_TRUE(efd.valid());
  int calls = 0;
  ASSERT_FALSE((*r)->add(efd.get(), EPOLLIN, [&](uint32_t ev) {
    EXPECT_TRUE(ev & EPOLLIN);
    ++calls;
    (*r)->remove(efd.get()); // the handler object stays alive until it returns
    (*r)->stop();
  }));
  const uint64_t one = 1;
  ASSERT_EQ(::write(efd.get(), &one, sizeof one), static_cast<ssize_t>(sizeof one));
  EXPECT_FALSE((*r)->run());
  EXPECT_EQ(calls, 1);
  // Adding a bad descriptor is an error, not a crash.
  EXPECT_TRUE((*r)->add(-1, EPOLLIN, [](uint32_t) {}));
}

TEST(Worker, RunsJobsOffTheLoopAndCompletionsOnIt) {
  auto r = Reactor::create();
  ASSERT_TRUE(r);
  auto w = Worker::create(**r, 2);
  ASSERT_TRUE(w);
  const auto loop = std::this_thread::get_id();
  std::atomic<int> offLoop{0};
  int completed = 0;
  bool completionsOnLoop = true;
  for (int i = 0; i < 20; ++i) {
    (*w)->post(
        [&] {
          if (std::this_thread::get_id() != loop) {
            ++offLoop;
          }
          std::this_thread::sleep_for(1ms);
        },
        [&] {
          completionsOnLoop = completionsOnLoop && std::this_thread::get_id() == loop;
          if (++completed == 20) {
            (*r)->stop();
          }
        });
  }
  EXPECT_EQ((*w)->pending(), 20u);
  ASSERT_TRUE((*r)->addTimer(5s, 0ms, [&] { (*r)->stop(); })); // a guard, should it hang
  EXPECT_FALSE((*r)->run());
  EXPECT_EQ(completed, 20);
  EXPECT_EQ(offLoop.load(), 20);
  EXPECT_TRUE(completionsOnLoop);
  EXPECT_EQ((*w)->pending(), 0u);
}

TEST(Worker, CompletionsOfADestroyedWorkerNeverRun) {
  auto r = Reactor::create();
  ASSERT_TRUE(r);
  bool ran = false;
  {
    auto w = Worker::create(**r, 1);
    ASSERT_TRUE(w);
    (*w)->post([] { std::this_thread::sleep_for(20ms); }, [&] { ran = true; });
  } // joins the thread; the completion is dropped
  ASSERT_TRUE((*r)->addTimer(50ms, 0ms, [&] { (*r)->stop(); }));
  EXPECT_FALSE((*r)->run());
  EXPECT_FALSE(ran);
}

TEST(Worker, FirstJobsOvertakeWaitingOnes) {
  auto r = Reactor::create();
  ASSERT_TRUE(r);
  auto w = Worker::create(**r, 1);
  ASSERT_TRUE(w);
  std::vector<int> order;
  std::mutex m;
  const auto job = [&](int n) {
    return [&, n] {
      std::this_thread::sleep_for(5ms);
      std::lock_guard lock(m);
      order.push_back(n);
    };
  };
  int completed = 0;
  const auto done = [&] {
    if (++completed == 4) {
      (*r)->stop();
    }
  };
  (*w)->post(job(1), done); // running while the others are posted
  (*w)->post(job(2), done);
  (*w)->post(job(3), done);
  (*w)->post(job(4), done, Worker::Priority::First);
  ASSERT_TRUE((*r)->addTimer(5s, 0ms, [&] { (*r)->stop(); }));
  EXPECT_FALSE((*r)->run());
  ASSERT_EQ(order.size(), 4u);
  const auto at = [&](int n) { return std::ranges::find(order, n) - order.begin(); };
  EXPECT_LT(at(4), at(2)); // ahead of those waiting when it came
  EXPECT_LT(at(4), at(3));
  EXPECT_LT(at(2), at(3));
}
