"""Draws docs/distill-pca.png: the teacher's patch features and two students' head outputs
(untrained, distilled) on one image, all projected on the teacher's first three principal
components, so equal colours mean equal features.

    B=target/release/dinoedge
    $B embed TEACHER IMG --dense --size 392 --out t.safetensors
    $B embed STUDENT IMG --dense --size 448 --out s.safetensors        # same 28 x 41 grid
    $B embed UNTRAINED IMG --dense --size 448 --out u.safetensors      # distill --steps 1 --lr 0
    python tools/distill_picture.py t.safetensors s.safetensors STUDENT/distill_heads.safetensors \
        u.safetensors UNTRAINED/distill_heads.safetensors docs/distill-pca.png
"""

import sys

import numpy as np
from PIL import Image, ImageDraw
from safetensors.numpy import load_file


def main(teacher, student, student_heads, untrained, untrained_heads, out):
    t = load_file(teacher)["patches"][0]
    gh, gw, d = t.shape

    def projected(features, heads):
        h = load_file(heads)
        return load_file(features)["patches"][0] @ h["head.1.weight"].T + h["head.1.bias"]

    s, u = projected(student, student_heads), projected(untrained, untrained_heads)
    flat = t.reshape(-1, d)
    mu = flat.mean(0)
    basis = np.linalg.svd(flat - mu, full_matrices=False)[2][:3]
    p = (flat - mu) @ basis.T
    lo, hi = np.percentile(p, 1, 0), np.percentile(p, 99, 0)

    def render(x):
        q = np.clip(((x.reshape(-1, d) - mu) @ basis.T - lo) / (hi - lo), 0, 1).reshape(gh, gw, 3)
        return Image.fromarray((q * 255).astype(np.uint8)).resize((gw * 8, gh * 8), Image.NEAREST)

    def cos(a, b):
        a, b = a.reshape(-1, d), b.reshape(-1, d)
        return float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))

    tiles = [
        (render(u), f"untrained student + head (patch cos {cos(u, t):.2f})"),
        (render(s), f"distilled student + head (patch cos {cos(s, t):.2f})"),
        (render(t), "teacher"),
    ]
    h = tiles[0][0].height
    canvas = Image.new("RGB", (sum(i.width for i, _ in tiles) + 12, h + 20), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for im, label in tiles:
        canvas.paste(im, (x, 20))
        draw.text((x + 4, 4), label, fill="black")
        x += im.width + 6
    canvas.save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:7])
