#!/usr/bin/env python3
"""tests/scripts/test_prepare_data.py — scripts/prepare_data end to end, no network, with the venv's
python (tokenizers, transformers). Trains a tiny byte-level BPE tokenizer on text the test writes and
saves it as Hugging Face tokenizer folders (tokenizer.json + tokenizer_config.json with a ChatML chat
template and an EOS): one whose template has no {% generation %} markers (assistant turns found by
rendering prefixes), one whose template has them (transformers' assistant mask), one whose
post-processor adds a BOS. Then:
  * every output file is read back by its documented layout (docs/data-format.md): headers, sizes,
    offsets, the manifest's counts, sources (sizes, sha256), ids within the vocabulary;
  * text / chat / prompt_response round trips: the id -> bytes table and the tokenizer's decode give
    the rendered text back; masked-in tokens decode to exactly the responses / the assistant turns'
    contents with their end-of-turn token; both chat methods give the same masks;
  * determinism: the wrapper (a subprocess) and a second run give byte-identical folders;
  * malformed records (not JSON, not an object, missing or ill-typed keys, empty text, no assistant
    turn, over --max-len) are refused naming file:line, with exit 1 and no output or temporary folder
    left; --skip-bad skips them and reports the count; an existing --out is refused.
Exit 0 = pass; the last line says "N passed, M failed"."""
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.abspath(os.path.join(here, "..", ".."))
wrapper = os.path.join(repo, "scripts", "prepare_data")

sys.path.insert(0, here)
import checks  # noqa: E402 (the shared tally)
from checks import check  # noqa: E402


spec = importlib.util.spec_from_file_location("prepare_data", os.path.join(repo, "scripts", "prepare_data.py"))
pd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pd)


