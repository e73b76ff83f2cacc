"""One schema for every option of every command and every job-file key, checked before any work.

Each command's options are a pydantic model (``extra="forbid"``, strict types: ``align = "no"``
is a type error, not ``True``; ``iterations = "100"`` is refused, not converted). Every number
carries its range. ``SECTIONS`` maps a job-file section (and command) name to its model; the
pipeline's entry function of a command calls ``check(name, values)`` with its arguments (so the
CLI, the job file and the Python API pass the same gate) and ``read_job_file`` checks a whole
job file at once, naming the section, the key and its line, before anything runs.

To add an option: add a field to the command's model (with its range, and
``json_schema_extra={"cli": "--flag"}`` when the CLI spells it differently; ``"path": True``
makes job files resolve it relative to the job file's folder). To add a command: write its
model, add it to ``SECTIONS`` and call ``check("name", ...)`` first thing in its pipeline
function. Errors are ``InputError`` with one line per call: ``[tomo] iterations = 0 (option
--iterations): must be greater than or equal to 1``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InputError

Backend = Literal["auto", "cpu", "gpu"]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=1, le=1_000_000)]
PathText = Annotated[str, Field(min_length=1, json_schema_extra={"path": True})]


def _cli(flag: str, path: bool = False) -> dict:
    extra = {"cli": flag}
    if path:
        extra["path"] = True
    return {"json_schema_extra": extra}


class Section(BaseModel):
    """Base of every section: unknown keys and loose types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)  # schemas built on first use


class JobSettings(Section):
    """``[job]``: where the result goes and where it runs."""

    output: str = Field(min_length=1, json_schema_extra={"path": True})
    backend: Backend = "auto"


#: methods whose non-negativity constraint is a user choice (``[tomo] nonnegative``); their
#: defaults are those of the solvers (``reconstruction.iterative.NONNEGATIVE_DEFAULT``)
NONNEGATIVE_METHODS = ("sirt", "os_sart", "cgls", "tv")


class TomoOptions(Section):
    """``tomostrain tomo`` / ``[tomo]``."""

    input: str = Field(min_length=1, json_schema_extra={"path": True})
    method: Literal["fbp", "gridrec", "sirt", "cgls", "os_sart", "tv", "dart"] = "fbp"
    iterations: Optional[Count] = None
    nonnegative: Optional[bool] = Field(None, **_cli("--nonnegative"))
    center: Union[Literal["auto"], None, Finite] = None
    center_method: Literal["vo", "phase"] = Field("vo", **_cli("--center-method"))
    rings: Optional[Literal["sort", "sort_offset", "fit", "wavelet", "normalize", "all"]] = Field(None, **_cli("--rings"))
    zingers: Optional[Positive] = Field(None, **_cli("--zingers"))
    paganin: Optional[dict[str, Positive]] = Field(None, **_cli("--paganin"))
    beam_background: Optional[Annotated[int, Field(ge=1)]] = Field(None, **_cli("--beam-background"))
    segment: Annotated[int, Field(ge=0, le=255)] = Field(0, **_cli("--segment"))
    angles: Optional[str] = Field(None, min_length=1, **_cli("--angles", path=True))
    voxel_size_nm: Optional[Positive] = Field(None, **_cli("--voxel-size"))
    align: bool = False
    classes: Optional[Annotated[int, Field(ge=2, le=255)]] = Field(None, **_cli("--classes"))
    tilt_axis_deg: Optional[Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]] = Field(
        None, **_cli("--tilt-axis"))
    offset: Union[Literal["auto"], None, Finite] = Field("auto", **_cli("--offset"))
    xf: Optional[str] = Field(None, min_length=1, **_cli("--xf", path=True))

    @field_validator("segment")
    @classmethod
    def _classes(cls, v):
        if v == 1:
            raise ValueError("must be 0 (no segmentation) or at least 2 classes (vacuum + one phase)")
        return v

    @model_validator(mode="after")
    def _align_or_center(self):
        if self.align and self.center is not None:
            raise ValueError("give either align (which finds the centre) or center, not both")
        if self.nonnegative is not None and self.method not in NONNEGATIVE_METHODS:
            raise ValueError(f"nonnegative constrains the iterative solvers {', '.join(NONNEGATIVE_METHODS)}; "
                             f"method {self.method!r} takes no such choice")
        if self.classes is not None and self.method != "dart":
            raise ValueError(f"classes sets DART's number of phases; method {self.method!r} takes none")
        if self.align and self.xf is not None:
            raise ValueError("give either align or an .xf alignment file, not both")
        return self


Region = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=4, max_length=4)]


