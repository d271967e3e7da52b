// SPDX-License-Identifier: GPL-3.0-or-later
#include <wolfssl/options.h>

#include "protocols/tls/server.h"

#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/asn.h>
#include <wolfssl/wolfcrypt/ecc.h>

#include <algorithm>
#include <fmt/format.h>

#include "protocols/io/callback_guard.h"

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

// WolfSSL accepts as a client certificate anything that chains to the CA: the CA certificate
// itself, another CA certificate, a leaf without extended key usage or with anyExtendedKeyUsage
// (it refuses one whose extended key usage lacks clientAuth only when the extension is there).
// The leaf's own checks run in the verify callback, which must see every leaf, verified or not.
#ifndef WOLFSSL_ALWAYS_VERIFY_CB
#error "the client certificate checks need WolfSSL built with WOLFSSL_ALWAYS_VERIFY_CB"
#endif

// Why a leaf that verified is still no client certificate, or nullptr. Decoded with WolfSSL's own
// parser, from the bytes it verified.
const char* clientCertificateProblem(const WOLFSSL_BUFFER_INFO& der) {
  auto cert = std::make_unique<DecodedCert>();
  wc_InitDecodedCert(cert.get(), der.buffer, der.length, nullptr);
  const int rc = wc_ParseCert(cert.get(), CERT_TYPE, NO_VERIFY, nullptr);
  const char* problem = nullptr;
  if (rc != 0) {
    problem = "the certificate cannot be decoded";
  } else if (cert->isCA) {
    problem = "a CA certificate (basicConstraints CA:TRUE) is not a client certificate";
  } else if (!cert->extExtKeyUsageSet || (cert->extExtKeyUsage & EXTKEYUSE_CLIENT_AUTH) == 0) {
    problem = "the certificate has no clientAuth extended key usage";
  }
  wc_FreeDecodedCert(cert.get());
  return problem;
}

// `userCtx` is the stream's refusal text (wolfSSL_SetCertCbCtx). Called from WolfSSL: nothing
// unwinds into it, and a failure refuses the certificate.
int verifyPeer(int verified, WOLFSSL_X509_STORE_CTX* store) noexcept {
  return io::guarded("WolfSSL's certificate verification", 0, [&] {
    if (verified == 0) {
      return 0; // WolfSSL's own verdict (unknown CA, revoked, expired, ...) stands
    }
    if (store->error_depth != 0 || store->certs == nullptr || store->totalCerts < 1) {
      return 1; // the chain above the leaf: WolfSSL's checks are the ones that matter
    }
    if (const char* problem = clientCertificateProblem(store->certs[0])) {
      if (store->userCtx != nullptr) {
        *static_cast<std::string*>(store->userCtx) = problem;
      }
      return 0;
    }
    return 1;
  });
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
  wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER | WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                         verifyPeer);
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
  wolfSSL_SetCertCbCtx(ssl, &s->refusal_);
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
  // By kind: wolfSSL_X509_get_next_altname hands out e-mail addresses and URIs as if they were
  // DNS names.
  auto* names = static_cast<WOLF_STACK_OF(WOLFSSL_GENERAL_NAME)*>(
      wolfSSL_X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  const int count = names != nullptr ? wolfSSL_sk_GENERAL_NAME_num(names) : 0;
  for (int i = 0; i < count; ++i) {
    const WOLFSSL_GENERAL_NAME* name = wolfSSL_sk_GENERAL_NAME_value(names, i);
    if (name == nullptr || (name->type != ASN_DNS_TYPE && name->type != ASN_URI_TYPE)) {
      continue;
    }
    WOLFSSL_ASN1_STRING* text = name->d.ia5;
    const unsigned char* data = wolfSSL_ASN1_STRING_data(text);
    const int length = wolfSSL_ASN1_STRING_length(text);
    if (data == nullptr || length <= 0) {
      continue;
    }
    std::string value(reinterpret_cast<const char*>(data), static_cast<size_t>(length));
    // IA5String is ASCII; a NUL or control character ("dev.hub.local\0.evil") names nothing.
    if (!std::ranges::all_of(value, [](char c) { return c > ' ' && c < 0x7f; })) {
      continue;
    }
    peer_.subjectAltNames.push_back(policy::SubjectAltName{
        name->type == ASN_DNS_TYPE ? policy::SanType::Dns : policy::SanType::Uri,
        std::move(value)});
  }
  if (names != nullptr) {
    wolfSSL_GENERAL_NAMES_free(names);
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

std::string ServerStream::lastError() const {
  return refusal_.empty() ? errorText(lastError_)
                          : fmt::format("{}: {}", errorText(lastError_), refusal_);
}
std::string ServerStream::protocolVersion() const { return wolfSSL_get_version(ssl_); }
std::string ServerStream::cipher() const {
  const char* c = wolfSSL_get_cipher_name(ssl_);
  return c != nullptr ? c : "";
}

} // namespace iotgw::tls
