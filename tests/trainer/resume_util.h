// tests/trainer/resume_util.h — the "stop, resume, compare" half of the resume tests: a run of `c`
// stopped (and checkpointed) after `stop_after` steps, then resumed with --resume to train.steps
// in the same out_dir.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "trainer/config.h"
#include "trainer/train.h"

namespace fp4qat::test {

// The step logs of both calls, in step order; the resumed call's whole result to `resumed` if given.
// Checks that the first call stopped at `stop_after` and the second reached train.steps.
inline std::vector<train::StepLog> run_stopped_and_resumed(const config::Config& c, const train::Options& o,
                                                           int64_t stop_after, train::Result* resumed = nullptr) {
  train::Options stop = o;
  stop.stop_after = stop_after;
  const train::Result s = train::run(c, stop);
  EXPECT_EQ(s.final_step, stop_after) << "the stopped run";
  std::vector<train::StepLog> steps = s.steps;
  train::Options resume = o;
  resume.resume = true;
  train::Result r = train::run(c, resume);
  EXPECT_EQ(r.final_step, c.train.steps) << "the resumed run";
  steps.insert(steps.end(), r.steps.begin(), r.steps.end());
  if (resumed) *resumed = std::move(r);
  return steps;
}

}  // namespace fp4qat::test
