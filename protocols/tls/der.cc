// SPDX-License-Identifier: GPL-3.0-or-later
#include "protocols/tls/der.h"

#include <ctime>

#include <fmt/format.h>

namespace iotgw::tls::der {

namespace {

constexpr uint8_t kOidCommonName[] = {0x55, 0x04, 0x03};
constexpr uint8_t kOidSubjectKeyId[] = {0x55, 0x1d, 0x0e};

void appendLength(Bytes& out, size_t n) {
  if (n < 0x80) {
    out.push_back(static_cast<uint8_t>(n));
    return;
  }
  uint8_t digits[sizeof(size_t)];
  size_t count = 0;
  for (; n != 0; n >>= 8) {
    digits[count++] = static_cast<uint8_t>(n & 0xff);
  }
  out.push_back(static_cast<uint8_t>(0x80 | count));
  while (count != 0) {
    out.push_back(digits[--count]);
  }
}

bool equal(View a, std::span<const uint8_t> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

// The first CN in a Name (SEQUENCE OF SET OF AttributeTypeAndValue).
std::string commonNameOf(View name) {
  View rdns = name;
  while (!rdns.empty()) {
    auto set = read(rdns);
    if (!set || set->tag != kSet) {
      return {};
    }
    View atvs = set->value;
    while (!atvs.empty()) {
      auto atv = read(atvs);
      if (!atv || atv->tag != kSequence) {
        return {};
      }
      View inner = atv->value;
      auto type = read(inner);
      auto value = read(inner);
      if (type && value && type->tag == kOid && equal(type->value, kOidCommonName)) {
        return {value->value.begin(), value->value.end()};
      }
    }
  }
  return {};
}

} // namespace

std::optional<Tlv> read(View& in) {
  if (in.size() < 2 || (in[0] & 0x1f) == 0x1f) {
    return std::nullopt;
  }
  size_t pos = 1;
  size_t length = in[pos++];
  if (length & 0x80) {
    const size_t count = length & 0x7f;
    if (count == 0 || count > 4 || in.size() - pos < count || in[pos] == 0) {
      return std::nullopt;
    }
    length = 0;
    for (size_t i = 0; i < count; ++i) {
      length = (length << 8) | in[pos++];
    }
    if (length < 0x80) {
      return std::nullopt;
    }
  }
  if (in.size() - pos < length) {
    return std::nullopt;
  }
  Tlv t{in[0], in.subspan(pos, length), in.first(pos + length)};
  in = in.subspan(pos + length);
  return t;
}

Bytes tlv(uint8_t tag, View value) {
  Bytes out;
  out.reserve(value.size() + 6);
  out.push_back(tag);
  appendLength(out, value.size());
  out.insert(out.end(), value.begin(), value.end());
  return out;
}

Bytes sequence(std::initializer_list<View> parts) {
  Bytes body;
  for (View p : parts) {
    body.insert(body.end(), p.begin(), p.end());
  }
  return tlv(kSequence, body);
}

Bytes unsignedInteger(View magnitude) {
  size_t skip = 0;
  while (skip + 1 < magnitude.size() && magnitude[skip] == 0) {
    ++skip;
  }
  Bytes body;
  if (magnitude.empty() || (magnitude[skip] & 0x80)) {
    body.push_back(0);
  }
  body.insert(body.end(), magnitude.begin() + static_cast<ptrdiff_t>(skip), magnitude.end());
  return tlv(kInteger, body);
}

Bytes unsignedInteger(uint64_t value) {
  uint8_t be[8];
  for (int i = 7; i >= 0; --i, value >>= 8) {
    be[i] = static_cast<uint8_t>(value & 0xff);
  }
  return unsignedInteger(View(be));
}

Bytes time(std::chrono::system_clock::time_point t) {
  const std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  const int year = tm.tm_year + 1900;
  const std::string text =
      year < 2050 ? fmt::format("{:02}{:02}{:02}{:02}{:02}{:02}Z", year % 100, tm.tm_mon + 1,
                                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec)
                  : fmt::format("{:04}{:02}{:02}{:02}{:02}{:02}Z", year, tm.tm_mon + 1, tm.tm_mday,
                                tm.tm_hour, tm.tm_min, tm.tm_sec);
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  return tlv(year < 2050 ? kUtcTime : kGeneralizedTime, View(p, text.size()));
}

std::optional<std::chrono::system_clock::time_point> parseTime(const Tlv& t) {
  const std::string s(t.value.begin(), t.value.end());
  const bool utc = t.tag == kUtcTime;
  if ((!utc && t.tag != kGeneralizedTime) || s.size() != (utc ? 13u : 15u) || s.back() != 'Z') {
    return std::nullopt;
  }
  for (size_t i = 0; i + 1 < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') {
      return std::nullopt;
    }
  }
  auto num = [&](size_t pos, size_t n) { return std::stoi(s.substr(pos, n)); };
  std::tm tm{};
  size_t pos = 0;
  if (utc) {
    const int yy = num(0, 2);
    tm.tm_year = (yy < 50 ? 2000 + yy : 1900 + yy) - 1900;
    pos = 2;
  } else {
    tm.tm_year = num(0, 4) - 1900;
    pos = 4;
  }
  tm.tm_mon = num(pos, 2) - 1;
  tm.tm_mday = num(pos + 2, 2);
  tm.tm_hour = num(pos + 4, 2);
  tm.tm_min = num(pos + 6, 2);
  tm.tm_sec = num(pos + 8, 2);
  return std::chrono::system_clock::from_time_t(timegm(&tm));
}

std::optional<CertificateFields> parseCertificate(View der) {
  // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
  View in = der;
  auto cert = read(in);
  if (!cert || cert->tag != kSequence) {
    return std::nullopt;
  }
  View body = cert->value;
  auto tbs = read(body);
  if (!tbs || tbs->tag != kSequence) {
    return std::nullopt;
  }
  View f = tbs->value;
  auto first = read(f);
  if (first && first->tag == 0xa0) { // [0] version
    first = read(f);
  }
  auto signature = read(f);
  auto issuer = read(f);
  auto validity = read(f);
  auto subject = read(f);
  auto spki = read(f);
  if (!first || first->tag != kInteger || !signature || !issuer || issuer->tag != kSequence ||
      !validity || validity->tag != kSequence || !subject || subject->tag != kSequence || !spki) {
    return std::nullopt;
  }
  View times = validity->value;
  auto notBefore = read(times);
  auto notAfter = read(times);
  if (!notBefore || !notAfter) {
    return std::nullopt;
  }
  auto after = parseTime(*notAfter);
  if (!after) {
    return std::nullopt;
  }
  CertificateFields out{first->value,
                        issuer->whole,
                        subject->whole,
                        spki->whole,
                        *after,
                        commonNameOf(subject->value),
                        {}};
  // [3] EXPLICIT Extensions, after the optional issuer/subject unique ids.
  while (!f.empty()) {
    auto next = read(f);
    if (!next) {
      return std::nullopt;
    }
    if (next->tag != 0xa3) {
      continue;
    }
    View wrapped = next->value;
    auto extensions = read(wrapped);
    if (!extensions || extensions->tag != kSequence) {
      return std::nullopt;
    }
    View list = extensions->value;
    while (!list.empty()) {
      auto ext = read(list);
      if (!ext || ext->tag != kSequence) {
        return std::nullopt;
      }
      View e = ext->value;
      auto oid = read(e);
      auto value = read(e);
      if (value && value->tag != kOctetString) { // the critical flag came first
        value = read(e);
      }
      if (oid && value && oid->tag == kOid && equal(oid->value, kOidSubjectKeyId)) {
        View inner = value->value;
        auto keyId = read(inner);
        if (keyId && keyId->tag == kOctetString) {
          out.subjectKeyId = keyId->value;
        }
      }
    }
  }
  return out;
}

std::string hex(View bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out += fmt::format("{:02x}", b);
  }
  return out;
}

} // namespace iotgw::tls::der
