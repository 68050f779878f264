"""`pneumonia serve` and `pneumonia predict`, added to the main CLI by `add_commands`."""

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Dict, List

from serving import batching
from serving.pixels import DEFAULT_MAX_DECODED_PIXELS, DEFAULT_MAX_WAIT_SECONDS

DEFAULT_SERVING_DIR = os.path.join(os.path.expanduser("~"), "pneumonia-runs", "serving")  # `pneumonia run`'s default
TF_SERVING_BINARY = "tensorflow_model_server"


def _labels(pairs: List[str]) -> Dict[str, int]:
    labels = {}
    for pair in pairs or []:
        label, _, version = pair.partition("=")
        if not label or not version.isdigit():
            raise SystemExit(f"error: --label {pair!r} must be NAME=VERSION, e.g. stable=3")
        labels[label] = int(version)
    return labels


def server_config(args: argparse.Namespace):
    from serving import config  # keeps TensorFlow out of CLI start-up

    try:
        if args.model_config_file:
            return config.read(args.model_config_file)
        return config.model_config(
            args.model_name,
            os.path.join(args.serving_dir, args.model_name),
            args.version_policy,
            args.versions or (),
            args.num_versions,
            _labels(args.label),
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}")


def tfserving_command(args: argparse.Namespace, config_path: str) -> List[str]:
    """The official model server's command line for the same settings."""
    reload = (
        [f"--model_config_file_poll_wait_seconds={max(1, round(args.config_poll_seconds))}"]
        if args.model_config_file and args.config_poll_seconds > 0
        else []
    )
    return [
        TF_SERVING_BINARY,
        f"--port={args.grpc_port}",
        f"--rest_api_port={args.rest_port}",
        f"--model_config_file={config_path}",
        *reload,
        f"--file_system_poll_wait_seconds={max(1, round(args.poll_seconds))}",
        f"--grpc_channel_arguments=grpc.max_receive_message_length={args.max_message_bytes}",
        *([f"--ssl_config_file={os.path.abspath(args.ssl_config_file)}"] if args.ssl_config_file else []),
        *(
            [f"--monitoring_config_file={os.path.abspath(args.monitoring_config_file)}"]
            if args.monitoring_config_file
            else []
        ),
        *(["--enable_batching=true"] if args.enable_batching else []),
        *(
            [f"--batching_parameters_file={os.path.abspath(args.batching_parameters_file)}"]
            if args.batching_parameters_file
            else []
        ),
    ]


def batching_options(args: argparse.Namespace):
    """The BatchingOptions of --enable-batching (TF Serving's defaults, or --batching-parameters-file), None
    without it; a file the official server would refuse stops the command here with one line."""
    if args.batching_parameters_file and not args.enable_batching:
        raise SystemExit(
            "error: --batching-parameters-file is set without --enable-batching (TF Serving refuses it too)"
        )
    if not args.enable_batching:
        return None
    try:
        return (
            batching.read_parameters(args.batching_parameters_file)
            if args.batching_parameters_file
            else batching.BatchingOptions()
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}")


def serving_security(args: argparse.Namespace):
    """(SSLConfig or None, PixelBudget) from the flags; warns when plaintext leaves this machine."""
    from serving import pixels, tls  # keeps TensorFlow out of CLI start-up

    try:
        ssl_config = tls.read_ssl_config(args.ssl_config_file) if args.ssl_config_file else None
        budget = pixels.PixelBudget(args.max_decoded_pixels, args.max_decode_wait_seconds)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    if ssl_config is None and not tls.is_loopback(args.host):
        print(
            f"warning: serving {args.host} in plaintext: anyone on the network can read the images and "
            "answers; pass --ssl-config-file (TLS) or bind 127.0.0.1",
            file=sys.stderr,
            flush=True,
        )
    return ssl_config, budget


def log_rotation(args: argparse.Namespace):
    """The request logs' rotation from the --request-log-* flags."""
    from serving import request_log  # keeps TensorFlow out of CLI start-up

    try:
        return request_log.Rotation(
            int(args.request_log_file_mb * 2**20), args.request_log_file_seconds, int(args.request_log_total_mb * 2**20)
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}")


