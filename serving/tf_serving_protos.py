"""TF Serving's config messages that the tensorflow-serving-api wheel does not ship: `BatchingParameters`
(tensorflow_serving/servables/tensorflow/session_bundle_config.proto, for `--batching_parameters_file`) and
`MonitoringConfig` (tensorflow_serving/config/monitoring_config.proto, for `--monitoring_config_file`).

They are declared here field for field from those .proto files (the same package, message names, field
numbers and types), so a text file the official server reads parses here to the same message, and an unknown
or misspelt field fails here as it fails there. No protoc is needed: protobuf builds the classes from the
declared descriptors.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

PACKAGE = "tensorflow.serving"
_FIELD = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _FIELD.LABEL_OPTIONAL, _FIELD.LABEL_REPEATED
# (message, [(field, number, type, label, message type)]) per .proto file, in the files' own order.
_FILES = {
    "tensorflow_serving/servables/tensorflow/session_bundle_config.proto": [
        (
            "BatchingParameters",
            [
                ("max_batch_size", 1, _FIELD.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value"),
                ("batch_timeout_micros", 2, _FIELD.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value"),
                ("max_enqueued_batches", 3, _FIELD.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value"),
                ("num_batch_threads", 4, _FIELD.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value"),
                ("thread_pool_name", 5, _FIELD.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.StringValue"),
                ("enable_large_batch_splitting", 8, _FIELD.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.BoolValue"),
                ("max_execution_batch_size", 9, _FIELD.TYPE_MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value"),
                ("allowed_batch_sizes", 6, _FIELD.TYPE_INT64, _REPEATED, ""),
                ("pad_variable_length_inputs", 7, _FIELD.TYPE_BOOL, _OPTIONAL, ""),
            ],
        ),
    ],
    "tensorflow_serving/config/monitoring_config.proto": [
        (
            "PrometheusConfig",
            [
                ("enable", 1, _FIELD.TYPE_BOOL, _OPTIONAL, ""),
                ("path", 2, _FIELD.TYPE_STRING, _OPTIONAL, ""),
            ],
        ),
        (
            "MonitoringConfig",
            [("prometheus_config", 1, _FIELD.TYPE_MESSAGE, _OPTIONAL, f".{PACKAGE}.PrometheusConfig")],
        ),
    ],
}


def _file_descriptor(name: str, messages) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name=name, package=PACKAGE, syntax="proto3")
    if any(type_name.startswith(".google.protobuf.") for _, fields in messages for *_, type_name in fields):
        proto.dependency.append(wrappers_pb2.DESCRIPTOR.name)
    for message_name, fields in messages:
        message = proto.message_type.add(name=message_name)
        for field_name, number, field_type, label, type_name in fields:
            field = message.field.add(
                name=field_name, number=number, type=field_type, label=label, json_name=field_name
            )
            if type_name:
                field.type_name = type_name
    return proto


def _classes():
    pool = descriptor_pool.Default()
    classes = {}
    for name, messages in _FILES.items():
        try:
            pool.FindFileByName(name)
        except KeyError:  # not declared yet in this process (another wheel may already have it)
            pool.Add(_file_descriptor(name, messages))
        for message_name, _ in messages:
            descriptor = pool.FindMessageTypeByName(f"{PACKAGE}.{message_name}")
            classes[message_name] = message_factory.MessageFactory(pool).GetPrototype(descriptor)
    return classes


_CLASSES = _classes()
BatchingParameters = _CLASSES["BatchingParameters"]
PrometheusConfig = _CLASSES["PrometheusConfig"]
MonitoringConfig = _CLASSES["MonitoringConfig"]
