"""Draw the icon (128x128): slices stitched into a mosaic, one structure across them.

One drawing, written twice: the extension's icon (Resources/Icons/SFR.png, which the catalog files
CMakeLists.txt and SFR.s4ext point at) and the module's (SFRSegmenter/Resources/Icons/SFRSegmenter.png,
where Slicer's module template puts it).  Run from the repository root:
python Resources/Icons/draw_icon.py
"""
from PIL import Image, ImageDraw, ImageFilter
import math
S = 128
img = Image.new("RGBA", (S, S), (0, 0, 0, 0))
d = ImageDraw.Draw(img)
d.rounded_rectangle([2, 2, S - 3, S - 3], radius=18, fill=(28, 36, 52, 255))
n, pad, gap = 3, 14, 4
cell = (S - 2 * pad - (n - 1) * gap) / n
for r in range(n):
    for c in range(n):
        x0 = pad + c * (cell + gap); y0 = pad + r * (cell + gap)
        k = r * n + c  # slice index along the volume
        shade = 70 + 12 * k
        d.rounded_rectangle([x0, y0, x0 + cell, y0 + cell], radius=4, fill=(shade, shade + 6, shade + 14, 255))
        # the structure grows then shrinks through the slices
        rad = cell * (0.15 + 0.22 * math.sin(math.pi * (k + 1) / (n * n + 1)))
        cx, cy = x0 + cell / 2, y0 + cell / 2
        d.ellipse([cx - rad, cy - rad * 0.8, cx + rad, cy + rad * 0.8], fill=(236, 190, 92, 255))
# stitches along the seams
for i in range(1, n):
    p = pad + i * (cell + gap) - gap / 2
    for t in range(int(pad), int(S - pad), 8):
        d.line([(p - 3, t), (p + 3, t + 4)], fill=(120, 220, 200, 255), width=2)
        d.line([(t, p - 3), (t + 4, p + 3)], fill=(120, 220, 200, 255), width=2)
for path in ("Resources/Icons/SFR.png", "SFRSegmenter/Resources/Icons/SFRSegmenter.png"):
    img.save(path)
print(img.size, img.mode)
