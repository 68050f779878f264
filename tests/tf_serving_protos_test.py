"""TF Serving's batching and monitoring config messages parse the text files the official server reads."""

import pytest
from google.protobuf import text_format

from serving import tf_serving_protos


def test_batching_parameters_parse_as_tf_serving_writes_them():
    text = """
        max_batch_size { value: 32 }
        batch_timeout_micros { value: 2000 }
        max_enqueued_batches { value: 100 }
        num_batch_threads { value: 2 }
        allowed_batch_sizes: 8
        allowed_batch_sizes: 32
        pad_variable_length_inputs: true
        enable_large_batch_splitting { value: false }
        max_execution_batch_size { value: 32 }
    """
    parameters = text_format.Parse(text, tf_serving_protos.BatchingParameters())
    assert parameters.max_batch_size.value == 32 and parameters.batch_timeout_micros.value == 2000
    assert list(parameters.allowed_batch_sizes) == [8, 32] and parameters.pad_variable_length_inputs
    assert parameters.HasField("enable_large_batch_splitting") and parameters.max_execution_batch_size.value == 32
    assert not parameters.HasField("thread_pool_name")  # each parameter optional, as in TF Serving
    assert parameters.DESCRIPTOR.full_name == "tensorflow.serving.BatchingParameters"


def test_monitoring_config_parses_the_prometheus_block():
    config = text_format.Parse(
        'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }',
        tf_serving_protos.MonitoringConfig(),
    )
    assert config.prometheus_config.enable and config.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_a_misspelt_field_fails_as_it_does_in_tf_serving():
    with pytest.raises(text_format.ParseError, match="max_batch_sise"):
        text_format.Parse("max_batch_sise { value: 3 }", tf_serving_protos.BatchingParameters())


def test_the_messages_round_trip_through_their_wire_format():
    parameters = tf_serving_protos.BatchingParameters(allowed_batch_sizes=[4, 16])
    parameters.max_batch_size.value = 16
    again = tf_serving_protos.BatchingParameters.FromString(parameters.SerializeToString())
    assert again == parameters