def metrics_path(args: argparse.Namespace):
    """Where --monitoring-config-file has the REST port serve Prometheus metrics; None without one."""
    from serving import config  # keeps TensorFlow out of CLI start-up

    if not args.monitoring_config_file:
        return None
    try:
        path = config.read_monitoring(args.monitoring_config_file)
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    if path and not args.rest_port:
        raise SystemExit("error: --monitoring-config-file serves the metrics on the REST port: set --rest-port")
    return path


def cmd_serve(args: argparse.Namespace) -> None:
    from serving import config  # keeps TensorFlow out of CLI start-up

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    models = server_config(args)
    ssl_config, budget = serving_security(args)
    path = metrics_path(args)
    batching_parameters = batching_options(args)
    if args.backend == "tfserving":
        logged = [model.name for model in models.model_config_list.config if model.HasField("logging_config")]
        if logged:
            raise SystemExit(
                f"error: {TF_SERVING_BINARY} writes no request logs in open source (it has no log collector), so "
                f"the logging_config of {', '.join(logged)} would fail its load: serve with --backend python, or "
                "log from the DICOM node (docs/serving/operations.md#request-logs)"
            )
        if shutil.which(TF_SERVING_BINARY) is None:
            raise SystemExit(
                f"error: --backend tfserving needs {TF_SERVING_BINARY} on PATH; it is not "
                "pip-installable: use the tensorflow/serving image (serving/k8s/) or --backend python"
            )
        config_path = (
            os.path.abspath(args.model_config_file)
            if args.model_config_file and args.config_poll_seconds > 0
            else config.write(models, os.path.join(tempfile.mkdtemp(prefix="pneumonia-serve-"), "models.config"))
        )
        command = tfserving_command(args, config_path)
        print(" ".join(command), flush=True)
        os.execvp(command[0], command)  # the official server then receives SIGTERM itself

    from serving.models import State  # keeps TensorFlow out of CLI start-up
    from serving.server import ModelServer

    try:
        server = ModelServer(
            models,
            args.host,
            args.grpc_port,
            args.rest_port or None,
            args.poll_seconds,
            args.max_message_bytes,
            args.workers,
            budget=budget,
            ssl_config=ssl_config,
            web_page=not args.no_ui,
            config_file=args.model_config_file,
            config_poll_seconds=args.config_poll_seconds,
            metrics_path=path,
            log_rotation=log_rotation(args),
            batching=batching_parameters,
        ).start()
    except OSError as error:
        raise SystemExit(f"error: {error}")
    for model in server.manager.models.values():
        print(
            f"model {model.name!r} from {model.config.base_path}: versions "
            f"{[status.version for status in model.status() if status.state == State.AVAILABLE] or 'none yet'}"
        )
    if batching_parameters:
        print(f"batching: {batching_parameters}")
    scheme = "https" if ssl_config else "http"
    rest = f", {'HTTPS' if ssl_config else 'REST'} on {args.host}:{server.rest_port}" if server.rest_port else ""
    if server.rest_port and not args.no_ui:
        rest += f" (web page: {scheme}://{args.host}:{server.rest_port}/)"
    if path:
        rest += f", metrics at {scheme}://{args.host}:{server.rest_port}{path}"
    grpc_name = "gRPC+TLS" if ssl_config else "gRPC"
    print(
        f"serving {grpc_name} on {args.host}:{server.grpc_port}{rest}; SIGTERM or Ctrl-C stops it gracefully",
        flush=True,
    )
    server.serve_until_signalled()


def cmd_predict(args: argparse.Namespace) -> None:
    from serving.client import ClientError, PredictionClient, read_image  # keeps TensorFlow out of CLI start-up

    try:
        images = [read_image(path, args.allow_lateral) for path in args.images]
        with PredictionClient(
            args.server,
            args.model_name,
            args.timeout,
            ca_cert=args.ca_cert,
            client_cert=args.client_cert,
            client_key=args.client_key,
        ) as client:
            predictions = []
            for start in range(0, len(images), args.batch_size):
                predictions += client.predict(images[start : start + args.batch_size], args.version)
    except ClientError as error:
        raise SystemExit(f"error: {error}")
    for path, prediction in zip(args.images, predictions):
        if args.json:
            print(
                json.dumps(
                    {
                        "image": path,
                        "probability": prediction.probability,
                        "label": prediction.label,
                        "threshold": prediction.threshold,
                        "in_distribution": prediction.in_distribution,
                        "ood_score": prediction.ood_score,
                        "ood_threshold": prediction.ood_threshold,
                        "model": args.model_name,
                        "version": prediction.model_version,
                    }
                )
            )
        else:
            print(f"{path}: {prediction_line(prediction, args.model_name)}")


