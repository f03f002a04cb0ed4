"""Loader conformance: the serving engines' OWN Python loader code on our exports, on the CPU.

Run by tests/engines/run_engine_tests.py (ctest label `engines`) with the engines venv's python
(scripts/setup --engines: vLLM and SGLang wheels installed --no-deps, torch/transformers/safetensors
from the torch venv through a .pth file):

    python engine_check.py --engine vllm|sglang --exports DIR     # DIR/<name>/ are fp4qat exports
    python engine_check.py --smoke                                 # imports only (scripts/setup)

What is stubbed (tests/engines/stubs/fp4qat_engine_stubs.py: an empty module whose attributes are
dummy classes) and why -- nothing that decides a loader result:
  vLLM:   prometheus_client, fastapi      server metrics / HTTP API, imported by vllm.config & co.;
          xgrammar, llguidance, partial_json_parser
                                          structured-output and tool-call parsers (import-time only).
  SGLang: IPython, gguf                   imported by utilities and the GGUF loader at module level;
          torchvision (+ its fake dist-info, stubs/torchvision-0.26.0.dist-info, for transformers'
                                          version probe), sentencepiece  multimodal / tokenizer stacks;
          compressed_tensors              another quantization format's package (SGLang imports every
                                          quantization backend from the registry module);
          partial_json_parser             the tool-call parser.
  Hidden (SGLang): vllm, installed in the same venv, is made unimportable in the SGLang process.
  Monkeypatched (vLLM): vllm.model_executor.parameter.get_tensor_model_parallel_{rank,world_size}
          return 0 / 1 (they ask the distributed group, which needs an initialized engine): TP=1.
  Set (SGLang): the MoE runner backend flag to `marlin`, what SGLang's `auto` picks for NVFP4 on
          SM80-SM90 (on the CPU `auto` has no device to look at and refuses NVFP4).
  Not called: what runs CUDA kernels (backend selection, process_weights_after_loading, the MoE
          GEMMs); the vLLM RoutedExperts is built without its __init__ (which picks a CUDA backend),
          with the attributes its weight loader reads, then the real create_weights and load_weights;
          SGLang's FusedMoE likewise (its __init__ sets up the distributed runner), then the real
          create_weights and FusedMoE._weight_loader_impl (weight_loader less its expert-location
          lookup, which needs a server: the identity at EP=1).

Everything else is the engines' code: config parsing and method choice, the exclusion decisions,
the expert parameter creation, name mapping and weight loader, the dequantization helpers.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import warnings
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
STUB_DIR = os.path.join(HERE, "stubs")
STUBS = {
    "vllm": {"prometheus_client", "fastapi", "xgrammar", "llguidance", "partial_json_parser"},
    "sglang": {"IPython", "gguf", "torchvision", "sentencepiece", "compressed_tensors", "partial_json_parser"},
}

FAILURES = []


def check(cond, msg):
    if not cond:
        FAILURES.append(msg)
        print("  FAIL:", msg)
    return cond


def setup_stubs(engine):
    sys.path.insert(0, STUB_DIR)  # the stub module and the fake torchvision dist-info
    import fp4qat_engine_stubs
    if engine == "sglang":
        # Both engines share the venv; SGLang imports vLLM optionally when it finds it. A real SGLang
        # install has no vLLM: make it absent here (ModuleNotFoundError), so SGLang's own paths run.
        fp4qat_engine_stubs.hide({"vllm"})
    return fp4qat_engine_stubs.install(STUBS[engine])


# ---------------------------------------------------------------------------------------------
# Our side: the export as written, and its decode (independent of either engine)
# ---------------------------------------------------------------------------------------------
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


class Export:
    def __init__(self, path):
        import torch
        from safetensors.torch import load_file
        self.path = path
        self.name = os.path.basename(path)
        self.config = json.load(open(os.path.join(path, "config.json")))
        self.qc = self.config["quantization_config"]
        self.tensors = {}
        for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
            self.tensors.update(load_file(f))
        c = self.config
        self.L, self.E = c["num_hidden_layers"], c["num_experts"]
        self.H, self.I = c["hidden_size"], c["moe_intermediate_size"]
        self.torch = torch

    def exclusions(self):
        qc = self.qc
        for k in ("ignore", "modules_to_not_convert", "ignored_layers", "exclude_modules"):
            if k in qc:
                return set(qc[k])
        return set()

    def quantized_in_files(self, module):
        """Whether the files hold `module` quantized (a scale beside its weight)."""
        return any(module + s in self.tensors for s in (".weight_scale", ".weight_scale_inv"))

    def engine_prefixes(self):
        """(engine prefix, its checkpoint modules): the modules the engines ask about for Qwen3-MoE."""
        out = [("lm_head", ["lm_head"])]
        for l in range(self.L):
            p = f"model.layers.{l}"
            out.append((f"{p}.self_attn.qkv_proj", [f"{p}.self_attn.{m}" for m in ("q_proj", "k_proj", "v_proj")]))
            out.append((f"{p}.self_attn.o_proj", [f"{p}.self_attn.o_proj"]))
            out.append((f"{p}.mlp.gate", [f"{p}.mlp.gate"]))
            out.append((f"{p}.mlp.experts", [f"{p}.mlp.experts.{e}.{m}" for e in range(self.E)
                                             for m in ("gate_proj", "up_proj", "down_proj")]))
        return out

    def expected_exclusion(self):
        """prefix -> excluded, from our list; checked against the files' own truth."""
        ex = self.exclusions()
        want = {}
        for prefix, mods in self.engine_prefixes():
            if prefix.endswith(".mlp.experts"):
                listed = prefix in ex
            else:
                listed = all(m in ex for m in mods)
            files_bf16 = not any(self.quantized_in_files(m) for m in mods)
            check(listed == files_bf16, f"{self.name}: {prefix}: listed excluded={listed} but files "
                                        f"{'BF16' if files_bf16 else 'quantized'}")
            want[prefix] = listed
        return want

    def quantized_expert_layers(self):
        return [l for l in range(self.L) if self.quantized_in_files(f"model.layers.{l}.mlp.experts.0.gate_proj")]

    def expert_ckpt(self, l):
        pre = f"model.layers.{l}.mlp.experts."
        return {n: t for n, t in self.tensors.items() if n.startswith(pre)}

    def decode_nvfp4(self, module):
        torch = self.torch
        codes = self.tensors[module + ".weight"]
        lo, hi = (codes & 0xF).long(), (codes >> 4).long()
        table = torch.tensor(E2M1, dtype=torch.float32)
        v = torch.stack([table[lo], table[hi]], dim=-1).reshape(codes.shape[0], -1)  # low nibble = even
        sb = self.tensors[module + ".weight_scale"].to(torch.float32)
        s2 = self.tensors[module + ".weight_scale_2"].to(torch.float32).reshape(())
        return (v * sb.repeat_interleave(16, dim=1)) * s2

    def matches_nvfp4(self, l, w13, w2, who):
        """An engine's dequantized expert weights of layer l (w13 [E, 2I, H]: gate rows then up; w2
        [E, H, I]) against our decode, within 1 fp32 ulp; the first difference is reported."""
        I = self.I
        for e in range(self.E):
            p = f"model.layers.{l}.mlp.experts.{e}."
            for got, mod in ((w13[e, :I], "gate_proj"), (w13[e, I:], "up_proj"), (w2[e], "down_proj")):
                ours = self.decode_nvfp4(p + mod)
                if not check(got.shape == ours.shape and within_1ulp(got, ours),
                             f"{self.name}: {p}{mod}: {who} != ours (max |d| "
                             f"{(got - ours).abs().max().item() if got.shape == ours.shape else 'shape'})"):
                    return False
        return True

    def decode_mxfp8(self, module, scale_suffix):
        torch = self.torch
        v = self.tensors[module + ".weight"].to(torch.float32)
        e = self.tensors[module + scale_suffix].to(torch.float32)
        return v * torch.exp2(e - 127.0).repeat_interleave(32, dim=1)


