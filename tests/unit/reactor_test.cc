// SPDX-License-Identifier: GPL-3.0-or-later
#include <gtest/gtest.h>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "protocols/io/reactor.h"

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
