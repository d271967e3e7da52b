// SPDX-License-Identifier: GPL-3.0-or-later
#include "firewall/nftnl_build.h"

// <netinet/in.h> before the kernel's netfilter headers, or struct in_addr is defined twice.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/netfilter.h>
#include <linux/netfilter/nf_log.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>

#include <libmnl/libmnl.h>
#include <libnftnl/chain.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/gen.h>
#include <libnftnl/object.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>
#include <libnftnl/udata.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <vector>

#include <fmt/format.h>

namespace iotgw::firewall {

namespace {

template <auto Free> struct Deleter {
  template <typename T> void operator()(T* p) const { Free(p); }
};
using TablePtr = std::unique_ptr<nftnl_table, Deleter<nftnl_table_free>>;
using ChainPtr = std::unique_ptr<nftnl_chain, Deleter<nftnl_chain_free>>;
using RulePtr = std::unique_ptr<nftnl_rule, Deleter<nftnl_rule_free>>;
using SetPtr = std::unique_ptr<nftnl_set, Deleter<nftnl_set_free>>;
using ObjPtr = std::unique_ptr<nftnl_obj, Deleter<nftnl_obj_free>>;

uint16_t nfFamily(Family f) { return f == Family::Bridge ? NFPROTO_BRIDGE : NFPROTO_INET; }

// nft's datatype numbers, so that `nft list` shows our sets with their proper types.
uint32_t datatype(Field f) {
  switch (f) {
  case Field::Iifname:
  case Field::Oifname:
    return 41;
  case Field::Nfproto:
    return 2;
  case Field::Protocol:
    return 10;
  case Field::L4proto:
    return 12;
  case Field::Iiftype:
    return 21;
  case Field::Iifgroup:
  case Field::Oifgroup:
    return 35;
  case Field::Mark:
    return 19;
  case Field::Ip4Saddr:
  case Field::Ip4Daddr:
  case Field::ArpSpa:
    return 7;
  case Field::Ip6Saddr:
  case Field::Ip6Daddr:
  case Field::NdTarget:
    return 8;
  case Field::EtherSaddr:
  case Field::EtherDaddr:
  case Field::ArpSha:
  case Field::NdOptionLladdr:
    return 9;
  case Field::ThSport:
  case Field::ThDport:
    return 13;
  case Field::IcmpType:
    return 14;
  case Field::Icmp6Type:
    return 29;
  case Field::NdOption:
    return 4;
  }
  return 0;
}

uint32_t registers32(Field f) { return (fieldLength(f) + 3) / 4; }

uint32_t keyLength(const std::vector<Field>& key) {
  if (key.size() == 1) {
    return fieldLength(key[0]);
  }
  uint32_t n = 0;
  for (Field f : key) {
    n += registers32(f) * 4;
  }
  return n;
}

// The element key as the kernel stores it: concatenated fields each padded to 32 bits. For an
// interval, `end` gives the last value of the range (the prefix's host bits set).
std::vector<uint8_t> keyBytes(const std::vector<Field>& key, const Element& e, bool end) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i < key.size(); ++i) {
    std::vector<uint8_t> v = e.key[i].bytes;
    if (end && e.key[i].prefix) {
      const size_t bits = *e.key[i].prefix;
      for (size_t b = bits; b < v.size() * 8; ++b) {
        v[b / 8] |= static_cast<uint8_t>(0x80u >> (b % 8));
      }
    }
    if (key.size() > 1) {
      v.resize(registers32(key[i]) * 4, 0);
    }
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

// --- rule expressions -----------------------------------------------------------------------

void add(nftnl_rule* r, nftnl_expr* e) { nftnl_rule_add_expr(r, e); }

void load(nftnl_rule* r, Field f, uint32_t reg) {
  auto meta = [&](uint32_t key) {
    nftnl_expr* e = nftnl_expr_alloc("meta");
    nftnl_expr_set_u32(e, NFTNL_EXPR_META_KEY, key);
    nftnl_expr_set_u32(e, NFTNL_EXPR_META_DREG, reg);
    add(r, e);
  };
  auto payload = [&](uint32_t base, uint32_t offset) {
    nftnl_expr* e = nftnl_expr_alloc("payload");
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_BASE, base);
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_OFFSET, offset);
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_LEN, fieldLength(f));
    nftnl_expr_set_u32(e, NFTNL_EXPR_PAYLOAD_DREG, reg);
    add(r, e);
  };
  switch (f) {
  case Field::Iifname:
    meta(NFT_META_IIFNAME);
    break;
  case Field::Oifname:
    meta(NFT_META_OIFNAME);
    break;
  case Field::Nfproto:
    meta(NFT_META_NFPROTO);
    break;
  case Field::Protocol:
    meta(NFT_META_PROTOCOL);
    break;
  case Field::L4proto:
    meta(NFT_META_L4PROTO);
    break;
  case Field::Iiftype:
    meta(NFT_META_IIFTYPE);
    break;
  case Field::Iifgroup:
    meta(NFT_META_IIFGROUP);
    break;
  case Field::Oifgroup:
    meta(NFT_META_OIFGROUP);
    break;
  case Field::Mark:
    meta(NFT_META_MARK);
    break;
  case Field::Ip4Saddr:
    payload(NFT_PAYLOAD_NETWORK_HEADER, 12);
    break;
  case Field::Ip4Daddr:
    payload(NFT_PAYLOAD_NETWORK_HEADER, 16);
    break;
  case Field::Ip6Saddr:
    payload(NFT_PAYLOAD_NETWORK_HEADER, 8);
    break;
  case Field::Ip6Daddr:
    payload(NFT_PAYLOAD_NETWORK_HEADER, 24);
    break;
  case Field::EtherSaddr:
    payload(NFT_PAYLOAD_LL_HEADER, 6);
    break;
  case Field::EtherDaddr:
    payload(NFT_PAYLOAD_LL_HEADER, 0);
    break;
  // ARP: hardware type (2), protocol type (2), lengths (1, 1), operation (2), then the sender's
  // hardware and protocol addresses.
  case Field::ArpSha:
    payload(NFT_PAYLOAD_NETWORK_HEADER, 8);
    break;
  case Field::ArpSpa:
    payload(NFT_PAYLOAD_NETWORK_HEADER, 14);
    break;
  case Field::ThSport:
    payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0);
    break;
  case Field::ThDport:
    payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2);
    break;
  case Field::IcmpType:
  case Field::Icmp6Type:
    payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0);
    break;
  // Neighbour solicitation/advertisement: type, code, checksum, flags (8 bytes), the target
  // (16), then options (type, length in 8-byte units, data).
  case Field::NdTarget:
    payload(NFT_PAYLOAD_TRANSPORT_HEADER, 8);
    break;
  case Field::NdOption:
    payload(NFT_PAYLOAD_TRANSPORT_HEADER, 24);
    break;
  case Field::NdOptionLladdr:
    payload(NFT_PAYLOAD_TRANSPORT_HEADER, 26);
    break;
  }
}

