// SPDX-License-Identifier: GPL-3.0-or-later
#include "policy/decision.h"

namespace iotgw::policy {

ReasonInfo describe(Reason r) noexcept {
  using namespace provision;
  switch (r) {
  case Reason::Allowed:
    return {"", ""};
  case Reason::DefaultDeny:
    return {"default-deny", kAuthenticatedAccess};
  case Reason::Lockout:
    return {"auth.lockout", kBruteForce};
  case Reason::DefaultCredentials:
    return {"credentials.default", kNoDefaultPasswords};
  case Reason::PasswordWithoutUsername:
    return {"mqtt.password-without-username", kValidateInput};
  case Reason::PasswordPending:
    return {"auth.pending", kAuthenticatedAccess};
  case Reason::MissingCredentials:
    return {"auth.missing-credentials", kAuthenticatedAccess};
  case Reason::WrongPassword:
    return {"auth.password", kAuthenticatedAccess};
  case Reason::WrongAddress:
    return {"device.addresses", kAuthenticatedAccess};
  case Reason::WrongClientId:
    return {"device.mqtt.client_id", kAuthenticatedAccess};
  case Reason::PayloadTooLarge:
    return {"mqtt.max_payload_bytes", kValidateInput};
  case Reason::InvalidTopic:
    return {"mqtt.topic", kValidateInput};
  case Reason::TopicTooLong:
    return {"limits.max_topic_bytes", kValidateInput};
  case Reason::PacketTooLarge:
    return {"limits.max_packet_bytes", kValidateInput};
  case Reason::QosTooHigh:
    return {"mqtt.max_qos", kValidateInput};
  case Reason::RetainNotAllowed:
    return {"mqtt.retain", kValidateInput};
  case Reason::PublishNotAllowed:
    return {"mqtt.publish", kValidateInput};
  case Reason::SubscribeNotAllowed:
    return {"mqtt.subscribe", kValidateInput};
  case Reason::PayloadRule:
    return {"mqtt.payload", kValidateInput};
  case Reason::MessageRate:
    return {"mqtt.rate.messages_per_second", kTelemetryAnomaly};
  case Reason::ByteRate:
    return {"mqtt.rate.bytes_per_second", kTelemetryAnomaly};
  case Reason::CoapPayloadTooLarge:
    return {"coap.max_payload_bytes", kValidateInput};
  case Reason::CoapContentFormat:
    return {"coap.content_formats", kValidateInput};
  case Reason::CoapNotAllowed:
    return {"coap.rule", kValidateInput};
  case Reason::CoapClientNotAllowed:
    return {"coap.clients", kAuthenticatedAccess};
  case Reason::CoapNoPush:
    return {"coap.push", kValidateInput};
  }
  return {"default-deny", kAuthenticatedAccess};
}

} // namespace iotgw::policy
