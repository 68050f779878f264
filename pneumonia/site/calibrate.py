"""`pneumonia calibrate`: set a deployed model's threshold for one site, as a new served version.

Labelled (`--site FOLDER` with NORMAL/ and PNEUMONIA/): the run's policy (or `--policy`) chooses the
threshold on the site's images; sensitivity and specificity before and after are printed with 95% Wilson
intervals. Unlabelled (`--unlabeled FOLDER`): the site's pneumonia prevalence is estimated by the EM
procedure of Saerens, Latinne & Decaestecker (2002) on the model's probabilities; the site's score
distribution is compared with validation's (two-sample Kolmogorov-Smirnov); with `--adjust-prior` the
threshold moves to the estimated prior.

Either way the new version holds the same weights (re-exported through trainer/signatures.py, checked to
score identically) and is written by the Pusher's atomic write, with its warm-up requests, under the next
version number; `--label`
points a version label in the server's model config file at it. Every check runs before anything is
written, so a bad input leaves the serving directory and the config file as they were.
"""

import dataclasses
import os
import tempfile
from typing import Dict, List, Optional

import numpy as np
from google.protobuf import text_format
from scipy import stats

from components.pusher.warmup import write_warmup_requests
from components.threshold_calibrator import calibration
from components.threshold_calibrator.executor import predict_images, reexport
from components.threshold_calibrator.prevalence import (
    TRAINING_PRIOR,
    bootstrap_prevalence,
    em_prevalence,
    prior_adjusted_threshold,
)
from pipeline.config import BLESSING_SPLIT, RunConfig
from pneumonia.data.images import BadImage, inspect_image
from pneumonia.data.records import read_split
from serving import config as serving_config
from serving.repository import model_fingerprint, push_atomically, servable_versions
from trainer import signatures, threshold

LABEL_FOLDERS = {"NORMAL": 0, "PNEUMONIA": 1}
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
MIN_UNLABELED = 20


class CalibrateError(Exception):
    """A bad request or input; the message is one line."""


@dataclasses.dataclass(frozen=True)
class SiteOptions:
    """What `pneumonia calibrate` was asked: which served version, which site folder, and how."""

    serving_dir: str
    model_name: str
    version: Optional[int] = None
    site: Optional[str] = None  # labelled: FOLDER/NORMAL/, FOLDER/PNEUMONIA/
    unlabeled: Optional[str] = None
    policy: Optional[str] = None
    label: Optional[str] = None
    model_config_file: Optional[str] = None
    reference: Optional[str] = None
    adjust_prior: bool = False
    model_prior: float = TRAINING_PRIOR
    seed: int = 0


def calibrate(options: SiteOptions) -> None:
    """Labelled when `options.site` is given, else unlabelled; prints what it measured and wrote."""
    (calibrate_labelled if options.site else calibrate_unlabeled)(options)


@dataclasses.dataclass
class SiteImages:
    paths: List[str]
    images: List[bytes]
    labels: Optional[np.ndarray]  # None for unlabelled images


def _listed(folder: str) -> List[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, name) for name in sorted(filenames) if not name.startswith(".")]
    return found


def read_site(folder: str, labelled: bool) -> SiteImages:
    """Every image under `folder` (labelled: from NORMAL/ and PNEUMONIA/ only). Any file that is not a readable
    X-ray, or (labelled) lies outside the class folders, fails the whole request, all of them listed."""
    if not os.path.isdir(folder):
        raise CalibrateError(f"{folder} is not a folder")
    problems, site = [], SiteImages([], [], None)
    labels = []
    for path in _listed(folder):
        relative = os.path.relpath(path, folder)
        parts = relative.split(os.sep)
        if labelled and (len(parts) != 2 or parts[0].upper() not in LABEL_FOLDERS):
            problems.append(f"{relative} (not in NORMAL/ or PNEUMONIA/)")
            continue
        if not path.lower().endswith(IMAGE_SUFFIXES):
            problems.append(f"{relative} (not a .jpeg, .jpg or .png file)")
            continue
        try:
            with open(path, "rb") as f:
                data = f.read()
            inspect_image(data)
        except (OSError, BadImage) as error:
            problems.append(f"{relative} ({getattr(error, 'strerror', None) or error})")
            continue
        site.paths.append(path)
        site.images.append(data)
        if labelled:
            labels.append(LABEL_FOLDERS[parts[0].upper()])
    if problems:
        raise CalibrateError(f"{len(problems)} unusable file(s) in {folder}: {'; '.join(problems)}")
    if labelled:
        site.labels = np.array(labels, dtype=np.int64)
    return site


