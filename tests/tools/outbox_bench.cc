// SPDX-License-Identifier: GPL-3.0-or-later
// The outbox's storage, measured against the alternative the design weighed: iotgwd's append-only
// log (protocols/mqtt/outbox_log.h) and SQLite in WAL mode with synchronous=FULL, with the same
// work — N messages stored in batches of B (one durable point per batch, as group commit gives),
// then each marked delivered in batches of B (the broker's acknowledgements), then everything
// read back. Prints one line per engine: messages/s in and out, durable points, bytes the process
// wrote to storage (/proc/self/io).
//
//   outbox_bench DIR N B SIZE
#include <sqlite3.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "protocols/mqtt/outbox_log.h"

namespace {

using Clock = std::chrono::steady_clock;

uint64_t writtenBytes() {
  std::ifstream io("/proc/self/io");
  std::string key;
  uint64_t value = 0;
  while (io >> key >> value) {
    if (key == "write_bytes:") {
      return value;
    }
  }
  return 0;
}

double seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

struct Figures {
  double inRate = 0;
  double outRate = 0;
  uint64_t durablePoints = 0;
  uint64_t bytes = 0;
};

void print(const char* engine, const Figures& f, long n) {
  std::printf("engine=%s in_per_s=%.0f out_per_s=%.0f durable_points=%lu bytes_per_message=%.0f\n",
              engine, f.inRate, f.outRate, static_cast<unsigned long>(f.durablePoints),
              static_cast<double>(f.bytes) / static_cast<double>(n));
}

Figures logEngine(const std::filesystem::path& dir, long n, long batch,
                  const std::vector<uint8_t>& payload) {
  auto opened =
      iotgw::mqtt::OutboxLog::open(dir / "bench.queue", {.maxMessages = static_cast<size_t>(n) + 1,
                                                         .maxBytes = static_cast<size_t>(1) << 40});
  if (!opened) {
    std::fprintf(stderr, "outbox_bench: %s\n", opened.error().c_str());
    std::exit(1);
  }
  auto& log = **opened;
  Figures f;
  const uint64_t w0 = writtenBytes();
  auto t = Clock::now();
  for (long i = 0; i < n; ++i) {
    if (!log.append(1, false, "bench/topic", payload)) {
      std::exit(1);
    }
    if ((i + 1) % batch == 0 && !log.sync()) {
      std::exit(1);
    }
  }
  (void)log.sync();
  f.inRate = static_cast<double>(n) / seconds(t);
  t = Clock::now();
  long i = 0;
  for (auto seq = log.next(); seq; seq = log.next(*seq), ++i) {
    if (!log.read(*seq)) {
      std::exit(1);
    }
    log.done(*seq);
    if ((i + 1) % batch == 0) {
      (void)log.sync();
    }
  }
  (void)log.sync();
  f.outRate = static_cast<double>(n) / seconds(t);
  f.durablePoints = log.syncs();
  f.bytes = writtenBytes() - w0;
  return f;
}

void check(int rc, sqlite3* db, const char* what) {
  if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
    std::fprintf(stderr, "outbox_bench: sqlite %s: %s\n", what, sqlite3_errmsg(db));
    std::exit(1);
  }
}

Figures sqliteEngine(const std::filesystem::path& dir, long n, long batch,
                     const std::vector<uint8_t>& payload) {
  sqlite3* db = nullptr;
  check(sqlite3_open((dir / "bench.sqlite").c_str(), &db), db, "open");
  check(sqlite3_exec(db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                     "CREATE TABLE queue (seq INTEGER PRIMARY KEY, qos INTEGER, retain INTEGER,"
                     " stored INTEGER, topic TEXT, payload BLOB);",
                     nullptr, nullptr, nullptr),
        db, "schema");
  sqlite3_stmt* insert = nullptr;
  sqlite3_stmt* select = nullptr;
  sqlite3_stmt* remove = nullptr;
  check(sqlite3_prepare_v2(db, "INSERT INTO queue VALUES (?, 1, 0, ?, 'bench/topic', ?)", -1,
                           &insert, nullptr),
        db, "prepare");
  check(sqlite3_prepare_v2(db, "SELECT seq, topic, payload FROM queue ORDER BY seq", -1, &select,
                           nullptr),
        db, "prepare");
  check(sqlite3_prepare_v2(db, "DELETE FROM queue WHERE seq = ?", -1, &remove, nullptr), db,
        "prepare");
  Figures f;
  const uint64_t w0 = writtenBytes();
  auto t = Clock::now();
  for (long i = 0; i < n; i += batch) {
    check(sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr), db, "begin");
    for (long k = i; k < std::min(n, i + batch); ++k) {
      sqlite3_bind_int64(insert, 1, k + 1);
      sqlite3_bind_int64(insert, 2, k);
      sqlite3_bind_blob(insert, 3, payload.data(), static_cast<int>(payload.size()), SQLITE_STATIC);
      check(sqlite3_step(insert), db, "insert");
      sqlite3_reset(insert);
    }
    check(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr), db, "commit");
    ++f.durablePoints;
  }
  f.inRate = static_cast<double>(n) / seconds(t);
  t = Clock::now();
  std::vector<int64_t> seqs;
  while (sqlite3_step(select) == SQLITE_ROW) {
    seqs.push_back(sqlite3_column_int64(select, 0));
    (void)sqlite3_column_blob(select, 2);
  }
  sqlite3_finalize(select);
  for (size_t i = 0; i < seqs.size(); i += static_cast<size_t>(batch)) {
    check(sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr), db, "begin");
    for (size_t k = i; k < std::min(seqs.size(), i + static_cast<size_t>(batch)); ++k) {
      sqlite3_bind_int64(remove, 1, seqs[k]);
      check(sqlite3_step(remove), db, "delete");
      sqlite3_reset(remove);
    }
    check(sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr), db, "commit");
    ++f.durablePoints;
  }
  f.outRate = static_cast<double>(n) / seconds(t);
  sqlite3_finalize(insert);
  sqlite3_finalize(remove);
  sqlite3_close(db);
  f.bytes = writtenBytes() - w0;
  return f;
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fputs("usage: outbox_bench DIR N BATCH SIZE\n", stderr);
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  const long n = std::atol(argv[2]);
  const long batch = std::max(1L, std::atol(argv[3]));
  const std::vector<uint8_t> payload(static_cast<size_t>(std::atol(argv[4])), 0x5a);
  print("log", logEngine(dir, n, batch, payload), n);
  print("sqlite-wal", sqliteEngine(dir, n, batch, payload), n);
  return 0;
}
