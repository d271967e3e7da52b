// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The mutual-TLS server side with WolfSSL: TLS 1.2 and 1.3 only, AEAD suites only, a client
// certificate required and verified against the configured CA (and CRL), non-blocking on the
// reactor's descriptors. The peer's certificate must be a client certificate: not a CA, and with
// the clientAuth extended key usage. No OpenSSL header may be included next to this one
// (libmosquitto and libcoap bring OpenSSL into the same process).

#include <cstdint>
#include <expected>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "policy/subject_alt_name.h"
#include "protocols/io/stream.h"

struct WOLFSSL_CTX;
struct WOLFSSL;

namespace iotgw::tls {

struct ServerSettings {
  std::string certificate; // PEM, with its chain
  std::string privateKey;
  std::string caFile;  // client certificates must chain to this
  std::string crlFile; // optional; reloaded with the context
};

// The AEAD-only suites offered: TLS 1.3's three, and TLS 1.2 ECDHE with GCM or ChaCha20-Poly1305.
extern const char* const kCipherList;
// The key exchange groups, in order of preference, for TLS 1.2's ECDHE and TLS 1.3 alike.
extern const char* const kGroupList;

// An immutable server context. A reload builds a new one; connections keep the context they
// started with (WolfSSL counts the references).
class ServerContext {
public:
  [[nodiscard]] static std::expected<std::shared_ptr<ServerContext>, std::string>
  create(const ServerSettings& settings);
  ServerContext(const ServerContext&) = delete;
  ServerContext& operator=(const ServerContext&) = delete;
  ~ServerContext();
  [[nodiscard]] WOLFSSL_CTX* raw() const { return ctx_; }

private:
  explicit ServerContext(WOLFSSL_CTX* ctx) : ctx_(ctx) {}
  WOLFSSL_CTX* ctx_;
};

// The client certificate's subject common name and its DNS names and URIs, in certificate order.
using PeerIdentity = io::PeerCertificate;
using IoStatus = io::IoStatus;

// Debian's WolfSSL is built with FP_ECC: every ECDSA verification leaves a fixed-point table of
// about 200 KiB for the peer's public key in a per-thread cache, which grows with each new client
// certificate. Call this when no handshake is in progress to give that memory back; the next
// handshake rebuilds what it needs.
void releaseHandshakeCaches();

// One TLS connection over a non-blocking socket the caller owns.
class ServerStream final : public io::Stream {
public:
  [[nodiscard]] static std::expected<std::unique_ptr<ServerStream>, std::string>
  create(std::shared_ptr<ServerContext> ctx, int fd);
  ~ServerStream() override;

  // Advances the handshake. Ok: done, and peer() is valid.
  [[nodiscard]] IoStatus handshake() override;
  [[nodiscard]] bool established() const { return established_; }
  // Reads up to buf.size() bytes; `n` receives the count when Ok.
  [[nodiscard]] IoStatus read(std::span<uint8_t> buf, size_t& n) override;
  [[nodiscard]] IoStatus write(std::span<const uint8_t> buf, size_t& n) override;
  // WolfSSL may hold decrypted records the socket no longer shows.
  [[nodiscard]] bool holdsReadBytes() const override { return true; }
  [[nodiscard]] const PeerIdentity& peer() const { return peer_; }
  [[nodiscard]] const io::PeerCertificate* peerCertificate() const override {
    return established_ ? &peer_ : nullptr;
  }
  // WolfSSL's error for the last failure, for events ("-188 ASN_NO_SIGNER_E"), and why the
  // certificate was refused when it verified but is no client certificate.
  [[nodiscard]] std::string lastError() const override;
  [[nodiscard]] std::string protocolVersion() const;
  [[nodiscard]] std::string cipher() const;

private:
  ServerStream(std::shared_ptr<ServerContext> ctx, WOLFSSL* ssl)
      : ctx_(std::move(ctx)), ssl_(ssl) {}
  IoStatus status(int ret);
  void readPeer();

  std::shared_ptr<ServerContext> ctx_;
  WOLFSSL* ssl_;
  bool established_ = false;
  int lastError_ = 0;
  std::string refusal_; // set by the verify callback
  PeerIdentity peer_;
};

} // namespace iotgw::tls
