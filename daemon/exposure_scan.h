// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The exposure scan (EN 303 645 5.6-1): every enrolled device's well-known service ports probed
// from the gateway with non-blocking connects (a CoAP ping for 5683/udp), at a bounded rate, on
// the event loop. The probes carry firewall::kScanMark, which the output chain lets through. An
// open port the device's policy does not list is an `exposed-service` event; the firewall already
// keeps it unreachable from everything but the gateway.

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "daemon/event_sink.h"
#include "firewall/exposure.h"
#include "policy/policy_set.h"
#include "protocols/io/reactor.h"

namespace iotgw::daemon {

class ExposureScan {
public:
  ExposureScan(io::Reactor& reactor, EventSink& sink);
  ExposureScan(const ExposureScan&) = delete;
  ExposureScan& operator=(const ExposureScan&) = delete;
  ~ExposureScan();

  // Starts a scan of every enrolled device (ignored while one runs).
  void start(std::shared_ptr<const policy::PolicySet> policies, uint32_t probesPerSecond);
  [[nodiscard]] bool running() const { return policies_ != nullptr; }
  // Open ports per device found by the last finished scan.
  [[nodiscard]] const std::map<std::string, std::vector<firewall::OpenPort>>& results() const {
    return results_;
  }
  [[nodiscard]] uint64_t scansCompleted() const { return completed_; }

private:
  using Clock = std::chrono::steady_clock;
  struct Probe {
    std::string device;
    policy::IpAddress address;
    firewall::ScanPort port;
  };
  struct Active {
    Probe probe;
    io::UniqueFd fd;
    Clock::time_point deadline;
  };
  void tick();
  void launch(Probe p);
  void finish(int fd, bool open);
  void report();

  io::Reactor& reactor_;
  EventSink& sink_;
  std::shared_ptr<const policy::PolicySet> policies_; // set while a scan runs
  std::deque<Probe> queue_;
  std::map<int, Active> active_;
  std::map<std::string, std::vector<firewall::OpenPort>> found_;
  std::map<std::string, std::vector<firewall::OpenPort>> results_;
  std::optional<io::Reactor::TimerId> timer_;
  uint64_t completed_ = 0;
};

} // namespace iotgw::daemon
