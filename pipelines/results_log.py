"""A run's ``results.jsonl``: the append-only log of its records and the one function that reads them.

Every consumer -- the sweeps' ``--resume``, the reports, the zoo export and the demo's FID
lookup -- reads a run through :func:`read_results`. Each line is ``{"schema": 2, "record":
TAG, "key": KEY, ...fields}`` (:mod:`pipelines.records`), appended and fsynced as soon as it
exists, so a kill loses nothing already measured; a torn last line (killed mid-write) is
ignored. Lines without ``schema`` are the first layout (plain dicts) and are converted on
reading.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .records import (
    RECORD_TYPES,
    SCHEMA_VERSION,
    EnvironmentRecord,
    Record,
    RecordError,
)

RESULTS = "results.jsonl"
R = TypeVar("R", bound=Record)


# --- the first layout (no "schema" field) ------------------------------------------------

def _upgrade_v1(raw: dict[str, Any], env: dict[str, Any]) -> list[dict[str, Any]]:
    """A first-layout line as one or more current ones (tag in "record", fields beside it)."""
    r = {k: v for k, v in raw.items() if k != "key"}
    tag = r.pop("record")
    if tag in ("train", "cond_train"):
        return [{"record": "train", **r}]
    if tag == "progress":
        for old in ("peak_mem_train_mb", "memory_method", "train_summary"):  # the whole run's, now in "train"
            r.pop(old, None)
        return [{"record": "progress", **r}]
    if tag in ("fid", "sampling"):
        r.pop("ae_kind", None)  # always equal to kind
        return [{"record": tag, **r}]
    if tag == "cond_classifier":
        return [{"record": "classifier", **r}]
    if tag == "cond_eval":  # one line held sampling speed, FID/KID and accuracy: now three records
        cell = {k: r[k] for k in ("condition", "kind", "factor", "guidance", "ddim_steps", "device")}
        sampling = {"record": "sampling", **cell, "n": r["n"], "seconds": r["n"] / r["samples_per_s"],
                    "samples_per_s": r["samples_per_s"], "sec_per_image": 1.0 / r["samples_per_s"],
                    "peak_mem_sample_mb": r["peak_mem_sample_mb"], "memory_method": r["memory_method"],
                    "sample_batch": env.get("config", {}).get("sample_batch"), "scheduler": r["scheduler"]}
        fid = {"record": "fid", **cell, **{k: r[k] for k in ("fid", "kid", "kid_std", "fid_backend", "fid_samples",
                                                             "reference_samples")}}
        conditioning = {"record": "conditioning", **cell, **{k: r[k] for k in (
            "n", "samples_per_class", "class_names", "accuracy", "per_class_accuracy", "per_class_fid",
            "per_class_reference")}}
        return [sampling, fid, conditioning]
    return [{"record": tag, **r}]


def _build(data: dict[str, Any], where: str) -> Record:
    data = dict(data)
    tag = data.pop("record", None)
    cls = RECORD_TYPES.get(tag)
    if cls is None:
        raise RecordError(f"{where}: unknown record type {tag!r} (known: {', '.join(RECORD_TYPES)}).")
    data.pop("schema", None)
    data.pop("key", None)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecordError(f"{where}: a {tag!r} record has no field(s) {unknown}.")
    try:
        return cls(**data)
    except TypeError as err:
        raise RecordError(f"{where}: {err}") from err


# --- reading and writing ------------------------------------------------------------------

@dataclass
class Results:
    """Every record of one run, in the order they were written."""

    records: list[Record] = field(default_factory=list)

    def of(self, cls: type[R], **where: Any) -> list[R]:
        """Records of type ``cls`` whose fields equal ``where`` (a misspelt field name is an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(where) - names)
        if unknown:
            raise RecordError(f"{cls.__name__} has no field(s) {unknown}.")
        return [r for r in self.records if type(r) is cls and all(getattr(r, k) == v for k, v in where.items())]

    def one(self, cls: type[R], **where: Any) -> R | None:
        """The last matching record (a re-measurement replaces an earlier one), or None."""
        found = self.of(cls, **where)
        return found[-1] if found else None

    @property
    def environment(self) -> EnvironmentRecord | None:
        return self.one(EnvironmentRecord)

    def __len__(self) -> int:
        return len(self.records)


