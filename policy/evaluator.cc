// SPDX-License-Identifier: GPL-3.0-or-later
#include "policy/evaluator.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>

#include "policy/json.h"
#include "policy/topic.h"
#include "policy/utf8.h"

namespace iotgw::policy {

namespace {

std::string_view asText(std::span<const uint8_t> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

bool kindMatches(JsonKind kind, const JsonValue& v) {
  switch (kind) {
  case JsonKind::Any:
    return true;
  case JsonKind::Object:
    return v.type == JsonType::Object;
  case JsonKind::Array:
    return v.type == JsonType::Array;
  case JsonKind::String:
    return v.type == JsonType::String;
  case JsonKind::Number:
    return v.type == JsonType::Number;
  case JsonKind::Integer:
    return v.type == JsonType::Number && std::trunc(v.number) == v.number;
  case JsonKind::Boolean:
    return v.type == JsonType::Boolean;
  case JsonKind::Null:
    return v.type == JsonType::Null;
  }
  return false;
}

std::optional<std::string> checkField(const JsonFieldRule& f, const JsonValue& v) {
  if (!kindMatches(f.kind, v)) {
    return fmt::format("field '{}' has the wrong type ({})", f.name, jsonTypeName(v.type));
  }
  if (v.type == JsonType::Number) {
    if (f.min && v.number < *f.min) {
      return fmt::format("field '{}' is below its minimum", f.name);
    }
    if (f.max && v.number > *f.max) {
      return fmt::format("field '{}' is above its maximum", f.name);
    }
  }
  if (v.type == JsonType::String) {
    if (f.maxLength && v.string.size() > *f.maxLength) {
      return fmt::format("field '{}' is longer than {} bytes", f.name, *f.maxLength);
    }
    if (!f.enumValues.empty() && std::ranges::find(f.enumValues, v.string) == f.enumValues.end()) {
      return fmt::format("field '{}' is not one of the allowed values", f.name);
    }
  }
  return std::nullopt;
}

// %d, %c and %u from verified identity only: the device id, the client id its policy pins, and
// its user name when the session proved it with the password (`username` is what the session
// verified, empty otherwise; anything else the client said is never used).
TopicScope scopeOf(const DevicePolicy& p, std::string_view username) {
  const bool verified = !username.empty() && username == p.mqtt.username;
  return TopicScope{p.id.str(), p.mqtt.clientId, verified ? username : std::string_view()};
}

// Does any pattern in `patterns`, with %d/%c/%u substituted, match (or cover) `topic`?
template <typename Test>
bool anyPattern(const std::vector<std::string>& patterns, const TopicScope& scope, Test&& test) {
  for (const auto& pattern : patterns) {
    if (auto concrete = substitutePattern(pattern, scope)) {
      if (test(*concrete)) {
        return true;
      }
    }
  }
  return false;
}

const PayloadRule* payloadRuleFor(const DevicePolicy& p, const PublishFacts& f) {
  // A rule whose placeholder has no value in this session (%u after a certificate login) still
  // applies, to every value of that level: a payload rule restricts, so it fails closed.
  const TopicScope scope = scopeOf(p, f.username);
  for (const auto& rule : p.mqttRules.payloadRules) {
    if (topicMatches(widenPattern(rule.topic, scope), f.topic)) {
      return &rule;
    }
  }
  return nullptr;
}

Decision deny(const DevicePolicy& p, Reason why, std::string reason) {
  return Decision::deny(why, std::move(reason), p.onViolation);
}

// Checks shared by both directions of a PUBLISH.
std::optional<Decision> checkMessage(const DevicePolicy& p, const PublishFacts& f) {
  const MqttRules& m = p.mqttRules;
  if (f.payload.size() > m.maxPayloadBytes) {
    return deny(p, Reason::PayloadTooLarge,
                fmt::format("payload of {} bytes exceeds the limit of {}", f.payload.size(),
                            m.maxPayloadBytes));
  }
  if (auto e = validateTopicName(f.topic)) {
    return deny(p, Reason::InvalidTopic,
                fmt::format("invalid topic name: {} ({})", describe(*e), clause(*e)));
  }
  return std::nullopt;
}

std::optional<Decision> checkPayloadRules(const DevicePolicy& p, const PublishFacts& f) {
  if (const PayloadRule* rule = payloadRuleFor(p, f)) {
    if (auto why = checkPayload(*rule, f.payload)) {
      return Decision::deny(Reason::PayloadRule, rule->id, *why, p.onViolation);
    }
  }
  return std::nullopt;
}

} // namespace

std::optional<std::string> checkPayload(const PayloadRule& rule, std::span<const uint8_t> payload) {
  switch (rule.format) {
  case PayloadFormat::Binary:
    return std::nullopt;
  case PayloadFormat::Utf8:
    if (!isValidUtf8(asText(payload))) {
      return "payload is not well-formed UTF-8";
    }
    return std::nullopt;
  case PayloadFormat::Json:
    break;
  }
  auto doc = parseJson(asText(payload));
  if (!doc) {
    return fmt::format("payload is not valid JSON: {} at byte {}", doc.error().message,
                       doc.error().offset);
  }
  if (!kindMatches(rule.kind, *doc)) {
    return fmt::format("payload is a JSON {}, not the expected type", jsonTypeName(doc->type));
  }
  if (doc->type != JsonType::Object) {
    return std::nullopt;
  }
  for (const auto& key : rule.required) {
    if (doc->member(key) == nullptr) {
      return fmt::format("payload lacks the required key '{}'", key);
    }
  }
  for (const auto& field : rule.fields) {
    if (const JsonValue* v = doc->member(field.name)) {
      if (auto why = checkField(field, *v)) {
        return why;
      }
    }
  }
  if (!rule.allowOtherKeys) {
    for (const auto& [key, value] : doc->object) {
      const bool known =
          std::ranges::find(rule.required, key) != rule.required.end() ||
          std::ranges::find(rule.fields, key, &JsonFieldRule::name) != rule.fields.end();
      if (!known) {
        return fmt::format("payload has a key the rule does not allow");
      }
    }
  }
  return std::nullopt;
}

namespace {

ConnectDecision refuse(Reason why, std::string reason, bool authFailure) {
  return ConnectDecision{Decision::deny(why, std::move(reason), ViolationAction::Disconnect),
                         nullptr, authFailure, nullptr};
}

// The checks after the identity is settled: where the device may connect from and which client
// id it must use. They come after the password, so that their answers tell nothing about a user
// name to someone who does not know its password.
ConnectDecision admit(const DevicePolicy* device, Login login, const ConnectFacts& f) {
  if (f.certificate == nullptr && !device->addresses.empty() && f.peer &&
      std::ranges::find(device->addresses, *f.peer) == device->addresses.end()) {
    return refuse(Reason::WrongAddress, "device connected from an address not in its policy",
                  false);
  }
  if (!device->mqtt.clientId.empty() && device->mqtt.clientId != f.clientId) {
    return refuse(Reason::WrongClientId, "client id does not match the device's", false);
  }
  const char* rule = login == Login::Certificate ? "connect.certificate"
                     : login == Login::Password  ? "connect.username"
                                                 : "connect.address";
  ConnectDecision ok{Decision::allow(rule), device, false, nullptr};
  ok.login = login;
  return ok;
}

} // namespace

ConnectDecision evaluateConnect(const PolicySet& set, const DefaultCredentials& defaults,
                                const ConnectFacts& f) {
  if (f.sourceLockedOut) {
    return refuse(Reason::Lockout, "source is locked out after repeated failed logins", false);
  }
  // A universal default password is refused whoever presents it, enrolled or not.
  if (f.username && defaults.matches(*f.username, f.password.value_or(""))) {
    return refuse(Reason::DefaultCredentials, "login with a universal default credential", true);
  }
  if (f.password && !f.username) {
    return refuse(Reason::PasswordWithoutUsername, "password without a username", true);
  }

  if (f.certificate != nullptr) {
    const DevicePolicy* device =
        set.findByCertificate(f.certificate->commonName, f.certificate->subjectAltNames);
    if (device == nullptr) {
      return refuse(Reason::DefaultDeny, "no enrolled device matches this certificate", false);
    }
    return admit(device, Login::Certificate, f);
  }
  if (f.username) {
    const DevicePolicy* device = set.findByUsername(*f.username);
    // A user name guessed at from many sources is locked out, but not for the device's own
    // enrolled address: guesses from elsewhere must not lock the real device out.
    const bool ownAddress =
        device != nullptr && f.peer &&
        std::ranges::find(device->addresses, *f.peer) != device->addresses.end();
    if (f.usernameLockedOut && !ownAddress) {
      return refuse(Reason::Lockout, "user name is locked out after repeated failed logins", false);
    }
    // The answer hinges on the password: the caller verifies it (slow by design) and finishes
    // with evaluateVerifiedConnect. An unknown user name is verified against a hash that matches
    // nothing, so that it costs the same time and gets the same answer as a wrong password.
    // Until then the decision is a refusal: a caller that forgot the check logs nobody in.
    ConnectDecision pending =
        refuse(Reason::PasswordPending, "the password has not been checked yet", false);
    pending.device = device;
    pending.passwordHash = device != nullptr && device->mqtt.passwordHash
                               ? &*device->mqtt.passwordHash
                               : &set.unmatchableHash();
    return pending;
  }
  const DevicePolicy* device = f.peer ? set.findByAddress(*f.peer) : nullptr;
  if (device == nullptr) {
    return refuse(Reason::DefaultDeny, "no enrolled device matches this address", false);
  }
  // An address identifies a device only if it has no stronger credential configured.
  if (device->mqtt.passwordHash || !device->certificate.commonName.empty() ||
      !device->certificate.subjectAltNames.empty()) {
    return refuse(Reason::MissingCredentials, "device must log in with its credentials", true);
  }
  return admit(device, Login::Address, f);
}

ConnectDecision evaluateVerifiedConnect(const ConnectDecision& pending, bool passwordMatched,
                                        const ConnectFacts& f) {
  if (pending.device == nullptr || !passwordMatched) {
    return refuse(Reason::WrongPassword, "wrong user name or password", true);
  }
  return admit(pending.device, Login::Password, f);
}

Decision evaluatePublish(const DevicePolicy& p, const PublishFacts& f) {
  const MqttRules& m = p.mqttRules;
  if (auto d = checkMessage(p, f)) {
    return *d;
  }
  if (f.qos > m.maxQos) {
    return deny(p, Reason::QosTooHigh,
                fmt::format("QoS {} exceeds the device's maximum {}", f.qos, m.maxQos));
  }
  if (f.retain && !m.retainAllowed) {
    return deny(p, Reason::RetainNotAllowed, "retained messages are not allowed");
  }
  if (!anyPattern(m.publish, scopeOf(p, f.username),
                  [&](const std::string& filter) { return topicMatches(filter, f.topic); })) {
    return deny(p, Reason::PublishNotAllowed, "topic is not in the device's publish list");
  }
  if (auto d = checkPayloadRules(p, f)) {
    return *d;
  }
  return Decision::allow("mqtt.publish");
}

Decision evaluateSubscribe(const DevicePolicy& p, const SubscribeFacts& f) {
  if (auto e = validateTopicFilter(f.filter)) {
    return deny(p, Reason::InvalidTopic,
                fmt::format("invalid topic filter: {} ({})", describe(*e), clause(*e)));
  }
  if (!anyPattern(p.mqttRules.subscribe, scopeOf(p, f.username),
                  [&](const std::string& allowed) { return filterCovers(allowed, f.filter); })) {
    return deny(p, Reason::SubscribeNotAllowed, "filter is not within the device's subscribe list");
  }
  Decision d = Decision::allow("mqtt.subscribe");
  d.grantedQos = std::min(f.requestedQos, p.mqttRules.maxQos);
  return d;
}

Decision evaluateDelivery(const DevicePolicy& p, const PublishFacts& f) {
  if (auto d = checkMessage(p, f)) {
    return *d;
  }
  if (!anyPattern(p.mqttRules.subscribe, scopeOf(p, f.username),
                  [&](const std::string& filter) { return topicMatches(filter, f.topic); })) {
    return deny(p, Reason::SubscribeNotAllowed,
                "message topic is outside the device's subscribe list");
  }
  if (auto d = checkPayloadRules(p, f)) {
    return *d;
  }
  return Decision::allow("mqtt.deliver");
}

MessageRateLimiter makeRateLimiter(const DevicePolicy& p, Clock::time_point now) {
  const RateLimit& r = p.mqttRules.rate;
  return MessageRateLimiter(r.messagesPerSecond, r.messageBurst, r.bytesPerSecond, r.byteBurst,
                            now);
}

Decision rateDecision(const DevicePolicy& p, MessageRateLimiter::Result r) {
  switch (r) {
  case MessageRateLimiter::Result::Allowed:
    return Decision::allow("mqtt.rate");
  case MessageRateLimiter::Result::TooManyMessages:
    return deny(
        p, Reason::MessageRate,
        fmt::format("more than {} messages per second", p.mqttRules.rate.messagesPerSecond));
  case MessageRateLimiter::Result::TooManyBytes:
    return deny(p, Reason::ByteRate,
                fmt::format("more than {} bytes per second", p.mqttRules.rate.bytesPerSecond));
  }
  return deny(p, Reason::MessageRate, "rate limit");
}

namespace {

// The one content-format rule, both directions (coap.content_formats, an empty list allows any):
// a Content-Format that is declared must be in the list, and a body must declare one.
std::optional<Decision> contentFormat(const DevicePolicy& p, size_t payloadBytes,
                                      std::optional<uint16_t> format) {
  const auto& allowed = p.coapRules.contentFormats;
  if (allowed.empty()) {
    return std::nullopt;
  }
  if (format && std::ranges::find(allowed, *format) == allowed.end()) {
    return deny(p, Reason::CoapContentFormat,
                fmt::format("content format {} is not allowed", *format));
  }
  if (!format && payloadBytes > 0) {
    return deny(p, Reason::CoapContentFormat, "a payload without Content-Format");
  }
  return std::nullopt;
}

std::optional<Decision> coapLimits(const DevicePolicy& p, const CoapFacts& f) {
  const CoapRules& c = p.coapRules;
  if (f.payloadBytes > c.maxPayloadBytes) {
    return deny(p, Reason::CoapPayloadTooLarge,
                fmt::format("payload of {} bytes exceeds the limit of {}", f.payloadBytes,
                            c.maxPayloadBytes));
  }
  return contentFormat(p, f.payloadBytes, f.contentFormat);
}

} // namespace

Decision evaluateCoapRequest(const DevicePolicy& p, const CoapFacts& f) {
  if (auto refused = coapLimits(p, f)) {
    return *refused;
  }
  const CoapRules& c = p.coapRules;
  for (const auto& rule : c.rules) {
    if (std::ranges::find(rule.methods, f.method) != rule.methods.end() &&
        coapPathMatches(rule.path, f.path)) {
      return Decision::allow(rule.id);
    }
  }
  return deny(p, Reason::CoapNotAllowed,
              fmt::format("{} on this path is not allowed", toString(f.method)));
}

Decision evaluateCoapResponse(const DevicePolicy& p, const CoapResponseFacts& f) {
  if (f.code >> 5 == 2) {
    if (auto refused = contentFormat(p, f.payloadBytes, f.contentFormat)) {
      return *refused;
    }
  }
  return Decision::allow("coap.response");
}

Decision evaluateCoapClient(const DevicePolicy& p, std::string_view client) {
  const auto& allowed = p.coapRules.clients;
  if (allowed.empty() || std::ranges::find(allowed, client) != allowed.end()) {
    return Decision::allow("coap.clients");
  }
  return deny(p, Reason::CoapClientNotAllowed,
              fmt::format("client '{}' may not reach this device", client));
}

Decision evaluateCoapPush(const DevicePolicy& p, const CoapFacts& f, const CoapPush** push) {
  *push = nullptr;
  if (f.method != CoapMethod::Post && f.method != CoapMethod::Put) {
    return deny(p, Reason::CoapNoPush,
                fmt::format("{} is not a push (POST or PUT)", toString(f.method)));
  }
  if (auto refused = coapLimits(p, f)) {
    return *refused;
  }
  for (const auto& rule : p.coapRules.push) {
    if (coapPathMatches(rule.path, f.path)) {
      *push = &rule;
      return Decision::allow(rule.id);
    }
  }
  return deny(p, Reason::CoapNoPush, "no push rule for this path");
}

std::string coapPushTopic(const DevicePolicy& p, const CoapPush& push, std::string_view path) {
  if (path.starts_with('/')) {
    path.remove_prefix(1);
  }
  std::string out;
  for (size_t i = 0; i < push.topic.size(); ++i) {
    if (push.topic[i] == '%' && i + 1 < push.topic.size() &&
        (push.topic[i + 1] == 'd' || push.topic[i + 1] == 'p')) {
      out += push.topic[i + 1] == 'd' ? std::string_view(p.id.str()) : path;
      ++i;
    } else {
      out.push_back(push.topic[i]);
    }
  }
  return out;
}

} // namespace iotgw::policy
