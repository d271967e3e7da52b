// SPDX-License-Identifier: GPL-3.0-or-later
// A CoAP client (libcoap) that sends confirmable GETs one after the other on one session for a
// fixed time, for the CoAP proxy benchmark: the same client against coap-server-notls directly
// (coap://) and through iotgwd's DTLS endpoint (coaps://, with a client certificate).
//
//   coap_load URI SECONDS [CA CERT KEY]   prints requests=<answered> failed=<n> seconds=<s>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <coap3/coap.h>

namespace {

int answered = 0;
int failed = 0;
bool waiting = false;

coap_response_t onResponse(coap_session_t*, const coap_pdu_t*, const coap_pdu_t* received,
                           const coap_mid_t) {
  if (COAP_RESPONSE_CLASS(coap_pdu_get_code(received)) == 2) {
    ++answered;
  } else {
    ++failed;
  }
  waiting = false;
  return COAP_RESPONSE_OK;
}

void onNack(coap_session_t*, const coap_pdu_t*, const coap_nack_reason_t, const coap_mid_t) {
  ++failed;
  waiting = false;
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 3 && argc != 6) {
    std::fputs("usage: coap_load URI SECONDS [CA CERT KEY]\n", stderr);
    return 2;
  }
  coap_startup();
  coap_set_log_level(LOG_ERR);
  coap_uri_t uri;
  std::string text = argv[1];
  if (coap_split_uri(reinterpret_cast<const uint8_t*>(text.data()), text.size(), &uri) != 0) {
    std::fputs("coap_load: bad URI\n", stderr);
    return 2;
  }
  const bool secure = uri.scheme == COAP_URI_SCHEME_COAPS;
  coap_address_t dst;
  coap_address_init(&dst);
  dst.size = sizeof(sockaddr_in);
  dst.addr.sin.sin_family = AF_INET;
  dst.addr.sin.sin_port = htons(uri.port);
  const std::string host(reinterpret_cast<const char*>(uri.host.s), uri.host.length);
  if (inet_pton(AF_INET, host.c_str(), &dst.addr.sin.sin_addr) != 1) {
    std::fputs("coap_load: the host must be an IPv4 address\n", stderr);
    return 2;
  }
  coap_context_t* ctx = coap_new_context(nullptr);
  coap_context_set_block_mode(ctx, COAP_BLOCK_USE_LIBCOAP | COAP_BLOCK_SINGLE_BODY);
  coap_register_response_handler(ctx, onResponse);
  coap_register_nack_handler(ctx, onNack);
  coap_session_t* session = nullptr;
  if (secure) {
    coap_dtls_pki_t pki{};
    pki.version = COAP_DTLS_PKI_SETUP_VERSION;
    pki.verify_peer_cert = 1;
    pki.check_common_ca = 1;
    pki.cert_chain_validation = 1;
    pki.cert_chain_verify_depth = 2;
    pki.pki_key.key_type = COAP_PKI_KEY_PEM;
    pki.pki_key.key.pem.ca_file = argv[3];
    pki.pki_key.key.pem.public_cert = argv[4];
    pki.pki_key.key.pem.private_key = argv[5];
    session = coap_new_client_session_pki(ctx, nullptr, &dst, COAP_PROTO_DTLS, &pki);
  } else {
    session = coap_new_client_session(ctx, nullptr, &dst, COAP_PROTO_UDP);
  }
  if (session == nullptr) {
    std::fputs("coap_load: no session\n", stderr);
    return 1;
  }
  // The Uri-Path options, once.
  std::vector<std::string> segments;
  std::string path(reinterpret_cast<const char*>(uri.path.s), uri.path.length);
  for (size_t start = 0; start <= path.size();) {
    const size_t slash = path.find('/', start);
    const size_t end = slash == std::string::npos ? path.size() : slash;
    if (end > start) {
      segments.push_back(path.substr(start, end - start));
    }
    start = end + 1;
  }
  const double seconds = std::atof(argv[2]);
  const auto begin = std::chrono::steady_clock::now();
  double elapsed = 0;
  while (elapsed < seconds) {
    coap_pdu_t* pdu = coap_new_pdu(COAP_MESSAGE_CON, COAP_REQUEST_CODE_GET, session);
    uint8_t token[8];
    size_t len = 0;
    coap_session_new_token(session, &len, token);
    coap_add_token(pdu, len, token);
    for (const auto& s : segments) {
      coap_add_option(pdu, COAP_OPTION_URI_PATH, s.size(),
                      reinterpret_cast<const uint8_t*>(s.data()));
    }
    waiting = true;
    if (coap_send(session, pdu) == COAP_INVALID_MID) {
      std::fputs("coap_load: send failed\n", stderr);
      return 1;
    }
    while (waiting) {
      coap_io_process(ctx, 1000);
    }
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  }
  std::printf("requests=%d failed=%d seconds=%.3f\n", answered, failed, elapsed);
  coap_session_release(session);
  coap_free_context(ctx);
  coap_cleanup();
  return 0;
}
