// trainer/exporter.h — the per-step export for the rollout side: after an optimizer step the
// current weights are published under <train.out_dir>/exports/step-<N>/<format>/ (ModelOpt NVFP4,
// MXFP8, BF16 per export.formats) with export.json (step, formats, quantized modules) and the
// resolved recipe (recipe.yaml), atomically, keeping the newest export.keep (qat/export.h).
//
// The quantized weights are exactly those the next forward uses: the same compute copy (bf16
// cast of the master), the same blocks and the same (shared) amax (QatPolicy). `input_scale` is
// the S_dec of the activation amax observed in the training forwards since the previous export
// (running max); an expert that received no token in that window keeps its previous value, and
// one that never received a token takes the largest value among its layer's experts.
//
// Serving files: the tokenizer, chat template and generation defaults of the model the run starts
// from (train.init_from; io/hf_folder.h serving_files) are copied into every format's folder, so
// that an engine pointed at the folder finds them. A run without a tokenizer (random init, or a
// source without one) says so in export.json ("tokenizer": null and a warning) and once on stderr:
// vLLM would load an empty tokenizer from such a folder instead of failing.
//
// Asynchronous: submit() stages the export — on a GPU, the quantization and the copies into
// pinned host memory run on a side stream that overlaps the next step's forward and backward —
// and a background thread writes and publishes the folders. One export is in flight at a time
// (submit waits for the previous one); the optimizer calls fence() before it changes the weights,
// which orders that change after the export's reads on the GPU without blocking the host.
//
// Frozen weights (expert-only QAT freezes all but the experts) are written apart, in the first
// shards of each format's folder; the next export hard-links those files from the previous one
// instead of writing them again (the same bytes: the weights cannot have changed), so a step's
// export writes what trains.
//
// Push (export.push_url): once an export is published, the background writer POSTs
// export.push_body to the engine (io/http.h) — training steps never wait for it, but the next
// submit() waits for the previous export, push included (at most export.push_timeout_s). A failed
// push is a warning on stderr (training goes on) or, with export.push_required, the export's error.
#pragma once
#include <future>
#include <map>
#include <string>
#include <vector>

#include "qat/export.h"
#include "trainer/config.h"
#include "model/qwen3_moe.h"
#include "qat/policy.h"

namespace fp4qat::train {

class Exporter {
 public:
  Exporter(const config::Config& cfg, const model::Qwen3Moe& model, qat::QatPolicy& policy);
  ~Exporter();  // waits for an export in flight and old exports' removal (errors: see wait())
  // True when step (1-based) is an export step: every export.every steps, and the last step.
  bool due(int64_t step) const;
  // Stages step `step` (the weights as they are now) and hands it to the background writer;
  // returns the folder it will be published as. Waits for the previous export first.
  std::string submit(int64_t step);
  // Call before changing the weights in place: on a GPU, the current stream's later work waits
  // for the staged export's reads (no host synchronisation); nothing to do on the CPU.
  void fence();
  // One export as the background writer finished it.
  struct Published {
    int64_t step = 0;
    std::string dir;     // <root>/step-<N>
    double write_s = 0;  // writing and publishing the folders
    // The frozen weights' shards were linked from the previous export instead of written (every
    // format that has them apart; qat::StagedFolder::write).
    bool linked_frozen = false;
    // export.push_url set: the push after publishing (push_status 0: no answer; push_error "" when 2xx)
    bool pushed = false;
    long push_status = 0;
    double push_s = 0;
    std::string push_error;
  };
  // Waits until the export in flight (if any) is published (and pushed); rethrows its error. The
  // exports beyond export.keep are then removed in the background (the next export waits for that
  // first, and reports its error).
  void wait();
  // wait(), and the removal of old exports: every file is as the run leaves it.
  void finish();
  // The exports finished since the last call, oldest first (those submit() waited for included).
  std::vector<Published> take_published();
  std::string root() const { return cfg_.train.out_dir + "/exports"; }
  // The serving files copied into each export (empty: none found) and whether they hold a tokenizer.
  const std::vector<std::string>& serving_files() const { return serving_; }
  bool has_tokenizer() const { return tokenizer_; }

 private:
  const config::Config& cfg_;
  const model::Qwen3Moe& model_;
  qat::QatPolicy& policy_;
  std::map<std::string, at::Tensor> amax_;  // last known activation amax per parameter (float32, model device)
  std::shared_ptr<qat::HostBufferPool> pool_ = std::make_shared<qat::HostBufferPool>();  // reused every export
  std::future<Published> inflight_;
  std::shared_future<void> pruning_;                        // removing exports beyond export.keep
  std::vector<Published> published_;                        // finished, not yet taken
  std::vector<std::shared_ptr<qat::StagedFolder>> staged_;  // of the export in flight, until fenced
  // The last published export (its folder, and each format's shards of frozen weights): the next
  // export links those shards instead of writing them again (expert-only training freezes the rest).
  std::vector<std::shared_ptr<qat::StagedFolder>> writing_;  // of the export in flight
  std::string last_dir_;
  std::vector<qat::StagedFolder::StableShards> last_stable_;
  std::string source_;                                      // train.init_from: where serving files come from
  std::vector<std::string> serving_;                        // the serving files found there
  bool tokenizer_ = false;
};

}  // namespace fp4qat::train
