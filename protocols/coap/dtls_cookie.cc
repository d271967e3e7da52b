// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/coap/dtls_cookie.h"

#include <algorithm>
#include <cstring>

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

HelloVerifyRequest helloVerifyRequest(const ClientHello& hello, View cookie) {
  HelloVerifyRequest out;
  cookie = cookie.first(std::min<size_t>(cookie.size(), 255));
  const size_t body = 2 + 1 + cookie.size();
  size_t at = 0;
  auto put = [&](uint32_t value, size_t n) {
    for (size_t i = n; i > 0; --i) {
      out.bytes[at++] = static_cast<uint8_t>(value >> (8 * (i - 1)));
    }
  };
  put(kHandshake, 1);
  put(kDtlsMajor << 8 | kDtls10Minor, 2);
  for (uint8_t b : hello.sequence) { // RFC 6347 §4.2.1: the ClientHello's record sequence number
    out.bytes[at++] = b;
  }
  put(static_cast<uint32_t>(kHandshakeHeaderBytes + body), 2);
  put(kHelloVerifyRequestType, 1);
  put(static_cast<uint32_t>(body), 3);
  put(0, 2); // message_seq
  put(0, 3); // fragment offset
  put(static_cast<uint32_t>(body), 3);
  put(kDtlsMajor << 8 | kDtls10Minor, 2);
  put(static_cast<uint32_t>(cookie.size()), 1);
  std::copy(cookie.begin(), cookie.end(), out.bytes.begin() + static_cast<ptrdiff_t>(at));
  out.size = at + cookie.size();
  return out;
}

// One secret as a ready AES-256 key. A cookie is the CBC-MAC of the client's identity padded to
// two blocks (its length in the last byte): for messages of one fixed length, as these are, a
// secure PRF. HMAC through OpenSSL's EVP interface would do as well but costs two allocations per
// cookie (it copies its digest contexts); the block cipher costs none, so a flood of ClientHellos
// allocates nothing.
struct CookieJar::Key {
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx{nullptr, EVP_CIPHER_CTX_free};

  bool init(const Secret& secret) {
    ctx.reset(EVP_CIPHER_CTX_new());
    return ctx &&
           EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_ecb(), nullptr, secret.data(), nullptr) == 1 &&
           EVP_CIPHER_CTX_set_padding(ctx.get(), 0) == 1;
  }

  std::optional<Cookie> make(View client) const {
    if (client.size() >= 32) {
      return std::nullopt;
    }
    uint8_t in[32] = {};
    std::copy(client.begin(), client.end(), in);
    in[31] = static_cast<uint8_t>(client.size());
    Cookie c;
    int len = 0;
    if (EVP_EncryptUpdate(ctx.get(), c.data(), &len, in, 16) != 1 || len != 16) {
      return std::nullopt;
    }
    for (size_t i = 0; i < 16; ++i) {
      c[i] ^= in[16 + i];
    }
    if (EVP_EncryptUpdate(ctx.get(), c.data(), &len, c.data(), 16) != 1 || len != 16) {
      return std::nullopt;
    }
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
