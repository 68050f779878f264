"""`pneumonia dicom-node`: a DICOM C-STORE SCP that scores each chest X-ray a PACS sends it.

Each received instance is checked and turned into the model's PNG by serving/dicom.py (the same bytes as
prepare and predict), scored through the served model over gRPC, and answered with a DICOM status:

| status | when |
|---|---|
| 0x0000 Success | scored; the result is in the log (and the SR with --sr-dir, the Secondary Capture with --sc-dir) |
| 0x0122 Refused: SOP class not supported | not a CR or DX image (a CT, an SR, a PDF...) |
| 0xA900 Error: data set does not match SOP class | an image SOP class without PixelData |
| 0xC000 Error: cannot understand | a refused radiograph: modality, body part, lateral, colour, frames, syntax |
| 0xA700 Refused: out of resources | the model server stayed unavailable for --retry-seconds: the PACS re-sends |
| 0xC001 Error: cannot understand | the model server answered with an error other than unavailable |

Every instance gives one JSON line in the log, answered or not: the SOP Instance UID only as a keyed hash,
then probability, class, threshold, the OOD outputs when the model has them, model version and latency. With
--request-log PREFIX, each scored film is also logged as the server's request logs record a request
(serving/request_log.py: statistics, never the film, the hashed UID as its id), for `pneumonia monitor`.

With --sc-dir the film is scored through `explain_images` instead of `predict_images` (the same outputs plus
Grad-CAM, for a backward pass more) and written as a Secondary Capture with the heatmap over it. A capture
that cannot be written is logged (`sc_error`) and the film still answered Success: the result is in the log
(and the SR), and a failure status would report a scored film to the PACS as failed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from typing import Optional

import highdicom as hd
import numpy as np
from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
    ContentSequence,
    NumContentItem,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from tensorflow_serving.apis import model_pb2

from serving import capture, dicom, request_log
from serving.client import EXPLAIN_SIGNATURE, IMAGE_SIGNATURE, ClientError, Prediction, PredictionClient

LOG = logging.getLogger("serving.dicom_node")
RADIOGRAPH_SOP_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
SCORING_FAILED = 0xC001
REFUSALS = (SOP_CLASS_NOT_SUPPORTED, DOES_NOT_MATCH_SOP_CLASS, CANNOT_UNDERSTAND)  # the rest are failures to score
ERROR_COMMENT_CHARS = 64  # ErrorComment is an LO


@dataclasses.dataclass
class NodeConfig:
    ae_title: str = "PNEUMONIA"
    host: str = "127.0.0.1"
    port: int = 11112
    server: str = "127.0.0.1:8500"
    model_name: str = "pneumonia"
    log_path: str = "dicom-node.jsonl"
    salt: str = dicom.DEFAULT_SALT
    allow_lateral: bool = False
    retry_seconds: float = 20.0  # below a typical sender's 30 s DIMSE timeout
    timeout_seconds: float = 10.0
    sr_dir: Optional[str] = None
    sc_dir: Optional[str] = None  # Secondary Captures with the heatmap; scores through explain_images
    ca_cert: Optional[str] = None  # TLS to the model server, as `pneumonia predict`
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    request_log_prefix: Optional[str] = None  # filename prefix of the PredictionLog files of the scored films
    log_rotation: request_log.Rotation = request_log.DEFAULT_ROTATION


class Outcome(Exception):
    """Ends the handling of one instance with a DICOM status and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Scored:
    prediction: Prediction
    dataset: Dataset
    png: bytes  # what the model read
    gradcam: Optional[np.ndarray]  # only when the node writes Secondary Captures


