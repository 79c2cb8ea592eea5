#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/): a few valid inputs of
each parser, and every hostile input of the hardening audit (issue 16) as a regression case.

    python3 tools/make_fuzz_corpus.py            # needs numpy, onnx (tools/requirements-ref.txt)

Multi-file targets take their files joined by b"\\0\\0\\0\\0" (see fuzz/src/lib.rs).
"""
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "corpus"
SEP = b"\0\0\0\0"


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def safetensors(tensors, metadata=None):
    """tensors: name -> (dtype, shape, bytes)."""
    header, off, blobs = {}, 0, []
    for name, (dt, shape, raw) in tensors.items():
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blobs.append(raw)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def f32(a):
    return np.asarray(a, dtype="<f4").tobytes()


def png(width, height, color_type, depth, rows=b"", palette=None):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0))
    if palette:
        out += chunk(b"PLTE", palette)
    return out + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def config_cases():
    v3 = {"model_type": "dinov3_vit", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "intermediate_size": 96, "num_register_tokens": 4}
    put("config", "valid_dinov3", json.dumps(v3))
    put("config", "valid_dinov2_with_preprocessor",
        json.dumps({"model_type": "dinov2", "hidden_size": 32, "num_attention_heads": 2}).encode() + SEP
        + json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.2, 0.2, 0.2]}).encode())
    put("config", "layers_1e11", json.dumps({**v3, "num_hidden_layers": 100000000000}))
    put("config", "image_size_wraps_grid", json.dumps({"model_type": "dinov2", "image_size": (1 << 32) * 14}))
    put("config", "huge_width", json.dumps({**v3, "hidden_size": 1 << 40, "num_attention_heads": 1}))
    put("config", "head_dim_300", json.dumps({**v3, "hidden_size": 600, "num_attention_heads": 2}))
    put("config", "std_zero", json.dumps(v3).encode() + SEP + b'{"image_std": [0.2, 0, 0.2]}')
    put("config", "not_json", b"{\"model_type\": \"dinov3_vit\", ")


def safetensors_cases():
    d, p = 8, 4
    tiny = {
        "embeddings.patch_embeddings.projection.weight": ("F32", [d, 3, p, p], f32(np.zeros((d, 3, p, p)))),
        "embeddings.patch_embeddings.projection.bias": ("F32", [d], f32(np.zeros(d))),
        "embeddings.cls_token": ("F32", [1, 1, d], f32(np.zeros(d))),
        "embeddings.position_embeddings": ("F32", [1, 5, d], f32(np.zeros(5 * d))),
        "layernorm.weight": ("F32", [d], f32(np.ones(d))),
        "layernorm.bias": ("F32", [d], f32(np.zeros(d))),
    }
    put("safetensors", "partial_model", safetensors(tiny))
    bad = bytearray(safetensors(tiny))
    bad[0:8] = struct.pack("<Q", 1 << 40)
    put("safetensors", "header_length_huge", bytes(bad))
    put("safetensors", "truncated", safetensors(tiny)[:-17])
    over = {"a": ("F32", [4], f32(np.zeros(4)))}
    raw = safetensors(over)
    put("safetensors", "offsets_past_end", raw.replace(b"[0, 16]", b"[0, 99]"))
    # An int8 Linear whose scales are NaN, inf and 0: refused when the model loads.
    q = {"layer.weight": ("I8", [3, 2], bytes(6)),
         "layer.weight_scale": ("F32", [3], f32([np.nan, np.inf, 0.0]))}
    put("safetensors", "int8_scales_nan_inf_zero", safetensors(q))


def onnx_cases():
    src = ROOT / "fixtures" / "onnx" / "dinov2.onnx"
    put("onnx", "valid_dinov2", src.read_bytes())
    put("onnx", "not_a_vit", (ROOT / "fixtures" / "onnx" / "not_a_vit.onnx").read_bytes())
    m = onnx.load(str(src))
    # A layer index from the names alone: 1e11 layers before any shape is checked.
    for t in m.graph.initializer:
        if ".layer.0." in t.name:
            t.name = t.name.replace(".layer.0.", ".layer.99999999999.")
            break
    put("onnx", "layer_index_1e11", m.SerializeToString())
    # A tensor whose declared shape is far larger than its data.
    m = onnx.load(str(src))
    t = m.graph.initializer[0]
    del t.dims[:]
    t.dims.extend([1 << 20, 1 << 20])
    put("onnx", "dims_exceed_data", m.SerializeToString())
    # A 0-d tensor where a packed weight is expected.
    m = onnx.load(str(src))
    m.graph.initializer.append(numpy_helper.from_array(np.float32(1.0), "encoder.layer.0.mlp.weights_in.weight"))
    put("onnx", "zero_d_packed_weight", m.SerializeToString())
    # External data: the model, then the bytes of model.onnx.data.
    m = onnx.load(str(src))
    from onnx.external_data_helper import convert_model_to_external_data
    convert_model_to_external_data(m, all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    tmp = OUT / ".ext"
    tmp.mkdir(exist_ok=True)
    onnx.save_model(m, str(tmp / "model.onnx"))
    put("onnx", "external_data", (tmp / "model.onnx").read_bytes() + SEP + (tmp / "model.onnx.data").read_bytes())
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()


def y4m_cases():
    w, h = 8, 6
    frame = b"FRAME\n" + bytes(range(16, 16 + w * h)) + b"\x80" * (2 * (w // 2) * (h // 2))
    put("y4m", "valid_420", f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420jpeg\n".encode() + frame * 2)
    put("y4m", "w100000_h100000", b"YUV4MPEG2 W100000 H100000 F25:1 C420jpeg\nFRAME\n" + bytes(64))
    put("y4m", "w_wraps", b"YUV4MPEG2 W4294967296 H4294967296 F25:1 C444\nFRAME\n" + bytes(64))
    put("y4m", "rate_inf", b"YUV4MPEG2 W8 H6 F1:inf C444\n" + b"FRAME\n" + bytes(8 * 6 * 3))
    put("y4m", "rate_zero", b"YUV4MPEG2 W8 H6 F0:0 C444\n" + b"FRAME\n" + bytes(8 * 6 * 3))
    put("y4m", "endless_header", b"YUV4MPEG2 W8 H6 " + b"X" * 10000)


def mask_cases():
    rows = b"".join(b"\x00" + bytes([0, 1, 1, 0]) for _ in range(4))
    pal = bytes([0, 0, 0, 128, 0, 0])
    put("mask", "valid_indexed", png(4, 4, 3, 8, rows, pal))
    put("mask", "declares_100000x100000", png(100000, 100000, 3, 8, b"\x00" * 64, pal))
    put("mask", "gray_20000x20000", png(20000, 20000, 0, 8, b"\x00" * 64))
    put("mask", "rgb16", png(2, 2, 2, 16, b"\x00" * 26))


def cache_cases():
    key = {"teacher": {"model_type": "dinov2", "hidden_size": 8, "num_layers": 1, "patch_size": 4,
                       "fingerprint": "x"},
           "align": {"student_size": 8, "teacher_size": 8, "grid": 2, "teacher_grid": 2},
           "layers": [], "seed": 0,
           "aug": {"scale": [0.32, 1.0], "ratio": [0.75, 1.3333334], "flip": 0.5, "jitter": 0.8,
                   "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1, "grayscale": 0.2},
           "holdout": 0.05, "data_fingerprint": "d", "train_images": 2}
    idx = {"format": "dinoedge-teacher-cache-1", "key": key, "views": 2, "dim": 8, "images_per_shard": 2,
           "shards": ["shard-00000.safetensors"], "complete": True}
    rows, g, d = 4, 4, 8
    shard = safetensors({"cls": ("F16", [rows, d], bytes(rows * d * 2)),
                         "patches": ("F16", [rows, g, d], bytes(rows * g * d * 2))},
                        {"format": "dinoedge-teacher-cache-1"})
    put("cache_index", "valid", json.dumps(idx).encode() + SEP + shard)
    put("cache_index", "images_per_shard_0", json.dumps({**idx, "images_per_shard": 0}).encode() + SEP + shard)
    put("cache_index", "views_0", json.dumps({**idx, "views": 0}).encode() + SEP + shard)
    put("cache_index", "shard_list_short", json.dumps({**idx, "shards": [], "key": {**key, "train_images": 9}}))
    put("cache_index", "shard_path_escape", json.dumps({**idx, "shards": ["../../../../etc/passwd"]}))
    put("cache_index", "images_per_shard_huge",
        json.dumps({**idx, "images_per_shard": 1 << 40}).encode() + SEP + shard)


def checkpoint_cases():
    n = 10
    def state(step):
        t = {k: ("F32", [n], f32(np.zeros(n))) for k in ["params", "ema", "adam_m", "adam_v"]}
        return safetensors(t, {"format": "dinoedge-checkpoint-1", "step": str(step)})
    put("checkpoint", "valid", state(10) + SEP + b"{}" + SEP + b"step-00000010")
    put("checkpoint", "step_u64_max", state(2**64 - 1) + SEP + b"{}" + SEP + b"step-00000010")
    put("checkpoint", "latest_absolute", state(10) + SEP + b"{}" + SEP + b"/etc")
    put("checkpoint", "latest_escape", state(10) + SEP + b"{}" + SEP + b"../../other/step-00000099")
    put("checkpoint", "garbage_state", b"garbage" + SEP + b"{}" + SEP + b"step-00000010")


def http_cases():
    h = "Host: 10.0.0.2:8080\r\n"
    put("http", "page", f"GET / HTTP/1.1\r\n{h}\r\n")
    put("http", "stats_with_token", f"GET /stats?token=fuzz HTTP/1.1\r\n{h}\r\n")
    put("http", "stream", f"GET /stream/view.mjpg?token=fuzz HTTP/1.1\r\n{h}\r\n")
    put("http", "content_length_30e9", f"POST /click?token=fuzz&mode=point&u=0.1&v=0.2 HTTP/1.1\r\n{h}Content-Length: 30000000000\r\n\r\n")
    put("http", "long_request_line", "GET /" + "a" * 100_000 + " HTTP/1.1\r\n" + h + "\r\n")
    put("http", "many_headers", "GET / HTTP/1.1\r\n" + h + "".join(f"X-{i}: y\r\n" for i in range(2000)) + "\r\n")
    put("http", "dns_rebinding", "GET /frame/input.jpg HTTP/1.1\r\nHost: attacker.example\r\n\r\n")
    put("http", "cross_origin_click", f"POST /click?token=fuzz&mode=point&u=0.5&v=0.5 HTTP/1.1\r\n{h}Origin: http://evil.example\r\n\r\n")
    put("http", "no_token", f"GET /stats HTTP/1.1\r\n{h}\r\n")
    put("http", "nan_click", f"POST /click?token=fuzz&mode=point&u=NaN&v=0.5 HTTP/1.1\r\n{h}\r\n")
    put("http", "pipelined", f"GET / HTTP/1.1\r\n{h}\r\nGET /stats?token=fuzz HTTP/1.1\r\n{h}\r\n" * 3)
    put("http", "chunked_body", f"POST /reset?token=fuzz HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\nffffffff\r\nabc")
    put("http", "garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64))


def main():
    for case in [config_cases, safetensors_cases, onnx_cases, y4m_cases, mask_cases, cache_cases,
                 checkpoint_cases, http_cases]:
        case()
    print(f"wrote {sum(1 for _ in OUT.rglob('*') if _.is_file())} files under {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
