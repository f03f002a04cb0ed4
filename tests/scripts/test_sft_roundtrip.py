#!/usr/bin/env python3
"""tests/scripts/test_sft_roundtrip.py FP4QAT_BINARY — issue 24 end to end, no network, with the venv's
python (tokenizers, transformers): a byte-level BPE tokenizer trained in the test on text the test
writes, saved as a Hugging Face tokenizer folder with a ChatML chat template (test_prepare_data's
make_tokenizers), then
  * scripts/prepare_data --format chat on a JSONL file of conversations the test writes;
  * fp4qat train (objective sft, packed documents, a tiny random MoE, an NVFP4 export) on the folder:
    the loss falls, the finished hf/ folder and the export carry the id -> bytes table (vocab.bin);
  * fp4qat generate --prompts <the dataset folder>: one record per conversation whose prompt is the
    conversation up to where the assistant writes and whose decoded prompt_text is that text;
    fp4qat eval --sequences on the NVFP4 export writes the decoded text of each sequence;
  * a model folder (train.init_from) whose tokenizer.json is not the one the dataset was prepared with
    is refused, the right one accepted;
  * bad input: a dataset whose vocabulary exceeds model.vocab_size, a mask value 2, document
    boundaries out of order, a wrong magic: non-zero exit and a message naming the file.
Exit 0 = pass; the last line says "N passed, M failed"."""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import checks  # noqa: E402
from checks import check  # noqa: E402
import test_prepare_data as tpd  # noqa: E402 (its tokenizer folders and prepare_data's main in this process)

fp4qat = sys.argv[1]

QUESTIONS = [("What is two plus two?", "Two plus two is four."),
             ("Say hello to the world.", "Hello world!"),
             ("What does the quick brown fox do?", "The quick brown fox jumps over the lazy dog."),
             ("Thanks!", "You are welcome!")]


def expect(cond, what, detail=None):
    check(bool(cond), what)
    if not cond and detail is not None:
        print("      " + str(detail).replace("\n", "\n      "))


