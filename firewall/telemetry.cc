// SPDX-License-Identifier: GPL-3.0-or-later
#include "firewall/telemetry.h"

#include <algorithm>

namespace iotgw::firewall {

std::vector<Surge> TrafficWatch::sample(const std::map<std::string, DeviceCounters>& readings,
                                        Clock::time_point at) {
  std::vector<Surge> surges;
  const double seconds = std::chrono::duration<double>(at - lastAt_).count();
  const bool haveInterval = !last_.empty() && seconds > 0;
  std::map<std::string, DeviceRates> rates;
  std::map<std::string, History> history;
  for (const auto& [id, now] : readings) {
    DeviceRates r;
    History h;
    const auto before = last_.find(id);
    const bool continues =
        haveInterval && before != last_.end() && now.tx.bytes >= before->second.tx.bytes &&
        now.rx.bytes >= before->second.rx.bytes && now.tx.packets >= before->second.tx.packets;
    if (continues) {
      const DeviceRates& was = rates_[id];
      h = history_[id];
      r.txBytesPerSecond = static_cast<double>(now.tx.bytes - before->second.tx.bytes) / seconds;
      r.rxBytesPerSecond = static_cast<double>(now.rx.bytes - before->second.rx.bytes) / seconds;
      r.txPacketsPerSecond =
          static_cast<double>(now.tx.packets - before->second.tx.packets) / seconds;
      r.baselineTxBytesPerSecond = was.baselineTxBytesPerSecond;
      r.surging = was.surging;
      const double threshold =
          std::max(settings_.factor * r.baselineTxBytesPerSecond, settings_.floorBytesPerSecond);
      if (h.intervals >= settings_.warmupIntervals && !r.surging &&
          r.txBytesPerSecond > threshold) {
        r.surging = true;
        surges.push_back({id, r.txBytesPerSecond, r.baselineTxBytesPerSecond});
      } else if (r.surging && r.txBytesPerSecond < 2 * r.baselineTxBytesPerSecond + 1) {
        r.surging = false;
      }
      // A surge does not teach the baseline: a flood that lasts stays abnormal.
      if (!r.surging) {
        r.baselineTxBytesPerSecond =
            h.intervals == 0 ? r.txBytesPerSecond
                             : (1 - settings_.learningRate) * r.baselineTxBytesPerSecond +
                                   settings_.learningRate * r.txBytesPerSecond;
        ++h.intervals;
      }
    }
    rates.emplace(id, r);
    history.emplace(id, h);
  }
  last_ = readings;
  lastAt_ = at;
  rates_ = std::move(rates);
  history_ = std::move(history);
  return surges;
}

} // namespace iotgw::firewall
