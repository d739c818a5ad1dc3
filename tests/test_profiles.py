"""Packaged device profiles load with true values; malformed user profiles fail with a fix."""

import re

import pytest

from edgekit.profiles import (PROFILE_DIR, format_profile, format_profile_table, load_profiles, profile_names,
                              resolve_profile)
from edgekit_runtime.errors import ProfileError

EXPECTED = ["generic-aarch64", "jetson-orin", "jetson-orin-nano", "jetson-orin-nx", "jetson-xavier-nx",
            "raspberry-pi-5", "x86-64-cpu"]
# The rule names the rewrite package implements; a profile naming anything else is a typo.
KNOWN_RULES = {"gelu-tanh", "gelu-sigmoid", "int32-inputs", "fp16-safe-mask"}
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (2e-2, 2e-2), "int8": (0.25, 0.1)}


def test_every_packaged_profile_loads():
    profiles = load_profiles()
    assert [p.name for p in profiles] == EXPECTED == profile_names()
    for p in profiles:
        assert p.opset == 13
        assert p.sha256 and p.source.endswith(f"{p.name}.toml")
        assert set(p.rewrite_rules) <= KNOWN_RULES, p.name
        # fp16 needs the mask clamp; without fp16 the rule has nothing to do.
        assert ("fp16-safe-mask" in p.rewrite_rules) == ("fp16" in p.precisions), p.name
        assert {k: (t.atol, t.rtol) for k, t in p.tolerances.items()} == {k: TOLERANCES[k] for k in p.precisions}


def test_int8_formats_per_target():
    for p in load_profiles():
        assert p.int8_format in p.int8_formats
        if "tensorrt" in p.backends:
            assert p.int8_formats == ("qdq",), p.name  # TensorRT reads only QDQ graphs


def test_jetson_orin_values():
    p = resolve_profile("jetson-orin")
    assert (p.jetpack, p.tensorrt, p.cuda, p.compute_capability) == ("6.2", "10.3", "12.6", "8.7")
    assert p.backends == ("tensorrt", "ort-tensorrt", "ort-cuda", "ort-cpu")
    assert p.default_precision == "fp16" and p.token_dtype == "int64"
    assert p.rewrite_rules == ("fp16-safe-mask",) and p.unsupported_ops == ()
    assert p.tolerance("fp16").atol == 2e-2


def test_orin_family_shares_the_jetpack_62_stack():
    for name in ("jetson-orin-nx", "jetson-orin-nano"):
        p = resolve_profile(name)
        assert (p.jetpack, p.tensorrt, p.cuda, p.compute_capability) == ("6.2", "10.3", "12.6", "8.7")


def test_xavier_nx_bans_layernorm_and_erf_and_uses_int32():
    p = resolve_profile("jetson-xavier-nx")
    assert {"LayerNormalization", "Erf"} <= set(p.unsupported_ops)
    assert p.token_dtype == "int32"
    assert {"int32-inputs", "gelu-sigmoid", "fp16-safe-mask"} == set(p.rewrite_rules)
    assert (p.jetpack, p.tensorrt, p.cuda, p.compute_capability) == ("5.1", "8.5", "11.4", "7.2")


def test_cpu_profiles_run_ort_cpu_without_fp16():
    for name in ("raspberry-pi-5", "generic-aarch64", "x86-64-cpu"):
        p = resolve_profile(name)
        assert p.accelerator == "cpu" and p.backends == ("ort-cpu",)
        assert p.precisions == ("fp32", "int8") and p.default_precision == "fp32"
        assert p.tensorrt is None and "Erf" not in p.unsupported_ops
        assert p.decoder_ops == "ort-contrib" and p.to_dict()["decoder_ops"] == "ort-contrib"
        with pytest.raises(ProfileError, match="Fix:"):
            p.tolerance("fp16")


def test_jetson_profiles_keep_standard_decoder_graphs_and_their_hash():
    for name in ("jetson-orin", "jetson-orin-nano", "jetson-orin-nx", "jetson-xavier-nx"):
        p = resolve_profile(name)
        # the default is left out of to_dict, so a profile written before the key hashes as it did
        assert p.decoder_ops == "standard" and "decoder_ops" not in p.to_dict()


