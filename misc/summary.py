"""``summary.csv``: one row per image or slide (size, nuclei, nuclei per type, seconds), written atomically.

Rows are dicts ``column -> value`` keyed by image name; the file is rewritten whole after every image, so it
is current even when a run is killed. Columns: ``image, height, width, nuclei, n_<type name>...``, any
further columns of the rows (slides add ``tissue_mm2``, ``nuclei_per_mm2``), and ``seconds`` last.
"""
from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from misc.io import atomic_path, load_label_mat
from misc.viz import type_name

log = logging.getLogger(__name__)

__all__ = ["SUMMARY_NAME", "summary_row", "read_summary", "write_summary", "restore_summary_rows"]

SUMMARY_NAME = "summary.csv"


def summary_row(name: str, image_shape, inst_info: Mapping, type_info: Mapping, seconds: float | None) -> dict:
    """The row of one image: ``image_shape`` (H, W, ...), ``inst_info`` id -> {"type": int or None, ...},
    ``type_info`` id -> (name, colour); ``seconds`` None leaves the column empty (unknown)."""
    counts = {tid: 0 for tid in type_info if tid != 0}
    for info in inst_info.values():
        if info.get("type"):  # untyped (None) and background-typed (0) nuclei count only in 'nuclei'
            counts[info["type"]] = counts.get(info["type"], 0) + 1
    row = {"image": name, "height": image_shape[0], "width": image_shape[1], "nuclei": len(inst_info)}
    for tid, count in sorted(counts.items()):
        row[f"n_{type_name(type_info, tid)}"] = count
    row["seconds"] = round(seconds, 3) if seconds is not None else ""
    return row


def restore_summary_rows(out_dir: Path, names: Iterable[str], formats, type_info: Mapping, summary: dict) -> None:
    """Rebuild, in ``summary``, the rows of complete images that lack one (a run killed between an image's
    outputs and its summary row) from their ``.mat``; the seconds are unknown and left empty."""
    missing = [name for name in names if name not in summary]
    if missing and "mat" not in formats:
        log.warning("summary.csv lacks rows for %s and cannot rebuild them without .mat outputs", missing)
        return
    for name in missing:
        label = load_label_mat(Path(out_dir) / f"{name}.mat", with_types=True)
        inst_info = {i + 1: {"type": int(t)} for i, t in enumerate(label["inst_type"])}
        summary[name] = summary_row(name, label["inst_map"].shape, inst_info, type_info, seconds=None)


def read_summary(path: Path) -> dict[str, dict]:
    """Image name -> row (all values strings) of an existing ``summary.csv``; {} when there is none."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {row["image"]: row for row in csv.DictReader(handle)}


def write_summary(path: Path, rows: Mapping[str, dict], type_info: Mapping | None = None) -> None:
    """Write ``rows`` (name -> row) sorted by name, atomically, with Unix line ends; missing cells are 0.

    ``type_info`` (id -> (name, colour)) gives the per-type columns even when no row has them (every image
    failed: the header is still the full one)."""
    columns = ["image", "height", "width", "nuclei"]
    if type_info is not None:
        columns += [f"n_{type_name(type_info, tid)}" for tid in sorted(type_info) if tid != 0] + ["seconds"]
    for row in rows.values():
        columns.extend(c for c in row if c not in columns)
    if "seconds" in columns:  # keep the timing last, after the per-type counts
        columns.append(columns.pop(columns.index("seconds")))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval=0, lineterminator="\n")  # csv's default is CRLF
    writer.writeheader()
    for name in sorted(rows):
        writer.writerow(rows[name])
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())