class StemOptions(Section):
    """``tomostrain stem`` / ``[stem]``."""

    input: str = Field(min_length=1, json_schema_extra={"path": True})
    phases: Union[str, Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]] = "NiO,Ni,Na2O"
    reference: Optional[Region] = None
    probe: Optional[Union[Region, Annotated[str, Field(min_length=1)]]] = Field(None, **_cli("--probe", path=True))
    q_pixel_size: Optional[Positive] = Field(None, **_cli("--q-pixel-size"))
    energy_kev: Optional[Positive] = Field(None, **_cli("--energy-kev"))
    convergence_mrad: Optional[Positive] = Field(None, **_cli("--convergence-mrad"))
    shape: Optional[Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=4, max_length=4)]] = None
    dtype: Optional[str] = None
    scan_shape: Optional[Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2)]] = Field(
        None, **_cli("--scan-shape"))

    @field_validator("reference", "probe", mode="before")
    @classmethod
    def _four(cls, v):
        if isinstance(v, list) and len(v) != 4:
            raise ValueError("must be (y0, y1, x0, x1): four integers")
        return v

    @field_validator("reference", "probe")
    @classmethod
    def _region(cls, v):
        if isinstance(v, list) and not (v[0] < v[1] and v[2] < v[3]):
            raise ValueError("a region y0:y1,x0:x1 needs y0 < y1 and x0 < x1")
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v):
        if v is None:
            return v
        try:
            dt = np.dtype(v)
        except TypeError:
            raise ValueError("is not a NumPy dtype (e.g. uint16, <u2, float32)") from None
        if dt.kind not in "uif":
            raise ValueError(f"must be a real integer or float dtype, not {dt}")
        return v


class XanesOptions(Section):
    """``tomostrain xanes`` / ``[xanes]``."""

    input: Union[Annotated[str, Field(min_length=1)], Annotated[list[Annotated[str, Field(min_length=1)]],
                 Field(min_length=1)]] = Field(json_schema_extra={"path": True})
    references: Union[Annotated[str, Field(min_length=1)], Annotated[list[Annotated[str, Field(min_length=1)]],
                      Field(min_length=1)]] = Field(json_schema_extra={"path": True, "cli": "--references"})
    center: Union[Literal["auto"], Finite] = "auto"
    center_method: Literal["vo", "phase"] = Field("vo", **_cli("--center-method"))
    rings: Optional[Literal["sort", "sort_offset", "fit", "wavelet", "normalize", "all"]] = Field(None, **_cli("--rings"))
    zingers: Optional[Positive] = Field(0.5, **_cli("--zingers"))
    beam_background: Optional[Annotated[int, Field(ge=1)]] = Field(None, **_cli("--beam-background"))
    method: Literal["fbp", "gridrec", "sirt", "cgls", "os_sart", "tv"] = "cgls"
    iterations: Count = 12
    fit: Literal["joint", "projection", "volume"] = "joint"


class KineticsOptions(Section):
    """``tomostrain kinetics`` / ``[kinetics]``."""

    input: str = Field(min_length=1, json_schema_extra={"path": True})
    pixel_size_nm: Optional[Positive] = Field(None, **_cli("--pixel-size"))
    frame_interval_s: Optional[Positive] = Field(None, **_cli("--frame-interval"))
    vacuum: Literal["auto", "bright", "dark"] = Field("auto", **_cli("--vacuum"))


class EelsOptions(Section):
    """``tomostrain eels`` / ``[eels]``."""

    input: str = Field(min_length=1, json_schema_extra={"path": True})
    edge: str = Field("Ni-L23", min_length=1, **_cli("--edge"))
    references: Optional[Annotated[list[Annotated[list[Finite], Field(min_length=2, max_length=2)]],
                                   Field(min_length=2, max_length=2)]] = Field(None, **_cli("--references"))
    valence_from: Literal["ratio", "onset"] = Field("ratio", **_cli("--valence-from"))
    low_loss: Optional[str] = Field(None, min_length=1, **_cli("--low-loss", path=True))
    denoise: Optional[Literal["pca"]] = "pca"
    deconvolve: bool = Field(False, **_cli("--deconvolve"))


class ClusterSettings(Section):
    """``[cluster]``: where chunks run (``distributed.dask_executor.parse``); SLURM keys pass to
    dask-jobqueue's SLURMCluster."""

    address: str = Field("local", min_length=1)
    workers: Optional[Annotated[int, Field(ge=1)]] = None
    jobs: Optional[Annotated[int, Field(ge=1)]] = None
    queue: Optional[str] = None
    account: Optional[str] = None
    cores: Optional[Annotated[int, Field(ge=1)]] = None
    processes: Optional[Annotated[int, Field(ge=1)]] = None
    memory: Optional[str] = None
    walltime: Optional[str] = None
    job_extra_directives: Optional[list[str]] = None
    job_script_prologue: Optional[list[str]] = None
    local_directory: Optional[str] = None
    log_directory: Optional[str] = None
    interface: Optional[str] = None
    python: Optional[str] = None


#: job-file sections (and commands) -> their model; add new commands here
SECTIONS: dict[str, type[Section]] = {"job": JobSettings, "tomo": TomoOptions, "stem": StemOptions,
                                      "xanes": XanesOptions, "kinetics": KineticsOptions, "eels": EelsOptions,
                                      "cluster": ClusterSettings}
