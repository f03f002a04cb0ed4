// cli/main.cpp — the fp4qat executable: forwards argv to fp4qat::cli::run.
#include "cli/cli.h"

int main(int argc, char** argv) { return fp4qat::cli::run(fp4qat::cli::Args(argv + 1, argv + argc)); }
