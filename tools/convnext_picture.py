"""Draws docs/distill-convnext-pca.png: a ConvNeXt student's features beside its ViT teacher's
on one image. Three panels: the teacher's patch features on their first three principal
components; the student's stride-32 cells through its patch head, on the teacher's
components (the same directions: equal hues mean the same feature direction, each panel
stretched to its own range); the student's stride-16 map (stage 2, the map dense work reads)
on its own first three components.

    B=target/release/dinoedge
    $B embed TEACHER IMG --dense --size 448 --out t.safetensors
    $B embed STUDENT IMG --dense --size 448 --layers 2 --out s.safetensors
    python tools/convnext_picture.py t.safetensors s.safetensors STUDENT/distill_heads.safetensors \
        docs/distill-convnext-pca.png
"""

import sys

import numpy as np
from PIL import Image, ImageDraw
from safetensors.numpy import load_file

WIDTH = 256  # pixels per panel


def pca_image(x, basis=None):
    """(h, w, d) features as RGB on `basis` (mean and components), or on their own first three
    components; each panel's colours stretched between its own 1st and 99th percentiles."""
    h, w, d = x.shape
    flat = x.reshape(-1, d)
    if basis is None:
        mu = flat.mean(0)
        basis = (mu, np.linalg.svd(flat - mu, full_matrices=False)[2][:3])
    mu, comps = basis
    p = (flat - mu) @ comps.T
    lo, hi = np.percentile(p, 1, 0), np.percentile(p, 99, 0)
    q = np.clip((p - lo) / (hi - lo), 0, 1).reshape(h, w, 3)
    img = Image.fromarray((q * 255).astype(np.uint8))
    return img.resize((WIDTH, round(WIDTH * h / w)), Image.NEAREST), basis


def main(teacher, student, heads, out):
    t = load_file(teacher)["patches"][0]
    s = load_file(student)
    h = load_file(heads)
    cells = s["patches"][0] @ h["head.1.weight"].T + h["head.1.bias"]
    stage2 = s["layer2.patches"][0]
    t_img, basis = pca_image(t)
    tiles = [
        (t_img, f"teacher ({t.shape[0]}x{t.shape[1]} patches)"),
        (pca_image(cells, basis)[0], f"student stride 32 + head ({cells.shape[0]}x{cells.shape[1]})"),
        (pca_image(stage2)[0], f"student stride 16, own PCA ({stage2.shape[0]}x{stage2.shape[1]})"),
    ]
    height = max(i.height for i, _ in tiles)
    canvas = Image.new("RGB", (3 * WIDTH + 12, height + 20), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (im, label) in enumerate(tiles):
        x = k * (WIDTH + 6)
        canvas.paste(im, (x, 20))
        draw.text((x + 4, 4), label, fill="black")
    canvas.save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:5])