def within_1ulp(a, b):
    torch = sys.modules["torch"]
    return bool(((a == b) | (torch.nextafter(b, a) == a)).all())


# ---------------------------------------------------------------------------------------------
# vLLM
# ---------------------------------------------------------------------------------------------
def vllm_versions():
    import vllm
    return f"vllm {vllm.__version__} ({os.path.dirname(vllm.__file__)})"


class VllmEngine:
    def __init__(self):
        import torch
        import vllm.model_executor.parameter as vparam
        from vllm.model_executor.layers.quantization import modelopt as mo
        from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts
        from vllm.model_executor.models.qwen3_moe import Qwen3MoeForCausalLM
        from vllm.model_executor.layers.quantization.utils import nvfp4_emulation_utils as emu
        from vllm.model_executor.layers.quantization.utils import mxfp8_utils
        vparam.get_tensor_model_parallel_rank = lambda: 0
        vparam.get_tensor_model_parallel_world_size = lambda: 1
        self.torch, self.mo, self.RoutedExperts, self.Model = torch, mo, RoutedExperts, Qwen3MoeForCausalLM
        self.emu, self.mxfp8_utils = emu, mxfp8_utils
        # method name -> class: vllm/model_executor/layers/quantization/__init__.py (the registry
        # function itself imports every backend, compressed_tensors included).
        self.CLS = {"modelopt": mo.ModelOptFp8Config, "modelopt_fp4": mo.ModelOptNvFp4Config,
                    "modelopt_mxfp8": mo.ModelOptMxFp8Config, "mxfp8": mo.ModelOptMxFp8Config,
                    "modelopt_mixed": mo.ModelOptMixedPrecisionConfig}

    def config(self, qc):
        """vllm/config/model.py:_verify_quantization: overrides in its order, then from_config."""
        qc = dict(qc)
        qc["quant_method"] = qc["quant_method"].lower()
        method = qc["quant_method"]
        for name in ["modelopt", "modelopt_fp4", "modelopt_mxfp8", "mxfp8", "modelopt_mixed"]:
            r = self.CLS[name].override_quantization_method(qc, None, hf_config=None)
            if r:
                method = r
                break
        cfg = self.CLS[method].from_config(qc)
        cfg.packed_modules_mapping = dict(self.Model.packed_modules_mapping)
        cfg.apply_vllm_mapper(self.Model.hf_to_vllm_mapper.get_rename_mapper())
        return method, cfg

    def make_layer(self, cfg, ex, layer_idx):
        torch, RE = self.torch, self.RoutedExperts
        E, H, I = ex.E, ex.H, ex.I
        layer = RE.__new__(RE)
        torch.nn.Module.__init__(layer)
        layer.quant_config = cfg
        layer.moe_config = SimpleNamespace(tp_rank=0, tp_size=1, is_act_and_mul=True, tp_shard_with_padding=False,
                                           moe_parallel_config=SimpleNamespace(tp_size=1), intermediate_size=I,
                                           intermediate_size_per_partition=I, num_experts=E, num_logical_experts=E)
        layer.expert_map_manager = SimpleNamespace(map_global_to_local=lambda e: e, num_fused_shared_experts=0)
        layer._fused_shared_expert_quantizer = None
        layer.intermediate_size_per_partition, layer.hidden_size = I, H
        layer.layer_name = f"model.layers.{layer_idx}.mlp.experts"
        layer.ckpt_gate_proj_name, layer.ckpt_down_proj_name, layer.ckpt_up_proj_name = "gate_proj", "down_proj", "up_proj"
        layer.lora_base_layer_prefix = ""
        layer.is_fused_checkpoint_transposed = False
        qcls = cfg.FusedMoEMethodCls  # the class get_quant_method builds for a RoutedExperts
        qm = qcls.__new__(qcls)  # its __init__ selects a CUDA backend
        qm.quant_config, qm.moe, qm.use_global_sf = cfg, layer.moe_config, False
        qm.use_a16 = cfg.quant_method == "W4A16_NVFP4"  # as ModelOptNvFp4FusedMoE.__init__
        layer.quant_method = qm
        qm.create_weights(layer, E, H, I, torch.bfloat16, weight_loader=layer.weight_loader, global_num_experts=E)
        return layer, qcls

    def load(self, cfg, ex, l, ckpt, fill):
        """Parameters filled with the byte `fill`, then the real RoutedExperts.load_weights."""
        layer, qcls = self.make_layer(cfg, ex, l)
        with self.torch.no_grad():
            for p in layer.parameters():
                p.data.view(self.torch.uint8).fill_(fill) if p.data.element_size() == 1 else \
                    p.data.view(-1).view(self.torch.uint8).fill_(fill)
        items = [(n.removeprefix(layer.layer_name + "."), t) for n, t in ckpt.items()]
        list(layer.load_weights(items))
        return layer, qcls

    def run(self, exports):
        torch, mo = self.torch, self.mo
        want_cls = {"NVFP4": (mo.ModelOptNvFp4Config, mo.ModelOptNvFp4FusedMoE),
                    "W4A16_NVFP4": (mo.ModelOptNvFp4Config, mo.ModelOptNvFp4FusedMoE),
                    "MXFP8": (mo.ModelOptMxFp8Config, mo.ModelOptMxFp8FusedMoE)}
        for ex in exports:
            if ex.name == "mxfp8-sglang":
                self.wrong_layout(ex)
                continue
            algo = ex.qc["quant_algo"]
            method, cfg = self.config(ex.qc)
            print(f"[vllm] {ex.name}: quant_method={ex.qc['quant_method']} quant_algo={algo} -> "
                  f"{method} {type(cfg).__name__} (quant_method={cfg.quant_method})")
            check(isinstance(cfg, want_cls[algo][0]), f"{ex.name}: vLLM chose {type(cfg).__name__}")
            check(cfg.quant_method == algo, f"{ex.name}: vLLM quant_method {cfg.quant_method} != {algo}")
            # Exclusions: every prefix vLLM asks about, against our list (and the files).
            want = ex.expected_exclusion()
            got = {p: bool(cfg.is_layer_excluded(p)) for p in want}
            bad = {p: (got[p], want[p]) for p in want if got[p] != want[p]}
            check(not bad, f"{ex.name}: vLLM exclusion differs (prefix: (vllm, ours)): {bad}")
            print(f"  exclusions: {len(want)} prefixes, {sum(got.values())} excluded, "
                  f"{'equal to ours' if not bad else 'DIFFERENT'}")
            layers = ex.quantized_expert_layers()
            check(layers, f"{ex.name}: no quantized expert layer")
            for l in layers:
                ckpt = ex.expert_ckpt(l)
                a, qcls = self.load(cfg, ex, l, ckpt, 0x00)
                b, _ = self.load(cfg, ex, l, ckpt, 0xFF)
                check(qcls is want_cls[algo][1], f"{ex.name}: FusedMoE method {qcls.__name__}")
                pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
                untouched = [n for n in pa if not torch.equal(pa[n].data.view(-1).view(torch.uint8),
                                                              pb[n].data.view(-1).view(torch.uint8))]
                if algo == "W4A16_NVFP4":  # no input_scale in a W4A16 folder; unused by the A16 path
                    untouched = [n for n in untouched if not n.endswith("input_scale")]
                check(not untouched, f"{ex.name}: layer {l}: parameters not fully written by the loader: {untouched}")
                if "FP4" in algo:
                    self.check_nvfp4(ex, l, a, algo)
                    self.check_marlin(ex, l, a)
                else:
                    self.check_mxfp8(ex, l, a)
                print(f"  layer {l}: {len(ckpt)} expert tensors loaded into "
                      + ", ".join(f"{n} {str(p.dtype).removeprefix('torch.')}{list(p.shape)}" for n, p in pa.items()))

    def check_nvfp4(self, ex, l, layer, algo):
        torch, E = self.torch, ex.E
        s13 = layer.w13_weight_scale_2.data
        # vLLM keeps the gate's weight_scale_2 for gate and up (process_weights_after_loading).
        check(torch.equal(s13[:, 0], s13[:, 1]), f"{ex.name}: layer {l}: gate/up weight_scale_2 differ: {s13}")
        if algo == "NVFP4":
            check(bool((layer.w13_input_scale.data > 0).all()) and bool((layer.w2_input_scale.data > 0).all()),
                  f"{ex.name}: layer {l}: input_scale not loaded")
        if ex.name == "nvfp4-static":
            self.check_static(ex, l, layer)
        w13, w2 = self.emu.dequantize_nvfp4_moe_weights(
            layer.w13_weight.data, layer.w13_weight_scale.data, s13[:, :1].expand(E, 2).contiguous(),
            layer.w2_weight.data, layer.w2_weight_scale.data, layer.w2_weight_scale_2.data,
            torch.float32, 16, invert_global_scales=False)
        if not ex.matches_nvfp4(l, w13, w2, "vLLM dequant"):
            return
        print(f"  layer {l}: vLLM dequantize_nvfp4_moe_weights == our decode (<= 1 fp32 ulp) for {E}x3 experts")

    def check_static(self, ex, l, layer):
        """qat.serving flashinfer_static: vLLM's FlashInfer / CUTLASS NVFP4 MoE backends share one activation
        scale among a layer's experts (quant_utils.amax_for_moe_activation_quant) and quantize with
        a1_gscale = 1.0 / a13_scale (oracle/nvfp4.py), alpha = a13_scale * w13_weight_scale_2. The trainer
        quantized with S_enc = 2688 / amax and multiplied by S_dec = 1 / S_enc: for the two to be one
        arithmetic, every expert's input_scale must be the shared value s, 1 / (1 / s) == s in float32,
        and 1 / s must be 2688 / amax for some float32 amax (the trainer's S_enc)."""
        torch = self.torch
        from vllm.model_executor.layers.quantization.utils.quant_utils import amax_for_moe_activation_quant
        check(ex.qc.get("fp4qat", {}).get("serving") == "flashinfer_static",
              f"{ex.name}: the export does not record serving flashinfer_static: {ex.qc.get('fp4qat')}")
        for n in ("w13_input_scale", "w2_input_scale"):
            a = getattr(layer, n).data.to(torch.float32)
            s = amax_for_moe_activation_quant(a, False)
            check(bool((a == s).all()), f"{ex.name}: layer {l}: {n} differs between experts: {a.reshape(-1)[:8]}")
            gscale = 1.0 / s  # vLLM's a1_gscale / a2_gscale
            check(bool(1.0 / gscale == s), f"{ex.name}: layer {l}: {n}: 1 / (1 / s) != s for s = {s.item()!r}")
            q = torch.tensor(2688.0) / gscale
            near = torch.stack([torch.nextafter(q, torch.tensor(d)) for d in (0.0, float("inf"))] + [q])
            check(bool((torch.tensor(2688.0) / near == gscale).any()),
                  f"{ex.name}: layer {l}: {n}: no amax gives S_enc = 2688 / amax = vLLM's {gscale.item()!r}")
        print(f"  layer {l}: vLLM's shared activation scale (amax_for_moe_activation_quant, 1.0 / s) is the "
              f"trainer's S_enc and S_dec for w13 and w2")

    def marlin_decoded(self, scales, sf):
        """vLLM's own Marlin pre-processing (marlin_utils_fp4.nvfp4_marlin_process_scales) of E4M3 block
        scales [R, C] (C % 4 == 0 not needed: it permutes groups of 4 of the flattened tensor), decoded
        back: the S0E5M3 byte b is the top byte of half(sb * sf * 2^7) << 1, i.e. the half with bits b << 7.
        Returns (the scale the kernel multiplies by / sf / 2^7, i.e. sb or 0; the bytes)."""
        torch = self.torch
        out, got_sf = self.marlin.nvfp4_marlin_process_scales(scales.to(torch.bfloat16), scale_factor=sf,
                                                              a_dtype=torch.bfloat16)
        b = out.view(torch.uint8).reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(scales.shape)  # undo its permutation
        half = (b.to(torch.int16) << 7).view(torch.float16).to(torch.float32)
        return half / (sf * 128.0), b, got_sf

    def check_marlin(self, ex, l, layer):
        """The weight side of qat.serving: marlin (qat/marlin.h) against vLLM's own Marlin helpers: the
        scale factor of each stacked tensor (w13, w2; all experts) and which block scales survive the
        S0E5M3 re-encoding -- on this export's scales, and on every E4M3 value for sf 1, 2 and 8."""
        torch = self.torch
        from vllm.model_executor.layers.quantization.utils import marlin_utils_fp4 as mu
        self.marlin = mu
        # bytes 0x00..0x7E (0x7F is NaN) and a 0 to fill vLLM's groups of 4
        e4m3 = torch.cat([torch.arange(0, 127, dtype=torch.uint8), torch.zeros(1, dtype=torch.uint8)])
        e4m3 = e4m3.view(torch.float8_e4m3fn).reshape(1, -1)
        cases = [(f"layer {l} {n}", getattr(layer, n).data, None) for n in ("w13_weight_scale", "w2_weight_scale")]
        # every E4M3 value that sf keeps within 448 (vLLM picks sf so that the largest does)
        v = e4m3.to(torch.float32)
        cases += [(f"every E4M3 value, sf {sf}", torch.where(v * sf <= 448, v, torch.zeros_like(v)).to(torch.float8_e4m3fn),
                   sf) for sf in (1.0, 2.0, 8.0)]
        n_fail = len(FAILURES)
        for what, sc, sf in cases:
            sb = sc.to(torch.float32)
            if sf is None:
                sf = mu._nvfp4_compute_scale_factor(sc.to(torch.bfloat16), torch.bfloat16)
                nz = sb[sb > 0]
                mx = nz.max().item() if nz.numel() else 0.0
                want_sf = 1.0 if mx == 0 or mx * 2 > 448 else 2.0 ** int(torch.floor(torch.log2(torch.tensor(448.0 / mx))))
                check(sf == want_sf, f"{ex.name}: {what}: vLLM's Marlin scale factor {sf} != the rule's {want_sf}")
            flat = sb.reshape(sb.shape[0], -1) if sb.dim() > 1 else sb.reshape(1, -1)
            got, b, _ = self.marlin_decoded(flat.to(torch.float8_e4m3fn), sf)
            want = torch.where(flat * sf >= 2.0 ** -6, flat, torch.zeros_like(flat))  # qat/marlin.h's rule
            check(torch.equal(got, want), f"{ex.name}: {what}: vLLM's Marlin scales differ from the rule at "
                                          f"{(got != want).nonzero()[:4].tolist()}")
            check(bool(((b == 0) | (b >= 0x80)).all()), f"{ex.name}: {what}: a kept S0E5M3 scale without its top bit")
        if len(FAILURES) == n_fail:
            print(f"  layer {l}: vLLM's Marlin scale processing keeps exactly the blocks qat/marlin.h keeps "
                  f"(w13, w2, and every E4M3 value at sf 1/2/8)")

    def check_mxfp8(self, ex, l, layer):
        torch, E, I = self.torch, ex.E, ex.I
        w13 = self.mxfp8_utils.dequant_mxfp8_to_bf16(layer.w13_weight.data, layer.w13_weight_scale.data)
        w2 = self.mxfp8_utils.dequant_mxfp8_to_bf16(layer.w2_weight.data, layer.w2_weight_scale.data)
        for e in range(E):
            p = f"model.layers.{l}.mlp.experts.{e}."
            for got, mod in ((w13[e, :I], "gate_proj"), (w13[e, I:], "up_proj"), (w2[e], "down_proj")):
                ours = ex.decode_mxfp8(p + mod, ".weight_scale")
                if not check(torch.equal(got.float(), ours), f"{ex.name}: {p}{mod}: vLLM dequant != ours"):
                    return
        print(f"  layer {l}: vLLM dequant_mxfp8_to_bf16 == our decode (exact) for {E}x3 experts")

    def wrong_layout(self, ex):
        """The SGLang MXFP8 layout must NOT load in vLLM (weight_scale_inv has no parameter)."""
        method, cfg = self.config(ex.qc)
        l = ex.quantized_expert_layers()[0]
        try:
            self.load(cfg, ex, l, ex.expert_ckpt(l), 0)
        except (AttributeError, KeyError) as err:
            ok = "weight_scale_inv" in str(err)
            check(ok, f"{ex.name}: vLLM failed, but not on weight_scale_inv: {err}")
            print(f"[vllm] {ex.name} (SGLang layout): {method} {type(cfg).__name__}; load fails as it must: "
                  f"{type(err).__name__}: {err}")
            return
        check(False, f"{ex.name}: the SGLang MXFP8 layout loaded in vLLM (it must fail)")


