"""PyTorch peer for `dinoedge bench` on the GPU machine (scripts/device-check-cuda.sh).

    python3 tools/torch_bench.py make MODEL_DIR --arch vits16|vit7b16 [--dtype bf16]
    python3 tools/torch_bench.py bench MODEL_DIR --dtype fp16 --batch 1 --size 224

`make` writes a random-weight DINOv3 ViT with save_pretrained (7B: built on the GPU in bf16,
saved in 5 GB shards, about 13.4 GB). `bench` times transformers' DINOv3ViTModel (eager):
`forward_ms` with the input already on the GPU (CUDA events), `e2e_ms` including the
host-to-device copy of the pixels and the device-to-host copy of last_hidden_state (what
`dinoedge bench` measures). Prints one JSON line.
"""

import argparse
import json
import statistics
import time

import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel

ARCHS = {
    "vits16": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6),
    "vit7b16": dict(
        hidden_size=4096,
        intermediate_size=8192,
        num_hidden_layers=40,
        num_attention_heads=32,
        use_gated_mlp=True,
        hidden_act="silu",
        query_bias=False,
        value_bias=False,
    ),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make(a):
    torch.manual_seed(0)
    cfg = DINOv3ViTConfig(num_register_tokens=4, patch_size=16, **ARCHS[a.arch])
    dtype = DTYPES[a.dtype]
    # Built directly in the target dtype (7B: 13.4 GB in bf16 instead of 27 GB in fp32).
    torch.set_default_dtype(dtype)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = DINOv3ViTModel(cfg)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(a.model, max_shard_size="5GB")
    print(json.dumps({"made": a.model, "arch": a.arch, "dtype": a.dtype, "params": sum(p.numel() for p in model.parameters())}))


def bench(a):
    dtype = DTYPES[a.dtype]
    model = DINOv3ViTModel.from_pretrained(a.model, torch_dtype=dtype).cuda().eval()
    host = torch.randn(a.batch, 3, a.size, a.size).pin_memory()
    dev = host.to("cuda", dtype)
    fwd, e2e = [], []
    with torch.inference_mode():
        for i in range(a.warmup + a.iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(pixel_values=dev)
            end.record()
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = model(pixel_values=host.to("cuda", dtype, non_blocking=True)).last_hidden_state.float().cpu()
            t = time.perf_counter() - t
            if i >= a.warmup:
                fwd.append(start.elapsed_time(end))
                e2e.append(t * 1e3)
    del out
    med = statistics.median(fwd)
    print(
        json.dumps(
            {
                "peer": "pytorch-eager",
                "torch": torch.__version__,
                "device": torch.cuda.get_device_name(),
                "dtype": a.dtype,
                "batch": a.batch,
                "size": a.size,
                "forward_ms": med,
                "e2e_ms": statistics.median(e2e),
                "img_per_s": a.batch * 1e3 / med,
                "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30,
            }
        )
    )


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("model")
    m.add_argument("--arch", choices=ARCHS, default="vits16")
    m.add_argument("--dtype", choices=DTYPES, default="fp32")
    b = sub.add_parser("bench")
    b.add_argument("model")
    b.add_argument("--dtype", choices=DTYPES, default="fp16")
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--size", type=int, default=224)
    b.add_argument("--iters", type=int, default=20)
    b.add_argument("--warmup", type=int, default=5)
    a = p.parse_args()
    make(a) if a.cmd == "make" else bench(a)


if __name__ == "__main__":
    main()
