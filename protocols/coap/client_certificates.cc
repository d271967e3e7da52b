// SPDX-License-Identifier: GPL-3.0-or-later
// The DTLS endpoint's client certificates: end-entity clientAuth certificates from the CA,
// checked against crl_file, bounded per source; and what a certificate says about its holder
// when it is an enrolled device's own.
#include <algorithm>

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "protocols/coap/proxy.h"
#include "protocols/io/callback_guard.h"

namespace iotgw::coap {

using policy::EventType;
using namespace libcoap;

namespace {

using X509Ptr = std::unique_ptr<X509, decltype(&X509_free)>;

X509Ptr readDer(View der) {
  const unsigned char* p = der.data();
  return X509Ptr(d2i_X509(nullptr, &p, static_cast<long>(der.size())), X509_free);
}

// Why a verified client certificate (the DER at depth 0) is still no client certificate, or empty.
std::string clientCertificateProblem(X509* x) {
  if (X509_check_ca(x) != 0) {
    return "the client presented a CA certificate (basicConstraints CA:TRUE), not its own";
  }
  if ((X509_get_extension_flags(x) & EXFLAG_XKUSAGE) == 0 ||
      (X509_get_extended_key_usage(x) & XKU_SSL_CLIENT) == 0) {
    return "the client certificate is not for TLS clients (no clientAuth extended key usage)";
  }
  return {};
}

// The names a device policy may give a certificate (policy/subject_alt_name.h): the subject CN
// and the DNS and URI subjectAltNames.
void namesOf(X509* x, std::string& cn, std::vector<policy::SubjectAltName>& sans) {
  if (const X509_NAME* subject = X509_get_subject_name(x)) {
    const int i = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    if (const X509_NAME_ENTRY* e = i >= 0 ? X509_NAME_get_entry(subject, i) : nullptr) {
      const ASN1_STRING* s = X509_NAME_ENTRY_get_data(e);
      cn.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                static_cast<size_t>(ASN1_STRING_length(s)));
    }
  }
  std::unique_ptr<GENERAL_NAMES, decltype(&GENERAL_NAMES_free)> names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(x, NID_subject_alt_name, nullptr, nullptr)),
      GENERAL_NAMES_free);
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names.get()) && sans.size() < 16; ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(names.get(), i);
    if (n->type != GEN_DNS && n->type != GEN_URI) {
      continue;
    }
    const ASN1_IA5STRING* s = n->type == GEN_DNS ? n->d.dNSName : n->d.uniformResourceIdentifier;
    sans.push_back({n->type == GEN_DNS ? policy::SanType::Dns : policy::SanType::Uri,
                    std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                static_cast<size_t>(ASN1_STRING_length(s)))});
  }
}

// Where recordVerify finds the proxy from OpenSSL's store.
int proxyIndex() {
  static const int index = X509_STORE_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

} // namespace

// Worked out once per policy snapshot (looking a device up by address walks every policy).
const policy::DevicePolicy*
Proxy::deviceOf(Peer& peer, const std::shared_ptr<const policy::PolicySet>& set) const {
  if (peer.identitySet.lock() != set) {
    const policy::DevicePolicy* d = set->findByCertificate(peer.commonName, peer.subjectAltNames);
    if (d == nullptr && peer.ip) {
      d = set->findByAddress(*peer.ip);
    }
    peer.identity = d != nullptr ? std::optional(d->id) : std::nullopt;
    peer.identitySet = set;
  }
  return peer.identity ? set->find(*peer.identity) : nullptr;
}

bool Proxy::quarantinedDevice(Peer& peer, const std::shared_ptr<const policy::PolicySet>& set,
                              std::string* which) const {
  if (!hooks.quarantined) {
    return false;
  }
  const policy::DevicePolicy* d = deviceOf(peer, set);
  if (d == nullptr || !hooks.quarantined(d->id)) {
    return false;
  }
  if (which != nullptr) {
    *which = d->id.str();
  }
  return true;
}

