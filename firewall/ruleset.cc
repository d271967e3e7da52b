// SPDX-License-Identifier: GPL-3.0-or-later
#include "firewall/ruleset.h"

#include <algorithm>
#include <iterator>
#include <set>

namespace iotgw::firewall {

uint32_t fieldLength(Field f) noexcept {
  switch (f) {
  case Field::Iifname:
  case Field::Oifname:
  case Field::Ip6Saddr:
  case Field::Ip6Daddr:
  case Field::NdTarget:
    return 16;
  case Field::Nfproto:
  case Field::L4proto:
  case Field::IcmpType:
  case Field::Icmp6Type:
    return 1;
  case Field::Protocol:
  case Field::Iiftype:
  case Field::ThSport:
  case Field::ThDport:
  case Field::NdOption:
    return 2;
  case Field::Iifgroup:
  case Field::Oifgroup:
  case Field::Mark:
  case Field::Ip4Saddr:
  case Field::Ip4Daddr:
  case Field::ArpSpa:
    return 4;
  case Field::EtherSaddr:
  case Field::EtherDaddr:
  case Field::ArpSha:
  case Field::NdOptionLladdr:
    return 6;
  }
  return 0;
}

const Set* Ruleset::findSet(std::string_view name) const {
  auto it = std::find_if(sets.begin(), sets.end(), [&](const Set& s) { return s.name == name; });
  return it == sets.end() ? nullptr : &*it;
}

const Chain* Ruleset::findChain(std::string_view name) const {
  auto it =
      std::find_if(chains.begin(), chains.end(), [&](const Chain& c) { return c.name == name; });
  return it == chains.end() ? nullptr : &*it;
}

bool ElementDelta::empty() const { return size() == 0; }

size_t ElementDelta::size() const {
  size_t n = addCounters.size() + deleteCounters.size();
  for (const auto& [_, v] : add) {
    n += v.size();
  }
  for (const auto& [_, v] : remove) {
    n += v.size();
  }
  return n;
}

namespace {
template <typename T> std::vector<T> minus(const std::vector<T>& a, const std::vector<T>& b) {
  // Both sorted (compile keeps set elements sorted; counters are compared as sets).
  std::vector<T> out;
  std::set_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(out));
  return out;
}
} // namespace

std::optional<ElementDelta> diff(const Ruleset& from, const Ruleset& to) {
  if (from.family != to.family || from.chains != to.chains || from.sets.size() != to.sets.size()) {
    return std::nullopt;
  }
  ElementDelta d;
  for (size_t i = 0; i < from.sets.size(); ++i) {
    const Set& a = from.sets[i];
    const Set& b = to.sets[i];
    if (a.name != b.name || a.key != b.key || a.interval != b.interval ||
        a.counterMap != b.counterMap) {
      return std::nullopt;
    }
    if (auto gone = minus(a.elements, b.elements); !gone.empty()) {
      d.remove[a.name] = std::move(gone);
    }
    if (auto added = minus(b.elements, a.elements); !added.empty()) {
      d.add[a.name] = std::move(added);
    }
  }
  std::vector<std::string> ca = from.counters;
  std::vector<std::string> cb = to.counters;
  std::sort(ca.begin(), ca.end());
  std::sort(cb.begin(), cb.end());
  d.deleteCounters = minus(ca, cb);
  d.addCounters = minus(cb, ca);
  return d;
}

} // namespace iotgw::firewall