def prediction_line(prediction, model_name: str) -> str:
    """The class at the threshold, or first and in capitals, that the image is unlike the training X-rays."""
    answer = (
        f"{prediction.label} (probability {prediction.probability:.4f}, threshold {prediction.threshold:.4f}, "
        f"{model_name} version {prediction.model_version})"
    )
    if prediction.in_distribution is False:
        return (
            f"OUT OF DISTRIBUTION (OOD score {prediction.ood_score:.2f} > {prediction.ood_threshold:.2f}): "
            f"not like the X-rays the model was trained on, its answer is unreliable: {answer}"
        )
    return answer


def cmd_dicom_node(args: argparse.Namespace) -> None:
    from serving.client import ClientError  # keeps TensorFlow out of CLI start-up
    from serving.dicom_node import DicomNode, NodeConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = NodeConfig(
        ae_title=args.ae_title,
        host=args.host,
        port=args.port,
        server=args.server,
        model_name=args.model_name,
        log_path=os.path.abspath(args.log),
        salt=args.uid_salt or NodeConfig.salt,
        allow_lateral=args.allow_lateral,
        retry_seconds=args.retry_seconds,
        timeout_seconds=args.timeout,
        sr_dir=args.sr_dir and os.path.abspath(args.sr_dir),
        sc_dir=args.sc_dir and os.path.abspath(args.sc_dir),
        request_log_prefix=args.request_log and os.path.abspath(args.request_log),
        log_rotation=log_rotation(args),
        ca_cert=args.ca_cert,
        client_cert=args.client_cert,
        client_key=args.client_key,
    )
    if not 1 <= len(config.ae_title) <= 16:
        raise SystemExit(f"error: --ae-title {config.ae_title!r} must be 1 to 16 characters")
    try:
        node = DicomNode(config).start()
    except ClientError as error:
        raise SystemExit(f"error: {error}")
    except OSError as error:
        raise SystemExit(f"error: cannot listen on {args.host}:{args.port}: {error.strerror or error}")
    print(
        f"DICOM node {config.ae_title} listening on {args.host}:{node.port}, scoring through {args.server} "
        f"({args.model_name}); results to {config.log_path}; SIGTERM or Ctrl-C stops it",
        flush=True,
    )
    node.serve_until_signalled()
    print("stopped", flush=True)


def add_tls_client_arguments(parser: argparse.ArgumentParser) -> None:
    """The gRPC client's TLS flags, for every command that talks to the model server."""
    parser.add_argument("--ca-cert", help="PEM file of the CA that signed the server's certificate (turns on TLS)")
    parser.add_argument("--client-cert", help="PEM client certificate, for a server with client_verify (mutual TLS)")
    parser.add_argument("--client-key", help="PEM private key of --client-cert")


