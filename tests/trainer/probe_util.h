// tests/trainer/probe_util.h — the per-step export probe as a run's metrics.jsonl records it: every
// line that carries "mismatch_mean" must read mean and max |dlogp| 0 (the rollout side's forward
// equals the trainer's). Failures name the line.
#pragma once
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "io/json.h"

namespace fp4qat::test {

// The number of probe lines in `metrics_path` (each checked for zero mismatch).
inline int expect_zero_probe_mismatch(const std::string& metrics_path) {
  std::ifstream f(metrics_path);
  EXPECT_TRUE(f.good()) << "cannot read " << metrics_path;
  std::string line;
  int probed = 0;
  while (std::getline(f, line)) {
    if (line.find("\"mismatch_mean\"") == std::string::npos) continue;
    const json::Value v = json::parse(line, "metrics.jsonl");
    EXPECT_EQ(v.at("mismatch_mean").as_double(), 0.0) << line;
    EXPECT_EQ(v.at("mismatch_max").as_double(), 0.0) << line;
    ++probed;
  }
  return probed;
}

}  // namespace fp4qat::test
