"""scripts/prepare_data.py — JSON Lines -> an fp4qat indexed dataset, with the model's own tokenizer.

Run through scripts/prepare_data (the venv's python). The output folder's format is specified in
docs/data-format.md; in short:
  tokens.bin    token ids (uint16 when the vocabulary has <= 65536 ids, else uint32), little-endian
  mask.bin      one uint8 a token: 1 = the token is a loss target, 0 = context only
  docs.bin      uint64 document offsets into tokens.bin, N_docs + 1 of them (0 first, N_tokens last)
  vocab.bin     the tokenizer's id -> bytes table (decoding in C++ without Python)
  dataset.json  the manifest: version, counts, token width, vocabulary, tokenizer hash, ids, sources
Each .bin file starts with the 24-byte header of the flat token files (trainer/data.h): 8 bytes of
magic, uint32 element width, uint32 0, uint64 element count.

Input formats (one JSON object a line; blank lines are ignored; other keys are ignored):
  text             {"text": str}: loss on every token; the tokenizer's own special tokens around it
                   (its post-processor, e.g. a BOS) and its EOS appended unless already last.
  chat             {"messages": [{"role": str, "content": str, ...}, ...]}: rendered with the
                   tokenizer's chat template; loss on the assistant turns only.
  prompt_response  {"prompt": str, "response": str}: prompt and response tokenized separately and
                   concatenated (no template), EOS appended; loss on the response and the EOS.

Exit status: 0 done; 1 an error (bad record, unreadable input, tokenizer problem), nothing written;
2 usage error.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time

FORMAT_VERSION = 1
HEADER = 24
MAGIC = {"tokens": b"FP4QTOK1", "mask": b"FP4QMSK1", "docs": b"FP4QDOC1", "vocab": b"FP4QVOC1"}
FILES = {"tokens": "tokens.bin", "mask": "mask.bin", "docs": "docs.bin", "vocab": "vocab.bin"}
# vocab.bin per-id flags
FLAG_SPECIAL, FLAG_ADDED, FLAG_UNUSED = 1, 2, 4
BATCH_RECORDS = 1024           # records tokenized together (encode_batch is parallel and ordered)
BATCH_BYTES = 16 << 20         # ... or this many input bytes, whichever comes first
SHOW_SKIPPED = 20              # --skip-bad: reasons printed for the first this many
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")

PROG = "prepare_data"


class Fatal(Exception):
    """An error that stops the run: printed as one line, exit 1."""


class BadRecord(Exception):
    """A record that cannot be used; refused (exit 1) or, with --skip-bad, skipped and counted."""


def die(msg, code=1):
    sys.stderr.write("%s: error: %s\n" % (PROG, msg))
    sys.exit(code)


# ---- the tokenizer ------------------------------------------------------------------------------
def bytes_to_unicode():
    """GPT-2's byte -> printable character map that byte-level BPE vocabularies are written in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _decoder_steps(d):
    if not d:
        return []
    if d.get("type") == "Sequence":
        out = []
        for x in d.get("decoders", []):
            out += _decoder_steps(x)
        return out
    return [d]


