"""Batch offline export from a manifest: `sceneparse export --manifest exports.yaml`.

A manifest is YAML::

    repository: model_repository        # optional; default model_repository
    defaults:                           # optional; keys of an entry, applied to every entry
      formats: [onnx, torchscript]
      max_batch_size: 8
    exports:
      - config: training/config/ade20k/ade20k_pspnet50.yaml
        checkpoint: exp/ade20k/pspnet50/model/train_epoch_100.pth
        name: ade20k_pspnet50           # optional
      - config: training/config/voc2012/voc2012_psanet50.yaml
        checkpoint: exp/voc2012/psanet50/model/train_epoch_50.pth
        fp16: true

Relative paths (repository, config, checkpoint) are relative to the manifest's directory. Entry
keys are export_checkpoint's arguments: config, checkpoint, name, version, and the fields of
ExportOptions: formats (a list or "onnx,torchscript"), fp16, max_batch_size, opset, logits,
simplify, num_versions, instance_kind, triton_max_queue_size. A malformed manifest is rejected before anything is
exported, naming the file, line and key; a failing entry is reported and the run goes on with
the next one.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from export.errors import ExportError
from export.options import ExportOptions

ENTRY_KEYS = {
    "config": str, "checkpoint": str, "name": str, "formats": (list, str), "version": (int, str), "fp16": bool,
    "max_batch_size": int, "opset": int, "logits": str, "simplify": bool, "num_versions": int, "instance_kind": str,
    "triton_max_queue_size": int,
}
TOP_KEYS = ("repository", "defaults", "exports")
# Entry keys that name this one export; the rest are ExportOptions fields.
REQUEST_KEYS = ("name", "version")


@dataclass
class ManifestEntry:
    """One export of a manifest: its 1-based index, line in the file and its keys (config, checkpoint,
    name, version and ExportOptions fields)."""

    index: int
    line: int
    options: dict[str, Any]

    @property
    def label(self) -> str:
        return str(self.options.get("name") or Path(self.options["config"]).stem)


@dataclass
class Manifest:
    path: Path
    repository: Path
    entries: list[ManifestEntry] = field(default_factory=list)


@dataclass
class EntryOutcome:
    """How one entry went: published (name, version) or failed with a one-line error."""

    entry: ManifestEntry
    ok: bool
    name: str = ""
    version: int | None = None
    formats: str = ""
    max_abs_delta: float | None = None
    argmax_agreement: float | None = None
    seconds: float = 0.0
    error: str = ""


def _suggest(key: str, choices) -> str:
    close = difflib.get_close_matches(str(key), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_entry_keys(values: dict[str, Any], where: str, key_lines: dict[str, int] | None = None) -> dict[str, Any]:
    """Check keys and value types of one entry (or of `defaults`); `where` is `file:line: entry N`."""
    key_lines = key_lines or {}

    def at(key: str) -> str:
        # Point at the key's own line when it is known: "exports.yaml:15: entry 3".
        if key in key_lines and ":" in where:
            file_part, _, rest = where.partition(": ")
            return f"{file_part.rsplit(':', 1)[0]}:{key_lines[key]}: {rest}"
        return where

    for key, value in values.items():
        if key not in ENTRY_KEYS:
            raise ExportError(f"{at(key)}: unknown key {key!r}{_suggest(key, ENTRY_KEYS)}; allowed: {', '.join(ENTRY_KEYS)}")
        expected = ENTRY_KEYS[key]
        types = expected if isinstance(expected, tuple) else (expected,)
        if value is None or (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise ExportError(f"{at(key)}: {key} must be {names}, got {value!r}")
    if "formats" in values:
        formats = values["formats"]
        values["formats"] = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else list(formats)
    return values


def load_manifest(path: str | Path) -> Manifest:
    """Read and check a manifest; raises ExportError naming file, line and key on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExportError(f"manifest {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"manifest {path}: unreadable ({exc})") from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ExportError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: a manifest is a mapping with an 'exports' list")
    for key in data:
        if key not in TOP_KEYS:
            raise ExportError(f"{path}: unknown top-level key {key!r}{_suggest(key, TOP_KEYS)}; allowed: {', '.join(TOP_KEYS)}")
    exports = data.get("exports")
    if not isinstance(exports, list) or not exports:
        raise ExportError(f"{path}: 'exports' must be a non-empty list of entries")
    node_of = {k.value: v for k, v in root.value} if isinstance(root, yaml.MappingNode) else {}
    entry_nodes = node_of["exports"].value
    lines = [item.start_mark.line + 1 for item in entry_nodes]
    base = path.resolve().parent
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ExportError(f"{path}: 'defaults' must be a mapping")
    defaults = _check_entry_keys(dict(defaults), f"{path}: defaults")
    repository = data.get("repository") or "model_repository"
    manifest = Manifest(path=path, repository=(base / str(repository)))
    for index, (entry, line, node) in enumerate(zip(exports, lines, entry_nodes, strict=True), start=1):
        where = f"{path}:{line}: entry {index}"
        if not isinstance(entry, dict):
            raise ExportError(f"{where}: expected a mapping with config and checkpoint, got {entry!r}")
        key_lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
        options = {**defaults, **_check_entry_keys(dict(entry), where, key_lines)}
        for required in ("config", "checkpoint"):
            if required not in options:
                raise ExportError(f"{where}: missing {required!r}")
        options["config"] = str(base / options["config"])
        options["checkpoint"] = str(base / options["checkpoint"])
        manifest.entries.append(ManifestEntry(index=index, line=line, options=options))
    return manifest


