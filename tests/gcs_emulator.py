"""A Google Cloud Storage API on loopback that TensorFlow's own gs:// filesystem, TFX fileio and Beam reach,
and the `gcs` / `bucket` fixtures that use it.

`python -m tests.gcs_emulator` runs gcp-storage-emulator (the JSON and upload APIs, in memory) and prints one
JSON line: the environment a client process needs, then serves until its stdin closes.

TensorFlow 2.16's built-in GCS filesystem has its endpoints compiled in (https://www.googleapis.com and
https://storage.googleapis.com) and no emulator setting, but it talks through libcurl, which honours
`https_proxy`, `http_proxy` and `CURL_CA_BUNDLE`. So a proxy here answers CONNECT for those hosts with a
certificate from a throwaway CA (the bundle it names), and forwards each decrypted request to the emulator;
plain-http requests (the emulator's resumable-upload URLs name the original host) are forwarded alike.
google-cloud-storage (Beam's gcsio) reads STORAGE_EMULATOR_HOST and talks to the emulator directly.
(The tensorflow-io-gcs-filesystem plugin, which has an emulator setting, crashes on TF 2.16.2 with
TF_USE_MODULAR_FILESYSTEM=1: a segmentation fault on the first gs:// call.)
"""

import contextlib
import datetime
import http.client
import http.server
import json
import os
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
from typing import Iterator
from urllib.parse import urlsplit

import pytest

BUCKET = "pneumonia-test"
GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com", "oauth2.googleapis.com")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def write_certificates(folder: str) -> tuple:
    """(CA bundle, server certificate, server key) for GOOGLE_HOSTS, signed by a new CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject, issuer, public_key, signing_key, extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pneumonia test CA")])
    ca = certificate(
        ca_name, ca_name, ca_key.public_key(), ca_key, [(x509.BasicConstraints(ca=True, path_length=None), True)]
    )
    server = certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GOOGLE_HOSTS[0])]),
        ca_name,
        server_key.public_key(),
        ca_key,
        [(x509.SubjectAlternativeName([x509.DNSName(h) for h in GOOGLE_HOSTS]), False)],
    )
    paths = tuple(os.path.join(folder, name) for name in ("ca.pem", "server.pem", "server.key"))
    for path, content in zip(
        paths,
        (
            ca.public_bytes(serialization.Encoding.PEM),
            server.public_bytes(serialization.Encoding.PEM),
            server_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        ),
    ):
        with open(path, "wb") as f:
            f.write(content)
    return paths


def proxy_handler(emulator_port: int, tls: ssl.SSLContext):
    class Forwarder(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_CONNECT(self):
            self.send_response(200, "Connection established")
            self.end_headers()
            self.connection = tls.wrap_socket(self.connection, server_side=True)
            self.rfile = self.connection.makefile("rb")
            self.wfile = self.connection.makefile("wb")
            self.close_connection = False

        def read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, up to the blank line
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()

        def forward(self):
            target = urlsplit(self.path)
            path = target.path + (f"?{target.query}" if target.query else "") if target.scheme else self.path
            body = self.read_body()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream = http.client.HTTPConnection("127.0.0.1", emulator_port, timeout=60)
            upstream.request(self.command, path, body=body, headers=headers)
            answer = upstream.getresponse()
            content = answer.read()
            self.send_response(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in HOP_BY_HOP | {"content-length"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)
            self.wfile.flush()
            upstream.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = forward

        def log_message(self, *args):
            pass

    return Forwarder


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def accept_empty_uploads() -> None:
    """gcp-storage-emulator reads an empty media upload as no body and fails; TensorFlow writes one for
    every folder marker (gfile.makedirs)."""
    from gcp_storage_emulator import server

    read_data = server._read_data

    def read_data_or_empty(request_handler, query):
        data = read_data(request_handler, query)
        return b"" if data is None and query.get("uploadType") == ["media"] else data

    server._read_data = read_data_or_empty


def main() -> None:
    from gcp_storage_emulator.server import create_server

    accept_empty_uploads()
    emulator = create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
    emulator.start()
    emulator_port = emulator._api._httpd.server_address[1]
    folder = tempfile.mkdtemp(prefix="gcs-emulator-")
    ca_bundle, certificate, key = write_certificates(folder)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certificate, key)
    proxy = ThreadingServer(("127.0.0.1", 0), proxy_handler(emulator_port, tls))
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
    print(
        json.dumps(
            {
                "https_proxy": proxy_url,
                "http_proxy": proxy_url,
                "no_proxy": "127.0.0.1,localhost",
                "CURL_CA_BUNDLE": ca_bundle,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
                "NO_GCE_CHECK": "true",
                "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{emulator_port}",
                "GOOGLE_CLOUD_PROJECT": "test",
            }
        ),
        flush=True,
    )
    sys.stdin.read()  # until the test process closes the pipe
    proxy.shutdown()
    emulator.stop()


@contextlib.contextmanager
def running() -> Iterator[None]:
    """This process talks to a fresh emulator (its environment set) until the block ends."""
    emulator = subprocess.Popen(
        [sys.executable, "-m", "tests.gcs_emulator"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    saved = dict(os.environ)
    try:
        os.environ.update(json.loads(emulator.stdout.readline()))
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        emulator.stdin.close()
        emulator.wait(timeout=30)


@pytest.fixture(scope="module")
def gcs():
    with running():
        yield f"gs://{BUCKET}"


@pytest.fixture
def bucket(gcs, tmp_path, monkeypatch):
    """A fresh gs:// folder; the working directory is an empty local folder, checked afterwards (a gs:// path
    mistaken for a local one would be created there)."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    root = f"{gcs}/{tmp_path.name}"
    yield root
    assert not os.listdir(workdir), f"written to the local disk instead of {root}: {os.listdir(workdir)}"


def files_under(root: str):
    """Every object under root, relative to it (what `gsutil ls -r` would list)."""
    import tensorflow as tf

    return sorted(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in tf.io.gfile.walk(root)
        for name in names
    )


if __name__ == "__main__":
    main()