class DicomNode:
    """The SCP: `start()` listens in background threads; `stop()` ends it. One gRPC channel serves all
    associations (gRPC reconnects by itself after a server restart)."""

    def __init__(self, config: NodeConfig):
        self.config = config
        self._client = PredictionClient(
            config.server,
            config.model_name,
            config.timeout_seconds,
            retries=0,
            ca_cert=config.ca_cert,
            client_cert=config.client_cert,
            client_key=config.client_key,
        )
        self._log_lock = threading.Lock()
        self._request_log = (
            request_log.RequestLogWriter(config.request_log_prefix, config.log_rotation)
            if config.request_log_prefix
            else None
        )
        self._server = None
        self.ae = AE(ae_title=config.ae_title)
        # Every storage SOP class and syntax is accepted, so a misrouted CT gets a status and a log line
        # instead of a failed negotiation nobody sees on this side.
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)

    def start(self) -> "DicomNode":
        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, lambda event: SUCCESS)]
        self._server = self.ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        return self

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        self._client.close()
        if self._request_log:
            self._request_log.close()

    def serve_until_signalled(self) -> None:
        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, _: stopping.set())
        stopping.wait()
        LOG.info("signal received: closing associations and stopping")
        self.stop()

    def handle_store(self, event) -> Dataset:
        """One C-STORE: check, convert, score, log; never raises (pynetdicom would answer a bare 0xC211)."""
        started = time.monotonic()
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "calling_ae": _ae(event.assoc.requestor.ae_title),
            "sop_class": UID(event.request.AffectedSOPClassUID).name,
            "sop_instance": dicom.pseudonym(str(event.request.AffectedSOPInstanceUID), self.config.salt),
        }
        try:
            scored = self._score(event, entry)
            entry.update(status=f"0x{SUCCESS:04X}", outcome="scored", **_result(scored.prediction))
            if self.config.sr_dir:
                report = result_report(scored.dataset, scored.prediction, self.config.model_name)
                entry["sr"] = self._save(report, self.config.sr_dir)
            if self.config.sc_dir:
                self._write_capture(scored, entry)
            if self._request_log:
                self._request_log.submit(self._log_entry(scored, entry["sop_instance"]))
            status = _status(SUCCESS)
        except Outcome as outcome:
            entry.update(
                status=f"0x{outcome.status:04X}",
                reason=str(outcome),
                outcome="refused" if outcome.status in REFUSALS else "failed",
            )
            status = _status(outcome.status, str(outcome))
        except Exception as error:  # a bug or a corrupt data set: a failure status, never a dropped image
            LOG.exception("unexpected error handling a C-STORE")
            entry.update(status=f"0x{SCORING_FAILED:04X}", outcome="failed", reason=f"internal error: {error}")
            status = _status(SCORING_FAILED, "internal error")
        entry["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
        self._append(entry)
        return status

    def _score(self, event, entry: dict) -> Scored:
        if event.request.AffectedSOPClassUID not in RADIOGRAPH_SOP_CLASSES:
            raise Outcome(SOP_CLASS_NOT_SUPPORTED, f"SOP class {entry['sop_class']} is not a CR or DX image")
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
        except Exception as error:  # the data set cannot be decoded
            raise Outcome(CANNOT_UNDERSTAND, f"unreadable data set: {error}") from None
        try:
            converted = dicom.to_model_input(dataset, self.config.allow_lateral)
        except dicom.DicomRefused as refused:
            status = DOES_NOT_MATCH_SOP_CLASS if "PixelData" not in dataset else CANNOT_UNDERSTAND
            raise Outcome(status, str(refused)) from None
        entry.update(view_position=converted.view_position, windowing=converted.windowing)
        png = converted.png
        if self.config.sc_dir:
            explanation = self._ask(lambda: self._client.explain([png])[0], entry)
            return Scored(explanation.prediction, dataset, png, explanation.gradcam)
        return Scored(self._ask(lambda: self._client.predict([png])[0], entry), dataset, png, None)

    def _ask(self, call, entry: dict):
        """`call()` to the model server, retrying an unavailable one (starting, restarting) until
        --retry-seconds have passed."""
        deadline, attempts = time.monotonic() + self.config.retry_seconds, 0
        while True:
            attempts += 1
            try:
                answer = call()
                entry["attempts"] = attempts
                return answer
            except ClientError as error:
                entry["attempts"] = attempts
                if not error.retryable:
                    raise Outcome(SCORING_FAILED, f"model server error: {error}") from None
                if time.monotonic() >= deadline:
                    raise Outcome(
                        OUT_OF_RESOURCES, f"model server unavailable for {self.config.retry_seconds:g} s: {error}"
                    ) from None
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def _write_capture(self, scored: Scored, entry: dict) -> None:
        """The Secondary Capture into --sc-dir, its file name logged as `sc`; a failure is logged as `sc_error`
        and does not change the film's status (see the module docstring)."""
        try:
            pixels = capture.overlay(scored.png, scored.gradcam, capture.caption(scored.prediction))
            image = capture.secondary_capture(
                scored.dataset, pixels, self.config.model_name, scored.prediction.model_version
            )
            entry["sc"] = self._save(image, self.config.sc_dir)
        except Exception as error:  # only the type and an OS reason: other messages may quote header values
            reason = type(error).__name__ + (f": {error.strerror}" if isinstance(error, OSError) else "")
            LOG.error("could not write a Secondary Capture: %s", reason)
            entry["sc_error"] = reason

    def _save(self, dataset: Dataset, folder: str) -> str:
        """Writes <folder>/<the hashed SOP Instance UID>.dcm whole: aside first, then renamed, so a router
        never picks up half a file."""
        name = f"{dicom.pseudonym(str(dataset.SOPInstanceUID), self.config.salt)}.dcm"
        os.makedirs(folder, exist_ok=True)
        staging = os.path.join(folder, f".{name}.partial")
        try:
            dataset.save_as(staging, enforce_file_format=True)
            os.replace(staging, os.path.join(folder, name))
        except BaseException:
            if os.path.exists(staging):
                os.remove(staging)  # no half file left behind (a full disk, a stop mid-write)
            raise
        return name

    def _log_entry(self, scored: Scored, sop_instance: str) -> request_log.Entry:
        """The scored film as the server's request log records a request: its statistics, never the film, and the
        hashed SOP Instance UID as its id."""
        prediction = scored.prediction
        spec = model_pb2.ModelSpec(
            name=self.config.model_name, signature_name=EXPLAIN_SIGNATURE if self.config.sc_dir else IMAGE_SIGNATURE
        )
        spec.version.value = prediction.model_version
        outputs = {
            "probability": np.array([prediction.probability], np.float32),
            "label": np.array([prediction.label.encode()], dtype=object),
            "threshold": np.array([prediction.threshold], np.float32),
        }
        if prediction.in_distribution is not None:
            outputs.update(
                in_distribution=np.array([prediction.in_distribution]),
                ood_score=np.array([prediction.ood_score], np.float32),
                ood_threshold=np.array([prediction.ood_threshold], np.float32),
            )
        return request_log.Entry(spec, "DICOM", [sop_instance], [scored.png], outputs)

    def _append(self, entry: dict) -> None:
        line = json.dumps(entry, sort_keys=True)
        with self._log_lock, open(self.config.log_path, "a", encoding="utf-8") as log:
            log.write(line + "\n")
            log.flush()
            os.fsync(log.fileno())


def _result(prediction: Prediction) -> dict:
    result = {
        "probability": prediction.probability,
        "class": prediction.label,
        "threshold": prediction.threshold,
        "model_version": prediction.model_version,
    }
    if prediction.ood_score is not None:
        result["ood_score"] = prediction.ood_score
    if prediction.in_distribution is not None:
        result["in_distribution"] = prediction.in_distribution
    return result


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:ERROR_COMMENT_CHARS]
    return status


