// trainer/rollouts.cpp — see rollouts.h.
#include "trainer/rollouts.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <set>

#include "io/fs.h"
#include "io/json.h"
#include "io/jsonl.h"
#include "kernels/common/check.h"
#include "trainer/grpo.h"

namespace fp4qat::rollouts {

namespace {

std::vector<int64_t> token_ids(const json::Value& v, const char* key, int64_t vocab, const std::string& where) {
  std::vector<int64_t> out;
  for (const auto& t : v.at(key, where).as_array(where + ": " + key)) {
    FP4QAT_CHECK(t.is_int(), where, ": ", key, " holds a value that is not an integer token id");
    const int64_t id = t.as_int();
    FP4QAT_CHECK(id >= 0 && id < vocab, where, ": ", key, " token ", id, " is outside the vocabulary [0, ", vocab, ")");
    out.push_back(id);
  }
  FP4QAT_CHECK(!out.empty(), where, ": ", key, " is empty");
  return out;
}

std::vector<float> per_token(const json::Value& v, const char* key, size_t n, const std::string& where) {
  std::vector<float> out;
  for (const auto& x : v.at(key, where).as_array(where + ": " + key)) {
    FP4QAT_CHECK(x.is_number(), where, ": ", key, " holds a value that is not a number");
    const double d = x.as_double();
    FP4QAT_CHECK(std::isfinite(d), where, ": ", key, "[", out.size(), "] is not finite");
    out.push_back(static_cast<float>(d));
  }
  FP4QAT_CHECK(out.size() == n, where, ": ", out.size(), " ", key, " for ", n, " response tokens (one per token)");
  return out;
}

Sample parse(const json::Value& v, const std::string& where, const Limits& lim, int64_t& layers, int64_t& top_k) {
  static const std::set<std::string> kKeys = {
      "prompt",     "response",       "logprobs",    "reward",       "group",
      "advantages", "routed_experts", "prompt_text", "response_text"};  // the texts: information only
  FP4QAT_CHECK(v.is_object(), where, ": a rollout record must be a JSON object");
  for (const auto& [k, x] : v.as_object())
    FP4QAT_CHECK(
        kKeys.count(k), where, ": unknown key '", k,
        "' (prompt, response, logprobs, reward, group, advantages, routed_experts, prompt_text, response_text)");
  Sample s;
  s.where = where;
  s.prompt = token_ids(v, "prompt", lim.vocab, where);
  s.response = token_ids(v, "response", lim.vocab, where);
  const int64_t len = static_cast<int64_t>(s.prompt.size() + s.response.size());
  FP4QAT_CHECK(lim.max_tokens <= 0 || len <= lim.max_tokens, where, ": ", len,
               " tokens (prompt + response), more than the model's ", lim.max_tokens);
  s.logprobs = per_token(v, "logprobs", s.response.size(), where);
  for (size_t i = 0; i < s.logprobs.size(); ++i)
    FP4QAT_CHECK(s.logprobs[i] <= 0.0f, where, ": logprobs[", i, "] = ", s.logprobs[i],
                 " is positive (a log-probability is at most 0)");
  const json::Value& r = v.at("reward", where);
  FP4QAT_CHECK(r.is_number() && std::isfinite(r.as_double()), where, ": reward must be a finite number");
  s.reward = r.as_double();
  const json::Value& g = v.at("group", where);
  FP4QAT_CHECK(g.is_int() || g.is_string(), where, ": group must be an integer or a string");
  s.group = g.is_int() ? std::to_string(g.as_int()) : g.as_string();
  if (const json::Value* a = v.find("advantages"); a && !a->is_null())
    s.advantages = per_token(v, "advantages", s.response.size(), where);
  if (const json::Value* re = v.find("routed_experts"); re && !re->is_null()) {
    const auto& toks = re->as_array(where + ": routed_experts");
    FP4QAT_CHECK(toks.size() == s.response.size(), where, ": routed_experts has ", toks.size(), " entries for ",
                 s.response.size(), " response tokens ([response length][moe layers][top k])");
    for (size_t t = 0; t < toks.size(); ++t) {
      const auto& ls = toks[t].as_array(where + ": routed_experts[" + std::to_string(t) + "]");
      if (layers == 0) layers = static_cast<int64_t>(ls.size());
      FP4QAT_CHECK(static_cast<int64_t>(ls.size()) == layers && layers > 0, where, ": routed_experts[", t, "] has ",
                   ls.size(), " layers, expected ", layers);
      for (size_t l = 0; l < ls.size(); ++l) {
        const auto& ks =
            ls[l].as_array(where + ": routed_experts[" + std::to_string(t) + "][" + std::to_string(l) + "]");
        if (top_k == 0) top_k = static_cast<int64_t>(ks.size());
        FP4QAT_CHECK(static_cast<int64_t>(ks.size()) == top_k && top_k > 0, where, ": routed_experts[", t, "][", l,
                     "] has ", ks.size(), " experts, expected top_k = ", top_k);
        for (const auto& e : ks) {
          FP4QAT_CHECK(e.is_int(), where, ": routed_experts holds a value that is not an integer expert id");
          const int64_t id = e.as_int();
          FP4QAT_CHECK(id >= 0 && id < lim.num_experts, where, ": routed expert ", id, " (token ", t, ", layer ", l,
                       ") is outside [0, ", lim.num_experts, ")");
          s.routed.push_back(static_cast<int32_t>(id));
        }
      }
    }
  }
  return s;
}

}  // namespace

namespace {
// Appends the samples of `path`; layers / top_k: the routed-experts layout seen so far (0: none
// yet), kept across files.
void read_into(const std::string& path, const Limits& lim, int64_t& layers, int64_t& top_k, std::vector<Sample>& out) {
  FP4QAT_CHECK(lim.vocab > 0, "rollouts: the vocabulary size must be known");
  const size_t before = out.size();
  jsonl::for_each(path, [&](const json::Value& v, const std::string& where) {
    out.push_back(parse(v, where, lim, layers, top_k));
  });
  FP4QAT_CHECK(out.size() > before, path, ": no rollout record");
}
}  // namespace

std::vector<Sample> read_file(const std::string& path, const Limits& lim) {
  std::vector<Sample> out;
  int64_t layers = lim.moe_layers, top_k = lim.top_k;
  read_into(path, lim, layers, top_k, out);
  return out;
}

std::vector<Sample> read_folder(const std::string& dir, const Limits& lim) {
  FP4QAT_CHECK(fs::is_dir(dir), dir, ": not a folder of rollout files");
  std::vector<Sample> out;
  int64_t layers = lim.moe_layers, top_k = lim.top_k;
  for (const auto& n : fs::list_dir(dir))  // sorted
    if (n.size() > 6 && n.compare(n.size() - 6, 6, ".jsonl") == 0) read_into(dir + "/" + n, lim, layers, top_k, out);
  FP4QAT_CHECK(!out.empty(), dir, ": no *.jsonl rollout file");
  return out;
}

Sample sample_of(std::vector<int64_t> prompt, rollout::Response r, std::string group) {
  Sample s;
  s.prompt = std::move(prompt);
  s.response = std::move(r.tokens);
  s.logprobs = std::move(r.logprobs);
  s.routed = std::move(r.routed);
  s.group = std::move(group);
  return s;
}

std::string to_json_line(const Sample& s, int64_t moe_layers, int64_t top_k, bool with_reward) {
  json::Value p = json::Value::array(), r = json::Value::array(), lp = json::Value::array();
  for (auto t : s.prompt) p.push_back(t);
  for (auto t : s.response) r.push_back(t);
  for (auto x : s.logprobs) lp.push_back(static_cast<double>(x));
  json::Value o = json::Value::object({{"prompt", p}, {"response", r}, {"logprobs", lp}});
  if (with_reward) o.set("reward", s.reward);
  o.set("group", s.group);
  if (!s.advantages.empty()) {
    json::Value a = json::Value::array();
    for (auto x : s.advantages) a.push_back(static_cast<double>(x));
    o.set("advantages", a);
  }
  if (!s.routed.empty()) {
    FP4QAT_CHECK(
        moe_layers > 0 && top_k > 0 &&
            static_cast<int64_t>(s.routed.size()) == static_cast<int64_t>(s.response.size()) * moe_layers * top_k,
        "rollouts: routed experts of ", s.routed.size(), " ids do not fit [", s.response.size(), ", ", moe_layers, ", ",
        top_k, "]");
    json::Value toks = json::Value::array();
    size_t i = 0;
    for (size_t t = 0; t < s.response.size(); ++t) {
      json::Value ls = json::Value::array();
      for (int64_t l = 0; l < moe_layers; ++l) {
        json::Value ks = json::Value::array();
        for (int64_t k = 0; k < top_k; ++k) ks.push_back(static_cast<int64_t>(s.routed[i++]));
        ls.push_back(ks);
      }
      toks.push_back(ls);
    }
    o.set("routed_experts", toks);
  }
  return o.dump();
}

// ---- training batches ---------------------------------------------------------------------------
namespace {
std::string file_of(const std::string& where) { return where.substr(0, where.rfind(':')); }
}  // namespace

Dataset::Dataset(std::vector<Sample> samples, bool adv_std_normalize, uint64_t seed, int64_t moe_layers,
                 int64_t top_k)
    : samples_(std::move(samples)), seed_(seed), moe_layers_(moe_layers), top_k_(top_k) {
  FP4QAT_CHECK(!samples_.empty(), "rollouts: no sample to train on");
  for (const auto& smp : samples_) {
    if (smp.routed.empty()) continue;
    FP4QAT_CHECK(moe_layers > 0 && top_k > 0 &&
                     static_cast<int64_t>(smp.routed.size()) ==
                         static_cast<int64_t>(smp.response.size()) * moe_layers * top_k,
                 smp.where, ": routed_experts do not have the layout [response length][", moe_layers, "][", top_k, "]");
    has_routing_ = true;
  }
  std::map<std::string, size_t> index;  // file + '\n' + group id -> group
  std::vector<double> rewards;
  std::vector<std::string> keys;
  for (size_t i = 0; i < samples_.size(); ++i) {
    const Sample& s = samples_[i];
    const std::string key = file_of(s.where) + "\n" + s.group;
    auto [it, fresh] = index.emplace(key, groups_.size());
    if (fresh) groups_.emplace_back();
    groups_[it->second].push_back(i);
    rewards.push_back(s.reward);
    keys.push_back(key);
  }
  const std::vector<double> a = grpo::group_advantages(rewards, keys, adv_std_normalize);
  adv_.resize(samples_.size());
  for (size_t i = 0; i < samples_.size(); ++i)
    adv_[i] = samples_[i].advantages.empty() ? std::vector<float>(samples_[i].response.size(), static_cast<float>(a[i]))
                                             : samples_[i].advantages;
}

std::vector<size_t> Dataset::permutation(uint64_t epoch) const {
  std::vector<size_t> p(groups_.size());
  for (size_t i = 0; i < p.size(); ++i) p[i] = i;
  std::mt19937_64 rng(seed_ * 0x9E3779B97F4A7C15ull + epoch + 1);
  for (size_t i = p.size(); i > 1; --i) std::swap(p[i - 1], p[rng() % i]);  // Fisher-Yates
  return p;
}

Batch Dataset::batch(uint64_t index, int64_t groups_per_batch) const {
  const uint64_t G = groups_.size();
  FP4QAT_CHECK(groups_per_batch >= 1 && static_cast<uint64_t>(groups_per_batch) <= G, "rollouts: train.batch_size ",
               groups_per_batch, " (groups per micro-batch) must be in [1, ", G, "], the groups in data.path");
  std::vector<size_t> rows;
  uint64_t epoch = ~uint64_t(0);
  std::vector<size_t> perm;
  for (int64_t j = 0; j < groups_per_batch; ++j) {
    const uint64_t k = index * static_cast<uint64_t>(groups_per_batch) + static_cast<uint64_t>(j);
    if (k / G != epoch) perm = permutation(epoch = k / G);
    for (size_t i : groups_[perm[k % G]]) rows.push_back(i);
  }
  int64_t T = 0;  // the longest prompt + response, less one
  for (size_t i : rows)
    T = std::max<int64_t>(T, static_cast<int64_t>(samples_[i].prompt.size() + samples_[i].response.size()) - 1);
  const int64_t B = static_cast<int64_t>(rows.size());
  Batch b;
  b.ids = at::zeros({B, T + 1}, at::kLong);
  b.mask = at::zeros({B, T}, at::kBool);
  b.real = at::zeros({B, T}, at::kBool);
  auto ids = b.ids.accessor<int64_t, 2>();
  auto mask = b.mask.accessor<bool, 2>();
  auto real = b.real.accessor<bool, 2>();
  std::vector<float> sampler, adv;
  for (int64_t r = 0; r < B; ++r) {
    const Sample& s = samples_[rows[static_cast<size_t>(r)]];
    const int64_t P = static_cast<int64_t>(s.prompt.size()), R = static_cast<int64_t>(s.response.size());
    for (int64_t t = 0; t < P; ++t) ids[r][t] = s.prompt[static_cast<size_t>(t)];
    for (int64_t j = 0; j < R; ++j) {
      ids[r][P + j] = s.response[static_cast<size_t>(j)];
      mask[r][P + j - 1] = true;
    }
    for (int64_t t = 0; t + 1 < P + R; ++t) real[r][t] = true;
    sampler.insert(sampler.end(), s.logprobs.begin(), s.logprobs.end());
    const auto& a = adv_[rows[static_cast<size_t>(r)]];
    adv.insert(adv.end(), a.begin(), a.end());
    b.reward_sum += s.reward;
  }
  if (has_routing_) {
    b.routed = at::zeros({B, T, moe_layers_, top_k_}, at::kLong);
    b.replay = at::zeros({B, T}, at::kBool);
    auto routed = b.routed.accessor<int64_t, 4>();
    auto replay = b.replay.accessor<bool, 2>();
    for (int64_t r = 0; r < B; ++r) {
      const Sample& s = samples_[rows[static_cast<size_t>(r)]];
      if (s.routed.empty()) continue;
      const int64_t P = static_cast<int64_t>(s.prompt.size()), R = static_cast<int64_t>(s.response.size());
      for (int64_t j = 0; j + 1 < R; ++j) {  // [R, L, k] flattened: token j's layer l, slot q
        replay[r][P + j] = true;
        for (int64_t l = 0; l < moe_layers_; ++l)
          for (int64_t q = 0; q < top_k_; ++q)
            routed[r][P + j][l][q] = s.routed[static_cast<size_t>((j * moe_layers_ + l) * top_k_ + q)];
      }
    }
  }
  b.samples = B;
  b.tokens = static_cast<int64_t>(sampler.size());
  b.sampler = at::tensor(sampler, at::kFloat);
  b.adv = at::tensor(adv, at::kFloat);
  return b;
}

}  // namespace fp4qat::rollouts