def run(*args):
    p = subprocess.run([fp4qat, *args], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def write_recipe(path, data_dir, out_dir, vocab_size):
    with open(path, "w") as f:
        f.write(f"""objective: sft
model:
  vocab_size: {vocab_size}
  hidden_size: 32
  num_hidden_layers: 1
  num_attention_heads: 2
  num_key_value_heads: 1
  head_dim: 16
  intermediate_size: 64
  moe_intermediate_size: 32
  num_experts: 4
  num_experts_per_tok: 2
  max_position_embeddings: 128
train:
  steps: 30
  batch_size: 8
  seq_len: 64
  eval_every: 0
  log_every: 10
  checkpoint_every: 0
  device: cpu
  dtype: fp32
  out_dir: {out_dir}
optim:
  lr: 1.0e-2
  warmup_steps: 2
data:
  kind: tokens
  path: {data_dir}
  packing: true
  val_fraction: 0.0
export:
  every: 30
  formats: [nvfp4]
  probe_mismatch: false
""")


def patched_copy(src, dst, name, offset, data):
    shutil.copytree(src, dst)
    p = os.path.join(dst, name)
    with open(p, "r+b") as f:
        f.seek(offset)
        f.write(data)


def main():
    root = tempfile.mkdtemp(prefix="fp4qat-sft-")
    try:
        tk = tpd.make_tokenizers(root)["plain"]
        chats = os.path.join(root, "chats.jsonl")
        rows = []
        for i in range(24):
            q, a = QUESTIONS[i % len(QUESTIONS)]
            rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        tpd.write_jsonl(chats, rows)
        data_dir = os.path.join(root, "chats")
        rc, _, err = tpd.run_inproc("--tokenizer", tk, "--in", chats, "--out", data_dir, "--format", "chat")
        expect(rc == 0, "prepare_data --format chat", err)
        manifest = json.load(open(os.path.join(data_dir, "dataset.json")))
        V = manifest["vocab_size"]

        # train: objective sft, packed
        recipe, out = os.path.join(root, "sft.yaml"), os.path.join(root, "run")
        write_recipe(recipe, data_dir, out, V)
        rc, so, err = run("train", "--recipe", recipe)
        expect(rc == 0, "fp4qat train (objective sft, packing) exits 0", err[-2000:])
        losses = [json.loads(line)["loss"] for line in open(os.path.join(out, "metrics.jsonl")) if '"loss"' in line]
        expect(len(losses) == 30 and losses[-1] < 0.7 * losses[0], "the masked loss falls", losses[:3] + losses[-3:])
        expect(os.path.exists(os.path.join(out, "hf", "vocab.bin")), "hf/ carries the id -> bytes table")

        # generate from the dataset's prompts, decoded text beside the ids
        gen = os.path.join(root, "gen.jsonl")
        rc, so, err = run("generate", "--model", os.path.join(out, "hf"), "--prompts", data_dir,
                          "--max-new-tokens", "6", "--out", gen)
        expect(rc == 0, "fp4qat generate --prompts DATASET exits 0", err[-2000:])
        recs = [json.loads(line) for line in open(gen)] if rc == 0 else []
        expect(len(recs) == 24, "one record per conversation", len(recs))
        from transformers import AutoTokenizer
        hf_tok = AutoTokenizer.from_pretrained(tk)
        ok = True
        for i, r in enumerate(recs):
            q, _ = QUESTIONS[i % len(QUESTIONS)]
            want = hf_tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                              add_generation_prompt=True)
            ok = ok and r["prompt_text"] == want and r["prompt"] == hf_tok.encode(want, add_special_tokens=False)
            ok = ok and r["response_text"] == hf_tok.decode(r["response"], skip_special_tokens=False)
        expect(ok and recs, "prompts are the conversations up to the assistant; texts decode the ids")
        expect(len(so.splitlines()) == 24 and "<|im_start|>assistant" in so, "generate prints the decoded text", so[:300])
        # a sequence stops at the dataset's eos_id (dataset.json) by default, at --eos ID when given
        eos = manifest["eos_id"]
        expect(eos is not None and all(eos not in r["response"][:-1] for r in recs),
               "no response goes on past the dataset's eos_id", [r["response"] for r in recs[:4]])
        if recs:
            first = recs[0]["response"][0]
            gen1 = os.path.join(root, "gen1.jsonl")
            rc, _, err = run("generate", "--model", os.path.join(out, "hf"), "--prompts", data_dir,
                             "--max-new-tokens", "6", "--eos", str(first), "--out", gen1)
            r1 = [json.loads(line) for line in open(gen1)] if rc == 0 else []
            expect(rc == 0 and r1 and r1[0]["response"] == [first], "--eos ID stops at that id", err[-500:])
            rc, _, err = run("generate", "--model", os.path.join(out, "hf"), "--prompts", data_dir,
                             "--eos", str(V + 1000), "--out", gen1)
            expect(rc != 0 and "--eos" in err, "an --eos outside the vocabulary is refused", err[-300:])

        seqs = os.path.join(root, "seqs.jsonl")
        tpd.write_jsonl(seqs, [{"tokens": recs[0]["prompt"] + recs[0]["response"]}] if recs else [])
        ev = os.path.join(root, "eval.jsonl")
        nvfp4 = os.path.join(out, "exports", "latest", "nvfp4")
        expect(os.path.exists(os.path.join(nvfp4, "vocab.bin")), "the NVFP4 export carries the id -> bytes table")
        rc, so, err = run("eval", "--model", nvfp4, "--sequences", seqs, "--out", ev,
                          "--synthetic-batches", "0", "--exact-match", "0")
        text = json.loads(open(ev).readline()).get("text") if rc == 0 else None
        expect(rc == 0 and recs and text == recs[0]["prompt_text"] + recs[0]["response_text"],
               "eval of the NVFP4 export writes the decoded text (its folder's vocab.bin)", err[-2000:])

        # the dataset records its tokenizer: a model folder with another tokenizer.json is refused, the
        # model's own accepted
        model2 = os.path.join(root, "model2")
        shutil.copytree(os.path.join(out, "hf"), model2)
        shutil.copy(os.path.join(os.path.dirname(tk), "tk-bos", "tokenizer.json"), model2)
        r3 = os.path.join(root, "init.yaml")
        write_recipe(r3, data_dir, os.path.join(root, "run-init"), V)
        rc, _, err = run("train", "--recipe", r3, "--set", "train.init_from=" + model2)
        expect(rc != 0 and "tokenizer.json" in err and manifest["tokenizer"]["sha256"] in err,
               "a model folder with another tokenizer is refused", err[-500:])
        shutil.copy(os.path.join(tk, "tokenizer.json"), model2)
        rc, _, err = run("train", "--recipe", r3, "--set", "train.init_from=" + model2, "--set", "train.steps=2")
        expect(rc == 0, "the model's own tokenizer is accepted", err[-1000:])

        # bad input: non-zero exit, the file named
        small = os.path.join(root, "small.yaml")
        write_recipe(small, data_dir, os.path.join(root, "run-small"), 100)
        rc, _, err = run("train", "--recipe", small)
        expect(rc != 0 and "dataset.json" in err and str(V) in err and "100" in err,
              "a dataset whose vocabulary exceeds the model's is refused", err[-500:])
        n_docs = manifest["num_documents"]
        for name, dirname, offset, data, needle in (
                ("mask.bin", "bad-mask", 24 + 3, b"\x02", "mask.bin"),
                ("docs.bin", "bad-docs", 24 + 8 * 2, struct.pack("<Q", 1), "docs.bin"),
                ("tokens.bin", "bad-magic", 0, b"XXXXXXXX", "tokens.bin")):
            bad = os.path.join(root, dirname)
            patched_copy(data_dir, bad, name, offset, data)
            r2 = os.path.join(root, dirname + ".yaml")
            write_recipe(r2, bad, os.path.join(root, "run-" + dirname), V)
            rc, _, err = run("train", "--recipe", r2)
            expect(rc != 0 and needle in err and "Traceback" not in err, "refused: " + dirname, err[-500:])
        expect(n_docs == 24, "24 documents", n_docs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return checks.summary()


if __name__ == "__main__":
    sys.exit(main())
