// SPDX-License-Identifier: GPL-3.0-or-later
#include <wolfssl/options.h>

#include "protocols/tls/server.h"

#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/asn.h>
#include <wolfssl/wolfcrypt/ecc.h>

#include <fmt/format.h>

namespace iotgw::tls {

const char* const kCipherList =
    "TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:"
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305";

const char* const kGroupList = "X25519:P-256:P-384";

namespace {

void initialise() {
  static const int once = wolfSSL_Init();
  (void)once;
}

std::string errorText(int code) {
  char buf[WOLFSSL_MAX_ERROR_SZ] = {};
  wolfSSL_ERR_error_string_n(static_cast<unsigned long>(code), buf, sizeof buf);
  return fmt::format("{} {}", code, buf);
}

} // namespace

std::expected<std::shared_ptr<ServerContext>, std::string>
ServerContext::create(const ServerSettings& s) {
  initialise();
  WOLFSSL_CTX* ctx = wolfSSL_CTX_new(wolfSSLv23_server_method());
  if (ctx == nullptr) {
    return std::unexpected("wolfSSL_CTX_new failed");
  }
  std::shared_ptr<ServerContext> owner(new ServerContext(ctx));
  const auto fail = [](std::string what, int rc) {
    return std::unexpected(fmt::format("{}: {}", what, errorText(rc)));
  };
  if (int rc = wolfSSL_CTX_SetMinVersion(ctx, WOLFSSL_TLSV1_2); rc != WOLFSSL_SUCCESS) {
    return fail("minimum TLS version", rc);
  }
  if (int rc = wolfSSL_CTX_set_cipher_list(ctx, kCipherList); rc != WOLFSSL_SUCCESS) {
    return fail("cipher list", rc);
  }
  // Key exchange groups, most preferred first: X25519 (constant time, no point validation to get
  // wrong), then the NIST curves constrained clients tend to have. wolfSSL_CTX_set_groups alone
  // ranks TLS 1.3's groups but leaves TLS 1.2's ECDHE free to pick any curve the client offers
  // (P-521, X448, brainpool, secp256k1); the curves list also disables every other curve, which
  // the TLS 1.2 server consults when it picks its curve, and sets the same TLS 1.3 groups.
  if (int rc = wolfSSL_CTX_set1_curves_list(ctx, kGroupList); rc != WOLFSSL_SUCCESS) {
    return fail("key exchange groups", rc);
  }
  if (int rc = wolfSSL_CTX_use_certificate_chain_file(ctx, s.certificate.c_str());
      rc != WOLFSSL_SUCCESS) {
    return fail("certificate " + s.certificate, rc);
  }
  if (int rc = wolfSSL_CTX_use_PrivateKey_file(ctx, s.privateKey.c_str(), WOLFSSL_FILETYPE_PEM);
      rc != WOLFSSL_SUCCESS) {
    return fail("private key " + s.privateKey, rc);
  }
  if (int rc = wolfSSL_CTX_load_verify_locations(ctx, s.caFile.c_str(), nullptr);
      rc != WOLFSSL_SUCCESS) {
    return fail("CA file " + s.caFile, rc);
  }
  wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER | WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  // Memory per connection: no TLS 1.3 tickets and no session cache (devices reconnect rarely;
  // a full handshake is ~1 ms), so nothing per session outlives its connection.
  wolfSSL_CTX_no_ticket_TLSv13(ctx);
  wolfSSL_CTX_set_session_cache_mode(ctx, WOLFSSL_SESS_CACHE_OFF);
  if (!s.crlFile.empty()) {
    if (int rc = wolfSSL_CTX_EnableCRL(ctx, WOLFSSL_CRL_CHECKALL); rc != WOLFSSL_SUCCESS) {
      return fail("enable CRL", rc);
    }
    if (int rc = wolfSSL_CTX_LoadCRLFile(ctx, s.crlFile.c_str(), WOLFSSL_FILETYPE_PEM);
        rc != WOLFSSL_SUCCESS) {
      return fail("CRL " + s.crlFile, rc);
    }
  }
  return owner;
}

void releaseHandshakeCaches() { wc_ecc_fp_free(); }

ServerContext::~ServerContext() { wolfSSL_CTX_free(ctx_); }

std::expected<std::unique_ptr<ServerStream>, std::string>
ServerStream::create(std::shared_ptr<ServerContext> ctx, int fd) {
  WOLFSSL* ssl = wolfSSL_new(ctx->raw());
  if (ssl == nullptr) {
    return std::unexpected("wolfSSL_new failed");
  }
  std::unique_ptr<ServerStream> s(new ServerStream(std::move(ctx), ssl));
  if (wolfSSL_set_fd(ssl, fd) != WOLFSSL_SUCCESS) {
    return std::unexpected("wolfSSL_set_fd failed");
  }
  wolfSSL_set_using_nonblock(ssl, 1);
  return s;
}

ServerStream::~ServerStream() {
  if (established_) {
    wolfSSL_shutdown(ssl_); // best effort close_notify; never waits
  }
  wolfSSL_free(ssl_);
}

IoStatus ServerStream::status(int ret) {
  const int err = wolfSSL_get_error(ssl_, ret);
  switch (err) {
  case WOLFSSL_ERROR_WANT_READ:
    return IoStatus::WantRead;
  case WOLFSSL_ERROR_WANT_WRITE:
    return IoStatus::WantWrite;
  case WOLFSSL_ERROR_ZERO_RETURN:
    return IoStatus::Closed;
  default:
    lastError_ = err;
    return IoStatus::Failed;
  }
}

IoStatus ServerStream::handshake() {
  if (established_) {
    return IoStatus::Ok;
  }
  const int ret = wolfSSL_accept(ssl_);
  if (ret != WOLFSSL_SUCCESS) {
    return status(ret);
  }
  established_ = true;
  readPeer();
  // Handshake secrets, buffers, peer keys and suites are no longer needed.
  wolfSSL_FreeArrays(ssl_);
  (void)wolfSSL_FreeHandshakeResources(ssl_);
  return IoStatus::Ok;
}

void ServerStream::readPeer() {
  WOLFSSL_X509* cert = wolfSSL_get_peer_certificate(ssl_);
  if (cert == nullptr) {
    return;
  }
  char cn[256] = {};
  if (wolfSSL_X509_NAME_get_text_by_NID(wolfSSL_X509_get_subject_name(cert), NID_commonName, cn,
                                        sizeof cn) > 0) {
    peer_.commonName = cn;
  }
  while (const char* alt = wolfSSL_X509_get_next_altname(cert)) {
    peer_.subjectAltNames.emplace_back(alt);
  }
  wolfSSL_X509_free(cert);
}

IoStatus ServerStream::read(std::span<uint8_t> buf, size_t& n) {
  n = 0;
  const int ret = wolfSSL_read(ssl_, buf.data(), static_cast<int>(buf.size()));
  if (ret > 0) {
    n = static_cast<size_t>(ret);
    return IoStatus::Ok;
  }
  return status(ret);
}

IoStatus ServerStream::write(std::span<const uint8_t> buf, size_t& n) {
  n = 0;
  const int ret = wolfSSL_write(ssl_, buf.data(), static_cast<int>(buf.size()));
  if (ret > 0) {
    n = static_cast<size_t>(ret);
    return IoStatus::Ok;
  }
  return status(ret);
}

std::string ServerStream::lastError() const { return errorText(lastError_); }
std::string ServerStream::protocolVersion() const { return wolfSSL_get_version(ssl_); }
std::string ServerStream::cipher() const {
  const char* c = wolfSSL_get_cipher_name(ssl_);
  return c != nullptr ? c : "";
}

} // namespace iotgw::tls
