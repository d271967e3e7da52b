// SPDX-License-Identifier: GPL-3.0-or-later
// libFuzzer target: the device policy parser and, for documents it accepts, the evaluator on a
// payload taken from the same input, so payload rules and topic matching are fuzzed too.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "policy/evaluator.h"
#include "policy/json.h"
#include "policy/policy_parser.h"
#include "policy/topic.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  // Everything after a NUL byte is a payload to evaluate against the policy.
  std::string_view payload;
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
    payload = text.substr(nul + 1);
    text = text.substr(0, nul);
  }
  auto p = iotgw::policy::parseDevicePolicy(text, "fuzz.toml");
  (void)iotgw::policy::parseJson(payload);
  if (!p) {
    if (p.error().empty()) {
      std::abort(); // a rejection always says why
    }
    return 0;
  }
  const auto bytes = std::span(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
  for (const auto& pattern : p->mqttRules.publish) {
    if (auto topic = iotgw::policy::substitutePattern(pattern, {"dev", "dev", "user"})) {
      iotgw::policy::PublishFacts f{"user", *topic, 0, false, bytes};
      (void)iotgw::policy::evaluatePublish(*p, f);
      (void)iotgw::policy::evaluateDelivery(*p, f);
      (void)iotgw::policy::evaluateSubscribe(*p, {"user", *topic, 1});
    }
  }
  for (const auto& rule : p->coapRules.rules) {
    (void)iotgw::policy::evaluateCoapRequest(
        *p, {iotgw::policy::CoapMethod::Get, rule.path, payload.size(), 0});
  }
  return 0;
}
