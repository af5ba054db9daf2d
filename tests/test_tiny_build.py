"""The one rule of the tiny models' builds (workers/tiny/build.py), in process and instant: a
stand-in `save` writes a file, so no model is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.runtime.model import TINY_STAMP, describe_model, tiny_stamp
from workers.tiny import build


@pytest.fixture(autouse=True)
def no_transformers(monkeypatch):
    monkeypatch.setattr(build, "_quiet_progress_bars", lambda: None)  # (imports transformers)


def ensure(folder: Path, saves: list[Path], version: int = 1, **params) -> Path:
    def save(staging: Path) -> None:
        saves.append(staging)
        (staging / "weights").write_text(f"v{version} {params}")

    return build.ensure_built("thing", version, folder, save, **params)


def test_a_build_is_made_once_and_then_found(tmp_path):
    saves: list[Path] = []
    folder = ensure(tmp_path / "tiny", saves, seed=0)
    assert ensure(tmp_path / "tiny", saves, seed=0) == folder == tmp_path / "tiny"
    assert len(saves) == 1
    stamp = json.loads((folder / TINY_STAMP).read_text())
    assert stamp == {"model": "thing", "version": 1, "seed": 0}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_another_version_or_parameter_rebuilds_the_folder_whole(tmp_path):
    saves: list[Path] = []
    ensure(tmp_path / "tiny", saves, seed=0)
    (tmp_path / "tiny" / "stale-file").write_text("from the old build")
    ensure(tmp_path / "tiny", saves, version=2, seed=0)
    assert (tmp_path / "tiny" / "weights").read_text() == "v2 {'seed': 0}"
    assert not (tmp_path / "tiny" / "stale-file").exists()
    ensure(tmp_path / "tiny", saves, version=2, seed=1)
    assert len(saves) == 3


def test_a_folder_without_a_stamp_is_a_broken_build_and_replaced(tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "half-written").write_text("")
    saves: list[Path] = []
    ensure(tmp_path / "tiny", saves)
    assert len(saves) == 1 and not (tmp_path / "tiny" / "half-written").exists()


def test_the_default_folder_is_named_after_the_model():
    assert build.default_folder("sd3") == build.CACHE_DIR / "tiny-sd3"


def test_only_a_tiny_build_is_described_as_random_weights(tmp_path):
    tiny = ensure(tmp_path / "tiny", [], seed=0)
    real = tmp_path / "Llama-4-Scout"  # real weights: a folder without the stamp
    real.mkdir()
    (real / "config.json").write_text("{}")
    assert tiny_stamp(tiny) == {"model": "thing", "version": 1, "seed": 0}
    assert tiny_stamp(real) is None
    assert describe_model(tiny, dtype="float32", device="cpu") == {
        "name": "tiny-thing", "dtype": "float32", "device": "cpu", "random": True}
    assert describe_model(real, dtype="nf4", device="cuda:0") == {
        "name": "Llama-4-Scout", "dtype": "nf4", "device": "cuda:0", "random": False}
    assert describe_model("org/model")["name"] == "org/model"  # a name, not a folder
    (real / TINY_STAMP).write_text("not json")  # a broken stamp is no stamp
    assert describe_model(real)["random"] is False
