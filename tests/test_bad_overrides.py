"""Every bad override, through the real command line: exit status 2 and one paragraph on stderr,
`burnlab: ...` naming the key and the bad value; no traceback, no Hydra hint about stack traces.

Most cases call `burnlab.launch.cli.main` in this process (Hydra composes twice in a fraction of a second);
a few run the installed `burnlab` command. Each case runs a study that would train for a few
seconds if the bad value were taken (study_helpers.QUICK_STUDY)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from burnlab.launch import cli
from study_helpers import QUICK_STUDY, burnlab_in_process

# (the override after QUICK_STUDY and paths.runs; {tmp} is the test's tmp_path), the key, the bad value as shown
CASES = [
    # wrong types, lists vs scalars
    ("train.batch_size=abc", "train.batch_size", "abc"),
    ("stages.te_hi.lr=abc", "stages.te_hi.lr", "abc"),
    ("data.resolution=12.5", "data.resolution", "12.5"),
    ("train.betas=5", "train.betas", "5"),
    ("train.batch_size=[1,2]", "train.batch_size", "[1, 2]"),
    ("stages.unet_lo.save_epochs=5", "stages.unet_lo.save_epochs", "5"),
    ("train.gradient_checkpointing=maybe", "train.gradient_checkpointing", "maybe"),
    # ranges
    ("stages.unet_hi.lr=-1", "stages.unet_hi.lr", "-1.0"),
    ("stages.unet_hi.lr=0", "stages.unet_hi.lr", "0.0"),
    ("stages.unet_hi.lr=inf", "stages.unet_hi.lr", "inf"),
    ("stages.unet_hi.lr=nan", "stages.unet_hi.lr", "nan"),
    ("stages.unet_lo.epochs=0", "stages.unet_lo.epochs", "0"),
    ("stages.unet_lo.save_epochs=[-1,100]", "stages.unet_lo.save_epochs", "[-1, 100]"),
    ("data.resolution=60", "data.resolution", "60"),
    ("data.caption_dropout=1", "data.caption_dropout", "1.0"),
    ("data.flip_p=2", "data.flip_p", "2.0"),
    ("sampling.guidance_scale=-1", "sampling.guidance_scale", "-1.0"),
    ("train.max_grad_norm=-1", "train.max_grad_norm", "-1.0"),
    ("validation.timesteps=[-5]", "validation.timesteps", "[-5]"),
    # keys the schema lacks
    ("train.learning_rate=1", "train.learning_rate", "1"),
    ("stages.unet_hi.foo=1", "stages.unet_hi.foo", "1"),
    ("+train.foo=1", "train.foo", "1"),
    ("+foo=1", "foo", "1"),
    # config groups and their options
    ("experiment=nope", "experiment", "'nope'"),
    ("model=nope", "model", "'nope'"),
    ("data=nope", "data", "'nope'"),
    ("hydra/launcher=nope", "hydra/launcher", "'nope'"),
    # the stage graph
    ("stages.unet_lo.parent=nowhere", "stages.unet_lo.parent", "'nowhere'"),
    ("stages.baseline.parent=unet_hi", "stages.baseline.parent", "'unet_hi'"),
    ("stages.base.lr=1", "stages.base", "1"),
    ("stages.unet_lo.train=[]", "stages.unet_lo.train", "[]"),
    ("stages.unet_lo.train=[vae]", "stages.unet_lo.train", "['vae']"),
    # paths
    ("data.path=/nonexistent", "data.path", "'/nonexistent'"),
    ("validation.path=/nonexistent", "validation.path", "'/nonexistent'"),
    ("model.path=/nonexistent", "model.path", "'/nonexistent'"),
    ("model.path=relative/nonexistent", "model.path", "relative/nonexistent"),
    ("model.path={tmp}/a_file", "model.path", "a_file'"),
    ("paths.runs={tmp}/a_file/runs", "paths.runs", "a_file/runs'"),
    ("paths.runs=/proc/burnlab_runs", "paths.runs", "'/proc/burnlab_runs'"),
    # bounds: folders stay inside paths.runs, sizes that decide memory, sampling that is on needs prompts
    ("name=../../escaped", "name", "'../../escaped'"),
    ("name=a/b", "name", "'a/b'"),
    ("data.resolution=100000", "data.resolution", "100000"),
    ("data.resolution=2056", "data.resolution", "2056"),
    ("sampling.width=4096", "sampling.width", "4096"),
    ("sampling.height=100000", "sampling.height", "100000"),
    # values no default gives
    ("stages.unet_hi.lr=???", "stages.unet_hi.lr", "'???'"),
    ("data=folder", "data.path", "'???'"),
    # choices
    ("train.mixed_precision=fp8", "train.mixed_precision", "'fp8'"),
    ("sampling.scheduler=foo", "sampling.scheduler", "'foo'"),
    ("logger.wandb.mode=foo", "logger.wandb.mode", "'foo'"),
    ("model.dtype=float8", "model.dtype", "'float8'"),
    # the override grammar and interpolations
    ("stages.unet_hi.lr=[", "stages.unet_hi.lr", "stages.unet_hi.lr=["),
    ("name=${nope}", "name", "'nope'"),
]
SUBPROCESS = {"train.batch_size=abc", "experiment=nope", "paths.runs={tmp}/a_file/runs", "stages.unet_hi.lr=["}


def assert_one_paragraph(status: int, stderr: str, key: str, value: str) -> str:
    """Exit status 2, and stderr's last line `burnlab: config key `KEY`...VALUE...`, the only one
    from burnlab, with no blank line, traceback or Hydra noise before it (third-party warnings may
    precede it)."""
    assert status == 2, stderr
    for noise in ("Traceback", "HYDRA_FULL_ERROR", "Error executing job"):
        assert noise not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert all(line.strip() for line in lines), stderr  # one paragraph: no blank line
    assert [line for line in lines if line.startswith("burnlab:")] == lines[-1:], stderr
    assert lines[-1].startswith(f"burnlab: config key `{key}`"), stderr
    assert value in lines[-1], stderr
    return lines[-1]


def burnlab_command() -> str:
    """The installed console script beside this interpreter (PYTHONPATH picks the sources)."""
    return shutil.which("burnlab", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("override, key, value", CASES, ids=[case[0] for case in CASES])
def test_a_bad_override_is_one_paragraph_naming_key_and_value(override, key, value, tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    argv = [*QUICK_STUDY, f"paths.runs={tmp_path}/runs", override.replace("{tmp}", str(tmp_path))]
    if override in SUBPROCESS:
        result = subprocess.run([burnlab_command(), *argv], capture_output=True, text=True, timeout=120)
        status, stderr = result.returncode, result.stderr
    else:
        status, stderr = burnlab_in_process(argv, monkeypatch, capsys)
    assert_one_paragraph(status, stderr, key, value)


def test_a_bad_swept_value_is_one_paragraph(tmp_path, monkeypatch, capsys):
    status, stderr = burnlab_in_process(
        ["-m", *QUICK_STUDY, f"paths.runs={tmp_path}", "train.batch_size=abc,2"], monkeypatch, capsys
    )
    assert_one_paragraph(status, stderr, "train.batch_size", "abc")


def test_a_sweep_with_one_bad_job_stops_before_any_job_runs(tmp_path, monkeypatch, capsys):
    status, stderr = burnlab_in_process(
        ["-m", *QUICK_STUDY, f"paths.runs={tmp_path}", "stages.unet_hi.lr=1e-4,-1"], monkeypatch, capsys
    )
    assert_one_paragraph(status, stderr, "stages.unet_hi.lr", "-1")
    assert list(tmp_path.iterdir()) == []  # the good job did not run first either


def test_cfg_shows_a_good_config_and_words_a_bad_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["burnlab", "--cfg", "job", *QUICK_STUDY, "train.batch_size=3"])
    cli.main()
    assert "batch_size: 3" in capsys.readouterr().out
    status, stderr = burnlab_in_process(["--cfg", "job", *QUICK_STUDY, "train.batch_size=abc"], monkeypatch, capsys)
    assert_one_paragraph(status, stderr, "train.batch_size", "abc")


def test_help_still_answers(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["burnlab", "--help"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 0 and "== Config ==" in capsys.readouterr().out


def test_an_escaping_name_writes_nothing_anywhere(tmp_path, monkeypatch, capsys):
    """`name=../../escaped paths.runs=<tmp>/a/runs`: refused before Hydra makes the run dir."""
    runs = tmp_path / "a" / "runs"
    status, stderr = burnlab_in_process([*QUICK_STUDY, f"paths.runs={runs}", "name=../../escaped"], monkeypatch, capsys)
    assert_one_paragraph(status, stderr, "name", "../../escaped")
    assert list(tmp_path.iterdir()) == []


def test_sampling_needs_prompts_unless_switched_off_and_prompt_sets_name_one_folder():
    """Hydra's override grammar can neither empty sampling.prompts (`={}` merges) nor name a key
    `..`; a config file can, so the checks are tested on the schema."""
    from burnlab.config.compose import check_sampling
    from burnlab.config.schema import PromptConfig, SamplingConfig
    from burnlab.errors import ConfigError

    for on in ({}, {"testing_plan": False, "every_n_epochs": 5}):
        with pytest.raises(ConfigError) as refused:
            check_sampling(SamplingConfig(**on))
        assert refused.value.key == "sampling.prompts" and "sampling.testing_plan=false" in str(refused.value)
    check_sampling(SamplingConfig(testing_plan=False, every_n_epochs=0))
    with pytest.raises(ConfigError) as refused:
        SamplingConfig(prompts={"..": PromptConfig(prompt="hi")})
    assert refused.value.key == "prompts..." and "one folder name inside paths.runs" in str(refused.value)


def test_a_writable_run_store_is_left_as_it_was(tmp_path):
    from burnlab.launch.preflight import check_runs_writable

    check_runs_writable(str(tmp_path / "new" / "runs"))
    assert list(tmp_path.iterdir()) == []  # tried with a temporary folder, removed again