def resolve_version(model_base: str, version: Optional[int]) -> int:
    """The version to calibrate: `version`, which must exist, or the latest."""
    versions = servable_versions(model_base)
    if not versions:
        raise CalibrateError(f"no model versions under {model_base}")
    if version is None:
        return versions[-1]
    if version not in versions:
        raise CalibrateError(
            f"version {version} does not exist under {model_base}; versions: {', '.join(map(str, versions))}"
        )
    return version


def validation_scores(saved_model_dir: str, data: str) -> np.ndarray:
    """The model's probabilities on the prepared validation split under `data` (pneumonia prepare's output)."""
    images, _ = read_split(data, BLESSING_SPLIT)
    if not images:
        raise CalibrateError(
            f"no prepared {BLESSING_SPLIT} split under {data}: pass --reference, the folder `pneumonia prepare` wrote"
        )
    return predict_images(saved_model_dir, images)


def _check_label_target(model_config_file: Optional[str], label: Optional[str], model_name: str):
    """The parsed model config to write the label into (checked before anything is written)."""
    if not label:
        return None
    if not model_config_file:
        raise CalibrateError(
            "--label needs --model-config-file FILE: the model server's config, where version "
            "labels live (serve it with --model-config-file FILE --config-poll-seconds N)"
        )
    try:
        parsed = serving_config.read(model_config_file)
    except ValueError as error:
        raise CalibrateError(str(error))
    if model_name not in [m.name for m in parsed.model_config_list.config]:
        raise CalibrateError(f"{model_config_file} does not list model {model_name!r}")
    return parsed


def _write_label(model_config_file: str, parsed, model_name: str, label: str, version: int) -> None:
    """Points `label` at `version` in the config file (written aside, then renamed over it); a `specific`
    policy gets the version added, so the label always names a served version."""
    model = next(m for m in parsed.model_config_list.config if m.name == model_name)  # base paths now absolute
    model.version_labels[label] = version
    if model.model_version_policy.WhichOneof("policy_choice") == "specific":
        if version not in model.model_version_policy.specific.versions:
            model.model_version_policy.specific.versions.append(version)
    staging = f"{model_config_file}.staging-{os.getpid()}"
    with open(staging, "w", encoding="utf-8") as f:
        f.write(text_format.MessageToString(parsed))
    os.replace(staging, model_config_file)


def _push(saved_model_dir: str, model_base: str, chosen, record: Dict, check_images: List[bytes]) -> int:
    """Re-exports the version with threshold `chosen` (aside, in a temporary folder) and pushes it atomically
    as the next version; returns its number."""
    with tempfile.TemporaryDirectory(prefix="pneumonia-calibrate-") as work:
        export_dir = os.path.join(work, "model")
        reexport(saved_model_dir, export_dir, chosen, os.path.join(work, "assets"), record, check_images)
        return int(
            push_atomically(
                export_dir,
                model_base,
                model_fingerprint(export_dir),
                saved_model_dir,
                add_files=lambda version_dir: write_warmup_requests(export_dir, version_dir),
            )
        )


@dataclasses.dataclass(frozen=True)
class Request:
    model_base: str
    version: int
    saved_model_dir: str
    metadata: dict
    label_config: object  # the parsed model config to label in, or None


def _request(options: SiteOptions) -> Request:
    model_base = os.path.join(os.path.abspath(options.serving_dir), options.model_name)
    version = resolve_version(model_base, options.version)
    saved_model_dir = os.path.join(model_base, str(version))
    try:
        metadata = signatures.read_metadata(saved_model_dir)
    except ValueError as error:
        raise CalibrateError(str(error))
    return Request(
        model_base,
        version,
        saved_model_dir,
        metadata,
        _check_label_target(options.model_config_file, options.label, options.model_name),
    )


def _finish(options: SiteOptions, request: Request, chosen, record: Dict, check_images: List[bytes]) -> None:
    new_version = _push(request.saved_model_dir, request.model_base, chosen, record, check_images)
    print(
        f"wrote {options.model_name} version {new_version} (from version {request.version}) with threshold "
        f"{chosen.value:.4f} in {request.model_base}"
    )
    if options.label:
        _write_label(options.model_config_file, request.label_config, options.model_name, options.label, new_version)
        print(f"version label {options.label} -> {new_version} in {options.model_config_file}")


