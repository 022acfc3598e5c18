"""Property-based tests: the recipe parser, the manifest reader and the bundle reader turn any
input into either a valid object or the project's own error (KdxError), never another exception."""

import json
import tarfile
import tempfile

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from kdexport import recipe
from kdexport.artifact import Artifact
from kdexport.bundle.archive import verify
from kdexport.errors import KdxError
from kdexport.pipeline import SECTIONS, load_recipe

# Hypothesis keeps a folder of its own (.hypothesis/ in the working folder by default): put it in
# the system's temporary folder, not in the repository.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="kdexport-hypothesis-"))
SETTINGS = settings(  # no example database: tests write nothing outside their tmp folders
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
SCALARS = st.one_of(
    st.integers(-10, 10**6), st.floats(allow_nan=True), st.text(max_size=12), st.booleans()
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4))
KNOWN = {s: list(keys) for s, keys in recipe.schema(SECTIONS).items()}
SECTION = st.one_of(st.sampled_from(sorted(KNOWN)), st.text(min_size=1, max_size=8))


@st.composite
def recipes(draw):
    raw = {}
    for section in draw(st.lists(SECTION, max_size=4, unique=True)):
        keys = st.one_of(
            st.sampled_from(KNOWN.get(section) or ["x"]), st.text(min_size=1, max_size=8)
        )
        raw[section] = draw(st.dictionaries(keys, VALUES, max_size=4))
    return raw


def _valid_or_kdx(fn, *args):
    try:
        return fn(*args)
    except KdxError:
        return None


@SETTINGS
@given(raw=recipes())
def test_recipe_tables(tmp_path, raw):
    path = tmp_path / "r.toml"
    try:
        path.write_text(tomli_w.dumps(raw))
    except (TypeError, ValueError):  # NaN and the like cannot be written as TOML at all
        return
    r = _valid_or_kdx(load_recipe, path)
    if r is not None:
        assert set(r) == set(KNOWN)


@SETTINGS
@given(text=st.text(max_size=200))
def test_recipe_text_and_overrides(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(text, encoding="utf-8")
    _valid_or_kdx(load_recipe, path)
    _valid_or_kdx(load_recipe, None, [text])


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def manifests(draw):
    base = {
        "kind": "thing",
        "format_version": 1,
        "files": {},
        "parents": [],
        "parameters": {},
        "checks": {},
    }
    for key in draw(st.lists(st.sampled_from(sorted(base)), max_size=3, unique=True)):
        base[key] = draw(JSON)
    return base if draw(st.booleans()) else draw(JSON)


@SETTINGS
@given(manifest=manifests())
def test_manifest_reader(tmp_path, manifest):
    folder = tmp_path / "thing"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    art = _valid_or_kdx(Artifact.open, folder, "thing", "make thing")
    if art is not None:
        assert art.manifest["kind"] == "thing"


@SETTINGS
@given(data=st.binary(max_size=2048))
def test_bundle_reader_on_any_bytes(tmp_path, data):
    path = tmp_path / "b.kdx.tar.gz"
    path.write_bytes(data)
    assert _valid_or_kdx(verify, path) is None


@SETTINGS
@given(cut=st.integers(0, 100), flips=st.lists(st.integers(0, 10**6), max_size=3))
def test_bundle_reader_on_damaged_bundles(bundle, tmp_path, cut, flips):
    data = bytearray(bundle.read_bytes())
    for i in flips:
        data[i % len(data)] ^= 0xFF
    damaged = tmp_path / "d.kdx.tar.gz"
    damaged.write_bytes(bytes(data[: max(1, len(data) * cut // 100)]) if cut < 100 else bytes(data))
    result = _valid_or_kdx(verify, damaged)
    if result is not None:  # only an undamaged archive can verify
        assert bytes(data) == bundle.read_bytes() and cut == 100


@pytest.fixture(scope="module")
def bundle(fast_cli_run, tmp_path_factory):
    from kdexport.package import package

    out = tmp_path_factory.mktemp("bundle") / "student.kdx.tar.gz"
    package(fast_cli_run[0], out, None)
    return out


def test_bundle_fixture_is_a_real_archive(bundle):
    assert tarfile.is_tarfile(bundle) and verify(bundle)["golden"]