class Tok:
    """The model's tokenizer as transformers loads it, plus what the dataset records about it."""

    def __init__(self, model_dir, need_chat):
        tj = os.path.join(model_dir, "tokenizer.json")
        if not os.path.isdir(model_dir):
            raise Fatal("%s: not a folder (--tokenizer takes a model or tokenizer folder)" % model_dir)
        if not os.path.isfile(tj):
            raise Fatal("%s: no tokenizer.json (a fast Hugging Face tokenizer is needed; its hash identifies "
                        "the dataset's tokenizer)" % model_dir)
        self.dir = model_dir
        self.sha256 = sha256_file(tj)
        tc = os.path.join(model_dir, "tokenizer_config.json")
        self.config_sha256 = sha256_file(tc) if os.path.isfile(tc) else None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never the network
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        try:
            import transformers
            from transformers import AutoTokenizer
        except ImportError as e:
            raise Fatal("transformers is not importable from %s (%s); run scripts/setup" % (sys.executable, e))
        transformers.logging.set_verbosity_error()
        try:
            self.hf = AutoTokenizer.from_pretrained(model_dir)
        except Exception as e:  # noqa: BLE001 - any loader failure is reported as one line
            raise Fatal("%s: cannot load the tokenizer: %s" % (model_dir, one_line(e)))
        self.backend = getattr(self.hf, "backend_tokenizer", None)
        if self.backend is None:
            raise Fatal("%s: transformers did not load a fast (tokenizers) tokenizer" % model_dir)
        vocab = self.backend.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0
        self.width = 2 if self.vocab_size <= 65536 else 4
        self.added = {i: t for i, t in self.hf.added_tokens_decoder.items()}
        self.bos_id, self.eos_id, self.pad_id = self.hf.bos_token_id, self.hf.eos_token_id, self.hf.pad_token_id
        self.chat_template = None
        if need_chat:
            t = self.hf.chat_template
            if isinstance(t, dict):  # named templates: the default one
                t = t.get("default")
            if not isinstance(t, str) or not t:
                raise Fatal("%s: the tokenizer has no chat template (--format chat renders messages with it)"
                            % model_dir)
            self.chat_template = t
        # The special tokens the tokenizer's post-processor puts around a sequence (a BOS, ...).
        with_sp = self.backend.encode("a", add_special_tokens=True).ids
        without = self.backend.encode("a", add_special_tokens=False).ids
        k = next((i for i in range(len(with_sp) - len(without) + 1) if with_sp[i:i + len(without)] == without), None)
        if k is None:
            raise Fatal("%s: cannot tell which special tokens the tokenizer adds around a sequence" % model_dir)
        self.prefix, self.suffix = with_sp[:k], with_sp[k + len(without):]
        self._build_vocab_bytes()

    def _build_vocab_bytes(self):
        spec = json.loads(self.backend.to_str())
        steps = _decoder_steps(spec.get("decoder"))
        types = [s.get("type") for s in steps]
        self.strip_leading_space = any(s.get("type") == "Strip" and s.get("start", 0) > 0 for s in steps) or any(
            s.get("type") == "Metaspace" and s.get("prepend_scheme", "always") != "never" for s in steps)
        if "ByteLevel" in types:
            self.vocab_method = "byte_level"
            self.strip_leading_space = False
            dec = {c: b for b, c in bytes_to_unicode().items()}
        elif "ByteFallback" in types or "Metaspace" in types or any(
                s.get("type") == "Replace" and "\u2581" in json.dumps(s.get("pattern")) for s in steps):
            self.vocab_method = "sentencepiece"
        else:
            self.vocab_method = "per_token_decode"
            self.strip_leading_space = False
        byte_fallback = self.vocab_method == "sentencepiece" and "ByteFallback" in types
        table, flags = [], []
        for i in range(self.vocab_size):
            s = self.backend.id_to_token(i)
            if byte_fallback and s is not None and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", s):
                table.append(bytes([int(s[3:5], 16)]))  # a byte token (also when declared an added token)
                flags.append(0)
                continue
            if i in self.added:
                a = self.added[i]
                table.append(a.content.encode("utf-8"))
                flags.append(FLAG_SPECIAL if a.special else FLAG_ADDED)
                continue
            if s is None:
                table.append(b"")
                flags.append(FLAG_UNUSED)
                continue
            flags.append(0)
            if self.vocab_method == "byte_level" and all(c in dec for c in s):
                table.append(bytes(dec[c] for c in s))
            elif self.vocab_method == "sentencepiece":
                table.append(s.replace("\u2581", " ").encode("utf-8"))
            elif self.vocab_method == "byte_level":  # a model token outside the byte alphabet
                table.append(s.encode("utf-8"))
            else:
                table.append(self.backend.decode([i], skip_special_tokens=False).encode("utf-8"))
        self.token_bytes, self.token_flags = table, flags

    def concat_bytes(self, ids):
        return b"".join(self.token_bytes[i] for i in ids)


def one_line(e):
    s = str(e).strip().replace("\n", " ")
    return s if s else type(e).__name__


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- records --------------------------------------------------------------------------------------
def need_str(rec, key, nonempty=True):
    if key not in rec:
        raise BadRecord('missing key "%s"' % key)
    v = rec[key]
    if not isinstance(v, str):
        raise BadRecord('"%s" must be a string, got %s' % (key, json_type(v)))
    if nonempty and not v.strip():
        raise BadRecord('"%s" is empty' % key)
    check_unicode(v, key)
    return v


