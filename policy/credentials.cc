// SPDX-License-Identifier: GPL-3.0-or-later
#include <wolfssl/options.h>

#include "policy/credentials.h"

#include <algorithm>

#include <charconv>
#include <fmt/format.h>

#include <wolfssl/wolfcrypt/hash.h>
#include <wolfssl/wolfcrypt/pwdbased.h>
#include <wolfssl/wolfcrypt/random.h>

namespace iotgw::policy {

bool constantTimeEquals(std::span<const uint8_t> a, std::span<const uint8_t> b) noexcept {
  // Walk the longer buffer entirely so that neither length nor content decides the timing.
  const size_t n = a.size() > b.size() ? a.size() : b.size();
  volatile uint8_t diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t x = i < a.size() ? a[i] : 0;
    const uint8_t y = i < b.size() ? b[i] : 0;
    diff = static_cast<uint8_t>(diff | (x ^ y));
  }
  return diff == 0;
}

bool constantTimeEquals(std::string_view a, std::string_view b) noexcept {
  return constantTimeEquals(std::span(reinterpret_cast<const uint8_t*>(a.data()), a.size()),
                            std::span(reinterpret_cast<const uint8_t*>(b.data()), b.size()));
}

void secureWipe(void* p, size_t n) noexcept {
  volatile auto* v = static_cast<volatile uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) {
    v[i] = 0;
  }
}

namespace {

constexpr std::string_view kAlphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr std::string_view kScheme = "pbkdf2-sha256";

bool derive(std::string_view password, std::span<const uint8_t> salt, uint32_t iterations,
            std::span<uint8_t, PasswordHash::kHashBytes> out) {
  return wc_PBKDF2(out.data(), reinterpret_cast<const byte*>(password.data()),
                   static_cast<int>(password.size()), salt.data(), static_cast<int>(salt.size()),
                   static_cast<int>(iterations), static_cast<int>(out.size()), WC_SHA256) == 0;
}

} // namespace

std::string base64Encode(std::span<const uint8_t> data) {
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= data.size(); i += 3) {
    const uint32_t v = (uint32_t{data[i]} << 16) | (uint32_t{data[i + 1]} << 8) | data[i + 2];
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(kAlphabet[(v >> 6) & 63]);
    out.push_back(kAlphabet[v & 63]);
  }
  if (const size_t rest = data.size() - i; rest > 0) {
    uint32_t v = uint32_t{data[i]} << 16;
    if (rest == 2) {
      v |= uint32_t{data[i + 1]} << 8;
    }
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    if (rest == 2) {
      out.push_back(kAlphabet[(v >> 6) & 63]);
    }
  }
  return out; // unpadded, as in the PHC string format
}

std::expected<std::vector<uint8_t>, std::string> base64Decode(std::string_view text) {
  if (text.size() % 4 == 1) {
    return std::unexpected("base64 text has an impossible length");
  }
  std::vector<uint8_t> out;
  uint32_t acc = 0;
  int bits = 0;
  for (const char c : text) {
    const size_t idx = kAlphabet.find(c);
    if (idx == std::string_view::npos) {
      return std::unexpected("base64 text has a character outside the alphabet");
    }
    acc = (acc << 6) | static_cast<uint32_t>(idx);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>((acc >> bits) & 0xFF));
    }
  }
  if ((acc & ((1u << bits) - 1)) != 0) {
    return std::unexpected("base64 text has non-zero padding bits");
  }
  return out;
}

PasswordHash PasswordHash::unmatchable(uint32_t iterations) {
  // Any stored value would do: finding a password whose PBKDF2 output is 32 given bytes is as hard
  // as inverting SHA-256. The work per check is what matters.
  PasswordHash h;
  h.iterations_ = std::clamp(iterations, kMinIterations, kMaxIterations);
  h.salt_.assign(kSaltBytes, 0x5a);
  h.hash_.fill(0xa5);
  return h;
}

std::expected<PasswordHash, std::string> PasswordHash::parse(std::string_view text) {
  // Split into exactly four '$'-separated fields.
  std::array<std::string_view, 4> f{};
  size_t n = 0;
  size_t start = 0;
  while (n < f.size()) {
    const size_t d = text.find('$', start);
    f[n++] = text.substr(start, d == std::string_view::npos ? std::string_view::npos : d - start);
    if (d == std::string_view::npos) {
      break;
    }
    start = d + 1;
    if (n == f.size()) {
      return std::unexpected("password hash has too many '$'-separated fields");
    }
  }
  if (n != 4) {
    return std::unexpected("password hash must look like pbkdf2-sha256$<iterations>$<salt>$<hash>");
  }
  if (f[0] != kScheme) {
    return std::unexpected(fmt::format("password hash scheme must be '{}'", kScheme));
  }
  PasswordHash h;
  const auto [p, ec] = std::from_chars(f[1].data(), f[1].data() + f[1].size(), h.iterations_);
  if (ec != std::errc{} || p != f[1].data() + f[1].size()) {
    return std::unexpected("password hash iteration count is not a number");
  }
  if (h.iterations_ < kMinIterations || h.iterations_ > kMaxIterations) {
    return std::unexpected(fmt::format("password hash iteration count must be in [{}, {}]",
                                       kMinIterations, kMaxIterations));
  }
  auto salt = base64Decode(f[2]);
  if (!salt || salt->size() < 8 || salt->size() > 64) {
    return std::unexpected("password hash salt must be 8 to 64 bytes of base64");
  }
  auto hash = base64Decode(f[3]);
  if (!hash || hash->size() != kHashBytes) {
    return std::unexpected("password hash must be 32 bytes of base64");
  }
  h.salt_ = std::move(*salt);
  std::copy(hash->begin(), hash->end(), h.hash_.begin());
  return h;
}

