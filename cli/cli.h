// cli/cli.h — the `fp4qat` command line: subcommand table and dispatch. Each subcommand is
// a function taking its own arguments (argv after the command name) and returning an exit code;
// each parses with Boost.Program_options and answers --help.
#pragma once
#include <string>
#include <vector>

namespace fp4qat::cli {

using Args = std::vector<std::string>;

// Runs `fp4qat <args...>`; prints errors to stderr as one line; returns the exit code
// (0 ok, 1 error, 2 usage error).
int run(const Args& args);

// Subcommands (cli/cmd_<name>.cpp, one file each).
int cmd_check_export(const Args& args);
int cmd_convert(const Args& args);
int cmd_eval(const Args& args);
int cmd_generate(const Args& args);
int cmd_quantize(const Args& args);
int cmd_sample(const Args& args);
int cmd_train(const Args& args);
int cmd_rl(const Args& args);

}  // namespace fp4qat::cli