# ---------------------------------------------------------------------------------------------
# SGLang
# ---------------------------------------------------------------------------------------------
def sglang_versions():
    import sglang
    from sglang.version import __version__
    return f"sglang {__version__} ({os.path.dirname(sglang.__file__)})"


class SglangEngine:
    def __init__(self):
        import torch
        from sglang.srt.layers.quantization.modelopt_quant import ModelOptFp4Config, ModelOptNvFp4FusedMoEMethod
        from sglang.srt.layers.quantization.fp8 import Fp8Config, Fp8MoEMethod
        from sglang.srt.layers.quantization.utils import is_layer_skipped
        from sglang.srt.configs.model_config import ModelConfig
        from sglang.srt.layers.quantization import marlin_utils_fp4
        from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
        from sglang.srt.models.qwen3_moe import Qwen3MoeForCausalLM
        self.torch, self.Fp4, self.Fp8, self.skipped = torch, ModelOptFp4Config, Fp8Config, is_layer_skipped
        self.Fp4Moe, self.Fp8Moe = ModelOptNvFp4FusedMoEMethod, Fp8MoEMethod
        self.ModelConfig, self.marlin, self.FusedMoE, self.Model = ModelConfig, marlin_utils_fp4, FusedMoE, Qwen3MoeForCausalLM
        # The MoE runner backend SGLang's `auto` picks for NVFP4 on SM80-SM90 (Hopper): Marlin. On the
        # CPU `auto` has no device to look at, so set it as `--moe-runner-backend marlin` would.
        from sglang.srt.layers.moe import utils as moe_utils
        moe_utils.get_flags().moe.runner_backend = moe_utils.MoeRunnerBackend.MARLIN

    def config(self, qc):
        """sglang/srt/configs/model_config.py: modelopt configs go through _parse_modelopt_quant_config."""
        qc = dict(qc)
        if qc.get("quant_method") == "modelopt":
            qc.update(self.ModelConfig._parse_modelopt_quant_config(None, {"quantization": dict(qc)}) or {})
        qc["packed_modules_mapping"] = dict(getattr(self.Model, "packed_modules_mapping", {}) or
                                            {"qkv_proj": ["q_proj", "k_proj", "v_proj"],
                                             "gate_up_proj": ["gate_proj", "up_proj"]})
        if qc["quant_method"] == "modelopt_fp4":
            c = self.Fp4.from_config(dict(qc))
            lin = lambda p: bool(self.skipped(p, c.exclude_modules, c.packed_modules_mapping) or c.is_layer_excluded(p))
            moe = lambda p: bool(c.is_layer_excluded(p))
        else:
            c = self.Fp8.from_config(dict(qc))
            lin = moe = lambda p: bool(self.skipped(p, c.ignored_layers, c.packed_modules_mapping))
        return qc["quant_method"], c, lin, moe

    def param_names(self, c, ex):
        """The expert parameters SGLang's MoE method creates (names only; create_weights on a bare module)."""
        torch = self.torch
        layer = torch.nn.Module()  # the FusedMoE attributes create_weights reads, TP=EP=1
        layer.moe_runner_config = SimpleNamespace(is_gated=True, activation="silu")
        layer.num_experts = layer.num_local_experts = ex.E
        layer.intermediate_size_per_partition, layer.params_dtype, layer.quant_config = ex.I, torch.bfloat16, c
        layer.moe_tp_size, layer.moe_ep_size, layer.moe_tp_rank, layer.moe_ep_rank = 1, 1, 0, 0
        qm = (self.Fp4Moe if isinstance(c, self.Fp4) else self.Fp8Moe)(c)  # the real constructors
        qm.create_weights(layer, ex.E, ex.H, ex.I, torch.bfloat16, weight_loader=lambda *a, **k: None)
        return {n: p for n, p in layer.named_parameters()}, type(qm)

    def run(self, exports):
        for ex in exports:
            method, c, lin, moe = self.config(ex.qc)
            algo = ex.qc.get("quant_algo", "MXFP8")
            extra = (f"is_w4a16={c.is_w4a16} group_size={c.group_size}" if isinstance(c, self.Fp4)
                     else f"use_mxfp8={c.use_mxfp8} min_capability={c.get_min_capability()}")
            print(f"[sglang] {ex.name}: quant_method={ex.qc['quant_method']} -> {method} {type(c).__name__} {extra}")
            if "FP4" in algo:
                check(isinstance(c, self.Fp4), f"{ex.name}: SGLang chose {type(c).__name__}")
                check(c.is_w4a16 == (algo == "W4A16_NVFP4"), f"{ex.name}: SGLang is_w4a16={c.is_w4a16}")
                scale_suffix = ".weight_scale"
            else:
                check(isinstance(c, self.Fp8) and c.use_mxfp8, f"{ex.name}: SGLang chose {type(c).__name__}")
                scale_suffix = ".weight_scale_inv"
            want = ex.expected_exclusion()
            got = {p: (moe(p) if p.endswith(".mlp.experts") else lin(p)) for p in want}
            bad = {p: (got[p], want[p]) for p in want if got[p] != want[p]}
            check(not bad, f"{ex.name}: SGLang exclusion differs (prefix: (sglang, ours)): {bad}")
            print(f"  exclusions: {len(want)} prefixes, {sum(got.values())} excluded, "
                  f"{'equal to ours' if not bad else 'DIFFERENT'}")
            try:
                params, qcls = self.param_names(c, ex)
            except Exception as err:  # noqa: BLE001 -- report, keep the other checks
                check(False, f"{ex.name}: SGLang create_weights on the CPU failed: {type(err).__name__}: {err}")
                continue
            print(f"  {qcls.__name__} creates " + ", ".join(
                f"{n} {str(p.dtype).removeprefix('torch.')}{list(p.shape)}" for n, p in params.items()))
            # Qwen3MoeForCausalLM.load_weights: the expert mapping, then `if name not in params_dict: continue`.
            mapping = self.FusedMoE.make_expert_params_mapping("gate_proj", "down_proj", "up_proj", num_experts=ex.E)
            for l in ex.quantized_expert_layers():
                mapped, skipped = set(), []
                for name in ex.expert_ckpt(l):
                    for param_name, weight_name, expert_id, shard_id in mapping:
                        if weight_name not in name:
                            continue
                        pname = name.replace(weight_name, param_name).removeprefix(f"model.layers.{l}.mlp.experts.")
                        (mapped.add(pname) if pname in params else skipped.append(name))
                        break
                    else:
                        skipped.append(name)
                wrong = ex.name == "mxfp8-vllm"
                if wrong:
                    # The vLLM layout in SGLang: the scales are skipped silently, the parameter keeps its init.
                    scales = [n for n in skipped if n.endswith(".weight_scale")]
                    check(len(scales) == 3 * ex.E and "w13_weight_scale_inv" not in mapped,
                          f"{ex.name}: SGLang would load the vLLM MXFP8 layout (skipped: {skipped})")
                    print(f"  layer {l} (vLLM layout): SGLang skips {len(scales)} .weight_scale tensors silently; "
                          f"w13/w2_weight_scale_inv keep their initial value, as they must here")
                else:
                    check(not skipped, f"{ex.name}: layer {l}: SGLang skips (no parameter): {skipped[:6]}")
                    # *_blockscale_swizzled are derived from weight_scale after loading (not checkpoint tensors).
                    need = {n for n in params if (not n.endswith("input_scale") or algo == "NVFP4")
                            and "swizzled" not in n}
                    check(need <= mapped, f"{ex.name}: layer {l}: SGLang parameters nothing loads: {need - mapped}")
                    print(f"  layer {l}: {len(ex.expert_ckpt(l))} expert tensors all map to SGLang parameters "
                          f"({sorted(mapped)})")
                for name in ex.expert_ckpt(l):
                    if name.endswith(scale_suffix) and not wrong:
                        t = ex.tensors[name]
                        check(t.dtype == params["w13" + scale_suffix.replace(".", "_")].dtype,
                              f"{ex.name}: {name} dtype {t.dtype} != SGLang's")
            if "FP4" in algo:
                self.marlin_scales(ex)
                for l in ex.quantized_expert_layers():
                    self.check_nvfp4_values(ex, c, l, mapping)

    def loaded_layer(self, c, ex, l, mapping, fill):
        """SGLang's FusedMoE weight loading of layer l's expert tensors: the parameters its MoE method
        creates (filled with the byte `fill`), each checkpoint tensor through FusedMoE._weight_loader_impl
        with the name, shard and expert Qwen3MoeForCausalLM.load_weights gives it. (FusedMoE.weight_loader
        first maps global to local experts through the server's expert-location metadata: the identity
        here, EP=1.) The FusedMoE is built without its __init__ (which sets up the distributed runner),
        with the attributes the loader reads."""
        torch = self.torch
        F = self.FusedMoE
        layer = F.__new__(F)
        torch.nn.Module.__init__(layer)
        qm = (self.Fp4Moe if isinstance(c, self.Fp4) else self.Fp8Moe)(c)
        for k, v in dict(quant_method=qm, quant_config=c, scheme=None, use_flashinfer_trtllm_moe=False,
                         use_triton_kernels=False, use_padded_loading=False, use_presharded_weights=False,
                         moe_tp_rank=0, moe_tp_size=1, moe_ep_rank=0, moe_ep_size=1, num_experts=ex.E,
                         num_local_experts=ex.E, num_fused_shared_experts=0, _has_fused_shared=False,
                         _num_local_routed=ex.E, intermediate_size_per_partition=ex.I, params_dtype=torch.bfloat16,
                         moe_runner_config=SimpleNamespace(is_gated=True, activation="silu")).items():
            object.__setattr__(layer, k, v)
        qm.create_weights(layer, ex.E, ex.H, ex.I, torch.bfloat16, weight_loader=layer.weight_loader)
        params = dict(layer.named_parameters())
        with torch.no_grad():
            for p in params.values():
                p.data.view(-1).view(torch.uint8).fill_(fill)
            for name, t in ex.expert_ckpt(l).items():
                for param_name, weight_name, expert_id, shard_id in mapping:
                    if weight_name in name:
                        pname = name.replace(weight_name, param_name)
                        short = pname.removeprefix(f"model.layers.{l}.mlp.experts.")
                        if short in params:
                            layer._weight_loader_impl(params[short], t, pname, shard_id, expert_id)
                        break
        return params

    def check_nvfp4_values(self, ex, c, l, mapping):
        """Every expert tensor loaded by SGLang's own weight loader (no parameter left at its fill),
        then dequantized by SGLang's own dequantize_nvfp4 (quantization/dequantization.py) with the
        gate's weight_scale_2 for w13, as its MoE methods use it: equal to our decode within 1 fp32 ulp
        (it multiplies e2m1 * (sb * S), the spec (e2m1 * sb) * S)."""
        torch = self.torch
        from sglang.srt.layers.quantization.dequantization import dequantize_nvfp4
        try:
            a = self.loaded_layer(c, ex, l, mapping, 0x00)
            b = self.loaded_layer(c, ex, l, mapping, 0xFF)
        except Exception as err:  # noqa: BLE001 -- report, keep the other checks
            check(False, f"{ex.name}: layer {l}: SGLang's FusedMoE weight loader on the CPU failed: "
                         f"{type(err).__name__}: {err}")
            return
        algo = ex.qc.get("quant_algo")
        untouched = [n for n in a if not torch.equal(a[n].data.view(-1).view(torch.uint8), b[n].data.view(-1).view(torch.uint8))
                     and "swizzled" not in n and (algo == "NVFP4" or not n.endswith("input_scale"))]
        check(not untouched, f"{ex.name}: layer {l}: SGLang parameters not fully written by its loader: {untouched}")
        E = ex.E
        s13 = a["w13_weight_scale_2"].data
        check(torch.equal(s13[:, 0], s13[:, 1]), f"{ex.name}: layer {l}: gate/up weight_scale_2 differ in SGLang: {s13}")
        w13 = dequantize_nvfp4(a["w13_weight"].data, a["w13_weight_scale"].data, s13[:, 0].reshape(E, 1, 1),
                               out_dtype=torch.float32)
        w2 = dequantize_nvfp4(a["w2_weight"].data, a["w2_weight_scale"].data,
                              a["w2_weight_scale_2"].data.reshape(E, 1, 1), out_dtype=torch.float32)
        if not ex.matches_nvfp4(l, w13, w2, "SGLang dequantize_nvfp4"):
            return
        print(f"  layer {l}: every expert tensor through SGLang's FusedMoE weight loader; its dequantize_nvfp4 "
              f"== our decode (<= 1 fp32 ulp) for {E}x3 experts")

    def marlin_scales(self, ex):
        """SGLang's Marlin (Hopper) pre-processing of the NVFP4 scales: what it does to ours."""
        torch = self.torch
        l = ex.quantized_expert_layers()[0]
        m = f"model.layers.{l}.mlp.experts.0.gate_proj"
        sb = ex.tensors[m + ".weight_scale"].to(torch.bfloat16)
        self.marlin.nvfp4_marlin_process_scales(sb)  # runs on our scales without error
        s2 = ex.tensors[m + ".weight_scale_2"].reshape(1)
        g = self.marlin.nvfp4_marlin_process_global_scale(s2.to(torch.bfloat16))
        exact = s2.to(torch.bfloat16).float().item() == s2.item()
        print(f"  Marlin pre-processing ran; weight_scale_2 {s2.item():.6g} is "
              f"{'exactly representable in bf16' if exact else 'NOT bf16-exact (SGLang Marlin rounds it)'}; "
              f"global scale -> {g.float().item():.6g}")


