// tests/trainer/resume_util.h — the "stop, resume, compare" half of the resume tests: a run of `c`
// stopped (and checkpointed) after `stop_after` steps, then resumed with --resume to train.steps
// in the same out_dir.
#pragma once
#include <cstdint>
#include <vector>

#include "trainer/config.h"
#include "trainer/train.h"

namespace fp4qat::test {

// The step logs of both calls, in step order.
inline std::vector<train::StepLog> run_stopped_and_resumed(const config::Config& c, const train::Options& o,
                                                           int64_t stop_after) {
  train::Options stop = o;
  stop.stop_after = stop_after;
  std::vector<train::StepLog> steps = train::run(c, stop).steps;
  train::Options resume = o;
  resume.resume = true;
  const train::Result r = train::run(c, resume);
  steps.insert(steps.end(), r.steps.begin(), r.steps.end());
  return steps;
}

}  // namespace fp4qat::test
