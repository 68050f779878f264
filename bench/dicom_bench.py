"""DICOM decode + preprocessing cost per image, before and after issue 24, next to the JPEG path, on the same X-rays.

JPEG path: what prepare and predict do with a JPEG file (read, full decode check; the bytes go to the model
as they are). DICOM path: parse, check, decode, rescale, window, invert, PNG-encode, then the same decode check
of the PNG. "before" is the conversion as it was (fixtures/dicom_files.py: every pixel through float64, PIL's
PNG at compress_level 1), "after" is serving/dicom.py; both run in this process on the same files, and the bench
checks that they give the model the same pixels. Each encoding wraps the same films (fixtures/dicom_files.py
builds them), so the ratio is the cost of DICOM itself. Two more tables split the cost: PNG encoders on the same
8-bit films, and windowing per pixel vs per value on the same decoded frames.
Usage: PYTHONPATH=. .venv/bin/python -m bench.dicom_bench [DATA_DIR] [--originals] (default ../shared/data;
--originals uses the full-size files in originals/ instead of the 224 px test images).
"""

import glob
import io
import os
import struct
import sys
import time
import zlib

import numpy as np
from PIL import Image

from fixtures import dicom_files as make
from fixtures.dicom_files import IDENTITY_WINDOW
from pneumonia.data import sources as data_sources
from pneumonia.data.images import inspect_image
from serving import dicom

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


def png_before(data: bytes) -> bytes:
    """The conversion before issue 24, checked as serving/dicom.py checks."""
    dataset = dicom.read(data)
    dicom.check(dataset)
    return make.pil_png(make.per_pixel_8_bits(dataset)[0], 1)


def up_huffman_png(pixels: np.ndarray) -> bytes:
    """The smaller alternative measured: PNG filter Up on every row, then Huffman-only deflate (no matching)."""
    rows = np.empty((pixels.shape[0], pixels.shape[1] + 1), np.uint8)
    rows[:, 0], rows[0, 1:] = 2, pixels[0]
    np.subtract(pixels[1:], pixels[:-1], out=rows[1:, 1:])
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))

    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 8, 0, 0, 0, 0)
    return (
        dicom.PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", deflate.compress(rows) + deflate.flush())
        + chunk(b"IEND", b"")
    )


def decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def same_pixels(pngs, other_pngs) -> bool:
    return all(np.array_equal(decoded(a), decoded(b)) for a, b in zip(pngs, other_pngs))


def conversion_table(encodings, jpeg_ms: float) -> None:
    """Whole path per encoding: before, after, both against the JPEG check, PNG sizes, pixel identity."""
    print(
        f"\n{'path':<34}{'before ms':>10}{'after ms':>9}{'before/JPEG':>12}{'after/JPEG':>11}"
        f"{'PNG KB before':>14}{'after':>7}  same pixels"
    )
    print(f"{'JPEG (decode check)':<34}{jpeg_ms:>10.2f}{jpeg_ms:>9.2f}{1:>12.2f}{1:>11.2f}")
    for name, datasets in encodings.items():
        files = [make.to_bytes(d) for d in datasets]
        before_ms = per_image_ms(lambda data: inspect_image(png_before(data)), files)
        after_ms = per_image_ms(lambda data: inspect_image(dicom.dicom_to_png(data)), files)
        old, new = [png_before(f) for f in files], [dicom.dicom_to_png(f) for f in files]
        kilobytes = [sum(map(len, pngs)) / len(pngs) / 1000 for pngs in (old, new)]
        print(
            f"{name:<34}{before_ms:>10.2f}{after_ms:>9.2f}{before_ms / jpeg_ms:>12.2f}{after_ms / jpeg_ms:>11.2f}"
            f"{kilobytes[0]:>14.0f}{kilobytes[1]:>7.0f}  {'yes' if same_pixels(old, new) else 'NO'}"
        )


def encoder_table(films, jpeg_ms: float) -> None:
    """PNG write and read-back (the decode check) on the same 8-bit films."""
    encoders = {
        "PIL compress_level=6": lambda film: make.pil_png(film, 6),
        "PIL compress_level=1 (before)": lambda film: make.pil_png(film, 1),
        "filter 0, stored (after)": dicom.encode_png,
        "filter Up, Huffman only": up_huffman_png,
    }
    print(
        f"\n{'PNG encoder, same 8-bit films':<34}{'write ms':>10}{'read ms':>9}{'sum/JPEG':>12}{'KB':>8}  same pixels"
    )
    for name, encode in encoders.items():
        pngs = [encode(film) for film in films]
        write_ms, read_ms = per_image_ms(encode, films), per_image_ms(inspect_image, pngs)
        same = all(np.array_equal(decoded(png), film) for png, film in zip(pngs, films))
        print(
            f"{name:<34}{write_ms:>10.2f}{read_ms:>9.2f}{(write_ms + read_ms) / jpeg_ms:>12.2f}"
            f"{sum(map(len, pngs)) / len(pngs) / 1000:>8.0f}  {'yes' if same else 'NO'}"
        )


def windowing_table(encodings) -> None:
    """Rescale, window and invert on frames already decoded: every pixel in float64 vs the value table."""
    print(f"\n{'windowing, same decoded frames':<34}{'per pixel ms':>13}{'table ms':>9}  same pixels")
    for name, datasets in encodings.items():
        parsed = [dicom.read(make.to_bytes(d)) for d in datasets]
        frames = [(d.pixel_array, d) for d in parsed]  # decoded once, cached by pydicom
        per_pixel_ms = per_image_ms(make.per_pixel_8_bits, parsed)
        table_ms = per_image_ms(lambda frame: dicom.to_8_bits(*frame), frames)
        same = all(np.array_equal(make.per_pixel_8_bits(d)[0], dicom.to_8_bits(*f)[0]) for d, f in zip(parsed, frames))
        print(f"{name:<34}{per_pixel_ms:>13.2f}{table_ms:>9.2f}  {'yes' if same else 'NO'}")


def main():
    arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
    data = arguments[0] if arguments else data_sources.shared_data_dir()
    pattern = "originals/*/*" if "--originals" in sys.argv else "chest_xray/test/*/*.jpeg"
    paths = sorted(glob.glob(os.path.join(data, pattern)))[: 24 if "--originals" in sys.argv else 200]
    jpegs = [open(path, "rb").read() for path in paths]
    films = [make.xray_pixels(path) for path in paths]
    uncompressed = {
        "DICOM uncompressed 8-bit": [make.xray_dicom(f) for f in films],
        "DICOM 8-bit, identity window": [make.xray_dicom(f, **IDENTITY_WINDOW) for f in films],
        "DICOM 12-bit rescale+window": [make.twelve_bit(f) for f in films],
        "DICOM MONOCHROME1, percentile": [make.monochrome1(f) for f in films],
    }
    compressed = {
        "DICOM JPEG baseline": [make.jpeg_baseline(grayscale_jpeg(j, f), f) for j, f in zip(jpegs, films)],
        "DICOM JPEG lossless SV1": [make.jpeg_lossless(f) for f in films],
        "DICOM JPEG 2000 lossless": [make.jpeg_2000(f) for f in films],
    }
    jpeg_ms = per_image_ms(inspect_image, jpegs)
    side = sum(f.shape[0] * f.shape[1] for f in films) / len(films)
    print(f"{len(paths)} images from {pattern}, mean {side / 1e6:.2f} megapixels; best of {REPEATS} passes")
    conversion_table({**uncompressed, **compressed}, jpeg_ms)
    encoder_table(films, jpeg_ms)
    windowing_table(uncompressed)


if __name__ == "__main__":
    main()
