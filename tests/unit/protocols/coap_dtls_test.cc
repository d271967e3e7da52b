// SPDX-License-Identifier: GPL-3.0-or-later
// The DTLS cookie exchange in front of the DTLS endpoint (RFC 6347 §4.2.1): ClientHellos from a
// real OpenSSL client, the HelloVerifyRequest that client must take, cookies, and the bounded
// table of admitted peers, with injected time.
#include <gtest/gtest.h>

#include <openssl/bio.h>
#include <openssl/ssl.h>

#include "protocols/coap/dtls_admission.h"
#include "protocols/coap/dtls_cookie.h"

namespace iotgw::coap::dtls {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// An OpenSSL DTLS client talking through memory BIOs: what it writes is read back here.
struct Client {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx{SSL_CTX_new(DTLS_client_method()),
                                                        SSL_CTX_free};
  SSL* ssl = nullptr;
  BIO* in = nullptr;
  BIO* out = nullptr;

  Client() {
    ssl = SSL_new(ctx.get());
    in = BIO_new(BIO_s_mem());
    out = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(in, -1);
    SSL_set_bio(ssl, in, out);
    SSL_set_connect_state(ssl);
  }
  ~Client() { SSL_free(ssl); }

  Bytes step() {
    (void)SSL_do_handshake(ssl);
    char* data = nullptr;
    const long n = BIO_get_mem_data(out, &data);
    Bytes b(data, data + std::max(n, 0L));
    (void)BIO_reset(out);
    return b;
  }
  void feed(const Bytes& b) { BIO_write(in, b.data(), static_cast<int>(b.size())); }
};

Secret secret(uint8_t fill) {
  Secret s;
  s.fill(fill);
  return s;
}

const Bytes kClient = {4, 192, 0, 2, 7, 0x16, 0x34};
const Bytes kOther = {4, 192, 0, 2, 8, 0x16, 0x34};

TEST(DtlsHello, FirstClientHelloOfOpenSslHasNoCookie) {
  Client c;
  const Bytes hello = c.step();
  ASSERT_GT(hello.size(), kRecordHeaderBytes + kHandshakeHeaderBytes);
  const auto parsed = parseClientHello(hello, hello.size());
  ASSERT_TRUE(parsed.has_value());
  EXPECT_TRUE(parsed->cookie.empty());
}

TEST(DtlsHello, OpenSslFollowsOurHelloVerifyRequestWithTheCookie) {
  CookieJar jar;
  ASSERT_TRUE(jar.rotate(secret(1), Clock::now()));
  Client c;
  const Bytes first = c.step();
  const auto hello = parseClientHello(first, first.size());
  ASSERT_TRUE(hello.has_value());
  const auto cookie = jar.make(kClient);
  ASSERT_TRUE(cookie.has_value());
  const auto made = helloVerifyRequest(*hello, View(cookie->data(), cookie->size()));
  const Bytes hvr(made.view().begin(), made.view().end());
  EXPECT_EQ(hvr.size(), kRecordHeaderBytes + kHandshakeHeaderBytes + 3 + kCookieBytes);
  EXPECT_EQ(Bytes(hvr.begin() + 3, hvr.begin() + 11), Bytes(first.begin() + 3, first.begin() + 11))
      << "the record sequence number of the ClientHello is echoed";
  c.feed(hvr);
  const Bytes second = c.step();
  const auto again = parseClientHello(second, second.size());
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(Bytes(again->cookie.begin(), again->cookie.end()),
            Bytes(cookie->begin(), cookie->end()));
  EXPECT_TRUE(jar.verify(kClient, again->cookie));
  EXPECT_FALSE(jar.verify(kOther, again->cookie)) << "a cookie is good for its own address only";
}

// What the gate lets through with a good cookie, OpenSSL's stateless listener takes as well.
TEST(DtlsHello, DtlsListenAcceptsWhatTheGateVerified) {
  static CookieJar* jar = nullptr;
  CookieJar local;
  jar = &local;
  ASSERT_TRUE(local.rotate(secret(2), Clock::now()));
  Client c;
  const Bytes first = c.step();
  const auto hello = parseClientHello(first, first.size());
  const auto cookie = local.make(kClient);
  const auto hvr = helloVerifyRequest(*hello, View(cookie->data(), cookie->size()));
  c.feed(Bytes(hvr.view().begin(), hvr.view().end()));
  const Bytes second = c.step();

  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> sctx(SSL_CTX_new(DTLS_server_method()),
                                                         SSL_CTX_free);
  SSL_CTX_set_cookie_verify_cb(sctx.get(), [](SSL*, const unsigned char* ck, unsigned int len) {
    return jar->verify(kClient, View(ck, len)) ? 1 : 0;
  });
  SSL_CTX_set_cookie_generate_cb(sctx.get(), [](SSL*, unsigned char*, unsigned int*) { return 0; });
  SSL* server = SSL_new(sctx.get());
  BIO* in = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(in, -1);
  SSL_set_bio(server, in, BIO_new(BIO_s_mem()));
  SSL_set_options(server, SSL_OP_COOKIE_EXCHANGE);
  BIO_write(in, second.data(), static_cast<int>(second.size()));
  BIO_ADDR* peer = BIO_ADDR_new();
  EXPECT_EQ(DTLSv1_listen(server, peer), 1);
  BIO_ADDR_free(peer);
  SSL_free(server);
  jar = nullptr;
}

TEST(DtlsHello, RefusesWhatDtlsListenWouldDrop) {
  Client c;
  const Bytes hello = c.step();
  auto variant = [&](size_t at, uint8_t value) {
    Bytes b = hello;
    b[at] = value;
    return b;
  };
  auto error = [](const Bytes& b, size_t size) {
    const auto r = parseClientHello(b, size);
    return r ? std::optional<HelloError>() : std::optional<HelloError>(r.error());
  };
  EXPECT_EQ(error(variant(0, 23), hello.size()), HelloError::NotClientHello); // application data
  EXPECT_EQ(error(variant(4, 1), hello.size()), HelloError::NotClientHello);  // epoch 1
  EXPECT_EQ(error(variant(13, 2), hello.size()), HelloError::NotClientHello); // a ServerHello
  EXPECT_EQ(error(variant(1, 3), hello.size()), HelloError::NotClientHello);  // TLS, not DTLS
  EXPECT_EQ(error(Bytes(hello.begin(), hello.begin() + 13), 13), HelloError::NotClientHello);
  EXPECT_EQ(error(Bytes(hello.begin(), hello.end() - 5), hello.size() - 5), HelloError::Malformed);
  EXPECT_EQ(error(variant(18, 2), hello.size()), HelloError::Malformed); // message_seq 2
  EXPECT_EQ(error(variant(21, 1), hello.size()), HelloError::Malformed); // a later fragment
  Bytes longer = hello;
  longer[12] = static_cast<uint8_t>(longer[12] + 1); // the record claims more than the message
  longer.push_back(0);
  EXPECT_EQ(error(longer, longer.size()), HelloError::Malformed);
  Bytes sid = hello;
  sid[13 + 12 + 2 + 32] = 200; // a session id running past the record
  EXPECT_EQ(error(sid, sid.size()), HelloError::Malformed);
}

TEST(DtlsCookie, TheLastTwoSecretsAreAccepted) {
  CookieJar jar(60s);
  const auto t0 = Clock::now();
  EXPECT_TRUE(jar.rotationDue(t0));
  EXPECT_FALSE(jar.make(kClient).has_value()) << "no secret, no cookie";
  ASSERT_TRUE(jar.rotate(secret(1), t0));
  const auto first = *jar.make(kClient);
  EXPECT_FALSE(jar.rotationDue(t0 + 59s));
  EXPECT_TRUE(jar.rotationDue(t0 + 60s));
  ASSERT_TRUE(jar.rotate(secret(2), t0 + 60s));
  EXPECT_TRUE(jar.verify(kClient, first));
  const auto second = *jar.make(kClient);
  EXPECT_NE(first, second);
  ASSERT_TRUE(jar.rotate(secret(3), t0 + 120s));
  EXPECT_FALSE(jar.verify(kClient, first)) << "two rotations later a cookie is stale";
  EXPECT_TRUE(jar.verify(kClient, second));
  Cookie forged = second;
  forged[0] ^= 1;
  EXPECT_FALSE(jar.verify(kClient, forged));
  EXPECT_FALSE(jar.verify(kClient, View(second.data(), 8)));
}

PeerKey peer(uint8_t host, uint16_t port) { return PeerKey::v4({10, 0, 0, host}, port); }

TEST(DtlsAdmission, AFullTableMakesRoomForAProvenPeer) {
  Admission a({.maxPending = 3, .maxPendingPerAddress = 3, .pendingLifetime = 10s});
  const auto t = Clock::now();
  std::vector<Admission::Ended> ended;
  for (uint8_t i = 1; i <= 3; ++i) {
    a.admit(peer(i, 1000), i, t + std::chrono::seconds(i), ended);
  }
  EXPECT_TRUE(ended.empty());
  a.admit(peer(9, 1000), 9, t + 4s, ended);
  ASSERT_EQ(ended.size(), 1U);
  EXPECT_EQ(ended[0].peer, peer(1, 1000)) << "the oldest half-open handshake gives way";
  EXPECT_EQ(ended[0].tag, 1);
  EXPECT_FALSE(ended[0].expired);
  EXPECT_EQ(a.state(peer(9, 1000), t + 4s), Admission::State::Pending);
  EXPECT_EQ(a.state(peer(1, 1000), t + 4s), Admission::State::Unknown);
  EXPECT_EQ(a.pending(), 3U);
}

TEST(DtlsAdmission, OneAddressPushesOutOnlyItsOwnHandshakes) {
  Admission a({.maxPending = 8, .maxPendingPerAddress = 2, .pendingLifetime = 10s});
  const auto t = Clock::now();
  std::vector<Admission::Ended> ended;
  a.admit(peer(1, 1), 0, t, ended);
  a.admit(peer(7, 1), 0, t, ended);
  a.admit(peer(7, 2), 0, t, ended);
  a.admit(peer(7, 3), 0, t, ended);
  ASSERT_EQ(ended.size(), 1U);
  EXPECT_EQ(ended[0].peer, peer(7, 1));
  EXPECT_EQ(a.state(peer(1, 1), t), Admission::State::Pending);
  EXPECT_EQ(a.pending(), 3U);
}

TEST(DtlsAdmission, HalfOpenHandshakesExpireEstablishedOnesDoNot) {
  Admission a({.maxPending = 4, .maxPendingPerAddress = 4, .pendingLifetime = 10s});
  const auto t = Clock::now();
  std::vector<Admission::Ended> ended;
  a.admit(peer(1, 1), 0, t, ended);
  a.admit(peer(2, 1), 0, t + 1s, ended);
  a.established(peer(2, 1), t);
  EXPECT_EQ(a.pending(), 1U);
  EXPECT_EQ(a.established(), 1U);
  EXPECT_EQ(a.state(peer(1, 1), t + 10s), Admission::State::Unknown);
  a.expire(t + 10s, ended);
  ASSERT_EQ(ended.size(), 1U);
  EXPECT_TRUE(ended[0].expired);
  EXPECT_EQ(a.state(peer(2, 1), t + 1h), Admission::State::Established);
  a.closed(peer(2, 1));
  EXPECT_EQ(a.state(peer(2, 1), t + 1h), Admission::State::Unknown);
  EXPECT_EQ(a.established(), 0U);
  EXPECT_EQ(a.pending(), 0U);
}

TEST(DtlsAdmission, AnEstablishedPeerIsHeardFromOnlyWhenItSends) {
  Admission a({.maxPending = 4, .maxPendingPerAddress = 4, .pendingLifetime = 10s});
  const auto t = Clock::now();
  std::vector<Admission::Ended> ended;
  a.admit(peer(3, 1), 0, t, ended);
  EXPECT_FALSE(a.lastHeard(peer(3, 1))) << "not established yet";
  a.established(peer(3, 1), t + 1s);
  EXPECT_EQ(a.lastHeard(peer(3, 1)), t + 1s);
  EXPECT_EQ(a.touch(peer(3, 1), t + 30s), Admission::State::Established);
  EXPECT_EQ(a.lastHeard(peer(3, 1)), t + 30s);
  EXPECT_EQ(a.state(peer(3, 1), t + 60s), Admission::State::Established);
  EXPECT_EQ(a.lastHeard(peer(3, 1)), t + 30s) << "looking is not hearing";
  EXPECT_EQ(a.touch(peer(4, 1), t), Admission::State::Unknown);
}

TEST(DtlsAdmission, ARetransmittedClientHelloChangesNothing) {
  Admission a({.maxPending = 2, .maxPendingPerAddress = 2, .pendingLifetime = 10s});
  const auto t = Clock::now();
  std::vector<Admission::Ended> ended;
  a.admit(peer(1, 1), 0, t, ended);
  a.admit(peer(1, 1), 0, t + 9s, ended);
  EXPECT_EQ(a.pending(), 1U);
  EXPECT_EQ(a.state(peer(1, 1), t + 10s), Admission::State::Unknown)
      << "the handshake must finish within one lifetime of the first proof";
}

} // namespace
} // namespace iotgw::coap::dtls