def run_manifest(
    manifest: Manifest,
    repository: Path | None = None,
    export: Callable[..., Any] | None = None,
    progress: bool = True,
) -> list[EntryOutcome]:
    """Export every entry in order; a failing entry is recorded and the next one runs.

    Shows a tqdm bar over the entries (the stage of the current one as postfix).
    Returns one EntryOutcome per entry.
    """
    from tqdm import tqdm

    if export is None:
        from export.exporter import export_checkpoint as export
    target = repository or manifest.repository
    outcomes = []
    bar = tqdm(manifest.entries, desc="export", unit="model", disable=not progress, dynamic_ncols=True)
    for entry in bar:
        bar.set_description(f"export {entry.label}")
        started = time.perf_counter()
        values = dict(entry.options)
        config, checkpoint = values.pop("config"), values.pop("checkpoint")
        request = {key: values.pop(key) for key in REQUEST_KEYS if key in values}
        try:
            result = export(config, checkpoint, target, ExportOptions(**values),
                            progress=lambda stage: bar.set_postfix_str(stage), **request)
        except ExportError as exc:
            outcomes.append(EntryOutcome(entry, False, name=entry.label, error=_one_line(exc),
                                         seconds=time.perf_counter() - started))
            continue
        except Exception as exc:  # one broken entry must not stop a batch export
            outcomes.append(EntryOutcome(entry, False, name=entry.label, error=f"{type(exc).__name__}: {_one_line(exc)}",
                                         seconds=time.perf_counter() - started))
            continue
        worst = result.parity.get("worst", {})
        outcomes.append(EntryOutcome(
            entry, True, name=result.name, version=result.version, formats=",".join(result.files),
            max_abs_delta=worst.get("max_abs_delta"), argmax_agreement=worst.get("argmax_agreement"),
            seconds=time.perf_counter() - started,
        ))
    bar.close()
    return outcomes


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text + (f" (+{len(lines) - 1} more lines)" if len(lines) > 1 else "")


def summary_table(outcomes: list[EntryOutcome]) -> str:
    """A plain-text table: entry, model, version, status, formats, max |delta|, argmax, seconds, error."""
    header = ("#", "model", "version", "status", "formats", "max|delta|", "argmax", "seconds", "error")
    rows = []
    for o in outcomes:
        rows.append((
            str(o.entry.index), o.name, "" if o.version is None else str(o.version), "ok" if o.ok else "FAILED",
            o.formats, "" if o.max_abs_delta is None else f"{o.max_abs_delta:.2e}",
            "" if o.argmax_agreement is None else f"{100 * o.argmax_agreement:.3f}%", f"{o.seconds:.1f}", o.error,
        ))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    failed = sum(not o.ok for o in outcomes)
    lines.append(f"{len(outcomes) - failed} exported, {failed} failed")
    return "\n".join(lines)
