"""TensorProto <-> numpy for the request path, without TensorFlow's general-purpose converters.

`tf.make_tensor_proto` and `tf.make_ndarray` handle every dtype and layout and cost 50-100 us a call;
a Predict answer has four outputs, and for the small CNN the converters were a tenth of gRPC's
overhead over the in-process call (bench/serving_bench.py --profile). The served contract only
needs strings and fixed-width numbers, which map directly onto `string_val` and `tensor_content`;
anything else falls back to TensorFlow's converters, so every valid TensorProto is still read.
"""

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.models import invalid

_NUMERIC = {
    np.dtype(dtype): tf.as_dtype(dtype).as_datatype_enum
    for dtype in (
        np.float32,
        np.float64,
        np.float16,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.bool_,
    )
}
_NUMPY = {enum: dtype for dtype, enum in _NUMERIC.items()}


def to_array(key: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """A request input as numpy; INVALID_ARGUMENT naming the input when the proto is inconsistent."""
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise invalid(f"input {key!r} is not a well-formed TensorProto: negative dimension in its shape")
    count = int(np.prod(shape))
    if proto.dtype == types_pb2.DT_STRING and len(proto.string_val) == count:
        return np.array(list(proto.string_val), dtype=object).reshape(shape)
    dtype = _NUMPY.get(proto.dtype)
    if dtype is not None and proto.tensor_content and len(proto.tensor_content) == count * dtype.itemsize:
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape)
    try:  # scalars broadcast, typed value fields, half_val...: TensorFlow's converter knows them all
        return tf.make_ndarray(proto)
    except Exception as error:  # make_ndarray raises several types for inconsistent protos
        raise invalid(f"input {key!r} is not a well-formed TensorProto: {str(error).splitlines()[0]}")


def fill_proto(value: np.ndarray, proto: tensor_pb2.TensorProto) -> None:
    """Writes a model output into a response's TensorProto in place."""
    value = np.asarray(value)
    dtype = _NUMERIC.get(value.dtype)
    if dtype is None and value.dtype.kind not in "OS":
        proto.CopyFrom(tf.make_tensor_proto(value))
        return
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in value.shape)
    if dtype is None:
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(value.reshape(-1).tolist())
    else:
        proto.dtype = dtype
        proto.tensor_content = np.ascontiguousarray(value).tobytes()
