"""The request path's TensorProto conversions agree with TensorFlow's own, for every layout a client may send."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from serving.models import ServingError
from serving.tensors import fill_proto, to_array


@pytest.mark.parametrize(
    "value",
    [
        np.array([b"\x89PNG", b"", b"\xff\xd8\xff"], dtype=object),
        np.array([[0.25, 1.0]], np.float32),
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.array([True, False]),
        np.array(3.5, np.float64),
        np.array([1, 2], np.uint8),
        np.array([0.5], np.float16),
        np.zeros((0, 4), np.float32),
    ],
)
def test_conversions_round_trip_like_tensorflow(value):
    proto = tensor_pb2.TensorProto()
    fill_proto(value, proto)
    assert tf.make_ndarray(proto).tolist() == value.tolist() and tf.make_ndarray(proto).dtype == value.dtype
    for sent in (proto, tf.make_tensor_proto(value)):  # what this server writes, and what TF clients send
        read = to_array("x", sent)
        assert read.tolist() == value.tolist() and read.shape == value.shape


def test_typed_fields_and_broadcast_scalars_are_read_too():
    typed = tensor_pb2.TensorProto(dtype=tf.float32.as_datatype_enum, float_val=[0.5, 1.5])
    typed.tensor_shape.dim.add(size=2)
    assert to_array("x", typed).tolist() == [0.5, 1.5]
    broadcast = tf.make_tensor_proto(b"same", shape=[3])
    assert to_array("x", broadcast).tolist() == [b"same"] * 3


def test_inconsistent_protos_are_invalid_arguments_naming_the_input():
    short = tf.make_tensor_proto(np.zeros(4, np.float32))
    short.tensor_content = short.tensor_content[:6]
    negative = tf.make_tensor_proto([b"x"])
    negative.tensor_shape.dim[0].size = -2
    for proto in (short, negative):
        with pytest.raises(ServingError, match="input 'images' is not a well-formed TensorProto"):
            to_array("images", proto)
