// kernels/common/nvfp4_rule.h — the one description of an NVFP4 scale rule (docs/spec/numerics.md),
// shared by the CPU reference, the CUDA launchers and kernels/quantize.h (no torch, no CUDA):
// how a block chooses its scale (max -> 6, or Four Over Six) and how many global scales a tensor
// has (one per tensor / expert, or one per row). TransformerEngine's NVFP4BlockScaling carries the
// same settings; the default is the 2024 rule every existing recipe, export and vector uses.
#pragma once

namespace fp4qat {

struct NVFP4Rule {
  // Four Over Six (TransformerEngine >= 2.17): each block keeps the better of the scales that map
  // its max to 6 and to 4 (strictly smaller error; a tie keeps 6).
  bool four_over_six = false;
  float e4m3_max = 256.0f;  // M of Four Over Six's global scale: 256 (TE's default) or 448 (FlashInfer's)
  bool mse = false;         // Four Over Six's block error: MAE (false, the default) or MSE
  // Row-scaled (per-token) global scales (TransformerEngine >= 2.16): each row its own amax and
  // S_dec; 1x16 blocks only. S_dec is then [..., N] instead of [] / [E].
  bool row_scaled = false;

  bool is_default() const { return !four_over_six && !row_scaled; }
  bool operator==(const NVFP4Rule& o) const {
    return four_over_six == o.four_over_six && (!four_over_six || (e4m3_max == o.e4m3_max && mse == o.mse)) &&
           row_scaled == o.row_scaled;
  }
};

// The NVFP4 rules of one recipe (qat::Recipe): the weights' rule (never row-scaled), the
// activations' rule, and W4A16 (the activations left in the compute dtype: no activation rule).
// Carried as one value by the autograd options, the exports, convert and the rollout side.
struct NVFP4Rules {
  NVFP4Rule weights;
  NVFP4Rule activations;
  bool w4a16 = false;

  bool is_default() const { return weights.is_default() && activations.is_default() && !w4a16; }
};

}  // namespace fp4qat