def add_request_log_arguments(parser: argparse.ArgumentParser) -> None:
    """How request log files rotate and how much disk they may take (serving/request_log.py)."""
    parser.add_argument(
        "--request-log-file-mb", type=float, default=64.0, help="close a request log file at this size (default 64)"
    )
    parser.add_argument(
        "--request-log-file-seconds",
        type=float,
        default=3600.0,
        help="close a request log file this long after it was opened (default 3600)",
    )
    parser.add_argument(
        "--request-log-total-mb",
        type=float,
        default=1024.0,
        help="closed request log files under one prefix may hold this much; the oldest are deleted beyond it "
        "(default 1024)",
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Adds `serve`, `predict` and `dicom-node` to the `pneumonia` command."""
    serve = commands.add_parser(
        "serve",
        help="serve pushed models over TF Serving's gRPC and REST APIs",
        description="Serve <serving-dir>/<model-name>/<version>/ with TF Serving's gRPC (PredictionService, "
        "ModelService) and REST APIs. New versions are picked up while serving.",
    )
    serve.add_argument(
        "--serving-dir",
        default=DEFAULT_SERVING_DIR,
        help=f"TF Serving base path holding <model-name>/<version>/ (default {DEFAULT_SERVING_DIR})",
    )
    serve.add_argument("--model-name", default="pneumonia", help="model to serve (default pneumonia)")
    serve.add_argument(
        "--model-config-file",
        help="TF Serving ModelServerConfig text proto (several models, policies, labels); "
        "replaces --serving-dir, --model-name and the version flags",
    )
    serve.add_argument(
        "--config-poll-seconds",
        type=float,
        default=0.0,
        help="with --model-config-file: read the file again this often when it changes (version "
        "labels written by `pneumonia calibrate --label`); 0 reads it once (default)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    serve.add_argument("--grpc-port", type=int, default=8500, help="gRPC port (default 8500; 0 picks a free one)")
    serve.add_argument("--rest-port", type=int, default=8501, help="REST port (default 8501; 0 turns REST off)")
    serve.add_argument(
        "--version-policy",
        choices=["latest", "all", "specific"],
        default="latest",
        help="which versions to serve (default latest)",
    )
    serve.add_argument(
        "--num-versions", type=int, default=1, help="versions kept by --version-policy latest (default 1)"
    )
    serve.add_argument("--versions", type=int, nargs="+", metavar="N", help="versions for --version-policy specific")
    serve.add_argument(
        "--label",
        action="append",
        metavar="NAME=VERSION",
        help="version label, repeatable (e.g. --label stable=3 --label canary=4)",
    )
    serve.add_argument("--poll-seconds", type=float, default=1.0, help="how often to look for new versions (default 1)")
    serve.add_argument(
        "--max-message-bytes",
        type=int,
        default=16 * 1024 * 1024,
        help="largest request accepted, in bytes (default 16 MiB)",
    )
    serve.add_argument("--workers", type=int, default=8, help="request worker threads (default 8)")
    serve.add_argument(
        "--max-decoded-pixels",
        type=int,
        default=DEFAULT_MAX_DECODED_PIXELS,
        help="memory budget: image pixels (declared by their headers) decoded at once across all "
        f"requests (default {DEFAULT_MAX_DECODED_PIXELS:,}); a request over the whole "
        "budget is refused, others wait for room",
    )
    serve.add_argument(
        "--max-decode-wait-seconds",
        type=float,
        default=DEFAULT_MAX_WAIT_SECONDS,
        help="longest a request waits for room in the pixel budget before RESOURCE_EXHAUSTED "
        f"(default {DEFAULT_MAX_WAIT_SECONDS:g})",
    )
    serve.add_argument(
        "--ssl-config-file",
        help="TF Serving SSLConfig text proto (server_key, server_cert, custom_ca, client_verify): "
        "gRPC then serves only TLS (mutual TLS with client_verify) and REST only HTTPS",
    )
    serve.add_argument(
        "--monitoring-config-file",
        help="TF Serving MonitoringConfig text proto: with prometheus_config { enable: true }, the REST port serves "
        "Prometheus metrics at its path (default /monitoring/prometheus/metrics)",
    )
    add_request_log_arguments(serve)
    serve.add_argument(
        "--enable-batching",
        action="store_true",
        help="merge concurrent Predict/Classify requests to the same model version and signature into one "
        "model call, as TF Serving's --enable_batching (defaults: max_batch_size 1000, batch_timeout_micros 0, "
        "max_enqueued_batches 10, num_batch_threads one per CPU)",
    )
    serve.add_argument(
        "--batching-parameters-file",
        metavar="FILE",
        help="with --enable-batching: TF Serving's BatchingParameters text proto (max_batch_size, "
        "batch_timeout_micros, max_enqueued_batches, num_batch_threads, allowed_batch_sizes), the file the "
        "official server reads; a file it would refuse is refused before serving",
    )
    serve.add_argument(
        "--no-ui", action="store_true", help="do not serve the web page at / on the REST port (the REST API stays)"
    )
    serve.add_argument(
        "--backend",
        choices=["python", "tfserving"],
        default="python",
        help="python: the built-in server (default); tfserving: exec the official "
        f"{TF_SERVING_BINARY} from PATH with a generated model config",
    )
    serve.set_defaults(func=cmd_serve)

    predict = commands.add_parser(
        "predict",
        help="classify images with a served model over gRPC",
        description="Send images to a served model (gRPC Predict on predict_images) and print, per image, the "
        "class at the model's threshold, the probability, the threshold and the model version; an image "
        "the model's out-of-distribution guard flags is marked OUT OF DISTRIBUTION.",
    )
    predict.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="JPEG or PNG files, or DICOM files (sent as the PNG serving/dicom.py makes of them)",
    )
    predict.add_argument(
        "--allow-lateral",
        action="store_true",
        help="score lateral DICOM views too (refused by default: the model reads frontal films)",
    )
    predict.add_argument(
        "--server", default="127.0.0.1:8500", help="HOST:PORT of the gRPC server (default 127.0.0.1:8500)"
    )
    predict.add_argument("--model-name", default="pneumonia", help="served model name (default pneumonia)")
    predict.add_argument("--version", type=int, help="model version (default: the latest served)")
    predict.add_argument("--json", action="store_true", help="print one JSON object per image")
    predict.add_argument("--batch-size", type=int, default=32, help="images per request (default 32)")
    predict.add_argument("--timeout", type=float, default=30.0, help="deadline per request in seconds (default 30)")
    add_tls_client_arguments(predict)
    predict.set_defaults(func=cmd_predict)

    node = commands.add_parser(
        "dicom-node",
        help="a DICOM C-STORE SCP that scores the chest X-rays a PACS sends it",
        description="Receive DICOM instances (C-STORE), score each chest X-ray through the served model over gRPC, "
        "answer with a DICOM status and append one JSON line per instance to --log.",
    )
    node.add_argument("--ae-title", default="PNEUMONIA", help="this node's AE title (default PNEUMONIA)")
    node.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    node.add_argument("--port", type=int, default=11112, help="DICOM port (default 11112; 0 picks a free one)")
    node.add_argument(
        "--server", default="127.0.0.1:8500", help="HOST:PORT of the model server's gRPC API (default 127.0.0.1:8500)"
    )
    node.add_argument("--model-name", default="pneumonia", help="served model name (default pneumonia)")
    node.add_argument(
        "--log", default="dicom-node.jsonl", help="JSON-lines result log, appended (default dicom-node.jsonl)"
    )
    node.add_argument(
        "--uid-salt",
        default=os.environ.get("PNEUMONIA_SALT"),
        help="key of the hash SOP Instance UIDs are logged as (default $PNEUMONIA_SALT, else the "
        "public built-in salt: set a secret one)",
    )
    node.add_argument("--allow-lateral", action="store_true", help="score lateral views too (refused by default)")
    node.add_argument(
        "--retry-seconds",
        type=float,
        default=20.0,
        help="how long an unavailable model server is retried before answering 0xA700 so the sender "
        "re-sends (default 20, below a typical 30 s DIMSE timeout)",
    )
    node.add_argument(
        "--timeout", type=float, default=10.0, help="deadline per scoring request in seconds (default 10)"
    )
    node.add_argument("--sr-dir", help="also write a DICOM Comprehensive SR with each result into this folder")
    node.add_argument(
        "--sc-dir",
        help="also write a DICOM Secondary Capture of each scored film with its Grad-CAM "
        "heatmap and the result burned in (scores through explain_images, slower)",
    )
    node.add_argument(
        "--request-log",
        metavar="PREFIX",
        help="also log each scored film as a PredictionLog (image statistics, no image, the hashed SOP Instance "
        "UID as its id) to TFRecord files under this filename prefix, as `pneumonia serve`'s logging_config does",
    )
    add_request_log_arguments(node)
    add_tls_client_arguments(node)
    node.set_defaults(func=cmd_dicom_node)
