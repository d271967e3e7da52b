// SPDX-License-Identifier: GPL-3.0-or-later
// OpenSSL only: this translation unit must not include any WolfSSL header.
#include "protocols/mqtt/client_id.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <span>

namespace iotgw::mqtt {

namespace {

constexpr size_t kShortForm = 23;

bool shortForm(std::string_view id) {
  return !id.empty() && id.size() <= kShortForm && std::ranges::all_of(id, [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

std::string hex(std::span<const unsigned char> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (const unsigned char b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0x0F]);
  }
  return out;
}

} // namespace

std::string upstreamClientId(std::string_view prefix, std::string_view device,
                             std::string_view clientId) {
  std::string out;
  out.append(prefix).append(device);
  if (clientId == device) {
    return out;
  }
  out.push_back(':');
  if (shortForm(clientId)) {
    return out.append(clientId);
  }
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  if (clientId.empty()) {
    // A client without an identifier gets a new session every time (MQTT-3.1.3-6).
    if (RAND_bytes(digest.data(), 16) != 1) {
      std::ranges::generate(digest, [] { return static_cast<unsigned char>(::random()); });
    }
  } else {
    (void)EVP_Digest(clientId.data(), clientId.size(), digest.data(), &length, EVP_sha256(),
                     nullptr);
  }
  out.push_back('~');
  return out.append(hex(std::span(digest.data(), 16)));
}

std::string pushClientId(std::string_view prefix, std::string_view device) {
  return std::string(prefix).append(device).append(":!coap");
}

std::string storeClientId(std::string_view prefix, std::string_view device) {
  return std::string(prefix).append(device).append(":!store");
}

} // namespace iotgw::mqtt
