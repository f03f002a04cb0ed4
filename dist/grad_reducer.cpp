// dist/grad_reducer.cpp — see grad_reducer.h.
#include "dist/grad_reducer.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include <algorithm>

#include "kernels/common/check.h"

namespace fp4qat::dist {

// ---- bucketed gradient all-reduce ---------------------------------------------------------------
GradReducer::GradReducer(std::vector<Entry> entries, int64_t bucket_bytes) : entries_(std::move(entries)) {
  // Reverse parameter order; a bucket holds one group and one dtype.
  std::vector<std::vector<size_t>> open;
  std::vector<int64_t> open_bytes;
  for (size_t k = entries_.size(); k-- > 0;) {
    const Entry& e = entries_[k];
    size_t b = open.size();
    for (size_t i = 0; i < open.size(); ++i) {
      const Entry& f = entries_[open[i][0]];
      if (f.group == e.group && f.divisor == e.divisor && f.param.scalar_type() == e.param.scalar_type()) b = i;
    }
    if (b == open.size()) {
      open.emplace_back();
      open_bytes.push_back(0);
    }
    open[b].push_back(k);
    open_bytes[b] += e.param.numel() * e.param.element_size();
    if (open_bytes[b] >= bucket_bytes) {
      buckets_.push_back(std::move(open[b]));
      open.erase(open.begin() + static_cast<std::ptrdiff_t>(b));
      open_bytes.erase(open_bytes.begin() + static_cast<std::ptrdiff_t>(b));
    }
  }
  for (auto& b : open) buckets_.push_back(std::move(b));
}

namespace {
// Calls back into the reducer after the parameter's gradient has been accumulated.
class ReadyHook final : public torch::autograd::PostAccumulateGradHook {
 public:
  explicit ReadyHook(std::function<void()> fn) : fn_(std::move(fn)) {}
  void operator()(const torch::autograd::Variable&) override { fn_(); }

 private:
  std::function<void()> fn_;
};
}  // namespace

GradReducer::~GradReducer() {
  if (!hooks_) return;
  for (auto& e : entries_) torch::autograd::impl::set_post_acc_grad_hooks(e.param, nullptr);
}

void GradReducer::arm() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!hooks_) {
    bucket_of_.assign(entries_.size(), 0);
    for (size_t b = 0; b < buckets_.size(); ++b)
      for (size_t k : buckets_[b]) bucket_of_[k] = b;
    for (size_t k = 0; k < entries_.size(); ++k)
      torch::autograd::impl::set_post_acc_grad_hooks(entries_[k].param,
                                                     std::make_unique<ReadyHook>([this, k] { ready(k); }));
    hooks_ = true;
  }
  pending_.clear();
  for (const auto& b : buckets_) pending_.push_back(b.size());
  flats_.assign(buckets_.size(), at::Tensor());
  waits_.assign(buckets_.size(), nullptr);
  next_ = 0;
  started_in_backward_ = 0;
  armed_ = true;
}

void GradReducer::ready(size_t k) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!armed_) return;  // an earlier micro-batch's backward: gradients still accumulate
  const size_t b = bucket_of_[k];
  if (pending_[b] > 0) --pending_[b];
  while (next_ < buckets_.size() && pending_[next_] == 0) {
    start(next_++);
    ++started_in_backward_;
  }
}

void GradReducer::start(size_t b) {
  torch::NoGradGuard ng;
  std::vector<at::Tensor> parts;
  for (size_t k : buckets_[b]) {
    const at::Tensor& g = entries_[k].param.grad();
    FP4QAT_CHECK(g.defined(), "GradReducer: a parameter has no gradient");
    parts.push_back(g.reshape({-1}));
  }
  flats_[b] = at::cat(parts);
  waits_[b] = entries_[buckets_[b][0]].group->all_reduce_start(flats_[b], ReduceOp::kSum);
}

void GradReducer::reduce() {
  std::lock_guard<std::mutex> lock(mu_);
  torch::NoGradGuard ng;
  if (!armed_) {  // not armed: nothing started yet
    flats_.assign(buckets_.size(), at::Tensor());
    waits_.assign(buckets_.size(), nullptr);
    next_ = 0;
    started_in_backward_ = 0;
  }
  armed_ = false;
  while (next_ < buckets_.size()) start(next_++);
  for (size_t i = 0; i < buckets_.size(); ++i) {
    waits_[i]();
    const auto& b = buckets_[i];
    at::Tensor flat = flats_[i].div_(entries_[b[0]].divisor);
    int64_t off = 0;
    for (size_t k : b) {
      at::Tensor g = entries_[k].param.mutable_grad();
      g.copy_(flat.narrow(0, off, g.numel()).view(g.sizes()));
      off += g.numel();
    }
  }
  flats_.clear();
  waits_.clear();
}

}  // namespace fp4qat::dist
