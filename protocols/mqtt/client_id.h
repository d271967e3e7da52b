// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The client identifier an upstream session has at the broker: one per device-side client, so
// that two clients of one device never take each other's session, and the same client coming
// back finds its own. With `prefix` the configured client_id_prefix ("iotgw-"):
//
//   client id = device id             prefix + device                  iotgw-thermo-01
//   1-23 of [A-Za-z0-9._-]            prefix + device + ":" + id       iotgw-thermo-01:sub
//   anything else                     prefix + device + ":~" + hash    iotgw-thermo-01:~3f2a…
//   empty (3.1.1, clean session)      prefix + device + ":~" + random  (new on every connection)
//   the device's CoAP readings        prefix + device + ":!coap"
//   the device's outbox (outbox.h)    prefix + device + ":!store"      (persistent)
//
// A device id never contains ':', so the device part cannot be forged by a client identifier,
// and the three suffix forms cannot be mistaken for one another ("~" and "!" are not in the
// short form's alphabet). The hash is the first 128 bits of SHA-256, in hex. At most
// 32 + 63 + 34 = 129 bytes: every broker we know takes that (the 23 bytes of MQTT-3.1.3-5 are what
// a broker must take at least).

#include <string>
#include <string_view>

namespace iotgw::mqtt {

[[nodiscard]] std::string upstreamClientId(std::string_view prefix, std::string_view device,
                                           std::string_view clientId);
[[nodiscard]] std::string pushClientId(std::string_view prefix, std::string_view device);
[[nodiscard]] std::string storeClientId(std::string_view prefix, std::string_view device);

} // namespace iotgw::mqtt
