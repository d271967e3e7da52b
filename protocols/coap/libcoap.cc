// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/coap/libcoap.h"

#include <sys/random.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "protocols/io/socket.h"

namespace iotgw::coap::libcoap {

// Random bytes from the kernel, drawn 256 at a time: libcoap wants one byte for the jitter of
// every confirmable message it sends, and every datagram to a device needs an unpredictable token
// (RFC 9175 §4.2), which would otherwise cost a getrandom call each. Loop thread only.
int randomBytes(void* out, size_t len) noexcept {
  static uint8_t pool[256];
  static size_t left = 0;
  auto* dst = static_cast<uint8_t*>(out);
  while (len > 0) {
    if (left == 0) {
      size_t got = 0;
      while (got < sizeof pool) {
        const ssize_t n = getrandom(pool + got, sizeof pool - got, 0);
        if (n < 0 && errno != EINTR) {
          return 0;
        }
        got += n > 0 ? static_cast<size_t>(n) : 0;
      }
      left = sizeof pool;
    }
    const size_t take = std::min(len, left);
    std::memcpy(dst, pool + sizeof pool - left, take);
    std::memset(pool + sizeof pool - left, 0, take); // handed out once, never kept
    left -= take;
    dst += take;
    len -= take;
  }
  return 1;
}

void randomSpan(std::span<uint8_t> out) {
  if (randomBytes(out.data(), out.size()) == 0) {
    // getrandom does not fail once the pool is initialised; should it, no token may be guessable.
    std::abort();
  }
}

std::optional<policy::IpAddress> addressOf(const coap_address_t* a) {
  if (a == nullptr) {
    return std::nullopt;
  }
  sockaddr_storage ss{};
  std::memcpy(&ss, &a->addr, std::min<size_t>(a->size, sizeof ss));
  if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) {
    return std::nullopt;
  }
  return io::fromSockaddr(ss).first;
}

std::string labelOf(const coap_address_t* a) {
  if (a == nullptr) {
    return "?";
  }
  sockaddr_storage ss{};
  std::memcpy(&ss, &a->addr, std::min<size_t>(a->size, sizeof ss));
  const auto [ip, port] = io::fromSockaddr(ss);
  return io::endpointLabel(ip, port);
}

Bytes tokenOf(const coap_pdu_t* pdu) {
  const coap_bin_const_t t = coap_pdu_get_token(pdu);
  return Bytes(t.s, t.s + t.length);
}

coap_bin_const_t binOf(const Bytes& b) { return coap_bin_const_t{b.size(), b.data()}; }

bool hasOption(const coap_pdu_t* pdu, uint16_t number) {
  coap_opt_iterator_t it;
  return coap_check_option(pdu, number, &it) != nullptr;
}

Message toMessage(const coap_pdu_t* pdu, bool dropBlock1) {
  Message m;
  m.type = static_cast<Type>(coap_pdu_get_type(pdu));
  m.code = static_cast<uint8_t>(coap_pdu_get_code(pdu));
  m.messageId = static_cast<uint16_t>(coap_pdu_get_mid(pdu));
  const coap_bin_const_t t = coap_pdu_get_token(pdu);
  m.token = View(t.s, t.length);
  coap_opt_iterator_t it;
  coap_option_iterator_init(pdu, &it, COAP_OPT_ALL);
  while (coap_opt_t* o = coap_option_next(&it)) {
    if (dropBlock1 && it.number == COAP_OPTION_BLOCK1) {
      continue;
    }
    m.options.push_back(
        {static_cast<uint16_t>(it.number), View(coap_opt_value(o), coap_opt_length(o))});
  }
  size_t len = 0, offset = 0, total = 0;
  const uint8_t* data = nullptr;
  if (coap_get_data_large(pdu, &len, &data, &offset, &total) && data != nullptr) {
    m.payload = View(data, len);
  }
  return m;
}

namespace {

// Loop thread only: a plain counter.
uint64_t g_discardedPdus = 0;

// libcoap logs to stderr by default; only its errors are worth an operator's attention, and
// IOTGW_COAP_DEBUG=1 shows everything (for debugging the proxy, never in production).
void logHandler(coap_log_t level, const char* message) noexcept {
  if (level == LOG_WARNING && std::strstr(message, "discard malformed PDU") != nullptr) {
    ++g_discardedPdus;
  }
  if (level <= LOG_ERR || std::getenv("IOTGW_COAP_DEBUG") != nullptr) {
    std::fprintf(stderr, "libcoap: %s", message);
  }
}

} // namespace

uint64_t discardedPdus() noexcept { return g_discardedPdus; }

void startup() {
  static const bool started = [] {
    coap_startup();
    coap_set_prng(randomBytes);
    coap_set_log_handler(logHandler);
    const bool debug = std::getenv("IOTGW_COAP_DEBUG") != nullptr;
    coap_set_log_level(debug ? LOG_DEBUG : LOG_WARNING);
    coap_dtls_set_log_level(debug ? LOG_DEBUG : LOG_ERR);
    return true;
  }();
  (void)started;
}

} // namespace iotgw::coap::libcoap
