// bench/bench_json.cpp — io/json.h on the index of a large sharded checkpoint: Qwen3-30B-A3B's
// model.safetensors.index.json has 18,432 weight_map keys. Builds such an index, writes it,
// parses it back and rebuilds it (what convert and export do with an index), and prints the
// median time of each over --reps runs. CPU only.
//   build/fp4qat_bench_json [--keys N] [--reps R]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "io/json.h"

using fp4qat::json::Value;

namespace {

double median_ms(int reps, const std::function<void()>& fn) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// The weight_map of a Qwen3-30B-A3B-like model with about `keys` tensors in 16 shards.
Value make_index(int keys) {
  Value wm = Value::object();
  int n = 0;
  for (int layer = 0; n < keys; ++layer)
    for (int e = 0; e < 128 && n < keys; ++e)
      for (const char* m : {"gate_proj", "up_proj", "down_proj"}) {
        if (n >= keys) break;
        char name[128], shard[64];
        std::snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.%s.weight", layer, e, m);
        std::snprintf(shard, sizeof shard, "model-%05d-of-00016.safetensors", 1 + n * 16 / keys);
        wm.set(name, std::string(shard));
        ++n;
      }
  return Value::object({{"metadata", Value::object({{"total_size", int64_t(61) << 30}})}, {"weight_map", wm}});
}

}  // namespace

int main(int argc, char** argv) {
  int keys = 18432, reps = 9;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--keys"))
      keys = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--reps"))
      reps = std::atoi(argv[i + 1]);
  }
  if (keys < 1 || reps < 1) {
    std::fprintf(stderr, "usage: fp4qat_bench_json [--keys N >= 1] [--reps R >= 1]\n");
    return 2;
  }
  Value index;
  const double build = median_ms(reps, [&] { index = make_index(keys); });
  std::string text;
  const double write = median_ms(reps, [&] { text = index.dump(2); });
  Value parsed;
  const double parse = median_ms(reps, [&] { parsed = fp4qat::json::parse(text, "index.json"); });
  if (!(parsed == index)) {
    std::fprintf(stderr, "error: the parsed index differs from the written one\n");
    return 1;
  }
  // Rebuild: every entry looked up and set into a new weight_map (convert's and export's work).
  const double rebuild = median_ms(reps, [&] {
    Value wm = Value::object();
    const Value& src = parsed.at("weight_map");
    for (const auto& [k, v] : src.as_object()) wm.set(k, *src.find(k));
    Value out = Value::object({{"metadata", parsed.at("metadata")}, {"weight_map", wm}});
    text = out.dump(2);
  });
  std::printf(
      "keys %d, %zu bytes, median of %d: build %.2f ms, write %.2f ms, parse %.2f ms, "
      "rebuild+write %.2f ms, parse + rebuild + write %.2f ms\n",
      keys, text.size(), reps, build, write, parse, rebuild, parse + rebuild);
  return 0;
}
