// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// What the proxy sends back on its own: the refusal of a request (piggybacked in the ACK of a
// CON, a NON for a NON, same token, the reason as a diagnostic payload, RFC 7252 §5.5.2), and the
// anti-amplification budget for a source that has not completed a handshake (RFC 9175 §2.4: never
// more than three times what it sent).

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "policy/decision.h"
#include "policy/events.h"
#include "protocols/coap/message.h"

namespace iotgw::coap {

// Diagnostic payloads are trimmed to this many bytes (they are for humans, and size counts).
inline constexpr size_t kMaxDiagnosticBytes = 64;

[[nodiscard]] Bytes refusalFor(const Message& request, uint8_t code, std::string_view reason,
                               size_t maxDiagnostic = kMaxDiagnosticBytes);

// 4.29 Too Many Requests (RFC 8516) with a Max-Age saying after how many seconds to try again.
[[nodiscard]] Bytes tooManyRequests(const Message& request, uint32_t maxAgeSeconds,
                                    std::string_view reason);

// An RST for a message we will not process at all (RFC 7252 §4.2, §4.3); nothing for an ACK or RST.
[[nodiscard]] Bytes resetFor(const Message& m);

// "4.03" for 0x83.
[[nodiscard]] std::string codeText(uint8_t code);

// The response code for a request the device's policy refused, by why it refused it.
[[nodiscard]] uint8_t codeOfDenial(policy::Reason why);

// An event of the CoAP endpoints (protocol "coap").
[[nodiscard]] policy::Event event(policy::EventType type, std::string device, std::string peer,
                                  std::string rule, std::string provision, std::string action,
                                  std::string message);

class AmplificationBudget {
public:
  static constexpr size_t kFactor = 3;
  void received(size_t bytes) noexcept { received_ += bytes; }
  [[nodiscard]] bool allows(size_t bytes) const noexcept {
    return sent_ + bytes <= kFactor * received_;
  }
  void sent(size_t bytes) noexcept { sent_ += bytes; }
  [[nodiscard]] size_t receivedBytes() const noexcept { return received_; }
  [[nodiscard]] size_t sentBytes() const noexcept { return sent_; }

private:
  size_t received_ = 0;
  size_t sent_ = 0;
};

} // namespace iotgw::coap
