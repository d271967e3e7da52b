// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// The nftables tables iotgwd wants, as plain data: named sets (and counter maps) holding the
// per-device facts, and a fixed list of chains whose rules only look those sets up. iotgwd owns
// two tables, both named `iotgw`: `inet iotgw` (addresses, ports, routing) and `bridge iotgw`
// (frames on the device bridges' ports, whether or not br_netfilter passes them to IP hooks).
// compile.h fills them from a policy snapshot; netlink.h sends them to the kernel in one batch;
// tests/tools/nft_text.h writes the same thing in nft's language (for `nft -f` comparisons).
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

inline constexpr const char* kTableName = "iotgw"; // in both families

enum class Family : uint8_t { Inet, Bridge };

// A packet or metadata field a rule can read. Network-layer fields need a preceding
// `Compare{Field::Nfproto, ...}` in the same rule in the inet family, and a preceding
// `Compare{Field::Protocol, ...}` (the ethertype) in the bridge family: neither adds the
// dependency itself, and in the bridge family a frame of any type reaches the rules.
enum class Field : uint8_t {
  Iifname,        // 16 bytes, NUL padded; in the bridge family the port the frame came in on
  Oifname,        // 16 bytes
  Nfproto,        // 1 byte: NFPROTO_IPV4 / NFPROTO_IPV6 (inet family only)
  Protocol,       // 2 bytes, network order: the ethertype (meta protocol)
  L4proto,        // 1 byte: IPPROTO_*
  Iiftype,        // 2 bytes, host order: ARPHRD_*
  Iifgroup,       // 4 bytes, host order: the input interface's group (ip link set ... group N)
  Oifgroup,       // 4 bytes, host order
  Mark,           // 4 bytes, host order
  Ip4Saddr,       // 4 bytes
  Ip4Daddr,       // 4 bytes
  Ip6Saddr,       // 16 bytes
  Ip6Daddr,       // 16 bytes
  EtherSaddr,     // 6 bytes (inet: needs Iiftype == ARPHRD_ETHER)
  EtherDaddr,     // 6 bytes (bridge family)
  ArpSha,         // 6 bytes: an Ethernet/IPv4 ARP packet's sender hardware address
  ArpSpa,         // 4 bytes: its sender protocol address
  ThSport,        // 2 bytes, network order: any transport with ports at offset 0
  ThDport,        // 2 bytes, network order
  IcmpType,       // 1 byte (needs L4proto == IPPROTO_ICMP)
  Icmp6Type,      // 1 byte (needs L4proto == IPPROTO_ICMPV6)
  NdTarget,       // 16 bytes: a neighbour solicitation's or advertisement's target address
  NdOption,       // 2 bytes, network order: type and length of the first ND option
  NdOptionLladdr, // 6 bytes: the first ND option's link-layer address (when it is one)
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
  std::vector<Field> key;  // more than one: a concatenation
  bool interval = false;   // ranges (prefixes) in concatenations
  bool counterMap = false; // a map from the key to a named counter object
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
// fib daddr [. iif] type [!=] <type>: what the destination address is to the gateway (RTN_LOCAL,
// RTN_BROADCAST, RTN_MULTICAST, ...); with `inputInterface`, an address counts as local only when
// it is configured on the interface the packet came in on. Inet family only.
struct FibDaddrType {
  uint32_t type = 0; // RTN_*
  bool inputInterface = false;
  bool negate = false;
  bool operator==(const FibDaddrType&) const = default;
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
// limit rate <perSecond>/second burst <burst> packets: the rest of the rule applies to at most
// that many packets (the kernel's token bucket, shared by everything the rule sees).
struct Limit {
  uint32_t perSecond = 0;
  uint32_t burst = 0;
  bool operator==(const Limit&) const = default;
};
// log group <group> prefix "<prefix>": a copy of the packet's headers to iotgwd over nflog.
struct Log {
  uint16_t group = 0;
  std::string prefix;
  bool operator==(const Log&) const = default;
};

enum class Verdict : uint8_t { None, Accept, Drop, Jump, Goto, Return };

using Expr =
    std::variant<Compare, Lookup, CtStateIn, FibDaddrType, Count, CountByMap, Redirect, Limit, Log>;

struct Rule {
  std::vector<Expr> exprs;
  Verdict verdict = Verdict::None;
  std::string target;  // Jump: the chain
  std::string comment; // shown by `nft list`; names the rule's purpose
  bool operator==(const Rule&) const = default;
};

// The bridge family's hooks have the same names (and numbers) as the inet family's.
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

// One table.
struct Ruleset {
  Family family = Family::Inet;
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

// The element-level difference from `from` to `to` (one table), or nullopt when the structure
// differs (family, chains, rules, set definitions) and only a whole-table replacement will do.
[[nodiscard]] std::optional<ElementDelta> diff(const Ruleset& from, const Ruleset& to);

} // namespace iotgw::firewall
