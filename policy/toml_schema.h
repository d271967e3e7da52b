// SPDX-License-Identifier: GPL-3.0-or-later
#pragma once

// Strict reading of TOML tables: every key must be consumed by a getter or it is reported as
// unknown; wrong types and out-of-range values are errors with the position of the offending
// value. Used by the daemon configuration and device policy parsers alike.

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include <toml++/toml.h>

#include "policy/diagnostic.h"

namespace iotgw::policy {

enum class Need { Optional, Required };

class TableReader {
public:
  // `path` is the dotted name of the table, used in messages ("mqtt.rate").
  TableReader(const toml::table& table, std::string path, const std::string& source,
              Diagnostics& diags);

  TableReader(const TableReader&) = delete;
  TableReader& operator=(const TableReader&) = delete;

  [[nodiscard]] std::optional<std::string> string(std::string_view key, Need need = Need::Optional,
                                                  size_t maxLength = 1024);
  [[nodiscard]] std::optional<int64_t> integer(std::string_view key, int64_t min, int64_t max,
                                               Need need = Need::Optional);
  // Accepts integers and floats.
  [[nodiscard]] std::optional<double> number(std::string_view key, Need need = Need::Optional);
  [[nodiscard]] std::optional<bool> boolean(std::string_view key, Need need = Need::Optional);
  [[nodiscard]] std::optional<toml::date> date(std::string_view key, Need need = Need::Optional);
  // An array of strings; each element is checked against maxLength.
  [[nodiscard]] std::optional<std::vector<std::string>> strings(std::string_view key,
                                                                Need need = Need::Optional,
                                                                size_t maxItems = 256,
                                                                size_t maxLength = 1024);
  [[nodiscard]] std::optional<std::vector<int64_t>> integers(std::string_view key, int64_t min,
                                                             int64_t max, size_t maxItems = 256);
  [[nodiscard]] const toml::table* table(std::string_view key, Need need = Need::Optional);
  // An array of tables (TOML `[[key]]`).
  [[nodiscard]] std::vector<const toml::table*> tables(std::string_view key, size_t maxItems);
  // A string that must be one of `options` (name, value); the error lists the names.
  template <typename T>
  [[nodiscard]] std::optional<T>
  choice(std::string_view key, std::initializer_list<std::pair<std::string_view, T>> options) {
    auto s = string(key);
    if (!s) {
      return std::nullopt;
    }
    std::string names;
    for (const auto& [name, value] : options) {
      if (*s == name) {
        return value;
      }
      names += names.empty() ? "" : ", ";
      names += "\"" + std::string(name) + "\"";
    }
    error(*table_.get(key), "'" + child(key) + "' must be one of " + names);
    return std::nullopt;
  }

  // A node of any type; the caller checks it.
  [[nodiscard]] const toml::node* any(std::string_view key);

  // Reports every key no getter asked for. Call once, after the getters.
  void finish();

  void error(const toml::node& at, std::string message);
  void error(const toml::source_region& at, std::string message);
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] std::string child(std::string_view key) const;
  [[nodiscard]] const std::string& source() const { return source_; }
  [[nodiscard]] Diagnostics& diagnostics() { return diags_; }
  [[nodiscard]] const toml::table& raw() const { return table_; }

private:
  const toml::node* lookup(std::string_view key, Need need, std::string_view expected);
  void typeError(std::string_view key, const toml::node& n, std::string_view expected);

  const toml::table& table_;
  std::string path_;
  const std::string& source_;
  Diagnostics& diags_;
  std::unordered_set<std::string> seen_;
};

// Parses text as TOML; on a syntax error, appends one diagnostic and returns nullopt.
[[nodiscard]] std::optional<toml::table> parseToml(std::string_view text, const std::string& source,
                                                   Diagnostics& diags);

[[nodiscard]] std::string_view typeName(const toml::node& n);

} // namespace iotgw::policy
