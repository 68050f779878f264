"""DICOM decode + preprocessing cost per image, next to the JPEG path, on the same real X-rays.

JPEG path: what prepare and predict do with a JPEG file (read, full decode check; the bytes go to the model
as they are). DICOM path: parse, check, decode, rescale, window, invert, PNG-encode (serving/dicom.py), then
the same decode check of the PNG. Each encoding wraps the same films (fixtures/dicom_files.py builds them),
so the ratio is the cost of DICOM itself. Both run in this process, one after the other.
Usage: .venv/bin/python bench/dicom_bench.py [DATA_DIR] [--originals] (default ../shared/data; --originals
uses the full-size files in originals/ instead of the 224 px test images).
"""
import glob
import io
import os
import sys
import time

from PIL import Image

from pneumonia.data import sources as data_sources
from pneumonia.data.images import inspect_image
from serving import dicom
from fixtures import dicom_files as make

REPEATS = 3


def per_image_ms(work, inputs) -> float:
    """The best of REPEATS passes over all inputs, in milliseconds per input."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for item in inputs:
            work(item)
        best = min(best, time.perf_counter() - start)
    return best * 1000 / len(inputs)


def grayscale_jpeg(data: bytes, film) -> bytes:
    """The file itself when it is a grayscale JPEG (a MONOCHROME2 DICOM holds one), else the film re-encoded."""
    if Image.open(io.BytesIO(data)).mode == "L":
        return data
    buffer = io.BytesIO()
    Image.fromarray(film).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def dicom_path(data: bytes) -> None:
    inspect_image(dicom.dicom_to_png(data))


def main():
    arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
    data = arguments[0] if arguments else data_sources.shared_data_dir()
    pattern = "originals/*/*" if "--originals" in sys.argv else "chest_xray/test/*/*.jpeg"
    paths = sorted(glob.glob(os.path.join(data, pattern)))[:24 if "--originals" in sys.argv else 200]
    jpegs = [open(path, "rb").read() for path in paths]
    films = [make.xray_pixels(path) for path in paths]
    encodings = {
        "DICOM uncompressed 8-bit": [make.xray_dicom(f) for f in films],
        "DICOM 12-bit rescale+window": [make.twelve_bit(f) for f in films],
        "DICOM MONOCHROME1, percentile": [make.monochrome1(f) for f in films],
        "DICOM JPEG baseline": [make.jpeg_baseline(grayscale_jpeg(j, f), f) for j, f in zip(jpegs, films)],
        "DICOM JPEG lossless SV1": [make.jpeg_lossless(f) for f in films],
        "DICOM JPEG 2000 lossless": [make.jpeg_2000(f) for f in films],
    }
    jpeg_ms = per_image_ms(inspect_image, jpegs)
    side = sum(f.shape[0] * f.shape[1] for f in films) / len(films)
    print(f"{len(paths)} images from {pattern}, mean {side / 1e6:.2f} megapixels; best of {REPEATS} passes")
    print(f"{'path':<34}{'ms/image':>10}{'vs JPEG':>10}")
    print(f"{'JPEG (decode check)':<34}{jpeg_ms:>10.2f}{1:>10.2f}")
    for name, datasets in encodings.items():
        ms = per_image_ms(dicom_path, [make.to_bytes(d) for d in datasets])
        print(f"{name:<34}{ms:>10.2f}{ms / jpeg_ms:>10.2f}")


if __name__ == "__main__":
    main()
