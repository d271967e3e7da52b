// SPDX-License-Identifier: GPL-3.0-or-later
// iotgwd: the gateway daemon. Runs in the foreground and never forks.

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <string_view>

#include "daemon/daemon.h"
#include "iotgw/build_config.h"

namespace {

constexpr std::string_view kUsage =
    "Usage: iotgwd [--config FILE] [--check-config]\n"
    "       iotgwd --hash-password   (reads a password on stdin, prints its hash)\n"
    "       iotgwd --version | --help\n"
    "\n"
    "  --config FILE    configuration (default /etc/iotgw/iotgw.toml; without that file the\n"
    "                   built-in default runs: nothing trusted, default deny)\n"
    "  --check-config   check the configuration and every device policy, print\n"
    "                   file:line:column: message for each error, exit 0 or 1\n";

int checkConfig(const iotgw::daemon::Options& options) {
  auto snapshot = iotgw::daemon::loadSnapshot(options);
  if (!snapshot) {
    for (const auto& d : snapshot.error()) {
      std::cerr << d.str() << '\n';
    }
    return 1;
  }
  const auto& c = *snapshot->config;
  std::cout << (c.source.empty() ? std::string("built-in default") : c.source.string()) << ": OK, "
            << snapshot->policies->size() << " device policies\n";
  return 0;
}

int hashPassword() {
  std::string password;
  if (!std::getline(std::cin, password) || password.empty()) {
    std::cerr << "iotgwd: --hash-password reads a non-empty password from standard input\n";
    return 2;
  }
  auto h = iotgw::policy::PasswordHash::create(password);
  iotgw::policy::secureWipe(password.data(), password.size());
  if (!h) {
    std::cerr << "iotgwd: " << h.error() << '\n';
    return 1;
  }
  std::cout << h->str() << '\n';
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  iotgw::daemon::Options options;
  bool check = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--version") {
      std::cout << "iotgwd " << IOTGW_VERSION << (IOTGW_WITH_SYSTEMD ? " +systemd" : " -systemd")
                << '\n';
      return 0;
    }
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (arg == "--check-config") {
      check = true;
    } else if (arg == "--hash-password") {
      return hashPassword();
    } else if (arg == "--config" && i + 1 < argc) {
      options.configPath = argv[++i];
    } else if (arg.starts_with("--config=")) {
      options.configPath = std::string(arg.substr(9));
    } else {
      std::cerr << "iotgwd: unknown argument '" << arg << "'\n" << kUsage;
      return 2;
    }
  }
  if (check) {
    return checkConfig(options);
  }
  auto daemon = iotgw::daemon::Daemon::create(options);
  if (!daemon) {
    std::cerr << "iotgwd: cannot start:\n" << daemon.error();
    return 1;
  }
  return (*daemon)->run();
}