# ---------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=["vllm", "sglang"])
    ap.add_argument("--exports")
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    if a.smoke and not a.engine:
        vs = []
        for eng in ("vllm", "sglang"):
            r = subprocess.run([sys.executable, __file__, "--smoke", "--engine", eng], capture_output=True, text=True)
            if r.returncode:
                sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
                sys.exit(f"{eng}: import failed")
            vs.append(r.stdout.strip().splitlines()[-1])
        print(", ".join(v.split(" (")[0] for v in vs))
        return
    finder = setup_stubs(a.engine)
    import torch
    engine = VllmEngine() if a.engine == "vllm" else SglangEngine()
    import transformers
    version = vllm_versions() if a.engine == "vllm" else sglang_versions()
    print(f"imported: {version}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"python {sys.version.split()[0]}")
    print(f"stubbed modules imported: {sorted({h.split('.')[0] for h in finder.hits})}")
    if a.smoke:
        print(version)
        return
    names = {"vllm": ["nvfp4", "nvfp4-train", "nvfp4-static", "w4a16", "mxfp8-vllm", "mxfp8-sglang"],
             "sglang": ["nvfp4", "nvfp4-train", "nvfp4-static", "w4a16", "mxfp8-sglang", "mxfp8-vllm"]}[a.engine]
    exports = []
    for n in names:
        d = os.path.join(a.exports, n)
        if check(os.path.isfile(os.path.join(d, "config.json")), f"missing export {d}"):
            exports.append(Export(d))
    engine.run(exports)
    if FAILURES:
        print(f"\n{len(FAILURES)} FAILURE(S) ({a.engine}):")
        for f in FAILURES:
            print("  -", f)
        sys.exit(1)
    print(f"\nall {a.engine} conformance checks passed on {len(exports)} exports")


if __name__ == "__main__":
    main()