def check_unicode(v, what):
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRecord('"%s" is not valid Unicode (a lone surrogate escape)' % what)


def json_type(v):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number")


def parse_line(raw, first):
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord("not UTF-8 (byte %d)" % e.start)
    if first and s.startswith("\ufeff"):
        s = s[1:]
    if not s.strip():
        return None
    try:
        rec = json.loads(s)
    except ValueError as e:
        raise BadRecord("not JSON: %s" % one_line(e))
    if not isinstance(rec, dict):
        raise BadRecord("a record must be a JSON object, got %s" % json_type(rec))
    return rec


def check_messages(rec):
    if "messages" not in rec:
        raise BadRecord('missing key "messages"')
    msgs = rec["messages"]
    if not isinstance(msgs, list):
        raise BadRecord('"messages" must be an array, got %s' % json_type(msgs))
    if not msgs:
        raise BadRecord('"messages" is empty')
    for j, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise BadRecord("messages[%d] must be an object, got %s" % (j, json_type(m)))
        for key in ("role", "content"):
            if key not in m:
                raise BadRecord('messages[%d]: missing key "%s"' % (j, key))
            if not isinstance(m[key], str):
                raise BadRecord('messages[%d].%s must be a string, got %s' % (j, key, json_type(m[key])))
            check_unicode(m[key], "messages[%d].%s" % (j, key))
    if not any(m["role"] == "assistant" for m in msgs):
        raise BadRecord("no assistant message (nothing to train on)")
    return msgs


