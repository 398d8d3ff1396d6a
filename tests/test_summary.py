"""misc/summary.py: summary.csv rows, reading, writing and rebuilding rows from .mat outputs."""
import numpy as np

from misc.io import save_label_mat
from misc.summary import read_summary, restore_summary_rows, summary_row, write_summary

TYPES = {0: ("background", (0, 0, 0)), 1: ("tumour", (255, 0, 0)), 2: ("immune", (0, 255, 0))}


def test_summary_row_counts_per_type():
    info = {1: {"type": 1}, 2: {"type": 2}, 3: {"type": 2}, 4: {"type": None}, 5: {"type": 0}}
    row = summary_row("a", (30, 40, 3), info, TYPES, 1.23456)
    assert row == {"image": "a", "height": 30, "width": 40, "nuclei": 5, "n_tumour": 1, "n_immune": 2,
                   "seconds": 1.235}
    assert summary_row("b", (1, 2), {}, TYPES, None)["seconds"] == ""


def test_write_read_round_trip_and_column_order(tmp_path):
    rows = {"b": summary_row("b", (3, 4), {1: {"type": 1}}, TYPES, 2.0),
            "a": {**summary_row("a", (5, 6), {}, TYPES, 1.0), "tissue_mm2": 0.5}}
    write_summary(tmp_path / "summary.csv", rows)
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines[0] == "image,height,width,nuclei,n_tumour,n_immune,tissue_mm2,seconds"  # seconds last
    assert lines[1:] == ["a,5,6,0,0,0,0.5,1.0", "b,3,4,1,1,0,0,2.0"]  # sorted by name; missing cells 0
    assert read_summary(tmp_path / "summary.csv")["b"]["n_tumour"] == "1"
    assert read_summary(tmp_path / "none.csv") == {}
    assert b"\r" not in (tmp_path / "summary.csv").read_bytes()  # issue 22.13: csv's default CRLF


def test_header_is_complete_when_every_image_failed(tmp_path):
    write_summary(tmp_path / "summary.csv", {}, TYPES)
    assert (tmp_path / "summary.csv").read_text() == "image,height,width,nuclei,n_tumour,n_immune,seconds\n"


def test_restore_rows_from_mat(tmp_path):
    inst = np.zeros((6, 7), np.int32)
    inst[1, 1], inst[3, 3] = 1, 2
    save_label_mat(tmp_path / "a.mat", inst, inst_type=np.array([2, 2]), inst_centroid=np.zeros((2, 2)))
    summary = {}
    restore_summary_rows(tmp_path, ["a"], ("mat", "json"), TYPES, summary)
    assert summary["a"] == {"image": "a", "height": 6, "width": 7, "nuclei": 2, "n_tumour": 0, "n_immune": 2,
                            "seconds": ""}
    restore_summary_rows(tmp_path, ["b"], ("json",), TYPES, summary)  # no .mat: left out, with a warning
    assert sorted(summary) == ["a"]
