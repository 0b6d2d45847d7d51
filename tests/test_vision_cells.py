"""benchmarks/vision_cells.py: the per-cell object labels its vision tower learns."""

from __future__ import annotations

import importlib.util
import os
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_vision_cell_labels_on_a_hand_made_mask():
    spec = importlib.util.spec_from_file_location("vision_cells", os.path.join(ROOT, "benchmarks", "vision_cells.py"))
    cells = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cells)
    ids = np.full((56, 56), -1, np.int16)
    ids[0:28, 0:28] = 0            # cell (0, 0): all object 0
    ids[0:10, 28:56] = 1           # cell (0, 1): object 1 on 10/28 = 36% of the cell
    ids[28:33, 0:28] = 1           # cell (1, 0): object 1 on 5/28 = 18% (< 20%): background
    ids[28:56, 28:40] = 1          # cell (1, 1): object 1 on 43%, object 0 on 57%
    ids[28:56, 40:56] = 0
    objects = (types.SimpleNamespace(color="red", shape="sphere"), types.SimpleNamespace(color="cyan", shape="cone"))
    scene = types.SimpleNamespace(id_mask=ids, objects=objects)
    red_sphere = 1 + 0 * 4 + 0
    cyan_cone = 1 + 6 * 4 + 2  # cyan: 7th of COLORS; cone: 3rd of SHAPES
    assert cells.cell_labels(scene, 28).tolist() == [red_sphere, cyan_cone, 0, red_sphere]
