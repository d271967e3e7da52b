// SPDX-License-Identifier: GPL-3.0-or-later
// libFuzzer target: the DER reader behind the gateway CA (certificates read back from the state
// directory). Any input must give fields that lie inside the input, or nothing; never a crash.
#include <cstdint>
#include <cstdlib>

#include "protocols/tls/der.h"

namespace {

bool inside(iotgw::tls::der::View part, const uint8_t* data, size_t size) {
  return part.empty() || (part.data() >= data && part.data() + part.size() <= data + size);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace iotgw::tls;
  der::View in(data, size);
  while (auto t = der::read(in)) { // every element in sequence, and any time among them
    if (!inside(t->whole, data, size) || t->value.size() > t->whole.size()) {
      std::abort();
    }
    (void)der::parseTime(*t);
  }
  if (auto c = der::parseCertificate(der::View(data, size))) {
    if (!inside(c->serial, data, size) || !inside(c->issuer, data, size) ||
        !inside(c->subject, data, size) || !inside(c->publicKeyInfo, data, size) ||
        !inside(c->subjectKeyId, data, size) || c->commonName.size() > size) {
      std::abort();
    }
  }
  return 0;
}
