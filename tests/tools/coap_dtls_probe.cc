// SPDX-License-Identifier: GPL-3.0-or-later
// A DTLS 1.2 client (OpenSSL) that sends raw datagrams inside an authenticated session: what a
// broken or hostile CoAP client would send once its handshake is done. coap-client cannot send
// malformed CoAP, so the proxy's tests use this.
//
//   coap_dtls_probe hello
//       prints the hex of one ClientHello (from a memory BIO: nothing is sent)
//   coap_dtls_probe PORT CA CERT KEY [WAIT_MS]
//       handshakes with 127.0.0.1:PORT, prints "connected", then for each hex line on stdin sends
//       it as one record and prints "reply <hex>" for each answer within WAIT_MS (default 300),
//       or "none", then "end". A line "!<hex>" is sent without waiting (a burst); a line "wait"
//       prints what arrived until WAIT_MS pass without anything, then "end".
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include <openssl/err.h>
#include <openssl/ssl.h>

namespace {

std::string hex(const unsigned char* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}

std::vector<unsigned char> unhex(const std::string& s) {
  std::vector<unsigned char> out;
  for (size_t i = 0; i + 1 < s.size(); i += 2) {
    out.push_back(static_cast<unsigned char>(std::stoi(s.substr(i, 2), nullptr, 16)));
  }
  return out;
}

int fail(const char* what) {
  std::fprintf(stderr, "coap_dtls_probe: %s\n", what);
  ERR_print_errors_fp(stderr);
  return 1;
}

int hello() {
  SSL_CTX* ctx = SSL_CTX_new(DTLS_client_method());
  SSL* ssl = SSL_new(ctx);
  BIO* rbio = BIO_new(BIO_s_mem());
  BIO* wbio = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, rbio, wbio);
  SSL_set_connect_state(ssl);
  (void)SSL_do_handshake(ssl); // writes the ClientHello, then wants to read
  char* data = nullptr;
  const long n = BIO_get_mem_data(wbio, &data);
  if (n <= 0) {
    return fail("no ClientHello");
  }
  std::printf("%s\n", hex(reinterpret_cast<unsigned char*>(data), static_cast<size_t>(n)).c_str());
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "hello") {
    return hello();
  }
  if (argc < 5) {
    std::fputs("usage: coap_dtls_probe hello | PORT CA CERT KEY [WAIT_MS]\n", stderr);
    return 2;
  }
  const int waitMs = argc > 5 ? std::atoi(argv[5]) : 300;
  SSL_CTX* ctx = SSL_CTX_new(DTLS_client_method());
  if (SSL_CTX_load_verify_locations(ctx, argv[2], nullptr) != 1 ||
      SSL_CTX_use_certificate_chain_file(ctx, argv[3]) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, argv[4], SSL_FILETYPE_PEM) != 1) {
    return fail("cannot load the CA, certificate or key");
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(std::atoi(argv[1])));
  inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
    return fail("connect");
  }
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  // Room for every answer to a burst (as root beyond rmem_max; otherwise what the system allows).
  const int room = 4 << 20;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &room, sizeof room) != 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &room, sizeof room);
  }
  SSL* ssl = SSL_new(ctx);
  BIO* bio = BIO_new_dgram(fd, BIO_NOCLOSE);
  BIO_ctrl(bio, BIO_CTRL_DGRAM_SET_CONNECTED, 0, &to);
  SSL_set_bio(ssl, bio, bio);
  if (SSL_connect(ssl) != 1) {
    std::printf("handshake failed\n");
    return fail("handshake");
  }
  std::printf("connected\n");
  std::fflush(stdout);
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) {
      continue;
    }
    const bool burst = line[0] == '!';
    if (line != "wait") {
      const auto bytes = unhex(burst ? line.substr(1) : line);
      if (SSL_write(ssl, bytes.data(), static_cast<int>(bytes.size())) <= 0) {
        return fail("write");
      }
      if (burst) {
        continue;
      }
    }
    bool any = false;
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      if (SSL_pending(ssl) == 0 && ::poll(&p, 1, waitMs) <= 0) {
        break;
      }
      unsigned char buf[4096];
      const int n = SSL_read(ssl, buf, sizeof buf);
      if (n <= 0) {
        break;
      }
      std::printf("reply %s\n", hex(buf, static_cast<size_t>(n)).c_str());
      any = true;
    }
    if (!any) {
      std::printf("none\n");
    }
    std::printf("end\n");
    std::fflush(stdout);
  }
  SSL_shutdown(ssl);
  SSL_free(ssl);
  ::close(fd);
  SSL_CTX_free(ctx);
  return 0;
}
