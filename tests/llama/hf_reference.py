"""Hugging Face's Llama (transformers' LlamaForCausalLM) as the reference for llama_train.

    hf_reference.py make --preset tiny --out DIR [--windows W --seq-len T --seed S]
        DIR/hf: a LlamaForCausalLM of the preset's shape with random weights (norm gains too),
        saved with save_pretrained (safetensors, no download); DIR/tokens.bin: W windows of T + 1
        tokens (uint16, llama_train's token file, windows overlapping by one token);
        DIR/logits.f32: the model's fp32 logits of each window's first T tokens, [W, T, vocab];
        prints "loss L": the mean next-token cross-entropy over all W windows.
    hf_reference.py loss --model DIR --tokens FILE --seq-len T
        loads DIR with AutoModelForCausalLM.from_pretrained and prints "loss L" the same way.
"""
import argparse, sys

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

# The shapes of examples/llama/config.cc's presets.
PRESETS = {"tiny": dict(vocab=256, dim=128, layers=4, heads=4, kv_heads=2, ffn=384),
           "small": dict(vocab=256, dim=512, layers=8, heads=8, kv_heads=4, ffn=1408)}


def windows(tokens, t):
    n = (len(tokens) - 1) // t
    return torch.from_numpy(np.stack([tokens[w * t:w * t + t + 1] for w in range(n)]).astype(np.int64))


def evaluate(model, batch):
    with torch.no_grad():
        logits = model(input_ids=batch[:, :-1]).logits.float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    return logits, loss.item()


def make(a):
    p = PRESETS[a.preset]
    config = LlamaConfig(vocab_size=p["vocab"], hidden_size=p["dim"], num_hidden_layers=p["layers"],
                         num_attention_heads=p["heads"], num_key_value_heads=p["kv_heads"],
                         intermediate_size=p["ffn"], rms_norm_eps=1e-5,
                         max_position_embeddings=a.seq_len, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(a.seed)
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # weights large enough that a misplaced one shows in the logits
        for name, w in model.named_parameters():
            if name.endswith("norm.weight"):
                w.copy_(1 + 0.2 * torch.randn_like(w))
            else:
                w.normal_(0, 1.0 / w.shape[-1] ** 0.5)
    model.save_pretrained(f"{a.out}/hf")
    rng = np.random.default_rng(a.seed)
    tokens = rng.integers(0, p["vocab"], a.windows * a.seq_len + 1).astype(np.uint16)
    tokens.tofile(f"{a.out}/tokens.bin")
    logits, loss = evaluate(model, windows(tokens, a.seq_len))
    logits.numpy().astype(np.float32).tofile(f"{a.out}/logits.f32")
    print(f"loss {loss:.8f}")


def loss(a):
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    tokens = np.fromfile(a.tokens, dtype=np.uint16)
    _, value = evaluate(model, windows(tokens, a.seq_len))
    print(f"loss {value:.8f}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("--preset", choices=sorted(PRESETS), required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--windows", type=int, default=8)
    m.add_argument("--seq-len", type=int, default=32)
    m.add_argument("--seed", type=int, default=7)
    l = sub.add_parser("loss")
    l.add_argument("--model", required=True)
    l.add_argument("--tokens", required=True)
    l.add_argument("--seq-len", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(1)
    make(a) if a.command == "make" else loss(a)


if __name__ == "__main__":
    sys.exit(main())