def read_results(run_dir: str | os.PathLike) -> Results:
    """The typed records of ``run_dir/results.jsonl`` (empty when the file does not exist yet).

    Only the last line may be unreadable (torn by a kill while it was written); anything
    else that does not match the record types is a :class:`RecordError` naming the line.
    """
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        return Results()
    lines = path.read_text().splitlines()
    raws: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                continue  # a line torn by a kill
            raise RecordError(f"{path} line {number}: not JSON ({err}).") from err
        if not isinstance(raw, dict) or "record" not in raw:
            raise RecordError(f"{path} line {number}: not a results record.")
        raws.append((number, raw))
    env = next((raw for _, raw in raws if raw.get("record") == "environment"), {})
    records: list[Record] = []
    for number, raw in raws:
        where = f"{path} line {number}"
        schema = raw.get("schema", 1)
        if schema == 1:
            try:
                upgraded = _upgrade_v1(raw, env)
            except (KeyError, TypeError, ZeroDivisionError) as err:
                raise RecordError(f"{where}: an old-layout {raw['record']!r} record is incomplete ({err!r}).") from err
            records += [_build(data, where) for data in upgraded]
        elif schema == SCHEMA_VERSION:
            records.append(_build(raw, where))
        else:
            raise RecordError(f"{where}: schema {schema!r} is newer than this code reads ({SCHEMA_VERSION}).")
    return Results(records)


class ResultsLog:
    """A run folder's append-only ``results.jsonl``, with the records read so far."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RESULTS
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.results = read_results(self.run_dir)

    def has(self, cls: type[Record], **where: Any) -> bool:
        """Whether such a measurement is already in the log (``--resume`` skips it)."""
        return bool(self.results.of(cls, **where))

    def append(self, record: Record) -> None:
        line = (json.dumps(record.to_json(), default=_jsonable) + "\n").encode()
        # One write() of the whole line on an O_APPEND descriptor: processes that share a run folder
        # (the zoo's cells trained side by side) append whole lines, never interleaved halves.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):  # pragma: no cover - a full disk; the torn line is ignored on reading
                raise OSError(f"Only {written} of {len(line)} bytes of a result reached '{self.path}'.")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.results.records.append(record)

    def append_once(self, record: Record) -> None:
        """Append unless a record with the same key is already there."""
        if all(r.key != record.key for r in self.results.records):
            self.append(record)


class RecordingLog(ResultsLog):
    """A cell's view of a run's log where it runs on another machine (``--executor ray``).

    It reads a snapshot of the run's records (so a cell skips what is already measured, exactly as
    with the file) and keeps what the cell appends instead of writing it: the driver alone appends
    to ``results.jsonl``, so the log of a run spread over many machines stays one ordered file.
    """

    def __init__(self, run_dir: str | os.PathLike, records: list[dict[str, Any]]):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RESULTS
        self.results = Results([record_from_json(raw) for raw in records])
        self.new: list[Record] = []

    def append(self, record: Record) -> None:
        self.results.records.append(record)
        self.new.append(record)


def record_to_json(record: Record) -> dict[str, Any]:
    """A record as its ``results.jsonl`` line holds it (plain JSON types)."""
    return json.loads(json.dumps(record.to_json(), default=_jsonable))


def record_from_json(raw: dict[str, Any]) -> Record:
    """A current-schema record from its JSON form (what :func:`record_to_json` gives)."""
    return _build(raw, "a record sent between processes")


def _jsonable(value: object) -> object:
    """NumPy / torch scalars and paths; anything else is a bug in the record, not something to stringify."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"A results record holds a {type(value).__name__}, which JSON cannot store.")
