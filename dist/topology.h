// dist/topology.h — dp x ep ranks over a world group (layout in process_group.h).
#pragma once
#include <memory>
#include <vector>

#include "dist/process_group.h"

namespace fp4qat::dist {

// dp x ep over a world group (see the layout above). Groups of one are SingleProcess.
struct Topology {
  ProcessGroup* world = nullptr;
  ProcessGroup* dp = nullptr;  // ranks holding the same expert shard
  ProcessGroup* ep = nullptr;  // ranks sharing one model replica's experts
  int dp_size = 1, ep_size = 1, dp_index = 0, ep_index = 0;
  std::vector<std::unique_ptr<ProcessGroup>> owned;
};
// dp: -1 = world_size / ep. Throws naming parallel.dp / parallel.ep when dp * ep != world size
// (check_topology: the same check before any process group exists).
void check_topology(int world_size, int64_t dp, int64_t ep);
std::unique_ptr<Topology> make_topology(ProcessGroup& world, int64_t dp, int64_t ep);

}  // namespace fp4qat::dist
