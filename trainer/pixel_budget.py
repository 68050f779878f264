"""The model's pixel budget: image sizes read from the header bytes, inside the graph, before decoding.

A 389 KB PNG can declare 20,000 x 20,000 pixels; decoding it takes gigabytes. The exported model
reads the declared width and height first (JPEG: `tf.image.extract_jpeg_shape`; PNG, GIF, BMP: their
fixed header fields) and refuses anything over MAX_PIXELS with INVALID_ARGUMENT, so every server of
the SavedModel, the official TF Serving binary included, is protected. The budget is recorded in the
model's metadata. `prepare` refuses the same files with the same number and message; it reads the
headers with serving.pixels' Python reader (calling this graph per file would cost milliseconds per
image), and a test holds both readers to the same answers on every format.

100 megapixels is far above any radiograph (a 43 x 43 cm detector at 100 um is 18.5 MP; the
largest of the data set's originals is 2.8 MP) and keeps one image's decode buffers around 0.5 GB.
"""

import tensorflow as tf

MAX_PIXELS = 100_000_000
OVER_BUDGET = "declared size {}x{} exceeds the pixel budget of {} megapixels"  # Python and tf.strings.format
_HEADER_BYTES = 26  # PNG's IHDR size ends at 24, BMP's info header size at 26


def _unsigned(header: tf.Tensor, start: int, length: int, big_endian: bool) -> tf.Tensor:
    digits = header[start : start + length]
    weights = tf.constant([256**i for i in (reversed(range(length)) if big_endian else range(length))], tf.int64)
    return tf.reduce_sum(digits * weights)


def _bmp_side(header: tf.Tensor, start: int) -> tf.Tensor:
    value = _unsigned(header, start, 4, big_endian=False)
    return tf.abs(tf.where(value >= 2**31, value - 2**32, value))  # a negative height means top-down rows


def declared_size(encoded: tf.Tensor) -> tf.Tensor:
    """[width, height] (int64) that one encoded JPEG, PNG, GIF or BMP declares; [0, 0] for other bytes
    (which no decoder accepts). Reads only the header; a JPEG without a valid frame header fails here
    with INVALID_ARGUMENT, as its decoding would."""
    header = tf.cast(
        tf.io.decode_raw(tf.strings.substr(encoded, 0, _HEADER_BYTES), tf.uint8, fixed_length=_HEADER_BYTES), tf.int64
    )
    magic = tf.strings.substr(encoded, 0, 8)
    is_png = tf.equal(magic, b"\x89PNG\r\n\x1a\n")
    version = tf.strings.substr(encoded, 0, 6)
    is_gif = tf.logical_or(tf.equal(version, b"GIF87a"), tf.equal(version, b"GIF89a"))
    is_bmp = tf.equal(tf.strings.substr(encoded, 0, 2), b"BM")
    png = tf.stack([_unsigned(header, 16, 4, True), _unsigned(header, 20, 4, True)])
    gif = tf.stack([_unsigned(header, 6, 2, False), _unsigned(header, 8, 2, False)])
    bmp = tf.stack([_bmp_side(header, 18), _bmp_side(header, 22)])
    other = tf.where(is_png, png, tf.where(is_gif, gif, tf.where(is_bmp, bmp, tf.zeros([2], tf.int64))))
    is_jpeg = tf.equal(tf.strings.substr(encoded, 0, 3), b"\xff\xd8\xff")
    return tf.cond(
        is_jpeg, lambda: tf.cast(tf.reverse(tf.image.extract_jpeg_shape(encoded)[:2], [0]), tf.int64), lambda: other
    )


def check_pixel_budget(encoded: tf.Tensor, max_pixels: int = MAX_PIXELS) -> tf.Tensor:
    """`encoded`, once its declared size is known to be within the budget (INVALID_ARGUMENT otherwise)."""
    size = declared_size(encoded)

    def refuse():  # the message is built only for a refused image
        message = tf.strings.format(OVER_BUDGET, (size[0], size[1], max_pixels // 1_000_000))
        if tf.executing_eagerly():
            raise tf.errors.InvalidArgumentError(None, None, message.numpy().decode())
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            return tf.identity(encoded)

    return tf.cond(size[0] * size[1] <= max_pixels, lambda: encoded, refuse)
