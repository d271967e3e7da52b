// SPDX-License-Identifier: GPL-3.0-or-later
#include "policy/toml_schema.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <tuple>

namespace iotgw::policy {

std::string Diagnostic::str() const {
  return fmt::format("{}:{}:{}: {}", source, line, column, message);
}

void sortByPosition(Diagnostics& diags) {
  // std::stable_sort would do, but libstdc++ 12's implementation trips clang's C++23
  // deprecation of get_temporary_buffer; the index is the tie-breaker instead.
  std::vector<std::pair<size_t, Diagnostic>> indexed;
  indexed.reserve(diags.size());
  for (size_t i = 0; i < diags.size(); ++i) {
    indexed.emplace_back(i, std::move(diags[i]));
  }
  std::sort(indexed.begin(), indexed.end(), [](const auto& a, const auto& b) {
    return std::tie(a.second.line, a.second.column, a.first) <
           std::tie(b.second.line, b.second.column, b.first);
  });
  for (size_t i = 0; i < diags.size(); ++i) {
    diags[i] = std::move(indexed[i].second);
  }
}

std::string_view typeName(const toml::node& n) {
  switch (n.type()) {
  case toml::node_type::table:
    return "table";
  case toml::node_type::array:
    return "array";
  case toml::node_type::string:
    return "string";
  case toml::node_type::integer:
    return "integer";
  case toml::node_type::floating_point:
    return "float";
  case toml::node_type::boolean:
    return "boolean";
  case toml::node_type::date:
    return "date";
  case toml::node_type::time:
    return "time";
  case toml::node_type::date_time:
    return "date-time";
  case toml::node_type::none:
    break;
  }
  return "nothing";
}

TableReader::TableReader(const toml::table& table, std::string path, const std::string& source,
                         Diagnostics& diags)
    : table_(table), path_(std::move(path)), source_(source), diags_(diags) {}

std::string TableReader::child(std::string_view key) const {
  return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
}

void TableReader::error(const toml::source_region& at, std::string message) {
  diags_.push_back(Diagnostic{source_, at.begin.line, at.begin.column, std::move(message)});
}

void TableReader::error(const toml::node& at, std::string message) {
  error(at.source(), std::move(message));
}

void TableReader::typeError(std::string_view key, const toml::node& n, std::string_view expected) {
  error(n, fmt::format("'{}' must be {}, not {}", child(key), expected, typeName(n)));
}

const toml::node* TableReader::lookup(std::string_view key, Need need, std::string_view expected) {
  seen_.emplace(key);
  const toml::node* n = table_.get(key);
  if (n == nullptr && need == Need::Required) {
    error(table_, fmt::format("missing required key '{}' ({})", child(key), expected));
  }
  return n;
}

std::optional<std::string> TableReader::string(std::string_view key, Need need, size_t maxLength) {
  const toml::node* n = lookup(key, need, "a string");
  if (n == nullptr) {
    return std::nullopt;
  }
  const auto* s = n->as_string();
  if (s == nullptr) {
    typeError(key, *n, "a string");
    return std::nullopt;
  }
  if (s->get().size() > maxLength) {
    error(*n, fmt::format("'{}' is longer than {} bytes", child(key), maxLength));
    return std::nullopt;
  }
  return s->get();
}

std::optional<int64_t> TableReader::integer(std::string_view key, int64_t min, int64_t max,
                                            Need need) {
  const toml::node* n = lookup(key, need, "an integer");
  if (n == nullptr) {
    return std::nullopt;
  }
  const auto* i = n->as_integer();
  if (i == nullptr) {
    typeError(key, *n, "an integer");
    return std::nullopt;
  }
  const int64_t v = i->get();
  if (v < min || v > max) {
    error(*n, fmt::format("'{}' = {} is out of range [{}, {}]", child(key), v, min, max));
    return std::nullopt;
  }
  return v;
}

std::optional<double> TableReader::number(std::string_view key, Need need) {
  const toml::node* n = lookup(key, need, "a number");
  if (n == nullptr) {
    return std::nullopt;
  }
  if (const auto* i = n->as_integer()) {
    return static_cast<double>(i->get());
  }
  if (const auto* f = n->as_floating_point()) {
    if (!std::isfinite(f->get())) {
      error(*n, fmt::format("'{}' must be a finite number", child(key)));
      return std::nullopt;
    }
    return f->get();
  }
  typeError(key, *n, "a number");
  return std::nullopt;
}

std::optional<bool> TableReader::boolean(std::string_view key, Need need) {
  const toml::node* n = lookup(key, need, "a boolean");
  if (n == nullptr) {
    return std::nullopt;
  }
  const auto* b = n->as_boolean();
  if (b == nullptr) {
    typeError(key, *n, "a boolean");
    return std::nullopt;
  }
  return b->get();
}

std::optional<toml::date> TableReader::date(std::string_view key, Need need) {
  const toml::node* n = lookup(key, need, "a date (YYYY-MM-DD)");
  if (n == nullptr) {
    return std::nullopt;
  }
  const auto* d = n->as_date();
  if (d == nullptr) {
    typeError(key, *n, "a date (YYYY-MM-DD)");
    return std::nullopt;
  }
  return d->get();
}

std::optional<std::vector<std::string>> TableReader::strings(std::string_view key, Need need,
                                                             size_t maxItems, size_t maxLength) {
  const toml::node* n = lookup(key, need, "an array of strings");
  if (n == nullptr) {
    return std::nullopt;
  }
  const auto* arr = n->as_array();
  if (arr == nullptr) {
    typeError(key, *n, "an array of strings");
    return std::nullopt;
  }
  if (arr->size() > maxItems) {
    error(*n, fmt::format("'{}' has {} items; at most {} are allowed", child(key), arr->size(),
                          maxItems));
    return std::nullopt;
  }
  std::vector<std::string> out;
  bool ok = true;
  for (const toml::node& el : *arr) {
    const auto* s = el.as_string();
    if (s == nullptr) {
      error(el, fmt::format("'{}' must contain only strings, not {}", child(key), typeName(el)));
      ok = false;
      continue;
    }
    if (s->get().size() > maxLength) {
      error(el, fmt::format("an item of '{}' is longer than {} bytes", child(key), maxLength));
      ok = false;
      continue;
    }
    out.push_back(s->get());
  }
  if (!ok) {
    return std::nullopt;
  }
  return out;
}

std::optional<std::vector<int64_t>> TableReader::integers(std::string_view key, int64_t min,
                                                          int64_t max, size_t maxItems) {
  const toml::node* n = lookup(key, Need::Optional, "an array of integers");
  if (n == nullptr) {
    return std::nullopt;
  }
  const auto* arr = n->as_array();
  if (arr == nullptr) {
    typeError(key, *n, "an array of integers");
    return std::nullopt;
  }
  if (arr->size() > maxItems) {
    error(*n, fmt::format("'{}' has {} items; at most {} are allowed", child(key), arr->size(),
                          maxItems));
    return std::nullopt;
  }
  std::vector<int64_t> out;
  bool ok = true;
  for (const toml::node& el : *arr) {
    const auto* i = el.as_integer();
    if (i == nullptr) {
      error(el, fmt::format("'{}' must contain only integers, not {}", child(key), typeName(el)));
      ok = false;
    } else if (i->get() < min || i->get() > max) {
      error(el, fmt::format("an item of '{}' ({}) is out of range [{}, {}]", child(key), i->get(),
                            min, max));
      ok = false;
    } else {
      out.push_back(i->get());
    }
  }
  if (!ok) {
    return std::nullopt;
  }
  return out;
}

const toml::table* TableReader::table(std::string_view key, Need need) {
  const toml::node* n = lookup(key, need, "a table");
  if (n == nullptr) {
    return nullptr;
  }
  const auto* t = n->as_table();
  if (t == nullptr) {
    typeError(key, *n, "a table");
  }
  return t;
}

std::vector<const toml::table*> TableReader::tables(std::string_view key, size_t maxItems) {
  const toml::node* n = lookup(key, Need::Optional, "an array of tables");
  std::vector<const toml::table*> out;
  if (n == nullptr) {
    return out;
  }
  const auto* arr = n->as_array();
  if (arr == nullptr) {
    typeError(key, *n, "an array of tables ([[" + child(key) + "]])");
    return out;
  }
  if (arr->size() > maxItems) {
    error(*n, fmt::format("'{}' has {} entries; at most {} are allowed", child(key), arr->size(),
                          maxItems));
    return out;
  }
  for (const toml::node& el : *arr) {
    if (const auto* t = el.as_table()) {
      out.push_back(t);
    } else {
      error(el, fmt::format("'{}' must contain only tables, not {}", child(key), typeName(el)));
    }
  }
  return out;
}

const toml::node* TableReader::any(std::string_view key) {
  seen_.emplace(key);
  return table_.get(key);
}

void TableReader::finish() {
  for (auto&& [k, v] : table_) {
    if (!seen_.contains(std::string(k.str()))) {
      error(k.source(), fmt::format("unknown key '{}'", child(k.str())));
    }
  }
}

std::optional<toml::table> parseToml(std::string_view text, const std::string& source,
                                     Diagnostics& diags) {
  try {
    return toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    const auto& at = e.source().begin;
    diags.push_back(Diagnostic{source, at.line, at.column, std::string(e.description())});
    return std::nullopt;
  }
}

} // namespace iotgw::policy