# ---- the three formats: a batch of records -> (ids, mask) per record, or a BadRecord ----------------
class Preparer:
    def __init__(self, tok, fmt):
        self.tok, self.fmt = tok, fmt
        self.chat_method = None
        if fmt == "chat":
            self.chat_method = "generation_block" if GENERATION_TAG.search(tok.chat_template) else "prefix_render"

    def batch(self, recs):
        """recs: parsed records; returns a list of (ids, mask) or BadRecord, in order."""
        if self.fmt == "text":
            return self._text(recs)
        if self.fmt == "prompt_response":
            return self._prompt_response(recs)
        return [self._chat_one(r) for r in recs]

    def _encode(self, strings):
        return [e.ids for e in self.tok.backend.encode_batch(strings, add_special_tokens=False)] if strings else []

    def _text(self, recs):
        out, texts, where = [], [], []
        for r in recs:
            try:
                texts.append(need_str(r, "text"))
                where.append(len(out))
                out.append(None)
            except BadRecord as e:
                out.append(e)
        eos = self.tok.eos_id
        for k, ids in zip(where, self._encode(texts)):
            ids = self.tok.prefix + ids + self.tok.suffix
            if eos is not None and ids[-1:] != [eos]:
                ids.append(eos)
            out[k] = (ids, [1] * len(ids))
        return out

    def _prompt_response(self, recs):
        out, strs, where = [], [], []
        for r in recs:
            try:
                p, q = need_str(r, "prompt", nonempty=False), need_str(r, "response")
                strs += [p, q]
                where.append(len(out))
                out.append(None)
            except BadRecord as e:
                out.append(e)
        enc = self._encode(strs)
        eos = self.tok.eos_id
        for n, k in enumerate(where):
            p = self.tok.prefix + enc[2 * n]
            q = enc[2 * n + 1] + self.tok.suffix
            if eos is not None and q[-1:] != [eos]:
                q.append(eos)
            out[k] = (p + q, [0] * len(p) + [1] * len(q))
        return out

    def _render(self, msgs, add_generation_prompt):
        try:
            return self.tok.hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as e:  # noqa: BLE001 - a template error (raise_exception, bad role, ...) names the record
            raise BadRecord("chat template: %s" % one_line(e))

    def _chat_one(self, rec):
        try:
            msgs = check_messages(rec)
            if self.chat_method == "generation_block":
                ids, mask = self._chat_generation(msgs)
            else:
                ids, mask = self._chat_prefix(msgs)
            if not any(mask):
                raise BadRecord("the assistant turns hold no token")
            return ids, mask
        except BadRecord as e:
            return e

    def _chat_generation(self, msgs):
        """The template marks assistant output with {% generation %}: transformers' own mask."""
        try:
            r = self.tok.hf.apply_chat_template(msgs, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
        except Exception as e:  # noqa: BLE001
            raise BadRecord("chat template: %s" % one_line(e))
        return list(r["input_ids"]), [int(x) for x in r["assistant_masks"]]

    def _chat_prefix(self, msgs):
        """Assistant turn k spans the text between render(messages[:k], add_generation_prompt) and
        render(messages[:k+1]) (trailing whitespace left out), both prefixes of the whole rendering.
        Tokens are placed in the rendered text's UTF-8 bytes by the id -> bytes table; a token is
        masked in when its first byte lies in a span."""
        full = self._render(msgs, False)
        spans = []
        for k, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            p = self._render(msgs[:k], True) if k else self._render_empty_prefix()
            q = self._render(msgs[:k + 1], False)
            if not (q.startswith(p) and full.startswith(q)):
                raise BadRecord("the chat template does not render this conversation prefix-stably at messages[%d] "
                                "(an earlier turn renders differently once later turns follow), so its assistant "
                                "turns cannot be located; a template with {%% generation %%} markers can" % k)
            end = len(q.rstrip())
            if end > len(p):
                spans.append((len(p.encode("utf-8")), len(q[:end].encode("utf-8"))))
        ids = self._encode([full])[0]
        fb = full.encode("utf-8")
        starts = []
        if self.tok.concat_bytes(ids) == fb:
            pos = 0
            for i in ids:
                starts.append(pos)
                pos += len(self.tok.token_bytes[i])
        else:  # not a byte-exact table (e.g. a normalizer): the tokenizer's character offsets
            enc = self.tok.backend.encode(full, add_special_tokens=False)
            starts = [len(full[:a].encode("utf-8")) for a, _ in enc.offsets]
        mask = [1 if any(a <= s < b for a, b in spans) else 0 for s in starts]
        return ids, mask

    def _render_empty_prefix(self):
        # The assistant speaks first: the generation prompt of an empty conversation, rendered by
        # transformers' own template renderer (apply_chat_template refuses an empty list). A template
        # that cannot render one gives "" (the whole first turn is then the span).
        try:
            from transformers.utils.chat_template_utils import render_jinja_template

            rendered, _ = render_jinja_template(conversations=[[]], chat_template=self.tok.chat_template,
                                                add_generation_prompt=True, **self.tok.hf.special_tokens_map)
            return rendered[0]
        except Exception:  # noqa: BLE001
            return ""


# ---- output ---------------------------------------------------------------------------------------
def header(kind, width, count):
    return MAGIC[kind] + width.to_bytes(4, "little") + (0).to_bytes(4, "little") + count.to_bytes(8, "little")


class Writer:
    """tokens.bin, mask.bin, docs.bin written as documents come; counts patched into the headers at the end."""

    def __init__(self, folder, width, vocab_size):
        import numpy as np  # the torch venv has it

        self.np = np
        self.width, self.vocab_size = width, vocab_size
        self.dtype = np.dtype("<u2" if width == 2 else "<u4")
        self.f = {k: open(os.path.join(folder, FILES[k]), "wb") for k in ("tokens", "mask", "docs")}
        for k, w in (("tokens", width), ("mask", 1), ("docs", 8)):
            self.f[k].write(header(k, w, 0))
        self.n_tokens = self.n_docs = self.n_loss = 0
        self.min_len = self.max_len = None
        self.f["docs"].write((0).to_bytes(8, "little"))

    def add(self, ids, mask):
        """Appends one document; False (nothing written) when an id is outside the vocabulary."""
        np = self.np
        a = np.asarray(ids, dtype=np.int64)
        if a.size and (a.min() < 0 or a.max() >= self.vocab_size):
            return False
        m = np.asarray(mask, dtype=np.uint8)
        self.f["tokens"].write(a.astype(self.dtype).tobytes())
        self.f["mask"].write(m.tobytes())
        self.n_tokens += len(ids)
        self.n_loss += int(m.sum(dtype=np.int64))
        self.n_docs += 1
        self.f["docs"].write(self.n_tokens.to_bytes(8, "little"))
        self.min_len = len(ids) if self.min_len is None else min(self.min_len, len(ids))
        self.max_len = len(ids) if self.max_len is None else max(self.max_len, len(ids))
        return True

    def close(self):
        for k, w, n in (("tokens", self.width, self.n_tokens), ("mask", 1, self.n_tokens),
                        ("docs", 8, self.n_docs + 1)):
            f = self.f[k]
            f.seek(0)
            f.write(header(k, w, n))
            f.flush()
            os.fsync(f.fileno())
            f.close()


def write_vocab(path, tok):
    offs, pos = [], 0
    for b in tok.token_bytes:
        offs.append(pos)
        pos += len(b)
    offs.append(pos)
    with open(path, "wb") as f:
        f.write(header("vocab", 8, tok.vocab_size))
        f.write(b"".join(o.to_bytes(8, "little") for o in offs))
        f.write(bytes(tok.token_flags))
        f.write(b"".join(tok.token_bytes))
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Progress:
    """Bytes read / total on stderr: redrawn in place on a terminal, a line every 30 s otherwise."""

    def __init__(self, total):
        self.total = max(total, 1)
        self.t0 = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.every = 0.25 if self.tty else 30.0

    def show(self, done, docs, tokens, final=False):
        now = time.monotonic()
        if not final and now - self.last < self.every:
            return
        self.last = now
        el = max(now - self.t0, 1e-9)
        line = "[%s] %5.1f%%  %s / %s  %d docs  %d tokens  %s/s" % (
            PROG, 100.0 * done / self.total, human(done), human(self.total), docs, tokens, human(done / el))
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def human(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1000.0


# ---- the run ----------------------------------------------------------------------------------
def prepare(args, inputs, tmp):
    tok = Tok(args.tokenizer, args.format == "chat")
    prep = Preparer(tok, args.format)
    total = sum(os.path.getsize(p) for p in inputs)
    prog = Progress(total)
    w = Writer(tmp, tok.width, tok.vocab_size)
    sources, skipped, done = [], 0, 0

    def flush(batch):
        results = prep.batch([r for _, _, r in batch])
        for (src, line, _), res in zip(batch, results):
            if not isinstance(res, BadRecord):
                ids, mask = res
                if args.max_len is not None and len(ids) > args.max_len:
                    res = BadRecord("%d tokens, more than --max-len %d" % (len(ids), args.max_len))
            if isinstance(res, BadRecord):
                bad(src, line, res)
                continue
            if not w.add(*res):
                raise Fatal("%s:%d: a token id beyond the vocabulary (%d ids)" % (src["path"], line, tok.vocab_size))
            src["documents"] += 1

    def bad(src, line, e):
        nonlocal skipped
        if not args.skip_bad:
            raise Fatal("%s:%d: %s (--skip-bad skips such records)" % (src["path"], line, e))
        skipped += 1
        src["skipped"] += 1
        if skipped <= SHOW_SKIPPED:
            sys.stderr.write("%s%s: skipped %s:%d: %s\n" % ("\n" if prog.tty else "", PROG, src["path"], line, e))

    for path in inputs:
        src = {"path": path, "bytes": os.path.getsize(path), "sha256": None, "documents": 0, "skipped": 0}
        sources.append(src)
        h = hashlib.sha256()
        batch, batch_bytes = [], 0
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                h.update(raw)
                done += len(raw)
                try:
                    rec = parse_line(raw, line_no == 1)
                except BadRecord as e:
                    bad(src, line_no, e)
                    rec = None
                if rec is not None:
                    batch.append((src, line_no, rec))
                    batch_bytes += len(raw)
                if len(batch) >= BATCH_RECORDS or batch_bytes >= BATCH_BYTES:
                    flush(batch)
                    batch, batch_bytes = [], 0
                    prog.show(done, w.n_docs, w.n_tokens)
            flush(batch)
        src["sha256"] = h.hexdigest()
        prog.show(done, w.n_docs, w.n_tokens)
    prog.show(done, w.n_docs, w.n_tokens, final=True)
    if w.n_docs == 0:
        raise Fatal("no documents in %s%s" % (", ".join(inputs), " (%d records skipped)" % skipped if skipped else ""))
    w.close()
    write_vocab(os.path.join(tmp, FILES["vocab"]), tok)
    ids_of = lambda s: s if s is None else int(s)  # noqa: E731
    manifest = {
        "format": "fp4qat-dataset",
        "version": FORMAT_VERSION,
        "input_format": args.format,
        "num_documents": w.n_docs,
        "num_tokens": w.n_tokens,
        "num_loss_tokens": w.n_loss,
        "min_document_tokens": w.min_len,
        "max_document_tokens": w.max_len,
        "token_bytes": tok.width,
        "token_dtype": "uint16" if tok.width == 2 else "uint32",
        "vocab_size": tok.vocab_size,
        "bos_id": ids_of(tok.bos_id),
        "eos_id": ids_of(tok.eos_id),
        "pad_id": ids_of(tok.pad_id),
        "files": dict(FILES),
        "tokenizer": {
            "path": args.tokenizer,
            "sha256": tok.sha256,
            "tokenizer_config_sha256": tok.config_sha256,
            "chat_template_sha256": hashlib.sha256(tok.chat_template.encode("utf-8")).hexdigest()
            if tok.chat_template else None,
            "special_ids_added_around_text": {"before": tok.prefix, "after": tok.suffix},
            "vocab_bytes": tok.vocab_method,
            "decode_strips_leading_space": tok.strip_leading_space,
        },
        "chat_mask_method": prep.chat_method,
        "max_len": args.max_len,
        "skipped_records": skipped,
        "sources": sources,
        "created_by": "scripts/prepare_data",
    }
    with open(os.path.join(tmp, "dataset.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it 0700
    fsync_dir(tmp)
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="scripts/prepare_data",
        description="Tokenize JSON Lines with a model's own tokenizer into an fp4qat indexed dataset "
                    "(docs/data-format.md).")
    ap.add_argument("--tokenizer", required=True, metavar="MODEL_DIR",
                    help="a Hugging Face model or tokenizer folder (tokenizer.json, tokenizer_config.json)")
    ap.add_argument("--in", dest="inputs", required=True, metavar="FILE.jsonl[,FILE2.jsonl...]",
                    help="input JSON Lines files, read in this order")
    ap.add_argument("--out", required=True, metavar="DIR", help="the dataset folder to write (must not exist)")
    ap.add_argument("--format", required=True, choices=("text", "chat", "prompt_response"))
    ap.add_argument("--skip-bad", action="store_true", help="skip bad records (counted) instead of failing")
    ap.add_argument("--max-len", type=int, default=None, metavar="N",
                    help="a document of more than N tokens is a bad record")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = ap.parse_args(argv)
    if args.max_len is not None and args.max_len < 1:
        ap.error("--max-len must be >= 1")
    inputs = [p for p in args.inputs.split(",") if p]
    if not inputs:
        ap.error("--in names no file")
    for p in inputs:
        if not os.path.isfile(p):
            die("%s: no such file" % p)
    out = os.path.abspath(args.out.rstrip("/") or "/")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        die("%s: the parent folder of --out does not exist" % parent)
    if os.path.lexists(out) and not args.overwrite:
        die("%s exists (--overwrite replaces it)" % args.out)

    def on_term(signum, _frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_term)
    tmp = tempfile.mkdtemp(prefix=".%s.tmp-" % os.path.basename(out), dir=parent)
    try:
        m = prepare(args, inputs, tmp)
        if os.path.lexists(out):  # --overwrite: move the old folder aside, the new one in, then drop the old
            old = tempfile.mkdtemp(prefix=".%s.old-" % os.path.basename(out), dir=parent)
            os.rename(out, os.path.join(old, "d"))
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
        fsync_dir(parent)
    except Fatal as e:
        shutil.rmtree(tmp, ignore_errors=True)
        die(str(e))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        die("%s%s" % (e.filename + ": " if getattr(e, "filename", None) else "", e.strerror or one_line(e)))
    except KeyboardInterrupt:
        shutil.rmtree(tmp, ignore_errors=True)
        die("interrupted; nothing written", 130)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print("%s: %d documents, %d tokens (%d loss tokens), %s ids, vocab %d%s -> %s" % (
        PROG, m["num_documents"], m["num_tokens"], m["num_loss_tokens"], m["token_dtype"], m["vocab_size"],
        ", %d bad records skipped" % m["skipped_records"] if args.skip_bad else "", args.out))


if __name__ == "__main__":
    main()
