#!/usr/bin/env python3
"""What int8 would cost a ConvNeXt's depthwise 7x7 convolutions, in accuracy.

dinoedge's int8 ConvNeXt keeps the depthwise convs in float. An integer depthwise kernel
could only use scales that factor out of its 49-tap sums: per-channel weight scales and
per-channel (static, calibrated) activation scales. This script fake-quantises exactly
that in transformers' `DINOv3ConvNextModel` and prints the mean patch cosine of the
output, and of the stride-16 stage, against the float model on real images:

    tools/convnext_dw_int8.py MODEL_DIR IMAGE... [--size 224]

Calibration (the activation scales) uses the same images, which flatters the result.
"""

import argparse

import numpy as np
import torch
from PIL import Image
from transformers import DINOv3ConvNextModel


def load(path, size):
    img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))[None]


def fake_quant(x, scale):
    return torch.round(torch.clamp(x / scale, -127, 127)) * scale


class Int8Depthwise(torch.nn.Module):
    """A depthwise conv with per-channel int8 weights and, once calibrated, inputs."""

    def __init__(self, conv, quantize_inputs):
        super().__init__()
        self.conv, self.quantize_inputs = conv, quantize_inputs
        w = conv.weight.detach()
        s = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12) / 127
        self.weight = fake_quant(w, s)
        self.absmax = None  # per input channel, over calibration
        self.calibrating = True

    def forward(self, x):
        if self.calibrating:
            m = x.detach().abs().amax(dim=(0, 2, 3))
            self.absmax = m if self.absmax is None else torch.maximum(self.absmax, m)
        elif self.quantize_inputs:
            s = (self.absmax.clamp_min(1e-12) / 127)[None, :, None, None]
            x = fake_quant(x, s)
        c = self.conv
        return torch.nn.functional.conv2d(
            x, self.weight, c.bias, c.stride, c.padding, c.dilation, c.groups
        )


def outputs(model, xs):
    with torch.no_grad():
        outs = [model(pixel_values=x, output_hidden_states=True) for x in xs]
    return [(o.last_hidden_state[0, 1:], o.hidden_states[3][0]) for o in outs]


def cosine(a, b):
    if a.dim() == 3:  # (C, H, W) stage map -> (H*W, C)
        a, b = a.flatten(1).T, b.flatten(1).T
    a, b = a.double(), b.double()  # 1 - cos is far below float32 resolution here
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()
    xs = [load(p, a.size) for p in a.images]
    model = DINOv3ConvNextModel.from_pretrained(a.model).eval().float()
    want = outputs(model, xs)
    for name, quantize_inputs in [("weights", False), ("weights+inputs", True)]:
        m = DINOv3ConvNextModel.from_pretrained(a.model).eval().float()
        wrapped = []
        for mod in m.modules():
            if hasattr(mod, "depthwise_conv"):
                mod.depthwise_conv = Int8Depthwise(mod.depthwise_conv, quantize_inputs)
                wrapped.append(mod.depthwise_conv)
        outputs(m, xs)  # calibration
        for w in wrapped:
            w.calibrating = False
        got = outputs(m, xs)
        out = np.mean([cosine(g[0], t[0]) for g, t in zip(got, want)])
        s16 = np.mean([cosine(g[1], t[1]) for g, t in zip(got, want)])
        print(
            f"depthwise int8 {name:<15} {len(wrapped)} convs: output patch cosine {out:.7f}"
            f" (1 - cos {1 - out:.2e}), stride-16 stage {s16:.7f} (1 - cos {1 - s16:.2e}),"
            f" {len(xs)} images at {a.size} px"
        )


if __name__ == "__main__":
    main()
