"""Where images come from: a SOURCE (`[ROLE:]NAME=PATH`), the files of its layout as candidates, and the
project's sample data beside the checkout.

A PATH with `train/` (and optionally `val/`, `test/`) is the Kaggle layout: its splits are kept. A PATH with
only class folders (`NORMAL/`, `PNEUMONIA/`) becomes an evaluation-only split named NAME, or the site's
calibration split with the role prefix `calibration:`. Listing reads metadata only, never image bytes.
"""

import dataclasses
import hashlib
import json
import os
import re
from typing import Iterable, List, Optional, Sequence, Tuple

from pipeline.config import CALIBRATION_SPLIT
from serving import dicom

LABELS = {"NORMAL": 0, "PNEUMONIA": 1}
LABEL_NAMES = {v: k for k, v in LABELS.items()}
KAGGLE_SPLITS = {"train": "train", "val": "eval", "test": "test"}
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
ROLES = (CALIBRATION_SPLIT,)
KAGGLE_HINT = (
    "download the Kaggle dataset 'paultimothymooney/chest-xray-pneumonia', unzip it, and pass "
    "--data PATH/chest_xray (the folder holding train/ and test/)"
)


class PrepareError(Exception):
    """A problem with the request or the data as a whole; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    path: str
    role: str = ""  # "calibration": a class-folder sample of the site, written as the calibration split

    @classmethod
    def parse(cls, text: str) -> "Source":
        name, sep, path = text.partition("=")
        role, _, name = name.rpartition(":")
        if not sep or not name or not path:
            raise PrepareError(f"source {text!r}: expected [ROLE:]NAME=PATH, e.g. kermany=/data/chest_xray")
        if not re.fullmatch(r"[a-z0-9_\-]+", name):
            raise PrepareError(f"source {text!r}: NAME must be lowercase letters, digits, '_' or '-'")
        if role and role not in ROLES:
            raise PrepareError(
                f"source {text!r}: unknown role {role!r}; the only role is {CALIBRATION_SPLIT}:NAME=PATH"
            )
        return cls(name, os.path.abspath(os.path.expanduser(path)), role)

    @property
    def split(self) -> str:
        """The split a class-folder source becomes: its role, else its name."""
        return self.role or self.name

    @property
    def is_kaggle_layout(self) -> bool:
        return os.path.isdir(os.path.join(self.path, "train"))


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A file whose place in the layout gives it a label and a split; its bytes are not read yet."""

    dataset: str
    split: str
    label: int
    root: str
    source_path: str  # relative to the SOURCE root
    recorded_path: str  # source_path as the records and the report show it (see recorded_path)

    @property
    def shown(self) -> str:
        return f"{self.dataset}/{self.recorded_path}"

    @property
    def origin(self) -> str:
        """Where the image comes from within its dataset (the `source` feature). An evaluation-only folder that
        pools sources names each file `<source>_...` (`rsna_`, `ieee8023_`); any other image has its dataset's."""
        if self.split in (self.dataset, CALIBRATION_SPLIT):
            prefix, sep, _ = os.path.basename(self.source_path).partition("_")
            if sep and re.fullmatch(r"[a-z0-9]+", prefix.lower()):
                return prefix.lower()
        return self.dataset


def shared_data_dir() -> Optional[str]:
    """The project's sample data: $PNEUMONIA_SHARED_DATA, else ../shared/data beside the checkout."""
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidates = [os.environ.get("PNEUMONIA_SHARED_DATA", ""), os.path.join(checkout, "..", "shared", "data")]
    for candidate in candidates:
        if candidate and os.path.isdir(os.path.join(candidate, "chest_xray")):
            return os.path.abspath(candidate)
    return None


def sources_for(data_dir: str) -> List[str]:
    """NAME=PATH sources for a raw data folder: a Kaggle layout, or chest_xray/ (+ external/) inside."""
    if os.path.isdir(os.path.join(data_dir, "train")):
        return [f"kermany={data_dir}"]
    if os.path.isdir(os.path.join(data_dir, "chest_xray", "train")):
        found = [f"kermany={os.path.join(data_dir, 'chest_xray')}"]
        if os.path.isdir(os.path.join(data_dir, "external")):
            found.append(f"external={os.path.join(data_dir, 'external')}")
        return found
    raise PrepareError(f"{data_dir} holds neither prepared TFRecords nor train/ and test/ image folders; {KAGGLE_HINT}")


# ---------------------------------------------------------------- listing (driver, metadata only)


def walk(root: str) -> Iterable[str]:
    """Every file under root (sorted, symlinks not followed), as paths relative to root."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        # os.walk does not descend into symlinked folders: list them so they are reported, not lost.
        linked = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in sorted(filenames + linked):
            yield os.path.relpath(os.path.join(dirpath, name), root)


_UID = re.compile(r"\d+(?:\.\d+){3,}")  # dotted digits: a DICOM UID


def recorded_path(relpath: str, salt: str) -> str:
    """The path records and the report show: each UID-shaped part (PACS exports name files by SOP Instance
    UID) becomes `uid-` and its keyed hash, so no UID is written."""
    return _UID.sub(lambda match: f"uid-{dicom.pseudonym(match.group(0), salt)}", relpath)


def classify(source: Source, relpath: str, salt: str = dicom.DEFAULT_SALT) -> Tuple[Optional[Candidate], Optional[str]]:
    """(candidate, None) for a file in the expected layout, else (None, reason)."""
    parts = relpath.split(os.sep)
    if any(part.startswith(".") for part in parts):
        return None, "hidden file"
    if os.path.islink(os.path.join(source.path, relpath)):
        return None, "symbolic link (not followed)"
    depth, layout = (3, "<split>/<class>/<file>") if source.is_kaggle_layout else (2, "<class>/<file>")
    if len(parts) != depth:
        return None, f"not at {layout}"
    if source.is_kaggle_layout and parts[0] not in KAGGLE_SPLITS:
        return None, f"unknown split folder {parts[0]!r} (expected train, val or test)"
    if parts[-2].upper() not in LABELS:
        return None, f"unknown class folder {parts[-2]!r} (expected NORMAL or PNEUMONIA)"
    if not relpath.lower().endswith(IMAGE_SUFFIXES) and not dicom.file_name_is_dicom(parts[-1]):
        return None, f"not an image file name (expected {', '.join(IMAGE_SUFFIXES)}, or DICOM: .dcm or none)"
    split = KAGGLE_SPLITS[parts[0]] if source.is_kaggle_layout else source.split
    return Candidate(
        source.name, split, LABELS[parts[-2].upper()], source.path, relpath, recorded_path(relpath, salt)
    ), None


def source_fingerprint(sources: Sequence[Source], options: dict) -> str:
    """Identifies the input (file names, sizes, mtimes) and options, to reuse a finished prepare."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for source in sources:
        digest.update(f"{source.name}={source.path}\n".encode())
        for relpath in walk(source.path):
            stat = os.lstat(os.path.join(source.path, relpath))
            digest.update(f"{relpath}\t{stat.st_size}\t{int(stat.st_mtime)}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- Beam stages
