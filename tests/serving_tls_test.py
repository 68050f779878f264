"""TLS and mutual TLS from TF Serving's SSLConfig: plain clients, clients of another CA and clients
without a certificate are refused; good clients (library, `pneumonia predict`, HTTPS) are answered."""

import argparse
import datetime
import http.client
import ipaddress
import json
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf import text_format

from pneumonia.cli import main
from serving import cli, config, tls
from serving.client import ClientError, PredictionClient
from serving.rest import RestHandler
from tests.serving_fixtures import MODEL_NAME, exported_models, model_base, png, start_server  # noqa: F401


def _pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(subject: str, key, issuer=None, issuer_key=None, names=(), ca=False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


class Authority:
    """A test CA that issues server and client certificates, written as PEM files."""

    def __init__(self, folder, name: str):
        self.folder, self.name = folder, name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = _certificate(f"{name} test CA", self.key, ca=True)
        self.cert_file = self._write(f"{name}-ca.pem", self.certificate.public_bytes(serialization.Encoding.PEM))

    def _write(self, file_name: str, data: bytes) -> str:
        path = self.folder / file_name
        path.write_bytes(data)
        return str(path)

    def issue(self, subject: str, names=()):
        """(certificate PEM file, key PEM file) signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _certificate(subject, key, self.certificate, self.key, names)
        return (
            self._write(f"{self.name}-{subject}.pem", certificate.public_bytes(serialization.Encoding.PEM)),
            self._write(f"{self.name}-{subject}-key.pem", _pem(key)),
        )


def ssl_config_file(folder, authority: Authority, client_verify: bool) -> str:
    """TF Serving's SSLConfig text proto for a server certificate of `authority` valid for this machine."""
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert, key = authority.issue("server", names)
    message = tls.SSLConfig(
        server_key=open(key).read(),
        server_cert=open(cert).read(),
        custom_ca=open(authority.cert_file).read(),
        client_verify=client_verify,
    )
    path = folder / f"ssl-{client_verify}.config"
    path.write_text(text_format.MessageToString(message))
    return str(path)


@pytest.fixture(scope="module")
def authorities(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    return folder, Authority(folder, "hospital"), Authority(folder, "other")


def serve_tls(model_base, folder, authority, client_verify: bool):
    ssl_config = tls.read_ssl_config(ssl_config_file(folder, authority, client_verify))
    return start_server(config.model_config(MODEL_NAME, model_base), ssl_config=ssl_config)


def predict(server, **credentials):
    with PredictionClient(f"127.0.0.1:{server.grpc_port}", retries=0, timeout_seconds=20, **credentials) as client:
        return client.predict([png()])


def rest_status(server, context: ssl.SSLContext):
    connection = http.client.HTTPSConnection("127.0.0.1", server.rest_port, context=context, timeout=20)
    connection.request("GET", f"/v1/models/{MODEL_NAME}")
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_tls_serves_only_clients_that_trust_its_ca(model_base, authorities):
    folder, hospital, other = authorities
    server = serve_tls(model_base, folder, hospital, client_verify=False)
    try:
        assert predict(server, ca_cert=hospital.cert_file)[0].model_version == 1
        with pytest.raises(ClientError, match="unavailable|TLS"):
            predict(server)  # plaintext
        with pytest.raises(ClientError, match="TLS with server .* failed"):
            predict(server, ca_cert=other.cert_file)
        status, body = rest_status(server, ssl.create_default_context(cafile=hospital.cert_file))
        assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
        with pytest.raises(ssl.SSLCertVerificationError):
            rest_status(server, ssl.create_default_context(cafile=other.cert_file))
        plain = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=20)
        plain.request("GET", f"/v1/models/{MODEL_NAME}")
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            plain.getresponse()
    finally:
        server.stop(1)


def test_mutual_tls_refuses_clients_without_a_certificate_from_custom_ca(model_base, authorities, tmp_path, capsys):
    folder, hospital, other = authorities
    server = serve_tls(model_base, folder, hospital, client_verify=True)
    good_cert, good_key = hospital.issue("radiology-workstation")
    foreign_cert, foreign_key = other.issue("intruder")
    try:
        assert predict(server, ca_cert=hospital.cert_file, client_cert=good_cert, client_key=good_key)
        with pytest.raises(ClientError, match="TLS with server .* failed|unavailable"):
            predict(server, ca_cert=hospital.cert_file)  # no client certificate
        with pytest.raises(ClientError, match="TLS with server .* failed|unavailable"):
            predict(server, ca_cert=hospital.cert_file, client_cert=foreign_cert, client_key=foreign_key)
        image = tmp_path / "x.png"
        image.write_bytes(png())
        main(
            [
                "predict",
                str(image),
                "--server",
                f"127.0.0.1:{server.grpc_port}",
                "--json",
                "--ca-cert",
                hospital.cert_file,
                "--client-cert",
                good_cert,
                "--client-key",
                good_key,
            ]
        )
        assert json.loads(capsys.readouterr().out)["version"] == 1
        with_client = ssl.create_default_context(cafile=hospital.cert_file)
        with_client.load_cert_chain(good_cert, good_key)
        assert rest_status(server, with_client)[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            rest_status(server, ssl.create_default_context(cafile=hospital.cert_file))
    finally:
        server.stop(1)


def test_a_silent_client_is_cut_off_and_does_not_hold_a_rest_worker(model_base, authorities, monkeypatch):
    folder, hospital, _ = authorities
    monkeypatch.setattr(RestHandler, "timeout", 0.5)
    server = serve_tls(model_base, folder, hospital, client_verify=False)
    silent = [socket.create_connection(("127.0.0.1", server.rest_port)) for _ in range(12)]  # more than the workers
    try:
        for connection in silent:
            connection.settimeout(10)
            assert connection.recv(1) == b"", "the server kept a silent connection open"
        assert rest_status(server, ssl.create_default_context(cafile=hospital.cert_file))[0] == 200
    finally:
        for connection in silent:
            connection.close()
        server.stop(1)


def test_unusable_ssl_configs_and_client_flags_are_one_line_errors(authorities, tmp_path):
    folder, hospital, other = authorities
    good = tls.read_ssl_config(ssl_config_file(folder, hospital, client_verify=True))
    cases = {
        "server_key must hold the PEM text": f'server_key: "{folder / "hospital-server-key.pem"}"',
        "client_verify needs custom_ca": text_format.MessageToString(
            tls.SSLConfig(server_key=good.server_key, server_cert=good.server_cert, client_verify=True)
        ),
        "cannot be used": text_format.MessageToString(  # the key of another certificate
            tls.SSLConfig(server_key=open(other.issue("server")[1]).read(), server_cert=good.server_cert)
        ),
        "is not a SSLConfig text proto": "server_keys: 1",
    }
    for message, text in cases.items():
        path = tmp_path / "ssl.config"
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            tls.read_ssl_config(str(path))
    with pytest.raises(ClientError, match="--client-cert and --client-key go together"):
        PredictionClient("127.0.0.1:1", ca_cert=hospital.cert_file, client_cert=hospital.cert_file)
    image = tmp_path / "x.png"
    image.write_bytes(png())
    with pytest.raises(SystemExit, match="error: cannot read the CA certificate"):
        main(["predict", str(image), "--ca-cert", str(tmp_path / "missing.pem")])


def test_plaintext_off_this_machine_prints_one_warning(capsys):
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    for host, warned in (
        ("127.0.0.1", False),
        ("localhost", False),
        ("::1", False),
        ("0.0.0.0", True),
        ("10.1.2.3", True),
    ):
        cli.serving_security(parser.parse_args(["serve", "--host", host]))
        err = capsys.readouterr().err
        assert (err.count("\n") == 1 and err.startswith(f"warning: serving {host} in plaintext")) == warned, host
        assert warned or err == ""