void cmp(nftnl_rule* r, uint32_t reg, uint32_t op, const void* data, uint32_t len) {
  nftnl_expr* e = nftnl_expr_alloc("cmp");
  nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_SREG, reg);
  nftnl_expr_set_u32(e, NFTNL_EXPR_CMP_OP, op);
  nftnl_expr_set(e, NFTNL_EXPR_CMP_DATA, data, len);
  add(r, e);
}

void compare(nftnl_rule* r, const Compare& c) {
  load(r, c.field, NFT_REG_1);
  const uint32_t op = c.negate ? NFT_CMP_NEQ : NFT_CMP_EQ;
  switch (fieldLength(c.field)) {
  case 1: {
    const auto v = static_cast<uint8_t>(c.value);
    cmp(r, NFT_REG_1, op, &v, 1);
    break;
  }
  case 2: {
    // Ports, the ethertype and ND option headers are in network order on the wire; meta
    // iiftype is in host order.
    const auto host = static_cast<uint16_t>(c.value);
    const bool wire = c.field == Field::ThDport || c.field == Field::ThSport ||
                      c.field == Field::Protocol || c.field == Field::NdOption;
    const uint16_t v = wire ? htons(host) : host;
    cmp(r, NFT_REG_1, op, &v, 2);
    break;
  }
  default: {
    const uint32_t v = c.value;
    cmp(r, NFT_REG_1, op, &v, 4);
  }
  }
}

// Loads a (possibly concatenated) key; returns the first register.
uint32_t loadKey(nftnl_rule* r, const std::vector<Field>& key) {
  if (key.size() == 1) {
    load(r, key[0], NFT_REG_1);
    return NFT_REG_1;
  }
  uint32_t reg = NFT_REG32_00;
  for (Field f : key) {
    load(r, f, reg);
    reg += registers32(f);
  }
  return NFT_REG32_00;
}

