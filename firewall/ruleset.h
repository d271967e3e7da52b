// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The nftables ruleset iotgwd wants, as plain data: named sets (and counter maps) holding the
// per-device facts, and a fixed list of chains whose rules only look those sets up. compile.h
// fills it from a policy snapshot; netlink.h sends it to the kernel in one batch; nft_text.h
// writes the same thing in nft's language (for `nft -f` comparisons and for people).
//
// Every rule is a list of matches followed by at most one counting statement and one verdict.
// No rule names a device: the number of rules a packet meets never depends on how many devices
// are enrolled.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace iotgw::firewall {

inline constexpr const char* kTableName = "iotgw"; // family inet

// A packet or metadata field a rule can read. Network-layer fields need a preceding
// `Compare{Field::Nfproto, ...}` in the same rule (the inet family adds no dependency itself).
enum class Field : uint8_t {
  Iifname,   // 16 bytes, NUL padded
  Oifname,   // 16 bytes
  Nfproto,   // 1 byte: NFPROTO_IPV4 / NFPROTO_IPV6
  L4proto,   // 1 byte: IPPROTO_*
  Iiftype,   // 2 bytes, host order: ARPHRD_*
  Mark,      // 4 bytes, host order
  Ip4Saddr,  // 4 bytes
  Ip4Daddr,  // 4 bytes
  Ip6Saddr,  // 16 bytes
  Ip6Daddr,  // 16 bytes
  EtherSaddr, // 6 bytes (needs Iiftype == ARPHRD_ETHER)
  ThSport,   // 2 bytes, network order: any transport with ports at offset 0
  ThDport,   // 2 bytes, network order
  IcmpType,  // 1 byte (needs L4proto == IPPROTO_ICMP)
  Icmp6Type, // 1 byte (needs L4proto == IPPROTO_ICMPV6)
};

[[nodiscard]] uint32_t fieldLength(Field f) noexcept;

// A value in a set element, in the field's kernel byte order. `prefix` marks an address range
// (only in interval sets): the element covers every address sharing the first `prefix` bits.
struct Value {
  std::vector<uint8_t> bytes;
  std::optional<uint8_t> prefix;
  auto operator<=>(const Value&) const = default;
};

struct Element {
  std::vector<Value> key; // one per key field
  std::string counter;    // counter maps: the named counter the key maps to
  auto operator<=>(const Element&) const = default;
};

struct Set {
  std::string name;
  std::vector<Field> key;    // more than one: a concatenation
  bool interval = false;     // ranges (prefixes) in concatenations
  bool counterMap = false;   // a map from the key to a named counter object
  std::vector<Element> elements;
  bool operator==(const Set&) const = default;
};

// Matches.
struct Compare {
  Field field;
  uint32_t value = 0; // in the field's natural order; fields of at most 4 bytes
  bool negate = false;
  bool operator==(const Compare&) const = default;
};
struct Lookup {
  std::vector<Field> key;
  std::string set;
  bool negate = false; // "not in the set"
  bool operator==(const Lookup&) const = default;
};
struct CtStateIn {
  uint32_t mask = 0; // NF_CT_STATE_BIT(...) bits; matches when any is set
  bool operator==(const CtStateIn&) const = default;
};
struct DaddrNotLocal { // fib daddr type != local
  bool operator==(const DaddrNotLocal&) const = default;
};

// Statements.
struct Count { // an anonymous rule counter
  bool operator==(const Count&) const = default;
};
struct CountByMap { // counter name <field> map @set
  Field key;
  std::string map;
  bool operator==(const CountByMap&) const = default;
};
struct Redirect { // redirect to :port
  uint16_t port = 0;
  bool operator==(const Redirect&) const = default;
};

enum class Verdict : uint8_t { None, Accept, Drop, Jump, Goto, Return };

using Expr = std::variant<Compare, Lookup, CtStateIn, DaddrNotLocal, Count, CountByMap, Redirect>;

struct Rule {
  std::vector<Expr> exprs;
  Verdict verdict = Verdict::None;
  std::string target;  // Jump: the chain
  std::string comment; // shown by `nft list`; names the rule's purpose
  bool operator==(const Rule&) const = default;
};

enum class Hook : uint8_t { None, Prerouting, Input, Forward, Output, Postrouting };
enum class ChainType : uint8_t { Filter, Nat };

struct Chain {
  std::string name;
  Hook hook = Hook::None; // None: a regular chain reached by jumps
  ChainType type = ChainType::Filter;
  int32_t priority = 0;
  std::vector<Rule> rules;
  bool operator==(const Chain&) const = default;
};

struct Ruleset {
  std::vector<std::string> counters; // named counter objects
  std::vector<Set> sets;
  std::vector<Chain> chains;
  bool operator==(const Ruleset&) const = default;

  [[nodiscard]] const Set* findSet(std::string_view name) const;
  [[nodiscard]] const Chain* findChain(std::string_view name) const;
};

// What changes between two rulesets whose chains and set definitions are the same: elements and
// counters to add and to delete. Applied as one element batch.
struct ElementDelta {
  std::vector<std::string> addCounters;
  std::vector<std::string> deleteCounters;
  std::map<std::string, std::vector<Element>> add;    // set name -> elements
  std::map<std::string, std::vector<Element>> remove; // set name -> elements
  [[nodiscard]] bool empty() const;
  [[nodiscard]] size_t size() const;
};

// The element-level difference from `from` to `to`, or nullopt when the structure differs (chains,
// rules, set definitions) and only a whole-table replacement will do.
[[nodiscard]] std::optional<ElementDelta> diff(const Ruleset& from, const Ruleset& to);

} // namespace iotgw::firewall
