import pytest

from edgekit.recipe import DEMO_OVERRIDES, RecipeError, build_recipe, load_recipe


def test_toml_then_flags_override(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('teacher = "t"\nmax_length = 64\n[finetune]\nmax_steps = 10\nlearning_rate = 1e-4\n'
                    '[data]\npath = "d.csv"\ntext_column = "body"\n')
    recipe = load_recipe(path, {"finetune": {"max_steps": 3}, "data": {"text_column": None}})
    assert recipe.finetune.max_steps == 3  # the flag wins
    assert recipe.finetune.learning_rate == 1e-4  # the file's value stays
    assert recipe.data.text_column == "body"  # an absent flag (None) does not erase it
    assert recipe.max_length == 64 and not recipe.is_demo


def test_demo_sizing_only_for_demo():
    demo = load_recipe(None, {})
    assert demo.is_demo and demo.finetune.max_steps == DEMO_OVERRIDES["finetune"]["max_steps"]
    assert demo.data.label_column == "sentiment"
    user = load_recipe(None, {"teacher": "x", "data": {"path": "d.csv"}})
    assert user.finetune.max_steps is None and user.data.label_column == "label"
    # compression is on for every teacher, the demo's and the user's alike: the budget plans the shape
    for recipe in (demo, user):
        assert recipe.compress and recipe.student.enabled and recipe.prune.is_noop and recipe.quantize.method == "auto"
    off = load_recipe(None, {"teacher": "x", "compress": False})
    assert not off.student.enabled and off.quantize.method == "none"
    # The user's own value beats the demo sizing.
    assert load_recipe(None, {"finetune": {"max_steps": 7}}).finetune.max_steps == 7


def test_unknown_key_names_section_and_choices():
    with pytest.raises(RecipeError, match=r"\[finetune\]: unknown key 'lr'.*learning_rate"):
        build_recipe({"finetune": {"lr": 1}})


@pytest.mark.parametrize("values, match", [
    ({"finetune": {"learning_rate": 3}}, r"learning_rate = 3: must be in \(0, 1\)"),
    ({"data": {"split": [0.5, 0.5, 0.5]}}, r"split"),
    ({"max_length": 1}, r"max_length = 1"),
    ({"export": {"precision": "int8"}}, r"precision = 'int8'"),
])
def test_bad_values_say_how_to_fix(values, match):
    with pytest.raises(RecipeError, match=match) as info:
        build_recipe(values)
    assert "Fix:" in str(info.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.toml")


def test_resolved_recipe_round_trips():
    recipe = load_recipe(None, {"teacher": "t", "data": {"path": "d.csv"}, "finetune": {"max_steps": 5}})
    assert build_recipe(recipe.to_dict()) == recipe
