// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Device credentials: salted PBKDF2-HMAC-SHA256 password hashes (wolfCrypt) and the list of
// universal default credentials that the gateway always refuses (EN 303 645 provision 5.1-1).

#include <array>
#include <cstdint>
#include <expected>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace iotgw::policy {

// Compares in time that depends only on the lengths of the inputs' buffers, never on where they
// differ. Lengths are compared too, without an early exit.
[[nodiscard]] bool constantTimeEquals(std::span<const uint8_t> a,
                                      std::span<const uint8_t> b) noexcept;
[[nodiscard]] bool constantTimeEquals(std::string_view a, std::string_view b) noexcept;

// Overwrites memory in a way the optimiser cannot elide.
void secureWipe(void* p, size_t n) noexcept;

// "pbkdf2-sha256$<iterations>$<salt, base64>$<hash, base64>"
class PasswordHash {
public:
  static constexpr uint32_t kDefaultIterations = 100'000;
  static constexpr uint32_t kMinIterations = 10'000;
  static constexpr uint32_t kMaxIterations = 10'000'000;
  static constexpr size_t kSaltBytes = 16;
  static constexpr size_t kHashBytes = 32;

  // Parses the textual form; the error says what is wrong with it (never echoing the value).
  [[nodiscard]] static std::expected<PasswordHash, std::string> parse(std::string_view text);
  // Hashes `password` with a fresh random salt.
  [[nodiscard]] static std::expected<PasswordHash, std::string>
  create(std::string_view password, uint32_t iterations = kDefaultIterations);

  // A hash of `iterations` that no password matches: an unknown user name is checked against
  // one, so that it takes as long as a known one with a wrong password.
  [[nodiscard]] static PasswordHash unmatchable(uint32_t iterations);

  [[nodiscard]] bool verify(std::string_view password) const;
  [[nodiscard]] std::string str() const;
  [[nodiscard]] uint32_t iterations() const { return iterations_; }

private:
  PasswordHash() = default;
  uint32_t iterations_ = 0;
  std::vector<uint8_t> salt_;
  std::array<uint8_t, kHashBytes> hash_{};
};

struct CredentialPair {
  std::string username;
  std::string password;
};

// The universal default credentials: those the Mirai botnet tried, and common vendor defaults.
[[nodiscard]] std::span<const CredentialPair> builtinDefaultCredentials();

// The refusal list: the built-in pairs plus those the configuration adds. Matching is exact
// (case-sensitive) and every entry is compared in constant time, with no early exit, so the time
// taken does not tell which entry matched or how much of it.
class DefaultCredentials {
public:
  DefaultCredentials();
  void add(CredentialPair pair);
  [[nodiscard]] bool matches(std::string_view username, std::string_view password) const noexcept;
  [[nodiscard]] size_t size() const { return pairs_.size(); }

private:
  std::vector<CredentialPair> pairs_;
};

std::string base64Encode(std::span<const uint8_t> data);
std::expected<std::vector<uint8_t>, std::string> base64Decode(std::string_view text);

} // namespace iotgw::policy
