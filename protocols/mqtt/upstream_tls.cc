// SPDX-License-Identifier: GPL-3.0-or-later
// OpenSSL only: this translation unit must not include any WolfSSL header.
#include "protocols/mqtt/upstream_tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>

namespace iotgw::mqtt {

namespace {

std::string lastError(const std::string& what) {
  char buf[256] = {};
  ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
  return what + ": " + buf;
}

bool isAddress(const std::string& host) {
  in6_addr probe{};
  return inet_pton(AF_INET, host.c_str(), &probe) == 1 ||
         inet_pton(AF_INET6, host.c_str(), &probe) == 1;
}

class TlsClientStream final : public io::Stream {
public:
  TlsClientStream(SslContext context, SSL* ssl) : context_(std::move(context)), ssl_(ssl) {}
  ~TlsClientStream() override {
    if (established_) {
      (void)SSL_shutdown(ssl_); // close_notify, if the socket takes it now; never waits
    }
    SSL_free(ssl_);
  }

  io::IoStatus handshake() override {
    ERR_clear_error();
    const int r = SSL_connect(ssl_);
    if (r == 1) {
      established_ = true;
      return io::IoStatus::Ok;
    }
    return status(r);
  }

  io::IoStatus read(std::span<uint8_t> buf, size_t& n) override {
    ERR_clear_error();
    n = 0;
    if (SSL_read_ex(ssl_, buf.data(), buf.size(), &n) == 1) {
      return io::IoStatus::Ok;
    }
    return status(0);
  }

  io::IoStatus write(std::span<const uint8_t> buf, size_t& n) override {
    ERR_clear_error();
    n = 0;
    if (SSL_write_ex(ssl_, buf.data(), buf.size(), &n) == 1) {
      return io::IoStatus::Ok;
    }
    return status(0);
  }

  bool holdsReadBytes() const override { return SSL_pending(ssl_) > 0; }
  std::string lastError() const override { return error_; }

private:
  io::IoStatus status(int r) {
    switch (SSL_get_error(ssl_, r)) {
    case SSL_ERROR_WANT_READ:
      return io::IoStatus::WantRead;
    case SSL_ERROR_WANT_WRITE:
      return io::IoStatus::WantWrite;
    case SSL_ERROR_ZERO_RETURN:
      return io::IoStatus::Closed;
    default:
      break;
    }
    char buf[256] = {};
    const unsigned long e = ERR_peek_last_error();
    if (e != 0) {
      ERR_error_string_n(e, buf, sizeof buf);
      error_ = buf;
    } else {
      error_ = "connection closed";
    }
    if (const long v = SSL_get_verify_result(ssl_); !established_ && v != X509_V_OK) {
      error_ += std::string(" (") + X509_verify_cert_error_string(v) + ")";
    }
    return e == 0 && established_ ? io::IoStatus::Closed : io::IoStatus::Failed;
  }

  SslContext context_; // keeps the context alive while the session uses it
  SSL* ssl_;
  bool established_ = false;
  std::string error_;
};

} // namespace

std::expected<SslContext, std::string> makeUpstreamSslContext(const UpstreamTlsSettings& s) {
  SSL_CTX* raw = SSL_CTX_new(TLS_client_method());
  if (raw == nullptr) {
    return std::unexpected(lastError("SSL_CTX_new"));
  }
  SslContext ctx(raw, [](void* p) { SSL_CTX_free(static_cast<SSL_CTX*>(p)); });
  SSL_CTX_set_min_proto_version(raw, TLS1_2_VERSION);
  SSL_CTX_set_mode(raw, SSL_MODE_RELEASE_BUFFERS);
  if (SSL_CTX_load_verify_locations(raw, s.caFile.c_str(), nullptr) != 1) {
    return std::unexpected(lastError("broker CA " + s.caFile));
  }
  if (!s.certificate.empty()) {
    if (SSL_CTX_use_certificate_chain_file(raw, s.certificate.c_str()) != 1) {
      return std::unexpected(lastError("client certificate " + s.certificate));
    }
    if (SSL_CTX_use_PrivateKey_file(raw, s.privateKey.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(raw) != 1) {
      return std::unexpected(lastError("client key " + s.privateKey));
    }
  }
  SSL_CTX_set_verify(raw, SSL_VERIFY_PEER, nullptr);
  // The broker's certificate must name the configured host.
  X509_VERIFY_PARAM* param = SSL_CTX_get0_param(raw);
  const int ok = isAddress(s.host) ? X509_VERIFY_PARAM_set1_ip_asc(param, s.host.c_str())
                                   : X509_VERIFY_PARAM_set1_host(param, s.host.c_str(), 0);
  if (ok != 1) {
    return std::unexpected(lastError("broker host " + s.host));
  }
  return ctx;
}

} // namespace iotgw::mqtt

namespace iotgw::mqtt {

std::expected<std::unique_ptr<io::Stream>, std::string>
makeUpstreamTlsStream(const SslContext& context, int fd, const std::string& host) {
  SSL* ssl = SSL_new(static_cast<SSL_CTX*>(context.get()));
  if (ssl == nullptr) {
    return std::unexpected(lastError("SSL_new"));
  }
  auto stream = std::make_unique<TlsClientStream>(context, ssl);
  SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (SSL_set_fd(ssl, fd) != 1) {
    return std::unexpected(lastError("SSL_set_fd"));
  }
  if (!isAddress(host) && SSL_set_tlsext_host_name(ssl, host.c_str()) != 1) {
    return std::unexpected(lastError("SNI " + host));
  }
  SSL_set_connect_state(ssl);
  return std::unique_ptr<io::Stream>(std::move(stream));
}

} // namespace iotgw::mqtt
