// tests/dist/dist_util.cpp — see dist_util.h.
#include "tests/dist/dist_util.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "dist/process_group.h"

namespace fp4qat::test {

namespace {

// Whether a TCP port on the loopback can be bound now (0: any; its number into *port).
bool bindable(int* port) {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) throw std::runtime_error("socket() failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(*port));
  socklen_t len = sizeof a;
  const bool ok =
      ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  if (ok) *port = ntohs(a.sin_port);
  ::close(s);
  return ok;
}

}  // namespace

// A port below the kernel's ephemeral range (Linux's default starts at 32768): one the kernel
// handed out as ephemeral could be handed again — to a client socket of another test's ranks
// running at the same time (ctest -j) — between this check and the rendezvous binding it. Random
// among 12,000, so two tests rarely pick the same one; an ephemeral port if none binds.
std::vector<std::string> recipe_args(const std::string& command, const std::string& recipe,
                                     const std::vector<std::string>& sets, const std::vector<std::string>& extra) {
  std::vector<std::string> a = {command, "--recipe", std::string(FP4QAT_SOURCE_DIR) + "/recipes/" + recipe};
  for (const std::string& kv : sets) a.insert(a.end(), {"--set", kv});
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

int free_port() {
  static std::mt19937 rng(static_cast<uint32_t>(::getpid()) ^
                          static_cast<uint32_t>(std::chrono::steady_clock::now().time_since_epoch().count()));
  std::uniform_int_distribution<int> pick(20000, 31999);
  for (int tries = 0; tries < 64; ++tries) {
    int port = pick(rng);
    if (bindable(&port)) return port;
  }
  int port = 0;
  if (!bindable(&port)) throw std::runtime_error("bind() to a free port failed");
  return port;
}

namespace {

struct Spawned {
  pid_t pid = -1;
  std::string out_path, err_path;
};

Spawned spawn(const std::vector<std::string>& args, const std::vector<std::pair<std::string, std::string>>& env,
              const TempDir& io, const std::string& tag) {
  Spawned s;
  s.out_path = io.file(tag + ".out");
  s.err_path = io.file(tag + ".err");
  s.pid = spawn_fp4qat(args, env, s.out_path, s.err_path);
  return s;
}

// Waits for every process; kills them all (SIGKILL) once timeout_s has passed.
std::vector<ProcResult> wait_all(std::vector<Spawned>& ps, int timeout_s) {
  std::vector<ProcResult> rs(ps.size());
  std::vector<bool> done(ps.size(), false);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  size_t left = ps.size();
  while (left > 0) {
    for (size_t i = 0; i < ps.size(); ++i) {
      if (done[i]) continue;
      int status = 0;
      if (::waitpid(ps[i].pid, &status, WNOHANG) == ps[i].pid) {
        done[i] = true;
        --left;
        rs[i].exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
    }
    if (left > 0 && std::chrono::steady_clock::now() > deadline) {
      for (size_t i = 0; i < ps.size(); ++i)
        if (!done[i]) ::kill(ps[i].pid, SIGKILL);
      for (size_t i = 0; i < ps.size(); ++i)
        if (!done[i]) {
          int status = 0;
          ::waitpid(ps[i].pid, &status, 0);
          rs[i].exit_code = -1;
          done[i] = true;
        }
      left = 0;
    }
    if (left > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (size_t i = 0; i < ps.size(); ++i) {
    rs[i].out = read_bytes(ps[i].out_path);
    rs[i].err = read_bytes(ps[i].err_path);
  }
  return rs;
}

}  // namespace

ProcResult run_fp4qat_env(const std::vector<std::string>& args,
                          const std::vector<std::pair<std::string, std::string>>& env, int timeout_s) {
  TempDir io;
  std::vector<Spawned> ps{spawn(args, env, io, "p")};
  return wait_all(ps, timeout_s)[0];
}

std::vector<ProcResult> run_ranks(int world, const std::vector<std::string>& args, int timeout_s) {
  TempDir io;
  const std::string port = std::to_string(free_port());
  std::vector<Spawned> ps;
  for (int r = 0; r < world; ++r)
    ps.push_back(spawn(args,
                       {{"RANK", std::to_string(r)},
                        {"WORLD_SIZE", std::to_string(world)},
                        {"LOCAL_RANK", std::to_string(r)},
                        {"MASTER_ADDR", "127.0.0.1"},
                        {"MASTER_PORT", port}},
                       io, "rank" + std::to_string(r)));
  auto rs = wait_all(ps, timeout_s);
  for (int r = 0; r < world; ++r)
    if (rs[r].exit_code != 0)
      rs[r].err = "rank " + std::to_string(r) + " exited with " + std::to_string(rs[r].exit_code) + ":\n" + rs[r].err;
  return rs;
}

bool have_gloo() { return fp4qat::dist::have_gloo(); }
bool have_nccl() { return fp4qat::dist::have_nccl(); }

}  // namespace fp4qat::test
