// dist/expert_dispatch.cpp — see expert_dispatch.h.
#include "dist/expert_dispatch.h"

#include <vector>

#include "autograd/permute_rows.h"

namespace fp4qat::dist {

at::Tensor AllToAllDispatch::run(const at::Tensor& xs, const at::Tensor& counts, const Experts& experts) {
  // Expert parallelism over n ranks, El = E/n experts each: the rows of experts
  // [q*El, (q+1)*El) go to rank q (dispatch), come back in the same order (combine).
  const int64_t n = g_.world_size(), E = counts.numel(), El = E / n;
  const std::vector<int64_t> cnt(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + E);
  // Exchange counts: recv_cnt[src*El + e] = rows rank src sends for local expert e.
  const at::Tensor rc = g_.all_to_all(counts, std::vector<int64_t>(n, El), std::vector<int64_t>(n, El)).to(at::kCPU);
  const std::vector<int64_t> recv_cnt(rc.data_ptr<int64_t>(), rc.data_ptr<int64_t>() + n * El);
  std::vector<int64_t> send(n, 0), recv(n, 0), local(El, 0);
  for (int64_t q = 0; q < n; ++q)
    for (int64_t e = 0; e < El; ++e) {
      send[q] += cnt[q * El + e];
      recv[q] += recv_cnt[q * El + e];
      local[e] += recv_cnt[q * El + e];
    }
  const at::Tensor xr = all_to_all_rows(g_, xs, send, recv);  // [R, H]: by source rank, then expert
  // Regroup by local expert (source ranks in order within an expert) for the grouped GEMMs.
  std::vector<int64_t> perm;
  perm.reserve(static_cast<size_t>(xr.size(0)));
  std::vector<int64_t> start(n * El, 0);
  for (int64_t q = 0, row = 0; q < n; ++q)
    for (int64_t e = 0; e < El; ++e) start[q * El + e] = row, row += recv_cnt[q * El + e];
  for (int64_t e = 0; e < El; ++e)
    for (int64_t q = 0; q < n; ++q)
      for (int64_t j = 0; j < recv_cnt[q * El + e]; ++j) perm.push_back(start[q * El + e] + j);
  const auto lopt = at::TensorOptions().dtype(at::kLong);
  const at::Tensor pidx = at::tensor(perm, lopt).to(xs.device());
  const at::Tensor inv = autograd::inverse_permutation(pidx);
  const at::Tensor ye = experts(autograd::permute_rows(xr, pidx, inv), at::tensor(local, lopt));  // [R, H]
  return all_to_all_rows(g_, autograd::permute_rows(ye, inv, pidx), recv, send);                  // [N*k, H]
}

}  // namespace fp4qat::dist