struct SetIds {
  const std::map<std::string, uint32_t, std::less<>>* ids;
  uint32_t of(const std::string& name) const {
    auto it = ids->find(name);
    return it == ids->end() ? 0 : it->second;
  }
};

struct ExprBuilder {
  nftnl_rule* r;
  SetIds sets;
  void operator()(const Compare& c) const { compare(r, c); }
  void operator()(const Lookup& l) const {
    const uint32_t reg = loadKey(r, l.key);
    nftnl_expr* e = nftnl_expr_alloc("lookup");
    nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_SREG, reg);
    nftnl_expr_set_str(e, NFTNL_EXPR_LOOKUP_SET, l.set.c_str());
    if (uint32_t id = sets.of(l.set)) {
      nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_SET_ID, id);
    }
    if (l.negate) {
      nftnl_expr_set_u32(e, NFTNL_EXPR_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
    }
    add(r, e);
  }
  void operator()(const CtStateIn& s) const {
    nftnl_expr* ct = nftnl_expr_alloc("ct");
    nftnl_expr_set_u32(ct, NFTNL_EXPR_CT_KEY, NFT_CT_STATE);
    nftnl_expr_set_u32(ct, NFTNL_EXPR_CT_DREG, NFT_REG_1);
    add(r, ct);
    nftnl_expr* bw = nftnl_expr_alloc("bitwise");
    const uint32_t mask = s.mask;
    const uint32_t zero = 0;
    nftnl_expr_set_u32(bw, NFTNL_EXPR_BITWISE_SREG, NFT_REG_1);
    nftnl_expr_set_u32(bw, NFTNL_EXPR_BITWISE_DREG, NFT_REG_1);
    nftnl_expr_set_u32(bw, NFTNL_EXPR_BITWISE_LEN, 4);
    nftnl_expr_set(bw, NFTNL_EXPR_BITWISE_MASK, &mask, 4);
    nftnl_expr_set(bw, NFTNL_EXPR_BITWISE_XOR, &zero, 4);
    add(r, bw);
    cmp(r, NFT_REG_1, NFT_CMP_NEQ, &zero, 4);
  }
  void operator()(const FibDaddrType& f) const {
    nftnl_expr* e = nftnl_expr_alloc("fib");
    nftnl_expr_set_u32(e, NFTNL_EXPR_FIB_FLAGS,
                       uint32_t{NFTA_FIB_F_DADDR} |
                           (f.inputInterface ? uint32_t{NFTA_FIB_F_IIF} : 0u));
    nftnl_expr_set_u32(e, NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
    nftnl_expr_set_u32(e, NFTNL_EXPR_FIB_DREG, NFT_REG_1);
    add(r, e);
    const uint32_t type = f.type;
    cmp(r, NFT_REG_1, f.negate ? NFT_CMP_NEQ : NFT_CMP_EQ, &type, 4);
  }
  void operator()(const Limit& l) const {
    nftnl_expr* e = nftnl_expr_alloc("limit");
    nftnl_expr_set_u64(e, NFTNL_EXPR_LIMIT_RATE, l.perSecond);
    nftnl_expr_set_u64(e, NFTNL_EXPR_LIMIT_UNIT, 1); // per second
    nftnl_expr_set_u32(e, NFTNL_EXPR_LIMIT_BURST, l.burst);
    nftnl_expr_set_u32(e, NFTNL_EXPR_LIMIT_TYPE, NFT_LIMIT_PKTS);
    add(r, e);
  }
  void operator()(const Log& l) const {
    nftnl_expr* e = nftnl_expr_alloc("log");
    nftnl_expr_set_u16(e, NFTNL_EXPR_LOG_GROUP, l.group);
    nftnl_expr_set_str(e, NFTNL_EXPR_LOG_PREFIX, l.prefix.c_str());
    // Headers are all iotgwd reads (ARP, an IPv6 neighbour advertisement with its first option,
    // a DHCP reply's ports); each report is delivered at once, not queued.
    nftnl_expr_set_u32(e, NFTNL_EXPR_LOG_SNAPLEN, 128);
    nftnl_expr_set_u16(e, NFTNL_EXPR_LOG_QTHRESHOLD, 1);
    add(r, e);
  }
  void operator()(const Count&) const { add(r, nftnl_expr_alloc("counter")); }
  void operator()(const CountByMap& c) const {
    const uint32_t reg = loadKey(r, {c.key});
    nftnl_expr* e = nftnl_expr_alloc("objref");
    nftnl_expr_set_u32(e, NFTNL_EXPR_OBJREF_SET_SREG, reg);
    nftnl_expr_set_str(e, NFTNL_EXPR_OBJREF_SET_NAME, c.map.c_str());
    if (uint32_t id = sets.of(c.map)) {
      nftnl_expr_set_u32(e, NFTNL_EXPR_OBJREF_SET_ID, id);
    }
    add(r, e);
  }
  void operator()(const Redirect& rd) const {
    nftnl_expr* imm = nftnl_expr_alloc("immediate");
    const uint16_t port = htons(rd.port);
    nftnl_expr_set_u32(imm, NFTNL_EXPR_IMM_DREG, NFT_REG_1);
    nftnl_expr_set(imm, NFTNL_EXPR_IMM_DATA, &port, sizeof port);
    add(r, imm);
    nftnl_expr* e = nftnl_expr_alloc("redir");
    nftnl_expr_set_u32(e, NFTNL_EXPR_REDIR_REG_PROTO_MIN, NFT_REG_1);
    add(r, e);
  }
};

