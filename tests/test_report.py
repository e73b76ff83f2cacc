"""The HTML report: one embedded figure per result group present, the numbers, atomic writing."""
import base64
import json
import re

import numpy as np

from tomostrain import io
from tomostrain.report import write_report


def _results():
    rng = np.random.default_rng(0)
    labels = np.zeros((8, 16, 16), np.uint8)
    labels[2:6, 4:12, 4:12] = 1
    labels[3:5, 6:10, 6:10] = 2
    return {
        "provenance": {"@attrs": {"version": "0.1.0", "command": "tomostrain demo"}},
        "tomo": {
            "alignment": {"shifts": rng.normal(size=(5, 2)), "angles_deg": np.linspace(-60, 60, 5),
                          "@attrs": {"center": 7.5, "tilt_axis_deg": 3.25}},
            "volume": rng.random((8, 16, 16)).astype(np.float32),
            "labels": labels,
            "quantify": {"depth_profile": {"depth_nm": np.arange(4.0), "reacted_fraction": np.linspace(1, 0, 4)},
                         "@attrs": {"fractions": json.dumps({"shell": 0.625, "core": 0.375})}},
        },
    }


def test_report_embeds_one_figure_per_group_and_the_numbers(tmp_path):
    path = write_report(_results(), tmp_path / "report.html", title="particle <3>")
    page = path.read_text(encoding="utf-8")
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert [c.split(":")[0] for c in captions] == ["Alignment", "Reconstruction", "Segmentation",
                                                   "Reaction depth profile from the surface inward"]
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) == 4 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "fractions.shell</th><td>0.625" in page            # JSON attrs flattened into the table
    assert "particle &lt;3&gt;" in page                       # the title is escaped
    assert not (tmp_path / "report.html.tmp").exists()


def test_report_of_a_result_file_without_tomography(tmp_path):
    tree = {"stem": {"virtual": {"bf": np.ones((4, 4)), "adf": np.zeros((4, 4))}}}
    io.write_results(tmp_path / "r.h5", tree, {"version": "0.1.0", "command": "test", "parameters": "{}",
                                                "backend": "cpu", "device": "cpu", "started": "", "finished": "",
                                                "step_seconds": {}})
    page = write_report(io.read_results(tmp_path / "r.h5"), tmp_path / "r.html").read_text(encoding="utf-8")
    assert re.findall(r"<figcaption>(.*?)</figcaption>", page) == ["Virtual bright field and annular dark field"]