def calibrate_labelled(options: SiteOptions) -> None:
    request = _request(options)
    policy = options.policy or calibration.policy_of(request.metadata["policy"])
    try:
        threshold.parse(policy)
    except ValueError as error:
        raise CalibrateError(str(error))
    site = read_site(options.site, labelled=True)
    try:
        calibration.check_sample(site.labels, f"site folder {options.site}")
    except calibration.CalibrationError as error:
        raise CalibrateError(str(error))
    scores = predict_images(request.saved_model_dir, site.images)
    chosen, record = calibration.calibrate(
        site.labels,
        scores,
        policy,
        float(request.metadata["value"]),
        f"site {options.label or os.path.basename(os.path.abspath(options.site))}",
        seed=options.seed,
    )
    record.update(source_version=request.version, site_folder=os.path.abspath(options.site))
    before, after = (calibration.Rates(**record[key]) for key in ("before", "after"))
    print(f"site {options.site}: {record['normal']} NORMAL, {record['pneumonia']} PNEUMONIA images; policy {policy}")
    print(f"  before (version {request.version}): {before.describe()}")
    print(
        f"  after:  {after.describe()}; threshold bootstrap 95% interval "
        f"[{record['threshold_interval'][0]:.4f}, {record['threshold_interval'][1]:.4f}]"
    )
    _finish(options, request, chosen, record, site.images[:64])


def calibrate_unlabeled(options: SiteOptions) -> None:
    request = _request(options)
    if not 0.0 < options.model_prior < 1.0:
        raise CalibrateError(f"--model-prior {options.model_prior} must be between 0 and 1")
    site = read_site(options.unlabeled, labelled=False)
    if len(site.images) < MIN_UNLABELED:
        raise CalibrateError(
            f"{options.unlabeled} holds {len(site.images)} images: at least {MIN_UNLABELED} are needed "
            f"to estimate a prevalence"
        )
    reference = options.reference or RunConfig().data
    validation = validation_scores(request.saved_model_dir, reference)
    scores = predict_images(request.saved_model_dir, site.images)
    prevalence, iterations = em_prevalence(scores, options.model_prior)
    lower, upper = bootstrap_prevalence(scores, options.model_prior, seed=options.seed)
    shift = stats.ks_2samp(scores, validation)
    old = float(request.metadata["value"])
    print(
        f"site {options.unlabeled}: {len(site.images)} unlabelled images, version {request.version} "
        f"(threshold {old:.4f})"
    )
    print(
        f"  estimated pneumonia prevalence {prevalence:.3f} (bootstrap 95% interval [{lower:.3f}, {upper:.3f}]; "
        f"EM of Saerens et al. 2002, {iterations} iterations, model prior {options.model_prior:g})"
    )
    print(
        f"  score shift vs validation ({validation.size} images): Kolmogorov-Smirnov D = {shift.statistic:.3f}, "
        f"p = {shift.pvalue:.3g}" + ("  (the site's scores differ from validation's)" if shift.pvalue < 0.05 else "")
    )
    if not options.adjust_prior:
        print("  threshold unchanged: pass --adjust-prior to move it to the estimated prevalence")
        return
    value = prior_adjusted_threshold(old, options.model_prior, prevalence)
    chosen = threshold.Threshold(
        value,
        f"prior-adjusted to {prevalence:.3f} on site {options.label or 'unlabelled'}",
        float("nan"),
        float("nan"),
        len(site.images),
    )
    record = {
        "calibrated": True,
        "where": os.path.abspath(options.unlabeled),
        "policy": "prior adjustment",
        "old_threshold": old,
        "new_threshold": value,
        "prevalence": prevalence,
        "prevalence_interval": [lower, upper],
        "model_prior": options.model_prior,
        "ks_statistic": float(shift.statistic),
        "ks_pvalue": float(shift.pvalue),
        "images": len(site.images),
        "source_version": request.version,
    }
    print(f"  threshold {old:.4f} -> {value:.4f} for prevalence {prevalence:.3f}")
    _finish(options, request, chosen, record, site.images[:64])
