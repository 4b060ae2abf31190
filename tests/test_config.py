from __future__ import annotations

import math
from pathlib import Path

import pytest

from medseg.config import Config, bundled_configs, config_from_dict, load_config
from medseg.errors import ConfigError
from medseg.training import validate_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "medseg" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_validates(path: Path) -> None:
    config = load_config(path)
    validate_config(config)
    assert isinstance(config, Config)


def test_bundled_configs_load_by_name_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert sorted(bundled_configs()) == sorted(p.stem for p in CONFIGS)
    by_name = load_config("msd_hippocampus", ["train.epochs=3"])
    assert by_name.train.epochs == 3 and by_name.network.name == "dynunet"
    assert load_config("demo_ct_phantom.yaml") == load_config(REPO / "medseg" / "configs" / "demo_ct_phantom.yaml")
    (tmp_path / "msd_hippocampus.yaml").write_text("train:\n  epochs: 7\n")  # a file of the user's wins
    assert load_config("msd_hippocampus.yaml").train.epochs == 7
    with pytest.raises(ConfigError, match=r"no_such_config: config file not found \(bundled configs: .*msd_hippo"):
        load_config("no_such_config")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Path("elsewhere") / "msd_hippocampus.yaml")  # a path with a folder is only that path


@pytest.mark.slow
def test_the_built_wheel_ships_the_configs(tmp_path: Path) -> None:
    """``pip install medseg`` then ``medseg demo`` needs the configs inside the package."""
    import subprocess
    import sys
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, REPO],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("medseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"medseg/configs/{p.name}" for p in CONFIGS} <= names


def test_overrides_are_parsed_as_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n")
    config = load_config(path, ["train.lr=1e-4", "transforms.patch_size=[32, 32, 16]", "network.kwargs.dropout=0.1"])
    assert config.train.lr == pytest.approx(1e-4)
    assert config.transforms.patch_size == [32, 32, 16]
    assert config.network.kwargs == {"dropout": 0.1}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            "train.lr=!!python/object:os.system x",
            r"override 'train.lr': YAML tags are not allowed in a value, got '!!python/object:os.system'",
        ),
        ("train.lr=[1, !!binary x]", r"override 'train.lr': YAML tags are not allowed in a value, got '!!binary'"),
        ("train.lr=[unclosed", r"override 'train.lr': invalid YAML value '\[unclosed'"),
    ],
)
def test_overrides_with_tags_or_invalid_yaml_name_the_key(tmp_path: Path, item: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path, [item])
    assert "\n" not in str(err.value)