def test_unknown_name_lists_valid_names():
    with pytest.raises(ProfileError) as exc:
        resolve_profile("jetson-nano-classic")
    msg = str(exc.value)
    assert "'jetson-nano-classic'" in msg and "Fix:" in msg and ".toml" in msg
    assert all(name in msg for name in EXPECTED)


def _user_profile(tmp_path, edit, name="jetson-orin"):
    """Copy a packaged profile into tmp_path after applying ``edit`` to its text."""
    text = (PROFILE_DIR / f"{name}.toml").read_text()
    path = tmp_path / f"{name}.toml"
    path.write_text(edit(text))
    return path


def _set(key, line):
    """An edit replacing the single top-level ``key = ...`` line with ``line`` ('' drops it)."""

    def edit(text):
        new, n = re.subn(rf"^{re.escape(key)} = .*\n", line + "\n" if line else "", text, flags=re.M)
        assert n == 1, f"expected one `{key} = ` line"
        return new

    return edit


def test_user_profile_by_path(tmp_path):
    path = _user_profile(tmp_path, _set("memory_budget_mb", "memory_budget_mb = 3000"))
    p = resolve_profile(str(path))
    assert p.memory_budget_mb == 3000 and p.source == str(path)
    assert p.sha256 != resolve_profile("jetson-orin").sha256
    # A bare file name ending in .toml is a path too, not a packaged name.
    with pytest.raises(ProfileError, match="no such profile file"):
        resolve_profile("not-here.toml")


@pytest.mark.parametrize("edit, key", [
    (lambda t: 'colour = "green"\n' + t, "colour"),
    (_set("opset", 'opset = "13"'), "opset"),
    (_set("token_dtype", ""), "token_dtype"),
    (_set("memory_budget_mb", "memory_budget_mb = true"), "memory_budget_mb"),
    (_set("precisions", 'precisions = ["fp32", "int8"]'), "default_precision"),
    (lambda t: re.sub(r"\[tolerances\.int8\]\natol = .*\nrtol = .*\n", "", t), "tolerances.int8"),
    (_set("tensorrt", ""), "tensorrt"),
    (_set("int8_formats", ""), "int8_formats"),
    (_set("int8_formats", 'int8_formats = ["qdq", "qoperator"]'), "int8_formats"),
    (_set("int8_format", 'int8_format = "qoperator"'), "int8_format"),
    (lambda t: 'decoder_ops = "ort-contrib"\n' + t, "decoder_ops"),
    (lambda t: 'decoder_ops = "fast"\n' + t, "decoder_ops"),
], ids=["unknown-key", "wrong-type", "missing-field", "bool-for-int", "default-not-allowed",
        "missing-tolerance", "gpu-without-tensorrt", "int8-without-format", "tensorrt-with-qoperator",
        "default-format-not-listed", "contrib-ops-with-tensorrt", "unknown-decoder-ops"])
def test_invalid_profile_names_file_key_and_fix(tmp_path, edit, key):
    path = _user_profile(tmp_path, edit)
    with pytest.raises(ProfileError) as exc:
        resolve_profile(str(path))
    msg = str(exc.value)
    assert str(path) in msg and f"'{key}'" in msg and "Fix:" in msg


def test_file_name_must_match_profile_name(tmp_path):
    path = tmp_path / "my-board.toml"
    path.write_text((PROFILE_DIR / "x86-64-cpu.toml").read_text())
    with pytest.raises(ProfileError) as exc:
        resolve_profile(str(path))
    msg = str(exc.value)
    assert str(path) in msg and "'name'" in msg and "Fix:" in msg and "x86-64-cpu.toml" in msg


def test_formatting_shows_the_values():
    table = format_profile_table(load_profiles()).splitlines()
    assert table[0].split()[0] == "NAME" and len(table) == 1 + len(EXPECTED)
    orin = next(line for line in table if line.startswith("jetson-orin "))
    assert "10.3" in orin and "sm_87" in orin and "fp16" in orin
    shown = format_profile(resolve_profile("jetson-xavier-nx"))
    for text in ("LayerNormalization, Erf", "gelu-sigmoid", "sm_72", "int32", "8.5", "atol=0.02"):
        assert text in shown