#: sections of which a job file needs at least one
WORK_SECTIONS = ("tomo", "stem", "xanes", "kinetics", "eels")


def _plain(value):
    """Python-API values (Path, tuple, numpy scalars) as the TOML types the schema is written in."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _field_extra(model, name) -> dict:
    field = model.model_fields.get(name)
    extra = getattr(field, "json_schema_extra", None) if field is not None else None
    return extra if isinstance(extra, dict) else {}


def path_fields(section: str) -> list[str]:
    """Fields of a section that name files (resolved relative to a job file's folder)."""
    model = SECTIONS[section]
    return [n for n in model.model_fields if _field_extra(model, n).get("path")]


def _messages(section: str, model, exc: ValidationError, values: dict, lines: dict | None, where: str) -> str:
    out = []
    known = ", ".join(model.model_fields)
    for err in exc.errors():
        loc = err["loc"]
        key = str(loc[0]) if loc else ""
        if err["type"] == "extra_forbidden":
            what = f"unknown key {key!r} (known keys: {known})"
        elif err["type"] == "missing":
            what = f"{key} is required"
        else:
            msg = err["msg"].removeprefix("Value error, ").replace("Input should be", "should be")
            shown = values.get(key, err.get("input")) if key else None
            what = (f"{key} = {shown!r}: {msg}" if key else msg)
            flag = _field_extra(model, key).get("cli") or ("--" + key.replace("_", "-") if key not in ("input", "") else "")
            if flag and key and lines is None:  # a rule across fields (a model validator) names no key
                what = f"{key} = {shown!r} (option {flag}): {msg}"
        line = (lines or {}).get(key)
        prefix = f"{where} line {line}: " if line else (f"{where}: " if where else "")
        out.append(f"{prefix}[{section}] {what}")
    return "; ".join(out)


def check(section: str, values: dict, *, lines: dict | None = None, where: str = "") -> dict:
    """Validate ``values`` against the section's model -> the checked values (defaults filled).

    lines : key -> line number in a job file (for the message); where : the file's name.
    Raises InputError, one line naming the section, key, value, option and the rule.
    """
    model = SECTIONS[section]
    plain = {k: _plain(v) for k, v in values.items()}
    try:
        return model.model_validate(plain).model_dump()
    except ValidationError as exc:
        raise InputError(_messages(section, model, exc, plain, lines, where)) from None


def _key_lines(text: str) -> dict:
    """{section: {key: line}} of a TOML text (top-level keys of each [section])."""
    out: dict = {}
    section = ""
    for n, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        m = re.match(r"^\[\s*([^\]\s]+)\s*\]", s)
        if m:
            section = m.group(1)
            out.setdefault(section, {"[section]": n})
            continue
        m = re.match(r"^([A-Za-z0-9_\-]+|\"[^\"]+\"|'[^']+')\s*=", s)
        if m:
            out.setdefault(section, {}).setdefault(m.group(1).strip("\"'"), n)
    return out


def read_job_file(path) -> dict:
    """Read and check a whole TOML job file -> ``{section: checked values}`` (only the sections
    present), before anything runs. File paths stay as written (relative to the job file)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise InputError(f"job file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"job file {path} is not UTF-8 text (byte {exc.start}); is it a binary file?") from None
    except OSError as exc:
        raise InputError(f"cannot read job file {path}: {exc.strerror}") from None
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"job file {path} is not valid TOML: {exc}") from None
    lines = _key_lines(text)
    unknown = [k for k in spec if k not in SECTIONS]
    if unknown:
        k = unknown[0]
        line = lines.get(k, {}).get("[section]")
        at = f" line {line}" if line else ""
        raise InputError(f"job file {path}{at}: unknown section [{k}] (known: "
                         f"{', '.join('[' + s + ']' for s in SECTIONS)})")
    for k, v in spec.items():
        if not isinstance(v, dict):
            raise InputError(f"job file {path}: {k} must be a [{k}] section, not a value ({v!r})")
    if not any(k in spec for k in WORK_SECTIONS):
        raise InputError(f"job file {path} needs [job] and one or more of [tomo], [stem], [xanes], [kinetics], [eels]; found "
                         f"{', '.join('[' + k + ']' for k in spec) or 'none'}")
    if "job" not in spec:
        raise InputError(f"job file {path}: [job] output = 'RESULT.h5' is required")
    out = {}
    errors = []
    for name, values in spec.items():
        try:
            out[name] = check(name, values, lines=lines.get(name, {}), where=f"job file {path}")
        except InputError as exc:
            errors.append(str(exc))
    if errors:
        raise InputError("; ".join(errors))
    # keep only what was written, so defaults stay the pipeline's and parameters stay as before
    return {name: {k: out[name][k] for k in spec[name]} for name in spec}
