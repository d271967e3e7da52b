// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/coap/dtls_cookie.h"

#include <algorithm>
#include <cstring>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

namespace iotgw::coap::dtls {

namespace {

constexpr uint8_t kHandshake = 22;
constexpr uint8_t kDtlsMajor = 0xfe;
constexpr uint8_t kClientHelloType = 1;
constexpr uint8_t kHelloVerifyRequestType = 3;
constexpr uint8_t kDtls10Minor = 0xff;

// A bounds-checked reader over the peeked bytes.
class Reader {
public:
  explicit Reader(View v) : v_(v) {}
  [[nodiscard]] bool take(size_t n, View& out) {
    if (v_.size() < n) {
      return false;
    }
    out = v_.first(n);
    v_ = v_.subspan(n);
    return true;
  }
  [[nodiscard]] bool uint(size_t n, uint32_t& out) {
    View b;
    if (!take(n, b)) {
      return false;
    }
    out = 0;
    for (uint8_t x : b) {
      out = out << 8 | x;
    }
    return true;
  }
  [[nodiscard]] bool prefixed(View& out) {
    uint32_t n = 0;
    return uint(1, n) && take(n, out);
  }

private:
  View v_;
};

void put(Bytes& out, uint32_t value, size_t n) {
  for (size_t i = n; i > 0; --i) {
    out.push_back(static_cast<uint8_t>(value >> (8 * (i - 1))));
  }
}

} // namespace

std::expected<ClientHello, HelloError> parseClientHello(View head, size_t size) noexcept {
  if (head.size() < kRecordHeaderBytes + 1 || head[0] != kHandshake || head[1] != kDtlsMajor ||
      head[3] != 0 || head[4] != 0 || head[kRecordHeaderBytes] != kClientHelloType) {
    // Too short to be one, or another content type, version or epoch, or another message:
    // nothing a listener takes as the start of a handshake.
    return std::unexpected(HelloError::NotClientHello);
  }
  ClientHello hello;
  std::copy_n(head.begin() + 3, hello.sequence.size(), hello.sequence.begin());
  const size_t recordLength = size_t{head[11]} << 8 | head[12];
  if (recordLength > size - kRecordHeaderBytes) {
    return std::unexpected(HelloError::Malformed);
  }
  Reader r(head.subspan(kRecordHeaderBytes));
  uint32_t type = 0, length = 0, messageSeq = 0, fragmentOffset = 0, fragmentLength = 0;
  if (!r.uint(1, type) || !r.uint(3, length) || !r.uint(2, messageSeq) ||
      !r.uint(3, fragmentOffset) || !r.uint(3, fragmentLength)) {
    return std::unexpected(HelloError::Malformed);
  }
  // One unfragmented ClientHello filling the record exactly; DTLSv1_listen keeps no state to
  // reassemble fragments and drops anything else.
  if (messageSeq > 1 || fragmentOffset != 0 || fragmentLength > length ||
      recordLength != kHandshakeHeaderBytes + fragmentLength) {
    return std::unexpected(HelloError::Malformed);
  }
  View version, random, sessionId, cookie;
  if (!r.take(2, version) || !r.take(32, random) || !r.prefixed(sessionId) || !r.prefixed(cookie) ||
      kHandshakeHeaderBytes + 2 + 32 + 1 + sessionId.size() + 1 + cookie.size() > recordLength) {
    return std::unexpected(HelloError::Malformed);
  }
  hello.cookie = cookie;
  return hello;
}

Bytes helloVerifyRequest(const ClientHello& hello, View cookie) {
  const size_t body = 2 + 1 + cookie.size();
  Bytes out;
  out.reserve(kRecordHeaderBytes + kHandshakeHeaderBytes + body);
  out.push_back(kHandshake);
  out.push_back(kDtlsMajor);
  out.push_back(kDtls10Minor);
  out.insert(out.end(), hello.sequence.begin(), hello.sequence.end()); // RFC 6347 §4.2.1
  put(out, static_cast<uint32_t>(kHandshakeHeaderBytes + body), 2);
  out.push_back(kHelloVerifyRequestType);
  put(out, static_cast<uint32_t>(body), 3);
  put(out, 0, 2); // message_seq
  put(out, 0, 3); // fragment offset
  put(out, static_cast<uint32_t>(body), 3);
  out.push_back(kDtlsMajor);
  out.push_back(kDtls10Minor);
  out.push_back(static_cast<uint8_t>(cookie.size()));
  out.insert(out.end(), cookie.begin(), cookie.end());
  return out;
}

// One secret as a ready HMAC: initialised with the key once, re-initialised without it for each
// cookie, so that a flood of ClientHellos costs no allocation and no algorithm lookup per packet.
struct CookieJar::Key {
  std::unique_ptr<EVP_MAC, decltype(&EVP_MAC_free)> mac{nullptr, EVP_MAC_free};
  std::unique_ptr<EVP_MAC_CTX, decltype(&EVP_MAC_CTX_free)> ctx{nullptr, EVP_MAC_CTX_free};

  bool init(const Secret& secret) {
    mac.reset(EVP_MAC_fetch(nullptr, "HMAC", nullptr));
    if (!mac) {
      return false;
    }
    ctx.reset(EVP_MAC_CTX_new(mac.get()));
    char digest[] = "SHA256";
    const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                                 OSSL_PARAM_END};
    return ctx && EVP_MAC_init(ctx.get(), secret.data(), secret.size(), params) == 1;
  }

  std::optional<Cookie> make(View client) const {
    uint8_t full[EVP_MAX_MD_SIZE];
    size_t len = 0;
    if (EVP_MAC_init(ctx.get(), nullptr, 0, nullptr) != 1 ||
        EVP_MAC_update(ctx.get(), client.data(), client.size()) != 1 ||
        EVP_MAC_final(ctx.get(), full, &len, sizeof full) != 1 || len < kCookieBytes) {
      return std::nullopt;
    }
    Cookie c;
    std::memcpy(c.data(), full, c.size());
    OPENSSL_cleanse(full, sizeof full);
    return c;
  }
};

CookieJar::CookieJar(Clock::duration lifetime) : lifetime_(lifetime) {}

CookieJar::~CookieJar() = default;

bool CookieJar::rotationDue(Clock::time_point now) const noexcept {
  return !current_ || now - rotated_ >= lifetime_;
}

bool CookieJar::rotate(const Secret& fresh, Clock::time_point now) {
  auto next = std::make_unique<Key>();
  if (!next->init(fresh)) {
    current_.reset();
    previous_.reset();
    return false;
  }
  previous_ = std::move(current_);
  current_ = std::move(next);
  rotated_ = now;
  return true;
}

std::optional<Cookie> CookieJar::make(View client) const {
  if (!current_) {
    return std::nullopt;
  }
  return current_->make(client);
}

bool CookieJar::verify(View client, View cookie) const {
  if (cookie.size() != kCookieBytes) {
    return false;
  }
  for (const Key* k : {current_.get(), previous_.get()}) {
    if (k == nullptr) {
      continue;
    }
    const auto expected = k->make(client);
    if (expected && CRYPTO_memcmp(expected->data(), cookie.data(), kCookieBytes) == 0) {
      return true;
    }
  }
  return false;
}

} // namespace iotgw::coap::dtls
