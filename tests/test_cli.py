"""The thin CLI: listings, checkpoint info, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

import robustfeat as rf
from robustfeat.cli import main
from robustfeat.registry import ADAPTERS
from tests.models import CASES


def test_ls_adapters_lists_every_method_with_formula(capsys):
    assert main(["ls", "adapters"]) == 0
    out = capsys.readouterr().out
    for name, method in ADAPTERS.items():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert method.summary in line and method.formula in line


def test_info_on_checkpoint(tmp_path, capsys):
    model = CASES[0].model()
    rf.inject_adapters(model, rf.AdapterConfig(method="vefa", target_modules=["up", "mid"]))
    rf.save_adapters(model, tmp_path / "ck", base_id="tiny-mlp")
    assert main(["info", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "vefa" in out and "2 layers" in out and "tiny-mlp" in out


@pytest.mark.parametrize(
    "argv,match",
    [
        (["info", "/nonexistent/ckpt"], "does not exist"),
        (["info", "{tmp}/model.pt"], "never unpickles"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, argv, match):
    (tmp_path / "model.pt").write_bytes(b"\x80\x04K\x01.")  # a pickle of the int 1
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "robustfeat", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and lines[0].startswith("robustfeat: error:")
    assert "Traceback" not in proc.stderr


def test_debug_shows_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "robustfeat", "--debug", "info", "/nonexistent"], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_help_does_not_import_torch():
    code = "import sys; from robustfeat.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_ls_corruptions_lists_the_registry(capsys):
    from robustfeat.registry import CORRUPTIONS

    assert main(["ls", "corruptions"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in CORRUPTIONS.names()) and "common 15" in out and "extra 4" in out


def test_adapter_hyperparameters_are_declared_once():
    """Every AdapterConfig hyperparameter is a TrainConfig field, a `finetune` flag and a grid
    training field, validated as AdapterConfig validates it, and reaches the adapter config."""
    import dataclasses

    import pytest

    from robustfeat.adapters.config import hyperparameters
    from robustfeat.cli import build_parser
    from robustfeat.errors import ConfigError
    from robustfeat.sweep.grid import parse_grid
    from robustfeat.train import TrainConfig

    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    examples = {int: 3, float: 0.25, bool: True}
    for f in hyperparameters():
        kind = f.metadata["type"]
        assert f.name in train_fields
        flag = "--" + f.name.replace("_", "-")
        argv = ["finetune", "--model", "m", "--data", "d", "--method", "x", "--out", "o", flag]
        args = build_parser(for_command="finetune").parse_args(argv if kind is bool else [*argv, str(examples[kind])])
        assert getattr(args, f.name) == examples[kind]
        method = "vefa" if f.name == "shift" else "lora"
        config = TrainConfig(model="tiny-bert", data="rotten-tomatoes", method=method, **{f.name: examples[kind]})
        assert config.adapter_kwargs() == {f.name: examples[kind]}
        grid = parse_grid({"models": ["tiny-bert"], "datasets": ["rotten-tomatoes"], "methods": [method], "seeds": [0],
                           "train": {f.name: examples[kind]}})
        assert grid.trials[0].train[f.name] == examples[kind]
        with pytest.raises(ConfigError, match=f.name):
            TrainConfig(model="tiny-bert", data="rotten-tomatoes", method=method, **{f.name: "bad"})


def test_the_same_run_from_python_and_the_command_line_has_one_digest():
    """``epochs=2`` in Python and ``--epochs 2`` on the command line (parsed as 2.0) are one run:
    a resume or a rerun from the other side is recognised."""
    from robustfeat.cli import build_parser, train_config
    from robustfeat.train import TrainConfig

    cli = train_config(build_parser(for_command="finetune").parse_args(
        ["finetune", "--model", "tiny-bert", "--data", "d.csv", "--method", "lora", "--epochs", "2", "--alpha", "8",
         "--out", "o"]))
    api = TrainConfig(model="tiny-bert", data="d.csv", method="lora", epochs=2, alpha=8)
    assert cli.digest() == api.digest() and api.epochs == 2.0 and isinstance(api.epochs, float)
