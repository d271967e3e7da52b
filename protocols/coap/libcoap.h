// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The adapter to libcoap (4.3, OpenSSL variant): its process-wide set-up, its context as an
// owned handle, and its addresses as ours. Only the DTLS proxy (protocols/coap/proxy.h) and its
// gate (dtls_gate.h) use libcoap; the device-side push endpoint and the proxy's own client of
// each device are our codec over our sockets. Loop thread only.
//
// libcoap's log handler takes no user data, so what it reports (datagrams inside DTLS sessions
// that libcoap could not parse, which it drops before any handler runs) is counted in the one
// counter this adapter keeps for the process; and its PRNG hook takes none either, so the random
// pool is the process's too.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include <coap3/coap.h>

#include "policy/device.h"
#include "protocols/coap/message.h"

namespace iotgw::coap::libcoap {

// coap_startup, our PRNG and log handler, log levels (IOTGW_COAP_DEBUG=1 shows everything);
// once per process, before the first context.
void startup();

struct FreeContext {
  void operator()(coap_context_t* ctx) const noexcept { coap_free_context(ctx); }
};
using Context = std::unique_ptr<coap_context_t, FreeContext>;

// Datagrams libcoap discarded as malformed CoAP since the process started.
[[nodiscard]] uint64_t discardedPdus() noexcept;

// Random bytes from the kernel (1 on success, as libcoap's PRNG hook wants it); randomSpan
// aborts rather than hand out a guessable token (RFC 9175 §4.2).
int randomBytes(void* out, size_t len) noexcept;
void randomSpan(std::span<uint8_t> out);

[[nodiscard]] std::optional<policy::IpAddress> addressOf(const coap_address_t* a);
[[nodiscard]] std::string labelOf(const coap_address_t* a); // "ip:port", "?" for none

// PDUs.
[[nodiscard]] Bytes tokenOf(const coap_pdu_t* pdu);
[[nodiscard]] coap_bin_const_t binOf(const Bytes& b); // a view: `b` must outlive it
[[nodiscard]] bool hasOption(const coap_pdu_t* pdu, uint16_t number);
// A libcoap PDU as our codec's message: views into the PDU, which must outlive it. The payload is
// the PDU's own (one block of a block-wise body); the Block1 option describes nothing we forward
// and is left out when `dropBlock1`.
[[nodiscard]] Message toMessage(const coap_pdu_t* pdu, bool dropBlock1);

} // namespace iotgw::coap::libcoap
