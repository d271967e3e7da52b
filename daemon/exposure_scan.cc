// SPDX-License-Identifier: GPL-3.0-or-later
#include "daemon/exposure_scan.h"

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "firewall/compile.h"

namespace iotgw::daemon {

using policy::Event;
using policy::EventType;
using policy::Transport;

namespace {
constexpr auto kProbeTimeout = std::chrono::milliseconds(1500);
constexpr size_t kMaxActive = 64;
} // namespace

ExposureScan::ExposureScan(io::Reactor& reactor, EventSink& sink)
    : reactor_(reactor), sink_(sink) {}

ExposureScan::~ExposureScan() {
  if (timer_) {
    reactor_.cancelTimer(*timer_);
  }
  for (auto& [fd, a] : active_) {
    reactor_.remove(fd);
  }
}

void ExposureScan::start(std::shared_ptr<const policy::PolicySet> policies,
                         uint32_t probesPerSecond) {
  if (running()) {
    return;
  }
  for (const auto& d : policies->devices()) {
    for (const auto& a : d.addresses) {
      for (const auto& p : firewall::scanPorts()) {
        queue_.push_back(Probe{d.id.str(), a, p});
      }
    }
  }
  policies_ = std::move(policies);
  found_.clear();
  const auto every = std::chrono::milliseconds(std::max<uint32_t>(1, 1000 / probesPerSecond));
  if (auto t = reactor_.addTimer(every, every, [this] { tick(); })) {
    timer_ = *t;
  } else {
    policies_.reset();
    queue_.clear();
  }
}

void ExposureScan::tick() {
  const auto now = Clock::now();
  std::vector<int> expired;
  for (const auto& [fd, a] : active_) {
    if (now >= a.deadline) {
      expired.push_back(fd);
    }
  }
  for (int fd : expired) {
    finish(fd, false); // no answer: filtered or silent, not reachable
  }
  if (!queue_.empty() && active_.size() < kMaxActive) {
    Probe p = std::move(queue_.front());
    queue_.pop_front();
    launch(std::move(p));
  }
  if (queue_.empty() && active_.empty()) {
    report();
  }
}

void ExposureScan::launch(Probe p) {
  const bool udp = p.port.transport == Transport::Udp;
  const int family = p.address.family;
  io::UniqueFd fd(
      ::socket(family, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    return;
  }
  const uint32_t mark = firewall::kScanMark;
  (void)::setsockopt(fd.get(), SOL_SOCKET, SO_MARK, &mark, sizeof mark);
  const linger abort{1, 0}; // close with a reset: nothing lingers on a fragile device
  (void)::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(p.port.port);
    std::memcpy(&sin->sin_addr, p.address.bytes.data(), 4);
    len = sizeof *sin;
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(p.port.port);
    std::memcpy(&sin6->sin6_addr, p.address.bytes.data(), 16);
    len = sizeof *sin6;
  }
  const int rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len);
  if (rc != 0 && errno != EINPROGRESS) {
    return; // refused at once (or no route): not open
  }
  uint32_t events = EPOLLOUT;
  if (udp) {
    // A CoAP ping (confirmable, empty, message id 0x6f74): a CoAP server answers with a reset.
    const std::array<uint8_t, 4> ping{0x40, 0x00, 0x6f, 0x74};
    (void)::send(fd.get(), ping.data(), ping.size(), MSG_NOSIGNAL);
    events = EPOLLIN;
  }
  const int raw = fd.get();
  if (reactor_.add(raw, events, [this, raw](uint32_t ev) {
        auto it = active_.find(raw);
        if (it == active_.end()) {
          return;
        }
        if (it->second.probe.port.transport == Transport::Udp) {
          uint8_t buf[64];
          finish(raw, ::recv(raw, buf, sizeof buf, 0) > 0); // ECONNREFUSED: port unreachable
          return;
        }
        int err = 0;
        socklen_t n = sizeof err;
        (void)::getsockopt(raw, SOL_SOCKET, SO_ERROR, &err, &n);
        finish(raw, (ev & EPOLLOUT) != 0 && err == 0);
      })) {
    return;
  }
  active_.emplace(raw, Active{std::move(p), std::move(fd), Clock::now() + kProbeTimeout});
}

void ExposureScan::finish(int fd, bool open) {
  auto it = active_.find(fd);
  if (it == active_.end()) {
    return;
  }
  reactor_.remove(fd);
  if (open) {
    found_[it->second.probe.device].push_back(
        firewall::OpenPort{it->second.probe.port.port, it->second.probe.port.transport});
  }
  active_.erase(it); // closes the socket
}

void ExposureScan::report() {
  if (timer_) {
    reactor_.cancelTimer(*timer_);
    timer_.reset();
  }
  for (const auto& d : policies_->devices()) {
    auto& open = found_[d.id.str()];
    std::ranges::sort(open, {}, [](const firewall::OpenPort& o) { return o.port; });
    open.erase(std::unique(open.begin(), open.end()), open.end());
    for (auto& x : firewall::unexpectedServices(d, open)) {
      Event e;
      e.type = EventType::ExposedService;
      e.device = d.id.str();
      e.protocol = x.open.transport == Transport::Tcp ? "tcp" : "udp";
      e.rule = fmt::format("exposure-scan:{}/{}", x.open.port, e.protocol);
      e.action = "report";
      e.message = std::move(x.message);
      sink_.emit(std::move(e));
    }
  }
  results_ = std::move(found_);
  found_.clear();
  policies_.reset();
  ++completed_;
}

} // namespace iotgw::daemon