def _ae(title) -> str:
    return (title.decode("ascii", "replace") if isinstance(title, bytes) else str(title)).strip()


def result_report(source: Dataset, prediction: Prediction, model_name: str) -> Dataset:
    """The result as a DICOM Comprehensive SR (highdicom) in the source image's study, referencing it."""
    contains = RelationshipTypeValues.CONTAINS
    finding = (
        CodedConcept("233604007", "SCT", "Pneumonia")
        if prediction.label == "PNEUMONIA"
        else CodedConcept("17621005", "SCT", "Normal")
    )
    unitless = CodedConcept("1", "UCUM", "no units")
    items = [
        CodeContentItem(name=CodedConcept("121071", "DCM", "Finding"), value=finding, relationship_type=contains),
        NumContentItem(
            name=CodedConcept("PROB", "99PNEUMONIA", "Probability of pneumonia"),
            value=round(prediction.probability, 6),
            unit=unitless,
            relationship_type=contains,
        ),
        NumContentItem(
            name=CodedConcept("THRESH", "99PNEUMONIA", "Operating threshold"),
            value=round(prediction.threshold, 6),
            unit=unitless,
            relationship_type=contains,
        ),
        TextContentItem(
            name=CodedConcept("111001", "DCM", "Algorithm Name"), value=model_name, relationship_type=contains
        ),
        TextContentItem(
            name=CodedConcept("111003", "DCM", "Algorithm Version"),
            value=str(prediction.model_version),
            relationship_type=contains,
        ),
    ]
    if prediction.in_distribution is not None:
        items.append(
            TextContentItem(
                name=CodedConcept("OOD", "99PNEUMONIA", "Out of distribution"),
                value="no" if prediction.in_distribution else "yes",
                relationship_type=contains,
            )
        )
    root = ContainerContentItem(name=CodedConcept("126000", "DCM", "Imaging Measurement Report"))
    root.ContentSequence = ContentSequence(items)
    evidence = copy.copy(source)
    for keyword in ("StudyTime", "StudyDate", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        evidence.setdefault(keyword, "")  # type 2 attributes highdicom copies; empty is allowed
    return hd.sr.ComprehensiveSR(
        evidence=[evidence],
        content=root,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="pneumonia-pipeline",
        is_complete=True,
    )
