"""TLS and mutual TLS from TF Serving's own `--ssl_config_file` (an SSLConfig text proto).

The same file configures the official server and `pneumonia serve`:

    server_key: "-----BEGIN PRIVATE KEY-----\\n..."      # PEM text, not a path (TF Serving's format)
    server_cert: "-----BEGIN CERTIFICATE-----\\n..."
    custom_ca: "-----BEGIN CERTIFICATE-----\\n..."       # the CA that signs client certificates
    client_verify: true                                 # mutual TLS: refuse clients without one

With it, gRPC serves only over TLS and REST only over HTTPS. The `tensorflow-serving-api` wheel does
not ship `ssl_config_pb2`, so the message is built here from the same field numbers as
tensorflow_serving/config/ssl_config.proto.
"""

import ipaddress
import os
import ssl
import tempfile
from typing import Optional

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from serving.config import read_text_proto


def _ssl_config_class():
    proto = descriptor_pb2.FileDescriptorProto(
        name="pneumonia_serving/ssl_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    message = proto.message_type.add(name="SSLConfig")
    field = descriptor_pb2.FieldDescriptorProto
    for number, (name, kind) in enumerate(
        [
            ("server_key", field.TYPE_STRING),
            ("server_cert", field.TYPE_STRING),
            ("custom_ca", field.TYPE_STRING),
            ("client_verify", field.TYPE_BOOL),
        ],
        1,
    ):
        message.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.MessageFactory(pool).GetPrototype(pool.FindMessageTypeByName("tensorflow.serving.SSLConfig"))


SSLConfig = _ssl_config_class()


def read_ssl_config(path: str):
    """Parses and checks an --ssl_config_file; ValueError with a one-line reason when it is unusable."""
    config = read_text_proto(path, SSLConfig(), "SSL config")
    for field in ("server_key", "server_cert"):
        if "-----BEGIN" not in getattr(config, field):
            raise ValueError(f"SSL config {path}: {field} must hold the PEM text itself (TF Serving's format)")
    if config.client_verify and "-----BEGIN" not in config.custom_ca:
        raise ValueError(f"SSL config {path}: client_verify needs custom_ca, the PEM of the CA that signs clients")
    try:
        rest_ssl_context(config)  # a key that does not match its certificate fails here, not at the first client
    except ssl.SSLError as error:
        raise ValueError(f"SSL config {path}: the key, certificate or CA cannot be used: {error}") from error
    return config


def grpc_server_credentials(config) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(config.server_key.encode(), config.server_cert.encode())],
        root_certificates=config.custom_ca.encode() or None,
        require_client_auth=config.client_verify,
    )


def rest_ssl_context(config) -> ssl.SSLContext:
    """The HTTPS context for REST: the same key and certificate, and client certificates when asked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="pneumonia-tls-") as private:  # load_cert_chain only reads files
        chain = os.path.join(private, "server.pem")
        with open(os.open(chain, os.O_WRONLY | os.O_CREAT, 0o600), "w", encoding="utf-8") as f:
            f.write(config.server_key + "\n" + config.server_cert)
        context.load_cert_chain(chain)
    if config.custom_ca:
        context.load_verify_locations(cadata=config.custom_ca)
    if config.client_verify:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_pem(path: Optional[str], what: str) -> Optional[bytes]:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise ValueError(f"cannot read the {what} {path}: {error.strerror}") from error


def channel_credentials(
    ca_cert: Optional[str] = None, client_cert: Optional[str] = None, client_key: Optional[str] = None
) -> Optional[grpc.ChannelCredentials]:
    """TLS credentials for a client from PEM files, or None for a plaintext channel (no file given).

    `ca_cert` verifies the server (default: the system's roots); `client_cert` and `client_key`, given
    together, prove the client to a server with `client_verify`.
    """
    if (client_cert is None) != (client_key is None):
        raise ValueError("--client-cert and --client-key go together (the certificate and its private key)")
    if ca_cert is None and client_cert is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(ca_cert, "CA certificate"),
        private_key=_read_pem(client_key, "client key"),
        certificate_chain=_read_pem(client_cert, "client certificate"),
    )
