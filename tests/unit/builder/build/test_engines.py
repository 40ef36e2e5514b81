"""Root engines behind one interface: the recipe's `engine` choices come from the engine table,
each recipe gets its engine's class, and the native engine's phase plan is diskimage-builder's
phase order split where the kernel's modules and the ramdisk go in."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from builder.build import elements, pipeline
from builder.build.engines import ENGINES, DibEngine, NativeEngine, RootEngine, engine_for
from builder.build.engines import dib as dib_mod
from builder.build.pipeline import PIPELINE, BuildState, Elements, Finalise
from builder.build.recipe import Recipe, keys_help, load_recipes
from builder.errors import RecipeError
from builder.progress import Stages
from builder.steps import Step


def recipe_file(tmp_path: Path, engine: str) -> Path:
    path = tmp_path / "build.yaml"
    path.write_text(
        "images:\n"
        "  - name: demo\n"
        "    elements: [ec2-base]\n"
        "    kernel: debian-cloud\n"
        f"    engine: {engine}\n"
    )
    return path


def state(tmp_path: Path, engine: str) -> BuildState:
    (loaded,) = load_recipes(recipe_file(tmp_path, engine))
    return BuildState(loaded, Stages("demo", quiet=True))


def test_every_engine_choice_of_a_recipe_has_a_class() -> None:
    field = next(f for f in dataclasses.fields(Recipe) if f.name == "engine")
    choices = field.metadata["key"].kind.choices
    assert choices == tuple(ENGINES) == ("native", "diskimage-builder")
    assert field.default in ENGINES
    for name, cls in ENGINES.items():
        assert issubclass(cls, RootEngine) and cls.name == name
        assert "make_root" in vars(cls), f"{cls.__name__} does not make a root tree"
    assert {"native": NativeEngine, "diskimage-builder": DibEngine} == ENGINES


def test_the_help_for_engine_is_derived_and_unchanged() -> None:
    lines = keys_help().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("engine "))
    assert lines[at].split(None, 1)[1] == (
        "native: mmdebstrap + amilab's element runner; diskimage-builder: disk-image-create"
    )
    assert lines[at + 1].split() == [
        *("allowed:", "one", "of", "native,", "diskimage-builder;", "default:", "native"),
    ]


def test_an_unknown_engine_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="allowed: one of native, diskimage-builder"):
        load_recipes(recipe_file(tmp_path, "kiwi"))


@pytest.mark.parametrize("name", list(ENGINES))
def test_a_build_gets_its_recipes_engine(tmp_path: Path, name: str) -> None:
    s = state(tmp_path, name)
    assert type(s.engine) is ENGINES[name]
    assert type(engine_for(name)) is ENGINES[name]
    assert engine_for(name) is not engine_for(name)  # one per build: it keeps build state


def test_the_native_phase_plan_is_dibs_order_split_at_finalise() -> None:
    native = NativeEngine
    assert native.install_phases + native.finalise_phases == elements.PHASES
    assert [p for p, _ in native.install_phases] == [
        *("root.d", "extra-data.d", "pre-install.d", "install.d", "post-install.d"),
    ]
    assert native.finalise_phases == (("finalise.d", True), ("cleanup.d", False))
    assert not native.runs_elements_itself()


def test_diskimage_builder_leaves_no_phase_to_amilab() -> None:
    assert DibEngine.install_phases == () and DibEngine.finalise_phases == ()
    assert DibEngine.runs_elements_itself()
    # the recipe's elements go to disk-image-create instead, beside DIB's stock ones
    assert dib_mod.HELPER in dib_mod.STOCK_ELEMENTS


def test_with_diskimage_builder_the_element_steps_leave_the_tree_alone(tmp_path: Path) -> None:
    s = state(tmp_path, "diskimage-builder")
    s.root = tmp_path / "root"
    (s.root / "etc").mkdir(parents=True)
    (s.root / "etc/machine-id").write_text("0123456789abcdef\n")
    step = Elements()
    step.run(s)
    step.cleanup(s)
    assert sorted(p.name for p in s.root.rglob("*")) == ["etc", "machine-id"]
    Finalise().run(s)
    # what Finalise does for every engine still happens
    assert (s.root / "etc/machine-id").read_text() == ""
    assert "LABEL=cloudimg-rootfs" in (s.root / "etc/fstab").read_text()
    assert not (s.root / "tmp").exists()  # no hooks were staged in the target


def test_every_build_step_is_a_step_of_the_one_runner() -> None:
    for cls in PIPELINE:
        assert issubclass(cls, Step), cls


def test_no_step_of_the_pipeline_branches_on_the_engine() -> None:
    tree = ast.parse(inspect.getsource(pipeline))
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            names = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
            assert "engine" not in names, ast.unparse(node)
