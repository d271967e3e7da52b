// SPDX-License-Identifier: GPL-3.0-or-later
// The cost of the payload rules' JSON parser on the event loop: microseconds per message for a
// typical device reading and for a hostile object with many keys (the duplicate-key check used to
// compare every key with every earlier one). A figure to compare before and after a change on
// the same machine, not a test.
//
//   json_bench [KEYS [ROUNDS]]    defaults: 30000 keys, 20 rounds of the large object
//
// Prints one line per payload: name, size, rounds, best and median microseconds per message.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "policy/json.h"

namespace {

using Clock = std::chrono::steady_clock;

// {"k00000":0,"k00001":1,...}: distinct keys, so the whole object is parsed (and checked).
std::string manyKeys(size_t keys) {
  std::string s = "{";
  char buf[48];
  for (size_t i = 0; i < keys; ++i) {
    const int n = std::snprintf(buf, sizeof buf, "%s\"k%05zu\":%zu", i == 0 ? "" : ",", i, i);
    s.append(buf, static_cast<size_t>(n));
  }
  s += "}";
  return s;
}

void run(const char* name, const std::string& payload, size_t rounds) {
  std::vector<double> us;
  us.reserve(rounds);
  for (size_t i = 0; i < rounds; ++i) {
    const auto start = Clock::now();
    const auto v = iotgw::policy::parseJson(payload);
    const auto end = Clock::now();
    if (!v) {
      std::fprintf(stderr, "%s: refused at %zu: %s\n", name, v.error().offset,
                   v.error().message.c_str());
      std::exit(1);
    }
    us.push_back(std::chrono::duration<double, std::micro>(end - start).count());
  }
  std::ranges::sort(us);
  std::printf("%-10s bytes=%zu rounds=%zu best_us=%.2f median_us=%.2f\n", name, payload.size(),
              rounds, us.front(), us[us.size() / 2]);
}

} // namespace

int main(int argc, char** argv) {
  const size_t keys = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 30000;
  const size_t rounds = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 20;
  if (keys == 0 || rounds == 0) {
    std::fprintf(stderr, "usage: json_bench [KEYS [ROUNDS]]\n");
    return 2;
  }
  // What a thermostat sends: a handful of keys.
  run("small", R"({"t": 21.5, "unit": "C", "rh": 48, "battery": 87, "ok": true})", 200000);
  run("manykeys", manyKeys(keys), rounds);
  return 0;
}
