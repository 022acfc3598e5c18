"""Recipe parsing: defaults, overrides, and one clear error for each kind of mistake."""

import pytest

from kdexport import recipe
from kdexport.errors import KdxError
from kdexport.pipeline import SECTIONS, load_recipe


def test_default_recipe_is_complete():
    r = load_recipe()
    assert r["teacher"]["model"] == "zoo:digits-cnn-large"
    assert r["distill"]["student"] == "zoo:digits-cnn-small"
    assert set(r) == set(recipe.schema(SECTIONS))
    for section, keys in recipe.schema(SECTIONS).items():
        assert set(r[section]) == set(keys)


def test_overrides_are_typed():
    r = load_recipe(
        overrides=["distill.epochs=3", "compile.targets=['ort-cpu']", "distill.kd_loss=logit_mse"]
    )
    assert r["distill"]["epochs"] == 3
    assert r["compile"]["targets"] == ["ort-cpu"]
    assert r["distill"]["kd_loss"] == "logit_mse"


def test_int_is_accepted_for_float():
    assert load_recipe(overrides=["distill.temperature=2"])["distill"]["temperature"] == 2.0


def test_round_trip(tmp_path):
    r = load_recipe(overrides=["distill.epochs=3"])
    path = tmp_path / "r.toml"
    path.write_text(recipe.dumps(r))
    assert load_recipe(path) == r


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distill.epoch=3", "unknown key 'distill.epoch' (did you mean 'distill.epochs'?)"),
        ("distil.epochs=3", "unknown section 'distil' (did you mean 'distill'?)"),
        ("distill.epochs=three", "distill.epochs must be an integer, got 'three'"),
        ("distill.epochs=-1", "distill.epochs = -1 must be >= 0"),
        ("distill.temperature=0", "distill.temperature = 0.0 must be > 0.0"),
        ("distill.kd_loss=nope", "distill.kd_loss = 'nope' must be one of kd, logit_mse"),
        ("data.val_fraction=0.9", "data.val_fraction = 0.9 must be <= 0.5"),
        ("compile.targets='ort-cpu'", "compile.targets must be a list like [string, ...]"),
        ("benchmark.batch_sizes=[0]", "benchmark.batch_sizes = [0] must be >= 1"),
        ("distill", "expected section.key=value"),
    ],
)
def test_bad_values_name_the_problem(override, message):
    with pytest.raises(KdxError, match=None) as err:
        load_recipe(overrides=[override])
    assert message in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(KdxError, match="no such file"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[distill\nepochs = 3")
    with pytest.raises(KdxError, match="not valid TOML"):
        load_recipe(bad)
    bad.write_text("distill = 3")
    with pytest.raises(KdxError, match="must be a table"):
        load_recipe(bad)


def test_a_run_records_its_own_modality_keys_only(tmp_path):
    from kdexport.pipeline import prepare_run

    resolved = prepare_run(tmp_path / "run")
    written = (tmp_path / "run" / "recipe.toml").read_text()
    assert 'modality = "image"' in written and "image_size" in written
    assert "text_column" not in written and "clip_seconds" not in written
    assert "text_shapes" not in written
    assert load_recipe(tmp_path / "run" / "recipe.toml") == resolved  # filled in again
