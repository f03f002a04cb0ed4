// tests/dist/dist_util.h — launching several ranks of the fp4qat binary for the
// multi-process tests: torchrun-style environment per rank, posix_spawn (no shell), a timeout
// after which every rank is killed (a hang fails the test instead of blocking ctest).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "tests/common/test_util.h"

namespace fp4qat::test {

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
int free_port();

// Runs the fp4qat binary with `args` and extra environment variables; killed after timeout_s
// (exit_code -1 then).
ProcResult run_fp4qat_env(const std::vector<std::string>& args,
                          const std::vector<std::pair<std::string, std::string>>& env, int timeout_s);

// `world` ranks of the fp4qat binary with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1
// and a free MASTER_PORT; all are killed when one is still running after timeout_s.
std::vector<ProcResult> run_ranks(int world, const std::vector<std::string>& args, int timeout_s);

// The arguments of `fp4qat <command> --recipe recipes/<recipe>` with each of `sets` ("key=value")
// as one --set, then `extra` as given.
std::vector<std::string> recipe_args(const std::string& command, const std::string& recipe,
                                     const std::vector<std::string>& sets, const std::vector<std::string>& extra = {});

bool have_gloo();  // the build's c10d gloo backend (dist/process_group.h)
bool have_nccl();

}  // namespace fp4qat::test
