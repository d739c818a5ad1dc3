"""The `edgekit` CLI: errors a new user meets first, each naming the value, reason and fix."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.profiles import profile_names
from tests.tiny_models import make_csv, make_model_dir


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_unknown_profile_lists_valid_names():
    result = run("compile", "--profile", "jetson-orin-mega")
    assert result.exit_code == 1
    assert "jetson-orin-mega" in result.output
    for name in profile_names():
        assert name in result.output
    assert "Traceback" not in result.output


def test_missing_teacher_directory(tmp_path):
    result = run("compile", "--profile", "x86-64-cpu", "--teacher", str(tmp_path / "nowhere"))
    assert result.exit_code == 1
    assert "nowhere" in result.output and "no such directory" in result.output and "Fix:" in result.output


def test_teacher_directory_without_config(tmp_path):
    result = run("compile", "--profile", "x86-64-cpu", "--teacher", str(tmp_path))
    assert result.exit_code == 1 and "no config.json" in result.output


def test_missing_data_file(tmp_path):
    result = run("compile", "--profile", "x86-64-cpu", "--data", str(tmp_path / "x.csv"))
    assert result.exit_code == 1 and "x.csv" in result.output and "no such file" in result.output


def test_missing_column_lists_columns_found(tmp_path):
    teacher = make_model_dir(tmp_path / "bert")
    data = make_csv(tmp_path / "d.csv", rows=30, text_column="review", label_column="stars")
    result = run("compile", "--profile", "x86-64-cpu", "--teacher", str(teacher), "--data", str(data),
                 "--out", str(tmp_path / "b"))
    assert result.exit_code == 1
    assert "review" in result.output and "stars" in result.output and "--text-column" in result.output
    assert not (tmp_path / "b").exists()


def test_profiles_table_and_show():
    table = run("profiles")
    assert table.exit_code == 0
    for name in profile_names():
        assert name in table.output
    shown = run("profiles", "show", "jetson-xavier-nx")
    assert shown.exit_code == 0 and "8.5" in shown.output and "int32" in shown.output
    bad = run("profiles", "show", "nope")
    assert bad.exit_code == 1 and "jetson-orin" in bad.output


@pytest.mark.parametrize("args, expected", [
    (["--help"], "edgekit compile --profile jetson-orin"),
    (["compile", "--help"], "--text-column review --label-column stars"),
    (["profiles", "--help"], "edgekit profiles show NAME"),
])
def test_help_teaches_with_examples(args, expected):
    result = run(*args)
    assert result.exit_code == 0
    assert expected in result.output


def test_help_is_instant_no_torch_import():
    code = "import sys; from edgekit.cli import main; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plan_prints_the_cut_and_trains_nothing(tmp_path):
    teacher = make_model_dir(tmp_path / "bert")
    data = make_csv(tmp_path / "d.csv", rows=60)
    result = run("compile", "--profile", "x86-64-cpu", "--teacher", str(teacher), "--data", str(data),
                 "--layers", "1", "--heads", "2", "--plan", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    assert "4 -> 2" in result.output  # heads per kept layer
    assert "total" in result.output.lower()
    assert not (tmp_path / "b").exists() and not (tmp_path / ".b.work").exists()


def test_compile_prints_the_summary_and_writes_the_bundle(tmp_path):
    teacher = make_model_dir(tmp_path / "bert")
    data = make_csv(tmp_path / "d.csv", rows=90)
    recipe = tmp_path / "r.toml"
    recipe.write_text("max_length = 32\nthreads = 1\n[finetune]\nmax_steps = 4\nbatch_size = 8\n"
                      "[student_train]\nmax_steps = 2\nbatch_size = 8\ngrad_accum = 1\n"
                      "[validate]\nbatch_sizes = [1, 2]\nlengths = [8, 32]\nbatches_per_shape = 1\n"
                      "[rewrite]\nmeasure_samples = 8\n")
    result = run("compile", "--profile", "raspberry-pi-5", "--teacher", str(teacher), "--data", str(data),
                 "--recipe", str(recipe), "--layers", "1", "--heads", "2", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    for expected in ("teacher (PyTorch)", "student (PyTorch)", "bundle (ort-cpu)", "test macro_f1",
                     "majority-class baseline", "validation vs PyTorch", "non-embedding parameters",
                     f"bundle: {tmp_path / 'b'}"):
        assert expected in result.output, expected
    assert (tmp_path / "b" / "manifest.json").is_file() and not (tmp_path / ".b.work").exists()


def test_plan_without_a_shape_prints_the_budget_plan(tmp_path):
    teacher = make_model_dir(tmp_path / "bert")
    data = make_csv(tmp_path / "d.csv", rows=60)
    result = run("compile", "--profile", "x86-64-cpu", "--teacher", str(teacher), "--data", str(data),
                 "--latency-budget", "none", "--size-budget", "0.9", "--plan", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    assert "plan: " in result.output and "predicted" in result.output and "x the teacher" in result.output
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("flag, value, match", [
    ("--latency-budget", "2", "ratio to the teacher and must be in"),
    ("--size-budget", "fast", "not a ratio in"),
])
def test_bad_budget_flags_say_how_to_fix(tmp_path, flag, value, match):
    result = run("compile", "--profile", "x86-64-cpu", flag, value, "--out", str(tmp_path / "b"))
    assert result.exit_code == 1 and match in result.output and "Fix:" in result.output