std::expected<PasswordHash, std::string> PasswordHash::create(std::string_view password,
                                                              uint32_t iterations) {
  if (iterations < kMinIterations || iterations > kMaxIterations) {
    return std::unexpected("iteration count out of range");
  }
  PasswordHash h;
  h.iterations_ = iterations;
  h.salt_.resize(kSaltBytes);
  WC_RNG rng;
  if (wc_InitRng(&rng) != 0) {
    return std::unexpected("cannot initialise the random number generator");
  }
  const int rc = wc_RNG_GenerateBlock(&rng, h.salt_.data(), static_cast<word32>(h.salt_.size()));
  wc_FreeRng(&rng);
  if (rc != 0) {
    return std::unexpected("cannot generate a salt");
  }
  if (!derive(password, h.salt_, iterations, h.hash_)) {
    return std::unexpected("PBKDF2 failed");
  }
  return h;
}

bool PasswordHash::verify(std::string_view password) const {
  std::array<uint8_t, kHashBytes> candidate{};
  const bool ok = derive(password, salt_, iterations_, candidate) &&
                  constantTimeEquals(std::span<const uint8_t>(candidate), hash_);
  secureWipe(candidate.data(), candidate.size());
  return ok;
}

std::string PasswordHash::str() const {
  return fmt::format("{}${}${}${}", kScheme, iterations_, base64Encode(salt_), base64Encode(hash_));
}

std::span<const CredentialPair> builtinDefaultCredentials() {
  // The 62 pairs hard-coded in the Mirai botnet's scanner (2016 source release), followed by
  // widespread vendor defaults for cameras, routers, NAS and IoT hubs.
  static const std::vector<CredentialPair> list = {
      // Mirai
      {"root", "xc3511"},
      {"root", "vizxv"},
      {"root", "admin"},
      {"admin", "admin"},
      {"root", "888888"},
      {"root", "xmhdipc"},
      {"root", "default"},
      {"root", "juantech"},
      {"root", "123456"},
      {"root", "54321"},
      {"support", "support"},
      {"root", ""},
      {"admin", "password"},
      {"root", "root"},
      {"root", "12345"},
      {"user", "user"},
      {"admin", ""},
      {"root", "pass"},
      {"admin", "admin1234"},
      {"root", "1111"},
      {"admin", "smcadmin"},
      {"admin", "1111"},
      {"root", "666666"},
      {"root", "password"},
      {"root", "1234"},
      {"root", "klv123"},
      {"Administrator", "admin"},
      {"service", "service"},
      {"supervisor", "supervisor"},
      {"guest", "guest"},
      {"guest", "12345"},
      {"admin1", "password"},
      {"administrator", "1234"},
      {"666666", "666666"},
      {"888888", "888888"},
      {"ubnt", "ubnt"},
      {"root", "klv1234"},
      {"root", "Zte521"},
      {"root", "hi3518"},
      {"root", "jvbzd"},
      {"root", "anko"},
      {"root", "zlxx."},
      {"root", "7ujMko0vizxv"},
      {"root", "7ujMko0admin"},
      {"root", "system"},
      {"root", "ikwb"},
      {"root", "dreambox"},
      {"root", "user"},
      {"root", "realtek"},
      {"root", "00000000"},
      {"admin", "1111111"},
      {"admin", "1234"},
      {"admin", "12345"},
      {"admin", "54321"},
      {"admin", "123456"},
      {"admin", "7ujMko0admin"},
      {"admin", "pass"},
      {"admin", "meinsm"},
      {"tech", "tech"},
      {"mother", "fucker"},
      // Vendor defaults
      {"admin", "admin123"},
      {"admin", "12345678"},
      {"admin", "default"},
      {"admin", "changeme"},
      {"admin", "9999"},
      {"admin", "4321"},
      {"admin", "888888"},
      {"admin", "666666"},
      {"admin", "fliradmin"},
      {"admin", "ikwd"},
      {"admin", "jvc"},
      {"admin", "tlJwpbo6"},
      {"admin", "system"},
      {"root", "toor"},
      {"root", "calvin"},
      {"root", "pass123"},
      {"root", "GM8182"},
      {"root", "vhd1206"},
      {"root", "hg2x0"},
      {"root", "ivdev"},
      {"root", "5up"},
      {"root", "Serv4EMC"},
      {"root", "ipcam_rt5350"},
      {"root", "zsun1188"},
      {"pi", "raspberry"},
      {"cisco", "cisco"},
      {"user", "password"},
      {"guest", ""},
      {"default", "default"},
      {"default", ""},
      {"operator", "operator"},
      {"test", "test"},
      {"mosquitto", "mosquitto"},
      {"mqtt", "mqtt"},
      {"device", "device"},
      {"iot", "iot"},
  };
  return list;
}

DefaultCredentials::DefaultCredentials() {
  const auto builtin = builtinDefaultCredentials();
  pairs_.assign(builtin.begin(), builtin.end());
}

void DefaultCredentials::add(CredentialPair pair) { pairs_.push_back(std::move(pair)); }

bool DefaultCredentials::matches(std::string_view username,
                                 std::string_view password) const noexcept {
  bool hit = false;
  for (const auto& p : pairs_) {
    // Both comparisons always run: no short-circuit between them.
    const unsigned user = constantTimeEquals(p.username, username) ? 1u : 0u;
    const unsigned pass = constantTimeEquals(p.password, password) ? 1u : 0u;
    hit = hit || (user & pass) != 0;
  }
  return hit;
}

} // namespace iotgw::policy