void verdict(nftnl_rule* r, const Rule& rule) {
  int v = 0;
  switch (rule.verdict) {
  case Verdict::None:
    return;
  case Verdict::Accept:
    v = NF_ACCEPT;
    break;
  case Verdict::Drop:
    v = NF_DROP;
    break;
  case Verdict::Jump:
    v = NFT_JUMP;
    break;
  case Verdict::Goto:
    v = NFT_GOTO;
    break;
  case Verdict::Return:
    v = NFT_RETURN;
    break;
  }
  nftnl_expr* e = nftnl_expr_alloc("immediate");
  nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_DREG, NFT_REG_VERDICT);
  nftnl_expr_set_u32(e, NFTNL_EXPR_IMM_VERDICT, static_cast<uint32_t>(v));
  if (rule.verdict == Verdict::Jump || rule.verdict == Verdict::Goto) {
    nftnl_expr_set_str(e, NFTNL_EXPR_IMM_CHAIN, rule.target.c_str());
  }
  add(r, e);
}

uint32_t hookNumber(Hook h) {
  switch (h) {
  case Hook::Prerouting:
    return NF_INET_PRE_ROUTING;
  case Hook::Input:
    return NF_INET_LOCAL_IN;
  case Hook::Forward:
    return NF_INET_FORWARD;
  case Hook::Output:
    return NF_INET_LOCAL_OUT;
  case Hook::Postrouting:
    return NF_INET_POST_ROUTING;
  case Hook::None:
    break;
  }
  return 0;
}

} // namespace

using detail::Batch;