def test_unknown_key_names_the_key_and_suggests(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.epocs" in str(err.value)
    assert "did you mean 'train.epochs'" in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"epochs": "many"}}, "train.epochs: expected int"),
        ({"train": {"amp": "yes"}}, "train.amp: expected bool"),
        ({"train": {"consistency_weight": -1.0}}, "train.consistency_weight must be >= 0"),
        ({"loss": {"name": "hinge"}}, "loss.name: 'hinge' is not one of"),
        ({"transforms": {"patch_size": 64}}, "transforms.patch_size: expected a list"),
        ({"data": []}, "data: expected a mapping"),
    ],
)
def test_wrong_types_are_errors(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"lr": -1}}, r"train.lr must be > 0, got -1.0"),
        ({"train": {"lr": float("nan")}}, r"train.lr must be > 0, got nan"),
        ({"train": {"val_every": 0}}, r"train.val_every must be >= 1, got 0"),
        ({"train": {"grad_clip": 0}}, r"train.grad_clip must be > 0"),
        ({"inference": {"overlap": 1.0}}, r"inference.overlap must be in \[0, 1\), got 1.0"),
        ({"inference": {"threshold": 2}}, r"inference.threshold must be in \(0, 1\), got 2.0"),
        ({"inference": {"roi_size": [64, 0, 64]}}, r"inference.roi_size must be >= 1 \(each\), got \[64, 0, 64\]"),
        ({"transforms": {"pos_fraction": 1.5}}, r"transforms.pos_fraction must be in \[0, 1\]"),
        ({"transforms": {"class_ratios": [1, -1]}}, r"transforms.class_ratios must be >= 0 \(each\)"),
        ({"data": {"cache_rate": 2}}, r"data.cache_rate must be in \[0, 1\]"),
        ({"data": {"num_folds": 1}}, r"data.num_folds must be >= 2"),
        ({"loss": {"gamma": -2}}, r"loss.gamma must be >= 0"),
        ({"phantoms": {"spacing": 0}}, r"phantoms.spacing must be > 0"),
        (
            {"transforms": {"hu_window": [-math.inf, math.inf]}},
            r"transforms.hu_window must be a finite number \(each\)",
        ),
        (
            {"transforms": {"foreground_threshold": math.nan}},
            r"transforms.foreground_threshold must be a finite number",
        ),
        ({"transforms": {"hu_window": [-math.inf, 250]}}, r"transforms.hu_window must be a finite number \(each\)"),
        ({"inference": {"mirror_axes": [0, 3]}}, r"inference.mirror_axes must be in \[0, 2\] \(each\)"),
        ({"inference": {"mirror_axes": [1, 1]}}, r"inference.mirror_axes names an axis twice: \[1, 1\]"),
        (
            {"inference": {"mirror_axes": [0]}, "transforms": {"flip_prob": 0}},
            r"inference.mirror_axes \[0\] needs a model trained with flips, but transforms.flip_prob is 0",
        ),
    ],
)
def test_values_out_of_range_are_errors(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_values_at_the_closed_ends_of_their_range_are_accepted() -> None:
    config = config_from_dict(
        {"data": {"cache_rate": 0, "fold": 0}, "transforms": {"pos_fraction": 1}, "inference": {"overlap": 0}}
    )
    assert (config.data.cache_rate, config.transforms.pos_fraction, config.inference.overlap) == (0.0, 1.0, 0.0)


def test_ints_are_accepted_for_floats() -> None:
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0


def test_patch_size_the_network_cannot_take_fails_validation() -> None:
    config = config_from_dict({"network": {"name": "vnet"}, "transforms": {"patch_size": [96, 96, 70]}})
    with pytest.raises(ConfigError, match=r"'vnet'.*multiple of 16.*\[96, 96, 64\]"):
        validate_config(config)


def test_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("max_window", "message"),
    [
        ([96, 96, 96], "must give one size >= roi_size"),
        ([128, 128], "must give one size"),
        ([130] * 3, "multiple of 16"),
    ],
)
def test_max_window_is_checked_against_roi_and_network(max_window: list[int], message: str) -> None:
    config = config_from_dict({"inference": {"roi_size": [128] * 3, "max_window": max_window}})
    with pytest.raises(ConfigError, match=message):
        validate_config(config)
    validate_config(config_from_dict({"inference": {"roi_size": [128] * 3, "max_window": [160] * 3}}))


def test_max_window_voxels_must_hold_the_smallest_window() -> None:
    """The default network (divisor 16) may shrink a 128 roi to 64 per axis under a voxel budget."""
    config = config_from_dict({"inference": {"roi_size": [128] * 3, "max_window_voxels": 64**3 - 1}})
    with pytest.raises(ConfigError, match=r"max_window_voxels .* \[64, 64, 64\]"):
        validate_config(config)
    validate_config(config_from_dict({"inference": {"roi_size": [128] * 3, "max_window_voxels": 64**3}}))


def test_a_number_that_names_a_choice_is_that_choice() -> None:
    """``release: 2024`` unquoted (and ``--set phantoms.release=2024``) is YAML's number 2024, the choice "2024"."""
    assert config_from_dict({"phantoms": {"release": 2024}}).phantoms.release == "2024"
    assert load_config("demo_brats_phantom", ["phantoms.release=2023"]).phantoms.release == "2023"
    with pytest.raises(ConfigError, match=r"phantoms\.release: 2019 is not one of"):
        config_from_dict({"phantoms": {"release": 2019}})
    with pytest.raises(ConfigError, match="is not one of"):
        config_from_dict({"phantoms": {"release": True}})
