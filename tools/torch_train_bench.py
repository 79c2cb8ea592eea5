#!/usr/bin/env python3
"""PyTorch peer of `dinoedge distill bench-step`: the same training step on the same student.

The student is transformers' DINOv3ViTModel (or DINOv3ConvNextModel, for a `dinov3_convnext`
config: its pooled token and stride-32 cells) built from the HF config that bench-step prints
(random weights), with two linear heads to the teacher width, the same loss (1 - cosine +
smooth-L1 on CLS and on the patch tokens), global-norm clipping at 3, AdamW (lr 5e-4, decay
0.04 on matrices, fused on CUDA) and an EMA of every weight. On CUDA the forward runs under
torch.autocast in bf16 (AMP) with PyTorch's SDPA attention; on the CPU in f32. As in
bench-step, each step copies its pixels and targets from host memory to the device
(pageable, as a DataLoader without pin_memory; --no-host-copy keeps them on the device).

  python3 tools/torch_train_bench.py CONFIG.json --device cuda --batch 128 --size 224
prints one JSON line with the median step time (each step synchronised).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel, DINOv3ViTConfig, DINOv3ViTModel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("config", help="HF config.json of the student (bench-step's student_config)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--teacher-dim", type=int, default=384)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-host-copy", action="store_true", help="keep pixels and targets on the device")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    cfg_json = json.load(open(a.config))
    if "student_config" in cfg_json:
        cfg_json = cfg_json["student_config"]
    if cfg_json.get("model_type") == "dinov3_convnext":
        cfg = DINOv3ConvNextConfig(**cfg_json)
        model = DINOv3ConvNextModel(cfg).to(dev).train()
        d, regs, stride = cfg.hidden_sizes[-1], 0, 4 * 2 ** (len(cfg.hidden_sizes) - 1)
    else:
        cfg = DINOv3ViTConfig(**cfg_json)
        model = DINOv3ViTModel(cfg).to(dev).train()
        d, regs, stride = cfg.hidden_size, cfg.num_register_tokens, cfg.patch_size
    dt = a.teacher_dim
    heads = nn.ModuleList([nn.Linear(d, dt), nn.Linear(d, dt)]).to(dev)
    fwd = torch.compile(model) if a.compile else model
    named = [(n, q) for n, q in list(model.named_parameters()) + list(heads.named_parameters())
             if q.requires_grad and "mask_token" not in n]
    params = [q for _, q in named]
    decay = [q for n, q in named if q.ndim >= 2 and "token" not in n]
    rest = [q for n, q in named if not (q.ndim >= 2 and "token" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.04}, {"params": rest, "weight_decay": 0.0}],
                            lr=5e-4, betas=(0.9, 0.999), eps=1e-8, fused=a.device == "cuda")
    ema = [q.detach().clone() for q in params]
    grid = (a.size // stride) ** 2
    host = [torch.randn(a.batch, 3, a.size, a.size), torch.randn(a.batch, dt), torch.randn(a.batch * grid, dt)]
    on_dev = [t.to(dev) for t in host]
    copy = a.device == "cuda" and not a.no_host_copy
    amp = a.dtype == "bf16"

    def term(pred, t):
        return (1 - F.cosine_similarity(pred, t, dim=-1, eps=1e-8)).mean() + F.smooth_l1_loss(pred, t)

    def step():
        x, tc, tp = [t.to(dev) for t in host] if copy else on_dev
        with torch.autocast(device_type=a.device, dtype=torch.bfloat16, enabled=amp):
            h = fwd(pixel_values=x).last_hidden_state
            c = heads[0](h[:, 0])
            pt = heads[1](h[:, 1 + regs:])
        loss = term(c.float(), tc) + term(pt.float().reshape(-1, dt), tp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1 - 0.999)
        return loss

    times, losses = [], []
    for i in range(a.warmup + a.iters):
        if a.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step()
        losses.append(float(loss.detach()))  # synchronises
        if a.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t = times[a.warmup:]
    med = statistics.median(t)
    out = {"peer": "pytorch", "torch": torch.__version__, "device": a.device,
           "gpu": torch.cuda.get_device_name() if a.device == "cuda" else None,
           "amp_bf16": amp, "compiled": a.compile, "host_copy": copy,
           "attention": getattr(model.config, "_attn_implementation", None),
           "batch": a.batch, "size": a.size, "teacher_dim": dt, "iters": len(t),
           "median_ms": med * 1e3, "min_ms": min(t) * 1e3, "img_per_s": a.batch / med,
           "first_loss": losses[0], "last_loss": losses[-1], "threads": torch.get_num_threads()}
    if a.device == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(out))


if __name__ == "__main__":
    main()