namespace {

void buildTable(nlmsghdr* nlh, uint16_t family) {
  TablePtr t(nftnl_table_alloc());
  nftnl_table_set_str(t.get(), NFTNL_TABLE_NAME, kTableName);
  nftnl_table_set_u32(t.get(), NFTNL_TABLE_FAMILY, family);
  nftnl_table_nlmsg_build_payload(nlh, t.get());
}

void buildCounter(nlmsghdr* nlh, uint16_t family, const std::string& name) {
  ObjPtr o(nftnl_obj_alloc());
  nftnl_obj_set_str(o.get(), NFTNL_OBJ_TABLE, kTableName);
  nftnl_obj_set_str(o.get(), NFTNL_OBJ_NAME, name.c_str());
  nftnl_obj_set_u32(o.get(), NFTNL_OBJ_FAMILY, family);
  nftnl_obj_set_u32(o.get(), NFTNL_OBJ_TYPE, NFT_OBJECT_COUNTER);
  nftnl_obj_nlmsg_build_payload(nlh, o.get());
}

SetPtr setObject(uint16_t family, const Set& s, uint32_t id) {
  SetPtr set(nftnl_set_alloc());
  nftnl_set_set_str(set.get(), NFTNL_SET_TABLE, kTableName);
  nftnl_set_set_str(set.get(), NFTNL_SET_NAME, s.name.c_str());
  nftnl_set_set_u32(set.get(), NFTNL_SET_FAMILY, family);
  if (id != 0) {
    nftnl_set_set_u32(set.get(), NFTNL_SET_ID, id);
  }
  return set;
}

void buildSet(nlmsghdr* nlh, uint16_t family, const Set& s, uint32_t id) {
  SetPtr set = setObject(family, s, id);
  uint32_t type = 0;
  for (Field f : s.key) {
    type = (type << 6) | datatype(f);
  }
  uint32_t flags = 0;
  if (s.interval) {
    flags |= NFT_SET_INTERVAL;
  }
  if (s.key.size() > 1 && s.interval) {
    // Field lengths make the kernel pick pipapo for ranges over concatenations; exact
    // concatenations stay in a hash, whose deletions do not grow with the set.
    flags |= NFT_SET_CONCAT;
    uint8_t lengths[NFT_REG32_COUNT] = {};
    for (size_t i = 0; i < s.key.size(); ++i) {
      lengths[i] = static_cast<uint8_t>(fieldLength(s.key[i]));
    }
    nftnl_set_set_data(set.get(), NFTNL_SET_DESC_CONCAT, lengths, sizeof lengths);
  }
  if (s.counterMap) {
    flags |= NFT_SET_OBJECT;
    nftnl_set_set_u32(set.get(), NFTNL_SET_OBJ_TYPE, NFT_OBJECT_COUNTER);
  }
  nftnl_set_set_u32(set.get(), NFTNL_SET_FLAGS, flags);
  nftnl_set_set_u32(set.get(), NFTNL_SET_KEY_TYPE, type);
  if (s.key.size() == 1 && (s.key[0] == Field::Iifname || s.key[0] == Field::Oifname)) {
    // Interface names are strings in host order; nft needs telling to show them as such.
    nftnl_udata_buf* ud = nftnl_udata_buf_alloc(64);
    nftnl_udata_put_u32(ud, NFTNL_UDATA_SET_KEYBYTEORDER, 1); // nft's BYTEORDER_HOST_ENDIAN
    nftnl_set_set_data(set.get(), NFTNL_SET_USERDATA, nftnl_udata_buf_data(ud),
                       nftnl_udata_buf_len(ud));
    nftnl_udata_buf_free(ud);
  }
  nftnl_set_set_u32(set.get(), NFTNL_SET_KEY_LEN, keyLength(s.key));
  nftnl_set_nlmsg_build_payload(nlh, set.get());
}

// NEWSETELEM / DELSETELEM messages for `elements` of set `s`, as many as the elements need.
void buildElements(Batch& b, uint16_t type, uint16_t flags, uint16_t family, const Set& s,
                   uint32_t id, const std::vector<Element>& elements) {
  if (elements.empty()) {
    return;
  }
  SetPtr set = setObject(family, s, id);
  for (const Element& e : elements) {
    nftnl_set_elem* el = nftnl_set_elem_alloc();
    const auto key = keyBytes(s.key, e, false);
    nftnl_set_elem_set(el, NFTNL_SET_ELEM_KEY, key.data(), static_cast<uint32_t>(key.size()));
    if (s.interval) {
      const auto end = keyBytes(s.key, e, true);
      nftnl_set_elem_set(el, NFTNL_SET_ELEM_KEY_END, end.data(), static_cast<uint32_t>(end.size()));
    }
    if (s.counterMap) {
      nftnl_set_elem_set_str(el, NFTNL_SET_ELEM_OBJREF, e.counter.c_str());
    }
    nftnl_set_elem_add(set.get(), el);
  }
  nftnl_set_elems_iter* it = nftnl_set_elems_iter_create(set.get());
  // The iterator's cursor never becomes NULL: the build call's return value says whether more
  // elements are left (1) or not (0).
  for (;;) {
    nlmsghdr* nlh = b.header(type, family, flags);
    const int more = nftnl_set_elems_nlmsg_build_payload_iter(nlh, it);
    b.commit();
    if (more <= 0) {
      break;
    }
  }
  nftnl_set_elems_iter_destroy(it);
}

void buildChain(nlmsghdr* nlh, uint16_t family, const Chain& c) {
  ChainPtr ch(nftnl_chain_alloc());
  nftnl_chain_set_str(ch.get(), NFTNL_CHAIN_TABLE, kTableName);
  nftnl_chain_set_str(ch.get(), NFTNL_CHAIN_NAME, c.name.c_str());
  nftnl_chain_set_u32(ch.get(), NFTNL_CHAIN_FAMILY, family);
  if (c.hook != Hook::None) {
    nftnl_chain_set_u32(ch.get(), NFTNL_CHAIN_HOOKNUM, hookNumber(c.hook));
    nftnl_chain_set_s32(ch.get(), NFTNL_CHAIN_PRIO, c.priority);
    nftnl_chain_set_str(ch.get(), NFTNL_CHAIN_TYPE, c.type == ChainType::Nat ? "nat" : "filter");
    nftnl_chain_set_u32(ch.get(), NFTNL_CHAIN_POLICY, NF_ACCEPT);
  }
  nftnl_chain_nlmsg_build_payload(nlh, ch.get());
}

void buildRule(nlmsghdr* nlh, uint16_t family, const Chain& c, const Rule& rule, SetIds ids) {
  RulePtr r(nftnl_rule_alloc());
  nftnl_rule_set_str(r.get(), NFTNL_RULE_TABLE, kTableName);
  nftnl_rule_set_str(r.get(), NFTNL_RULE_CHAIN, c.name.c_str());
  nftnl_rule_set_u32(r.get(), NFTNL_RULE_FAMILY, family);
  for (const Expr& e : rule.exprs) {
    std::visit(ExprBuilder{r.get(), ids}, e);
  }
  verdict(r.get(), rule);
  if (!rule.comment.empty()) {
    nftnl_udata_buf* ud = nftnl_udata_buf_alloc(NFT_USERDATA_MAXLEN);
    nftnl_udata_put_strz(ud, NFTNL_UDATA_RULE_COMMENT, rule.comment.c_str());
    nftnl_rule_set_data(r.get(), NFTNL_RULE_USERDATA, nftnl_udata_buf_data(ud),
                        nftnl_udata_buf_len(ud));
    nftnl_udata_buf_free(ud);
  }
  nftnl_rule_nlmsg_build_payload(nlh, r.get());
}

} // namespace

