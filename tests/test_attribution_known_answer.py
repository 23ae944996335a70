"""The known-answer pieces (synthetic scenes, pointing game, word AUC, rank correlation) and the
GPU speed benchmark's CPU dry run."""

from __future__ import annotations

import numpy as np
import torch

from clipcbm.pipeline.attribution import known_answer as ka
from tests._bench import load_benchmark


def test_scene_puts_the_named_colour_inside_its_box():
    rng = np.random.default_rng(0)
    for _ in range(5):
        s = ka.make_scene(rng, 64)
        x0, y0, x1, y1 = s.box
        inside = s.image[y0:y1, x0:x1].reshape(-1, 3)
        assert (inside == ka.COLOURS[s.colour]).all(1).mean() > 0.3
        assert s.colour in s.caption and s.shape in s.caption
        assert 0 <= s.label < len(ka.COLOURS) * len(ka.SHAPES)


def test_pointing_game_and_word_auc_by_hand():
    s = ka.Scene(np.zeros((8, 8, 3), np.uint8), (2, 2, 4, 4), "red", "circle", "a red circle")
    m = torch.zeros(2, 8, 8)
    m[0, 3, 3] = 1.0  # inside
    m[1, 6, 1] = 1.0  # outside
    assert ka.pointing_hits(m, [s, s]).tolist() == [True, False]
    tokens = ["<|startoftext|>", "a</w>", "red</w>", "circ", "le</w>", "<|endoftext|>"]
    assert ka.word_auc(tokens, np.array([9, 0.1, 0.5, 0.2, 0.9, 9]), s) == 1.0
    assert ka.word_auc(tokens, np.array([9, 0.6, 0.5, 0.2, 0.9, 9]), s) == 0.5


def test_spearman_of_identical_and_reversed_maps():
    a = torch.arange(16.0).view(1, 4, 4)
    assert np.allclose(ka.spearman(a, a), 1.0) and np.allclose(ka.spearman(a, -a), -1.0)


def test_gpu_benchmark_dry_run_on_cpu(tmp_path):
    mod = load_benchmark("gpu_attribution")
    out = mod.main(["--dry-run", "--out", str(tmp_path / "g.json")])
    assert out["archs"]["tiny"][0]["pairs_per_s"] > 0 and (tmp_path / "g.json").is_file()
