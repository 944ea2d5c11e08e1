"""Build calibration and evaluation sets from the Fashion-MNIST idx files in ../shared.

    python calib/fashion_mnist.py [--shared ../shared] [--calib 512] [--out calib/out]

Writes ``fmnist_calib.npz`` (``--calib`` training images, seeded choice) and ``fmnist_test.npz`` (all
10,000 test images), each with ``input`` (float32 N x 1 x 28 x 28, normalised as the shared models were
trained: (x/255 - 0.2860) / 0.3530) and ``labels``. The test suite's samples (``--sample``) are made the
same way: ``samples/fmnist_256.npz``, the first 256 test images (evaluation), and
``samples/fmnist_train_256.npz``, 256 seeded training images (calibration).
"""

from __future__ import annotations

import argparse
import gzip
import os

import numpy as np

MEAN, STD = 0.2860, 0.3530
HERE = os.path.dirname(os.path.abspath(__file__))


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(shared: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    folder = os.path.join(shared, "datasets", "fashion-mnist")
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"))
    return ((x.astype(np.float32) / 255.0 - MEAN) / STD)[:, None], y.astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared"))
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--sample", action="store_true", help="(re)write samples/fmnist_256.npz")
    args = ap.parse_args()
    xt, yt = load(args.shared, "test")
    x, y = load(args.shared, "train")
    idx = np.random.default_rng(0).choice(len(x), args.calib, replace=False)
    if args.sample:
        np.savez_compressed(os.path.join(HERE, "samples", "fmnist_256.npz"), input=xt[:256], labels=yt[:256])
        np.savez_compressed(
            os.path.join(HERE, "samples", "fmnist_train_256.npz"), input=x[idx[:256]], labels=y[idx[:256]]
        )
        print("wrote samples/fmnist_256.npz and samples/fmnist_train_256.npz")
        return
    os.makedirs(args.out, exist_ok=True)
    np.savez(os.path.join(args.out, "fmnist_calib.npz"), input=x[idx], labels=y[idx])
    np.savez(os.path.join(args.out, "fmnist_test.npz"), input=xt, labels=yt)
    print(f"wrote {args.out}/fmnist_calib.npz ({args.calib}) and fmnist_test.npz ({len(xt)})")


if __name__ == "__main__":
    main()
