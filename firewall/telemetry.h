// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Per-device traffic telemetry (EN 303 645 5.10-1): successive readings of the table's per-device
// counters become rates, each device's outbound rate is learnt as a slow-moving baseline, and a
// sudden multiple of it — a device turned into a flooder, a scanner, an exfiltrating camera — is a
// surge. Pure; the daemon reads the counters and raises the events.

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "firewall/netlink.h"

namespace iotgw::firewall {

struct DeviceCounters {
  CounterValue tx; // from the device
  CounterValue rx; // to the device
};

struct DeviceRates {
  double txBytesPerSecond = 0;
  double rxBytesPerSecond = 0;
  double txPacketsPerSecond = 0;
  double baselineTxBytesPerSecond = 0; // learnt; 0 until the first interval
  bool surging = false;
};

struct Surge {
  std::string device;
  double txBytesPerSecond = 0;
  double baselineTxBytesPerSecond = 0;
};

class TrafficWatch {
public:
  using Clock = std::chrono::steady_clock;
  struct Settings {
    double factor = 10; // a surge is this many times the baseline...
    double floorBytesPerSecond =
        1 << 20;                  // ...and at least this much (quiet devices spike harmlessly)
    unsigned warmupIntervals = 3; // intervals learnt before anything counts as a surge
    double learningRate = 0.2;    // weight of each new interval in the baseline
  };
  TrafficWatch() = default;
  explicit TrafficWatch(Settings s) : settings_(s) {}

  // One reading of every enrolled device's counters, taken at `at`. Returns the devices whose
  // outbound rate has just become a surge (each once, until it subsides below twice the baseline).
  // A device whose counters went backwards (removed and enrolled again) starts over.
  std::vector<Surge> sample(const std::map<std::string, DeviceCounters>& readings,
                            Clock::time_point at);

  [[nodiscard]] const std::map<std::string, DeviceCounters>& counters() const { return last_; }
  [[nodiscard]] const std::map<std::string, DeviceRates>& rates() const { return rates_; }

private:
  struct History {
    unsigned intervals = 0;
  };
  Settings settings_;
  Clock::time_point lastAt_{};
  std::map<std::string, DeviceCounters> last_;
  std::map<std::string, DeviceRates> rates_;
  std::map<std::string, History> history_;
};

} // namespace iotgw::firewall
