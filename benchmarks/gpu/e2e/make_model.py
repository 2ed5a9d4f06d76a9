#!/usr/bin/env python3
"""Make a random-weight llama GGUF (f16 weights, f32 norms) with a real SPM vocab (from ../shared/gpu-harness).

Uses gguf-py from the llama.cpp source tree (PYTHONPATH=<llama.cpp>/gguf-py) and numpy.
The tokenizer metadata (tokens, scores, token types, special ids) is copied from a
vocab-only GGUF such as ggml-vocab-llama-spm.gguf.

usage: make_model.py VOCAB.gguf OUT.gguf --n-embd 2048 --n-layer 16 --n-head 16 --n-ff 5632
"""
import argparse
import sys
import time

import numpy as np

try:  # gguf/metadata.py imports yaml; it is not needed for writing
    import yaml  # noqa: F401
except ImportError:  # pragma: no cover
    import types
    sys.modules["yaml"] = types.ModuleType("yaml")

import gguf


def field_scalar(reader, key):
    f = reader.fields[key]
    return f.parts[f.data[0]][0].item()


def field_array(reader, key):
    f = reader.fields[key]
    return [f.parts[i] for i in f.data]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("vocab")
    ap.add_argument("out")
    ap.add_argument("--n-embd", type=int, default=2048)
    ap.add_argument("--n-layer", type=int, default=16)
    ap.add_argument("--n-head", type=int, default=16)
    ap.add_argument("--n-head-kv", type=int, default=0, help="0 = same as n-head")
    ap.add_argument("--n-ff", type=int, default=5632)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--name", default="random-llama")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    t0 = time.time()
    n_head_kv = a.n_head_kv or a.n_head
    head_dim = a.n_embd // a.n_head
    n_embd_kv = head_dim * n_head_kv

    r = gguf.GGUFReader(a.vocab)
    tokens = [bytes(p) for p in field_array(r, "tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in field_array(r, "tokenizer.ggml.scores")]
    ttypes = [int(p[0]) for p in field_array(r, "tokenizer.ggml.token_type")]
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name(a.name)
    w.add_context_length(a.n_ctx)
    w.add_embedding_length(a.n_embd)
    w.add_block_count(a.n_layer)
    w.add_feed_forward_length(a.n_ff)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_head_count(a.n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    w.add_tokenizer_model(r.fields["tokenizer.ggml.model"].contents())
    w.add_tokenizer_pre(r.fields["tokenizer.ggml.pre"].contents())
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(ttypes)
    w.add_bos_token_id(field_scalar(r, "tokenizer.ggml.bos_token_id"))
    w.add_eos_token_id(field_scalar(r, "tokenizer.ggml.eos_token_id"))
    w.add_unk_token_id(field_scalar(r, "tokenizer.ggml.unknown_token_id"))
    w.add_add_bos_token(bool(field_scalar(r, "tokenizer.ggml.add_bos_token")))
    w.add_add_eos_token(bool(field_scalar(r, "tokenizer.ggml.add_eos_token")))

    # Random values come from one pool, sliced at random offsets: the numbers only
    # need to be finite and small, and this keeps a ~1B-parameter model quick to make.
    rng = np.random.default_rng(a.seed)
    pool_n = 1 << 24
    pool = (rng.standard_normal(2 * pool_n, dtype=np.float32) * 0.02).astype(np.float16)

    def rand(*shape):
        n = int(np.prod(shape))
        out = np.empty(n, dtype=np.float16)
        done = 0
        while done < n:
            k = min(pool_n, n - done)
            off = int(rng.integers(0, pool_n))
            out[done:done + k] = pool[off:off + k]
            done += k
        return out.reshape(shape)

    def ones(n):
        return np.ones(n, dtype=np.float32)

    n_params = 0

    def add(name, arr):
        nonlocal n_params
        n_params += arr.size
        w.add_tensor(name, arr)

    # numpy shapes are (rows, cols) = reversed GGUF ne order
    add("token_embd.weight", rand(n_vocab, a.n_embd))
    for i in range(a.n_layer):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", ones(a.n_embd))
        add(p + "attn_q.weight", rand(a.n_embd, a.n_embd))
        add(p + "attn_k.weight", rand(n_embd_kv, a.n_embd))
        add(p + "attn_v.weight", rand(n_embd_kv, a.n_embd))
        add(p + "attn_output.weight", rand(a.n_embd, a.n_embd))
        add(p + "ffn_norm.weight", ones(a.n_embd))
        add(p + "ffn_gate.weight", rand(a.n_ff, a.n_embd))
        add(p + "ffn_up.weight", rand(a.n_ff, a.n_embd))
        add(p + "ffn_down.weight", rand(a.n_embd, a.n_ff))
    add("output_norm.weight", ones(a.n_embd))
    add("output.weight", rand(n_vocab, a.n_embd))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {a.out}: {n_params/1e6:.1f}M params, n_embd={a.n_embd} n_layer={a.n_layer} "
          f"n_head={a.n_head} n_head_kv={n_head_kv} n_ff={a.n_ff} n_vocab={n_vocab} "
          f"in {time.time()-t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