namespace nftnl {

// Create-if-missing, delete, create: replaces whatever table is there, in the same transaction.
void replaceTable(Batch& b, const Ruleset& rs) {
  const uint16_t family = nfFamily(rs.family);
  buildTable(b.header(NFT_MSG_NEWTABLE, family, NLM_F_CREATE), family);
  b.commit();
  buildTable(b.header(NFT_MSG_DELTABLE, family, 0), family);
  b.commit();
  buildTable(b.header(NFT_MSG_NEWTABLE, family, NLM_F_CREATE), family);
  b.commit();
  for (const auto& c : rs.counters) {
    buildCounter(b.header(NFT_MSG_NEWOBJ, family, NLM_F_CREATE), family, c);
    b.commit();
  }
  std::map<std::string, uint32_t, std::less<>> ids;
  for (const Set& s : rs.sets) {
    const uint32_t id = static_cast<uint32_t>(ids.size() + 1);
    ids.emplace(s.name, id);
    buildSet(b.header(NFT_MSG_NEWSET, family, NLM_F_CREATE), family, s, id);
    b.commit();
    buildElements(b, NFT_MSG_NEWSETELEM, NLM_F_CREATE, family, s, id, s.elements);
  }
  // Chains before rules: a jump must find its chain.
  for (const Chain& c : rs.chains) {
    buildChain(b.header(NFT_MSG_NEWCHAIN, family, NLM_F_CREATE), family, c);
    b.commit();
  }
  for (const Chain& c : rs.chains) {
    for (const Rule& r : c.rules) {
      buildRule(b.header(NFT_MSG_NEWRULE, family, NLM_F_CREATE | NLM_F_APPEND), family, c, r,
                SetIds{&ids});
      b.commit();
    }
  }
}

void updateTable(Batch& b, const ElementDelta& d, const Ruleset& target) {
  const uint16_t family = nfFamily(target.family);
  for (const auto& c : d.addCounters) {
    buildCounter(b.header(NFT_MSG_NEWOBJ, family, NLM_F_CREATE), family, c);
    b.commit();
  }
  for (const auto& [name, elements] : d.remove) {
    if (const Set* s = target.findSet(name)) {
      buildElements(b, NFT_MSG_DELSETELEM, 0, family, *s, 0, elements);
    }
  }
  for (const auto& [name, elements] : d.add) {
    if (const Set* s = target.findSet(name)) {
      buildElements(b, NFT_MSG_NEWSETELEM, NLM_F_CREATE, family, *s, 0, elements);
    }
  }
  for (const auto& c : d.deleteCounters) {
    buildCounter(b.header(NFT_MSG_DELOBJ, family, 0), family, c);
    b.commit();
  }
}

void removeTables(Batch& b) {
  for (Family f : {Family::Inet, Family::Bridge}) {
    const uint16_t family = nfFamily(f);
    buildTable(b.header(NFT_MSG_NEWTABLE, family, NLM_F_CREATE), family);
    b.commit();
    buildTable(b.header(NFT_MSG_DELTABLE, family, 0), family);
    b.commit();
  }
}

} // namespace nftnl

} // namespace iotgw::firewall