def run_inproc(*args):
    """prepare_data's main() in this process (transformers imported once): (rc, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    rc = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            pd.main(list(args))
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


def run_wrapper(*args):
    env = dict(os.environ, FP4QAT_PYTHON=sys.executable)
    p = subprocess.run([wrapper, *args], capture_output=True, text=True, env=env, timeout=120)
    return p.returncode, p.stdout, p.stderr


# ---- the tokenizer folders -----------------------------------------------------------------------
CORPUS = [
    "Hello world, this is a tiny corpus for a tiny tokenizer.",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "Unicode: caf\u00e9, na\u00efve, \u00fcber, \u65e5\u672c\u8a9e, emoji \U0001F642 and tabs\tand newlines\n.",
    "What is two plus two? Two plus two is four. Thanks, you are welcome!",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# transformers renders templates with trim_blocks (a newline right after a block tag is dropped): the
# newline after {% endgeneration %} is written as an expression.
CHATML_GEN = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
              "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}{{ '\\n' }}"
              "{% else %}{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# Earlier assistant turns rendered differently once later turns follow (as templates that drop past
# reasoning do): not prefix-stable, and without {% generation %} markers its turns cannot be located.
CHATML_UNSTABLE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                   "{% if m['role'] == 'assistant' and not loop.last %}...{% else %}{{ m['content'] }}{% endif %}"
                   "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizers(root):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    dirs = {}
    for name, template in (("plain", CHATML), ("gen", CHATML_GEN), ("unstable", CHATML_UNSTABLE)):
        d = os.path.join(root, "tk-" + name)
        os.makedirs(d)
        tok.save(os.path.join(d, "tokenizer.json"))
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
                       "pad_token": "<|endoftext|>", "chat_template": template}, f)
        dirs[name] = d
    # A BOS from the post-processor (as Llama's tokenizers add one): <|endoftext|> before every sequence.
    bos_id = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos_id)])
    d = os.path.join(root, "tk-bos")
    os.makedirs(d)
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
                   "bos_token": "<|endoftext|>", "chat_template": CHATML}, f)
    dirs["bos"] = d
    # A SentencePiece-style BPE (Llama 2 / Mistral): "\u2581" for spaces, <0xNN> byte fallback, a decoder
    # that strips the leading space.
    sp = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    sp.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    sp.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    sp.train_from_iterator(CORPUS * 20, trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"],
                                                            show_progress=False))
    spec = json.loads(sp.to_str())  # the 256 byte tokens go into the model's vocabulary, as in Llama's
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    sp = Tokenizer.from_str(json.dumps(spec))
    d = os.path.join(root, "tk-sp")
    os.makedirs(d)
    sp.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "bos_token": "<s>"}, f)
    dirs["sp"] = d
    return dirs


# ---- the dataset reader (docs/data-format.md) -------------------------------------------------------
def read_bin(path, magic, widths):
    b = open(path, "rb").read()
    assert len(b) >= 24, "%s: shorter than the header" % path
    assert b[:8] == magic, "%s: magic %r" % (path, b[:8])
    w = int.from_bytes(b[8:12], "little")
    assert w in widths, "%s: width %d" % (path, w)
    assert b[12:16] == b"\0\0\0\0", "%s: reserved bytes" % path
    n = int.from_bytes(b[16:24], "little")
    return b, w, n


def read_dataset(d):
    """Reads and checks a dataset folder by its documented layout; returns (manifest, docs) with
    docs = [(ids, mask)] and the vocab table [(bytes, flag)]."""
    m = json.load(open(os.path.join(d, "dataset.json")))
    assert m["format"] == "fp4qat-dataset" and m["version"] == 1
    b, w, n = read_bin(os.path.join(d, "tokens.bin"), b"FP4QTOK1", (2, 4))
    assert len(b) == 24 + n * w, "tokens.bin size"
    assert w == m["token_bytes"] and m["token_dtype"] == ("uint16" if w == 2 else "uint32")
    assert (w == 2) == (m["vocab_size"] <= 65536)
    ids = [int.from_bytes(b[24 + i * w:24 + (i + 1) * w], "little") for i in range(n)]
    mb, mw, mn = read_bin(os.path.join(d, "mask.bin"), b"FP4QMSK1", (1,))
    assert mn == n and len(mb) == 24 + n, "mask.bin size"
    mask = list(mb[24:])
    assert set(mask) <= {0, 1}
    db, dw, dn = read_bin(os.path.join(d, "docs.bin"), b"FP4QDOC1", (8,))
    assert len(db) == 24 + 8 * dn and dn == m["num_documents"] + 1, "docs.bin size"
    offs = [int.from_bytes(db[24 + 8 * i:32 + 8 * i], "little") for i in range(dn)]
    assert offs[0] == 0 and offs[-1] == n and all(a < b for a, b in zip(offs, offs[1:])), "offsets"
    vb, vw, V = read_bin(os.path.join(d, "vocab.bin"), b"FP4QVOC1", (8,))
    assert V == m["vocab_size"]
    voffs = [int.from_bytes(vb[24 + 8 * i:32 + 8 * i], "little") for i in range(V + 1)]
    flags = vb[24 + 8 * (V + 1):24 + 8 * (V + 1) + V]
    blob = vb[24 + 8 * (V + 1) + V:]
    assert voffs[0] == 0 and voffs[-1] == len(blob) and all(a <= b for a, b in zip(voffs, voffs[1:])), "vocab offsets"
    table = [(blob[voffs[i]:voffs[i + 1]], flags[i]) for i in range(V)]
    assert m["num_tokens"] == n and m["num_loss_tokens"] == sum(mask)
    assert all(t < V for t in ids)
    docs = [(ids[a:b], mask[a:b]) for a, b in zip(offs, offs[1:])]
    assert m["min_document_tokens"] == min(len(x) for x, _ in docs)
    assert m["max_document_tokens"] == max(len(x) for x, _ in docs)
    for s in m["sources"]:
        assert s["bytes"] == os.path.getsize(s["path"])
        assert s["sha256"] == hashlib.sha256(open(s["path"], "rb").read()).hexdigest()
    return m, docs, table


def text_of(table, ids):
    return b"".join(table[i][0] for i in ids).decode("utf-8")


def runs(ids, mask, table):
    """The masked-in runs of a document, as text by the id -> bytes table."""
    out, cur = [], []
    for t, k in zip(ids, mask):
        if k:
            cur.append(t)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return [text_of(table, r) for r in out]


def folder_bytes(d):
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))}


def leftovers(parent):
    return [f for f in os.listdir(parent) if ".tmp-" in f or ".old-" in f]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")


def main():
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as root:
        os.chdir(root)  # relative paths, as a user types them (the manifest records them as given)
        tks = make_tokenizers(root)
        hf = AutoTokenizer.from_pretrained(tks["plain"])
        EOS = "<|im_end|>"

        # 1. text, two input files, read in order
        texts1 = [CORPUS[0], CORPUS[2], "  leading spaces and a trailing newline\n", "unseen: \u03a9 \u2713"]
        texts2 = [CORPUS[1] + " " + CORPUS[3]]
        write_jsonl("t1.jsonl", [{"text": t, "id": i} for i, t in enumerate(texts1)] + [""])  # a blank line
        write_jsonl("t2.jsonl", [{"text": t} for t in texts2])
        rc, out, err = run_wrapper("--tokenizer", "tk-plain", "--in", "t1.jsonl,t2.jsonl", "--out", "ds-text",
                                   "--format", "text")
        check(rc == 0, "text: scripts/prepare_data exits 0" + ("" if rc == 0 else " (%s)" % err.strip()[-400:]))
        check("[prepare_data]" in err and "100.0%" in err, "text: a progress line on stderr")
        m, docs, table = read_dataset("ds-text")
        check(m["num_documents"] == 5 and m["input_format"] == "text", "text: 5 documents, input_format text")
        check([s["path"] for s in m["sources"]] == ["t1.jsonl", "t2.jsonl"]
              and [s["documents"] for s in m["sources"]] == [4, 1], "text: sources in order with their counts")
        check(m["tokenizer"]["sha256"] == hashlib.sha256(open("tk-plain/tokenizer.json", "rb").read()).hexdigest(),
              "text: manifest has the sha256 of tokenizer.json")
        check(m["eos_id"] == hf.eos_token_id and m["pad_id"] == hf.pad_token_id and m["bos_id"] is None,
              "text: eos/pad/bos ids recorded")
        check(m["vocab_size"] == len(hf) and m["token_dtype"] == "uint16", "text: vocab size, uint16 ids")
        check(m["tokenizer"]["vocab_bytes"] == "byte_level", "text: byte-level id -> bytes table")
        check(all(table[i][1] == 1 for i in hf.all_special_ids) and sum(1 for _, f in table if f) == 3,
              "vocab.bin: exactly the special tokens flagged special")
        want = [t + EOS for t in texts1 + texts2]
        check([text_of(table, ids) for ids, _ in docs] == want, "text: id -> bytes table gives text + EOS back")
        check([hf.decode(ids, skip_special_tokens=False) for ids, _ in docs] == want,
              "text: the tokenizer's decode gives text + EOS back")
        check(all(ids[-1] == hf.eos_token_id and all(mask) for ids, mask in docs), "text: EOS last, loss on all tokens")
        check(all(ids[:-1] == hf(t, add_special_tokens=False)["input_ids"] for (ids, _), t in zip(docs, texts1 + texts2)),
              "text: ids are the tokenizer's own encoding")

        # 2. determinism: the same command again (in this process) gives byte-identical files
        rc, out, err = run_inproc("--tokenizer", "tk-plain", "--in", "t1.jsonl,t2.jsonl", "--out", "ds-text2",
                                  "--format", "text")
        check(rc == 0 and folder_bytes("ds-text") == folder_bytes("ds-text2"),
              "determinism: two runs give byte-identical folders (%d files)" % len(folder_bytes("ds-text")))
        check(oct(os.stat("ds-text").st_mode & 0o777) != "0o700", "output folder has the umask's mode, not mkdtemp's")

        # 3. chat: prefix rendering (template without generation markers) and transformers' mask agree
        convs = [
            [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Two plus two is four."}],
            [{"role": "system", "content": "You are a tiny fox."}, {"role": "user", "content": "Hello \U0001F642"},
             {"role": "assistant", "content": "Hello world, caf\u00e9!"}, {"role": "user", "content": "Thanks"},
             {"role": "assistant", "content": "You are welcome!\n"}],
            [{"role": "assistant", "content": "I speak first."}, {"role": "user", "content": "ok"}],
        ]
        write_jsonl("c1.jsonl", [{"messages": convs[0]}])
        write_jsonl("c2.jsonl", [{"messages": c, "meta": {"k": 1}} for c in convs[1:]])
        results = {}
        for name in ("plain", "gen"):
            rc, out, err = run_inproc("--tokenizer", "tk-" + name, "--in", "c1.jsonl,c2.jsonl", "--out", "ds-chat-" + name,
                                      "--format", "chat")
            check(rc == 0, "chat (%s template) exits 0" % name + ("" if rc == 0 else " (%s)" % err.strip()[-400:]))
            results[name] = read_dataset("ds-chat-" + name)
        m, docs, table = results["plain"]
        check(m["chat_mask_method"] == "prefix_render" and results["gen"][0]["chat_mask_method"] == "generation_block",
              "chat: the method recorded (prefix_render / generation_block)")
        rendered = [hf.apply_chat_template(c, tokenize=False) for c in convs]
        check([text_of(table, ids) for ids, _ in docs] == rendered, "chat: id -> bytes table gives the rendered template back")
        check([hf.decode(ids, skip_special_tokens=False) for ids, _ in docs] == rendered,
              "chat: the tokenizer's decode gives the rendered template back")
        want_runs = [[m_["content"] + EOS for m_ in c if m_["role"] == "assistant"] for c in convs]
        got_runs = [runs(ids, mask, table) for ids, mask in docs]
        check(got_runs == want_runs, "chat (prefix rendering): masked-in tokens are exactly each assistant turn + <|im_end|>")
        if got_runs != want_runs:
            print("      got %r\n      want %r" % (got_runs, want_runs))
        mg, docs_g, _ = results["gen"]
        check([d[0] for d in docs_g] == [d[0] for d in docs] and [d[1] for d in docs_g] == [d[1] for d in docs],
              "chat: {% generation %} mask (transformers) equals the prefix-rendering mask, same ids")
        if [d[1] for d in docs_g] != [d[1] for d in docs]:
            print("      generation_block runs: %r" % [runs(ids, mask, table) for ids, mask in docs_g])

        rc, out, err = run_inproc("--tokenizer", "tk-unstable", "--in", "c2.jsonl", "--out", "ds-chat-unstable",
                                  "--format", "chat")
        check(rc == 1 and "c2.jsonl:1: the chat template does not render this conversation prefix-stably at messages[2]"
              in err and not os.path.exists("ds-chat-unstable") and not leftovers(root),
              "chat: a template that is not prefix-stable (and has no {% generation %}) is refused naming c2.jsonl:1")
        write_jsonl("c3.jsonl", [{"messages": convs[0]}])
        rc, out, err = run_inproc("--tokenizer", "tk-unstable", "--in", "c3.jsonl", "--out", "ds-chat-unstable",
                                  "--format", "chat")
        check(rc == 0 and runs(*read_dataset("ds-chat-unstable")[1][0], table) == [want_runs[0][0]],
              "chat: ... while its single-turn conversations are prepared")

        # 4. prompt_response, with a tokenizer that adds a BOS
        pr = [{"prompt": "What is two plus two? ", "response": "Two plus two is four."},
              {"prompt": "", "response": "Hello world \U0001F642"}]
        write_jsonl("p.jsonl", pr)
        for name in ("plain", "bos"):
            rc, out, err = run_inproc("--tokenizer", "tk-" + name, "--in", "p.jsonl", "--out", "ds-pr-" + name,
                                      "--format", "prompt_response")
            check(rc == 0, "prompt_response (%s) exits 0" % name + ("" if rc == 0 else " (%s)" % err.strip()[-400:]))
            m, docs, table = read_dataset("ds-pr-" + name)
            bos = "<|endoftext|>" if name == "bos" else ""
            check([text_of(table, ids) for ids, _ in docs] == [bos + r["prompt"] + r["response"] + EOS for r in pr],
                  "prompt_response (%s): ids give BOS? + prompt + response + EOS back" % name)
            check([runs(ids, mask, table) for ids, mask in docs] == [[r["response"] + EOS] for r in pr],
                  "prompt_response (%s): masked-in tokens are exactly response + EOS" % name)
            check(all(ids[mask.index(1):] == hf(r["response"], add_special_tokens=False)["input_ids"] + [hf.eos_token_id]
                      for (ids, mask), r in zip(docs, pr)), "prompt_response (%s): the response tokenized on its own" % name)
            if name == "bos":
                check(m["bos_id"] == 0 and all(ids[0] == 0 and mask[0] == 0 for ids, mask in docs)
                      and m["tokenizer"]["special_ids_added_around_text"] == {"before": [0], "after": []},
                      "prompt_response (bos): the post-processor's BOS first, masked out, recorded")
        rc, out, err = run_inproc("--tokenizer", "tk-bos", "--in", "t2.jsonl", "--out", "ds-text-bos", "--format", "text")
        m, docs, table = read_dataset("ds-text-bos")
        check(rc == 0 and text_of(table, docs[0][0]) == "<|endoftext|>" + texts2[0] + EOS,
              "text (bos): BOS + text + EOS")

        rc, out, err = run_inproc("--tokenizer", "tk-sp", "--in", "t1.jsonl", "--out", "ds-text-sp", "--format", "text")
        m, docs, table = read_dataset("ds-text-sp")
        hf_sp = AutoTokenizer.from_pretrained(tks["sp"])
        check(rc == 0 and m["tokenizer"]["vocab_bytes"] == "sentencepiece" and m["tokenizer"]["decode_strips_leading_space"]
              and [text_of(table, ids)[1:] for ids, _ in docs] == [hf_sp.decode(ids) for ids, _ in docs]
              == [t + "</s>" for t in texts1], "text (SentencePiece-style BPE, byte fallback): the table gives the text back")
        check(any(t in ids for ids, _ in docs for t in (hf_sp.convert_tokens_to_ids("<0xCE>"),)),
              "text (SentencePiece-style BPE): an unseen character went through byte fallback")

        # 5. malformed records: refused naming file:line, exit 1, nothing left behind
        good = {"text": "Hello world"}
        cases = [
            ("text", ["not json at all"], "not JSON"),
            ("text", ['[1, 2]'], "a record must be a JSON object"),
            ("text", [{"txt": "x"}], 'missing key "text"'),
            ("text", [{"text": 3}], '"text" must be a string'),
            ("text", [{"text": "  "}], '"text" is empty'),
            ("prompt_response", [{"prompt": "a"}], 'missing key "response"'),
            ("prompt_response", [{"prompt": ["a"], "response": "b"}], '"prompt" must be a string'),
            ("chat", [{"messages": "hi"}], '"messages" must be an array'),
            ("chat", [{"messages": [{"role": "user", "content": "hi"}]}], "no assistant message"),
            ("chat", [{"messages": [{"role": "assistant"}]}], 'messages[0]: missing key "content"'),
        ]
        for fmt, bad_rows, reason in cases:
            first = good if fmt == "text" else ({"prompt": "a", "response": "b"} if fmt == "prompt_response"
                                                 else {"messages": convs[0]})
            write_jsonl("bad.jsonl", [first, "", bad_rows[0]])  # the bad record on line 3
            rc, out, err = run_inproc("--tokenizer", "tk-plain", "--in", "bad.jsonl", "--out", "ds-bad", "--format", fmt)
            check(rc == 1 and "bad.jsonl:3: " + reason in err and not os.path.exists("ds-bad") and not leftovers(root),
                  "refused (%s): bad.jsonl:3: %s; exit 1, no folder left" % (fmt, reason)
                  + ("" if rc == 1 else " (rc %d, %s)" % (rc, err.strip()[-300:])))
        with open("bad.jsonl", "wb") as f:
            f.write(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
        rc, out, err = run_inproc("--tokenizer", "tk-plain", "--in", "bad.jsonl", "--out", "ds-bad", "--format", "text")
        check(rc == 1 and "bad.jsonl:2: not UTF-8" in err and not os.path.exists("ds-bad"), "refused: invalid UTF-8 at bad.jsonl:2")
        rc, out, err = run_wrapper("--tokenizer", "tk-plain", "--in", "t1.jsonl", "--out", "ds-bad", "--format", "text",
                                   "--max-len", "5")
        check(rc == 1 and "t1.jsonl:1: " in err and "more than --max-len 5" in err and "Traceback" not in err
              and not os.path.exists("ds-bad") and not leftovers(root),
              "refused: a document over --max-len names t1.jsonl:1 (wrapper: exit 1, one line)")
        rc, out, err = run_inproc("--tokenizer", "tk-plain", "--in", "t1.jsonl", "--out", "ds-text", "--format", "text")
        check(rc == 1 and "exists" in err, "an existing --out is refused")
        rc, out, err = run_inproc("--tokenizer", "tk-plain", "--in", "t2.jsonl", "--out", "ds-text", "--format", "text",
                                  "--overwrite")
        check(rc == 0 and read_dataset("ds-text")[0]["num_documents"] == 1 and not leftovers(root),
              "--overwrite replaces an existing folder")
        rc, out, err = run_inproc("--tokenizer", "tk-plain", "--in", "t1.jsonl", "--out", "ds-x", "--format", "chat")
        check(rc == 1 and "t1.jsonl:1: " in err and not os.path.exists("ds-x"), "text records given as chat are refused")

        # 6. --skip-bad: the bad records skipped and counted
        write_jsonl("mixed.jsonl", [good, "{broken", {"text": ""}, {"text": "fine too"}, {"nope": 1}, ""])
        rc, out, err = run_inproc("--tokenizer", "tk-plain", "--in", "mixed.jsonl", "--out", "ds-skip", "--format", "text",
                                  "--skip-bad")
        check(rc == 0 and "3 bad records skipped" in out, "--skip-bad: exit 0, reports 3 skipped")
        check(all("mixed.jsonl:%d" % n in err for n in (2, 3, 5)), "--skip-bad: names each skipped line on stderr")
        m, docs, table = read_dataset("ds-skip")
        check(m["skipped_records"] == 3 and m["sources"][0]["skipped"] == 3 and m["num_documents"] == 2
              and [text_of(table, d[0]) for d in docs] == ["Hello world" + EOS, "fine too" + EOS],
              "--skip-bad: manifest counts 3 skipped, the 2 good documents kept in order")
        write_jsonl("allbad.jsonl", ["{broken"])
        rc, out, err = run_inproc("--tokenizer", "tk-plain", "--in", "allbad.jsonl", "--out", "ds-none", "--format", "text",
                                  "--skip-bad")
        check(rc == 1 and "no documents" in err and not os.path.exists("ds-none") and not leftovers(root),
              "--skip-bad with nothing left: refused, nothing written")

    return checks.summary()


if __name__ == "__main__":
    sys.exit(main())