int Proxy::verify(const char* cn, View der, coap_session_t* s, unsigned depth, int validated) {
  if (validated == 0) {
    return 0;
  }
  if (depth != 0) {
    return 1; // the CA: OpenSSL has checked the chain
  }
  const X509Ptr x = readDer(der);
  if (!x) {
    ERR_clear_error();
    refuseCertificate(s, "listeners.coap_dtls.client_certificate",
                      "the client certificate cannot be read");
    return 0;
  }
  // OpenSSL takes the CA's own certificate, presented by whoever holds its key, as a valid chain
  // of one, and leaves the extended key usage to the purpose check, which lets a certificate
  // without one through: a client must show an end-entity certificate issued for TLS clients.
  if (std::string problem = clientCertificateProblem(x.get()); !problem.empty()) {
    refuseCertificate(s, "listeners.coap_dtls.client_certificate", std::move(problem));
    return 0;
  }
  if (peers.contains(s)) {
    return 1; // renegotiation: counted already
  }
  const auto& limits = settings;
  const auto* remote = coap_session_get_addr_remote(s);
  const auto ip = addressOf(remote);
  const std::string source = ip ? ip->str() : "?";
  const std::string label = fmt::format("{}@{}", cn != nullptr ? cn : "?", labelOf(remote));
  Peer peer;
  peer.name = cn != nullptr ? cn : "";
  peer.address = source;
  peer.label = label;
  peer.ip = ip;
  namesOf(x.get(), peer.commonName, peer.subjectAltNames);
  // A quarantined device's own certificate, or its address, opens no session.
  if (std::string self; quarantinedDevice(peer, hooks.policies(), &self)) {
    refuseCertificate(s, "quarantine",
                      fmt::format("the client is the quarantined device {}", self));
    return 0;
  }
  const char* limit = nullptr;
  if (verified >= limits.maxConnections) {
    limit = "limits.max_connections";
  } else if (perSource[source] >= limits.maxConnectionsPerSource) {
    limit = "limits.max_connections_per_source";
  }
  if (limit != nullptr) {
    ++counters.sessionsRefused;
    emit(EventType::RateLimited, "", label, limit, "5.9-3", "refuse",
         "DTLS session refused: limit reached");
    return 0;
  }
  ++verified;
  ++perSource[source];
  peers.emplace(s, std::move(peer));
  return 1;
}

int Proxy::setupTls(SSL* ssl) {
  X509_STORE* store = SSL_CTX_get_cert_store(SSL_get_SSL_CTX(ssl));
  if (store == nullptr) {
    return 0;
  }
  if (store != storeOfProxy) {
    if (proxyIndex() < 0 || X509_STORE_set_ex_data(store, proxyIndex(), this) != 1) {
      ERR_clear_error();
      return 0;
    }
    storeOfProxy = store;
  }
  if (!crls.install(store)) {
    return 0; // no session without the revocation check
  }
  if (!crls.empty() &&
      X509_VERIFY_PARAM_set_flags(SSL_get0_param(ssl), X509_V_FLAG_CRL_CHECK) != 1) {
    ERR_clear_error();
    return 0;
  }
  // libcoap has just installed its verify callback (which calls ours only for chains OpenSSL
  // accepted); ours goes around it to learn why OpenSSL refused the others.
  if (SSL_verify_cb cb = SSL_get_verify_callback(ssl); cb != nullptr && cb != recordVerify) {
    libcoapVerify() = cb;
    SSL_set_verify(ssl, SSL_get_verify_mode(ssl), recordVerify);
  }
  return 1;
}

int Proxy::recordVerify(int ok, X509_STORE_CTX* store) noexcept {
  // Failed: the certificate is refused.
  return io::guarded("OpenSSL's certificate verification", 0,
                     [&] { return recordVerifyGuarded(ok, store); });
}

int Proxy::recordVerifyGuarded(int ok, X509_STORE_CTX* store) {
  const SSL_verify_cb inner = libcoapVerify();
  ok = inner != nullptr ? inner(ok, store) : ok;
  if (ok != 0) {
    return ok;
  }
  auto* ssl =
      static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* e =
      static_cast<Proxy*>(X509_STORE_get_ex_data(X509_STORE_CTX_get0_store(store), proxyIndex()));
  auto* s = ssl != nullptr ? static_cast<coap_session_t*>(SSL_get_app_data(ssl)) : nullptr;
  if (e == nullptr || s == nullptr || e->refusals.contains(s)) {
    return ok; // ours gave the reason already (CERT_REJECTED)
  }
  const int err = X509_STORE_CTX_get_error(store);
  const bool crl = err == X509_V_ERR_CERT_REVOKED || err == X509_V_ERR_UNABLE_TO_GET_CRL ||
                   err == X509_V_ERR_CRL_HAS_EXPIRED || err == X509_V_ERR_CRL_NOT_YET_VALID;
  e->refuseCertificate(s, crl ? "listeners.coap_dtls.crl_file" : "listeners.coap_dtls.ca_file",
                       fmt::format("the client certificate does not verify: {} (depth {})",
                                   X509_verify_cert_error_string(err),
                                   X509_STORE_CTX_get_error_depth(store)));
  return ok;
}

void Proxy::refuseCertificate(coap_session_t* s, std::string rule, std::string reason) {
  if (refusals.size() < 2 * static_cast<size_t>(settings.maxHandshakes) + 1) {
    refusals[s] = Refusal{std::move(rule), std::move(reason)}; // reported at DTLS_ERROR
  }
}

} // namespace iotgw::coap
