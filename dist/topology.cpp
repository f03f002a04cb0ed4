// dist/topology.cpp — see topology.h.
#include "dist/topology.h"

#include "kernels/common/check.h"

namespace fp4qat::dist {

// ---- topology -----------------------------------------------------------------------------------
void check_topology(int W, int64_t dp, int64_t ep) {
  FP4QAT_CHECK(ep >= 1 && ep <= W && W % ep == 0, "parallel.ep (", ep, ") must divide the world size WORLD_SIZE=", W);
  if (dp == -1) dp = W / ep;
  FP4QAT_CHECK(dp * ep == W, "parallel.dp x parallel.ep (", dp, " x ", ep,
               ") must equal the world size WORLD_SIZE=", W);
}

std::unique_ptr<Topology> make_topology(ProcessGroup& world, int64_t dp, int64_t ep) {
  const int W = world.world_size();
  check_topology(W, dp, ep);
  if (dp == -1) dp = W / ep;
  auto t = std::make_unique<Topology>();
  t->world = &world;
  t->dp_size = static_cast<int>(dp);
  t->ep_size = static_cast<int>(ep);
  t->dp_index = world.rank() / t->ep_size;
  t->ep_index = world.rank() % t->ep_size;
  std::vector<int> dp_ranks, ep_ranks;
  for (int i = 0; i < t->dp_size; ++i) dp_ranks.push_back(i * t->ep_size + t->ep_index);
  for (int j = 0; j < t->ep_size; ++j) ep_ranks.push_back(t->dp_index * t->ep_size + j);
  if (t->ep_size == W) {
    t->ep = &world;
  } else {
    t->owned.push_back(world.subgroup("ep" + std::to_string(t->dp_index), ep_ranks));
    t->ep = t->owned.back().get();
  }
  if (t->dp_size == W) {
    t->dp = &world;
  } else {
    t->owned.push_back(world.subgroup("dp" + std::to_string(t->ep_index), dp_ranks));
    t->dp = t->owned.back().get();
  }
  return t;
}

}  // namespace fp4qat::dist
