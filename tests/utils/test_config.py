"""Config engine: _base_ inheritance, typed overrides, unknown keys named with file and choices, duplicate YAML
keys, and the registry's check of values against the annotations of the components' arguments."""
import inspect
import re
from typing import Annotated, Any, Literal, Mapping, Optional, Sequence, Union

import pytest

from passl_tl.engine import DEFAULTS
from passl_tl.utils.config import ConfigError, load_config
from passl_tl.utils.registry import (Component, NonNegativeInt, PositiveInt, Rate, Registry, argument_hints,
                                     matches)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", "epochs: 10\noptimizer: {name: AdamW, lr: 0.001, weight_decay: 0.05}\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\nepochs: 20\noptimizer: {lr: 0.002}\n")
    cfg = load_config(child, ["optimizer.lr=1e-3", "epochs=30", "seed=7"], DEFAULTS)
    assert cfg["epochs"] == 30 and cfg["seed"] == 7
    assert cfg["optimizer"] == {"name": "AdamW", "lr": 1e-3, "weight_decay": 0.05}
    assert isinstance(cfg["optimizer"]["lr"], float)  # YAML reads 1e-3 as a string
    assert cfg["hooks"]["checkpoint"]["keep_last"] == 5  # defaults filled in


def test_unknown_top_level_key_names_key_file_and_choices(tmp_path):
    path = write(tmp_path, "bad.yaml", "epochz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, [], DEFAULTS)
    msg = str(e.value)
    assert "epochz" in msg and path in msg and "epochs" in msg


def test_unknown_nested_key(tmp_path):
    path = write(tmp_path, "bad.yaml", "amp: {enabel: true}\n")
    with pytest.raises(ConfigError, match=r"amp\.enabel.*accepted keys: enable"):
        load_config(path, [], DEFAULTS)


def test_override_type_and_existence_checked(tmp_path):
    path = write(tmp_path, "ok.yaml", "epochs: 3\n")
    with pytest.raises(ConfigError, match="expected int"):
        load_config(path, ["epochs=three"], DEFAULTS)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(path, ["amp.nope=1"], DEFAULTS)
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(path, ["epochs"], DEFAULTS)
    # inside a component mapping a new key is allowed here and checked when building
    cfg = load_config(path, ["optimizer.eps=1e-6"], DEFAULTS)
    assert cfg["optimizer"]["eps"] == 1e-6


def test_hooks_accept_new_components_and_null_disables(tmp_path):
    path = write(tmp_path, "h.yaml", "hooks:\n  ema: {name: EMAHook}\n  evaluate: null\n")
    cfg = load_config(path, [], DEFAULTS)
    assert cfg["hooks"]["ema"] == {"name": "EMAHook"} and cfg["hooks"]["evaluate"] is None


def test_component_of_another_name_replaces_instead_of_merging(tmp_path):
    path = write(tmp_path, "s.yaml", "lr_scheduler: {name: StepDecay}\n")
    assert load_config(path, [], DEFAULTS)["lr_scheduler"] == {"name": "StepDecay"}


def test_registry_build_rejects_unknown_keys():
    reg = Registry("thing")

    @reg.register
    def Thing(a: int, b: float = 1.0):
        return a + b

    assert reg.build({"name": "Thing", "a": 1}) == 2.0
    with pytest.raises(ConfigError, match=r"unknown key 'c' in x.yaml.*accepted keys: a, b"):
        reg.build({"name": "Thing", "a": 1, "c": 2}, "x.yaml")
    with pytest.raises(ConfigError, match="unknown thing 'Nope'.*registered: Thing"):
        reg.build({"name": "Nope"})


def test_circular_base(tmp_path):
    write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    b = write(tmp_path, "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(b)


def test_yaml_value_of_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "t.yaml", "data: {batch_size: '32'}\n")
    with pytest.raises(ConfigError, match=r"data\.batch_size: '32'.*t\.yaml.*int"):
        load_config(path, [], DEFAULTS)


def test_list_element_override_is_type_checked(tmp_path):
    path = write(tmp_path, "l.yaml", "data: {train: {name: X, transforms: [{name: A}, {name: B}]}}\n")
    with pytest.raises(ConfigError, match="expected dict"):
        load_config(path, ["data.train.transforms.0=3"], DEFAULTS)
    cfg = load_config(path, ["data.train.transforms.1.name=C"], DEFAULTS)
    assert cfg["data"]["train"]["transforms"][1] == {"name": "C"}


def test_error_inside_a_component_names_where_it_was_configured():
    reg = Registry("thing")

    @reg.register
    def Preset(**overrides):
        raise ConfigError("unknown key 'dpr' for model 'Preset'")

    with pytest.raises(ConfigError, match=r"'dpr'.*\(in model of cfg\.yaml\)"):
        reg.build({"name": "Preset", "dpr": 0.1}, "model of cfg.yaml")


def test_registry_build_names_a_missing_key():
    reg = Registry("thing")

    @reg.register
    def Hooky(teacher: dict, weights: str, alpha: float = 0.5):
        return weights

    with pytest.raises(ConfigError, match=r"missing key 'weights' in hooks.distillation of x.yaml"):
        reg.build({"name": "Hooky", "teacher": {}}, "hooks.distillation of x.yaml")
    assert reg.build({"name": "Hooky", "teacher": {}}, weights="w.pth") == "w.pth"  # supplied by the caller


# ----------------------------------------------------------------------------- duplicate YAML keys

def test_a_key_written_twice_names_file_line_and_key(tmp_path):
    path = write(tmp_path, "twice.yaml", "epochs: 3\nseed: 1\nepochs: 4\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'epochs' in .*twice\.yaml, line 3 \(first at line 1\)"):
        load_config(path, [], DEFAULTS)


def test_a_key_written_twice_in_a_nested_mapping(tmp_path):
    path = write(tmp_path, "nested.yaml", "hooks:\n  checkpoint:\n    name: CheckpointHook\n    interval: 1\n"
                                          "    keep_last: 2\n    interval: 3\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'interval' in .*nested\.yaml, line 6 \(first at line 4\)"):
        load_config(path, [], DEFAULTS)
    flow = write(tmp_path, "flow.yaml", "optimizer: {name: AdamW, lr: 0.1, lr: 0.2}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'lr' in .*flow\.yaml, line 1"):
        load_config(flow, [], DEFAULTS)


def test_a_key_written_twice_in_a_base_file_names_the_base(tmp_path):
    write(tmp_path, "base.yaml", "data:\n  batch_size: 8\n  num_workers: 0\n  batch_size: 16\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\nepochs: 3\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'batch_size' in .*base\.yaml, line 4 \(first at line 2\)"):
        load_config(child, [], DEFAULTS)


def test_the_same_key_in_a_base_and_its_child_is_an_override_not_a_duplicate(tmp_path):
    write(tmp_path, "base.yaml", "epochs: 3\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\nepochs: 4\n")
    assert load_config(child, [], DEFAULTS)["epochs"] == 4


def test_a_key_written_twice_in_an_override_value():
    from passl_tl.utils.config import parse_override
    with pytest.raises(ConfigError, match=r"duplicate key 'name' in override 'batch\.mixup=\{name: Mixup, name: X\}'"):
        parse_override("batch.mixup={name: Mixup, name: X}")


def test_yaml_merge_keys_may_still_be_overridden():
    from passl_tl.utils.config import yaml_load
    data = yaml_load("base: &b {x: 1, y: 2}\nchild:\n  <<: *b\n  x: 3\n")
    assert data["child"] == {"x": 3, "y": 2}


# ----------------------------------------------------------------------------- registry: values vs annotations

def typed_registry():
    reg = Registry("thing")

    @reg.register
    def Typed(count: PositiveInt = 1, ratio: float = 0.5, flag: bool = False, label: str = "a",
              maybe: Optional[int] = None, union: "int | None" = None, sizes: Sequence[NonNegativeInt] = (),
              floats: "list[float]" = (), pair: "tuple[int, int]" = (1, 2), mode: Literal["x", "y"] = "x",
              rate: Rate = 0.0, table: Mapping[str, int] = None, loose=None, anything: Any = None,
              unknown: "NoSuchName" = None):  # noqa: F821  (unresolvable: not checked)
        return count

    return reg


@pytest.mark.parametrize("key, value", [
    ("count", 3), ("ratio", 2), ("ratio", 0.25), ("flag", True), ("label", "b"), ("maybe", None), ("maybe", 4),
    ("union", None), ("union", 2), ("sizes", [0, 3]), ("sizes", (1,)), ("floats", [1, 2.5]), ("pair", [3, 4]),
    ("pair", (3, 4)), ("mode", "y"), ("rate", 0), ("rate", 0.99), ("table", {"a": 1}), ("loose", "anything"),
    ("anything", [object()]), ("unknown", 1.5),
])
def test_registry_accepts_values_that_fit_the_annotations(key, value):
    assert typed_registry().build({"name": "Typed", key: value}, "things.t of x.yaml") is not None


@pytest.mark.parametrize("key, value, expected", [
    ("count", "3", "an int >= 1"), ("count", 0, "an int >= 1"), ("count", 2.0, "an int >= 1"),
    ("count", True, "an int >= 1"),  # a bool is not an int
    ("flag", 1, "true or false"), ("flag", "yes", "true or false"),  # nor an int a bool
    ("ratio", "0.5", "a number"), ("ratio", False, "a number"),
    ("label", 3, "a string"),
    ("maybe", 1.5, "an int or null"), ("union", "x", "an int or null"),
    ("sizes", 3, r"a list \(each an int >= 0\)"), ("sizes", [1, -1], r"a list \(each an int >= 0\)"),
    ("sizes", "ab", r"a list \(each an int >= 0\)"), ("floats", [1, "x"], r"a list \(each a number\)"),
    ("pair", [1], r"a list of 2 \[an int, an int\]"), ("pair", [1, 2, 3], r"a list of 2 \[an int, an int\]"),
    ("mode", "z", "one of 'x', 'y'"), ("mode", None, "one of 'x', 'y'"),
    ("rate", 1.0, r"a finite number in \[0, 1\)"), ("rate", -0.1, r"a finite number in \[0, 1\)"),
    ("rate", float("nan"), r"a finite number in \[0, 1\)"), ("rate", float("inf"), r"a finite number in \[0, 1\)"),
    ("table", [1], "a mapping"), ("table", {"a": "b"}, "a mapping"),
])
def test_registry_rejects_values_that_do_not_fit_the_annotations(key, value, expected):
    with pytest.raises(ConfigError, match=rf"^things\.t\.{key} = {re.escape(repr(value))} in x\.yaml: "
                                          rf"expected {expected} \(Typed\)$"):
        typed_registry().build({"name": "Typed", key: value}, "things.t of x.yaml")
    with pytest.raises(ConfigError, match=rf"things\.t\.{key} = "):  # check, without building, says the same
        typed_registry().check({"name": "Typed", key: value}, "things.t of x.yaml")


def test_registry_type_check_names_transform_list_entries_and_plain_wheres():
    reg = typed_registry()
    with pytest.raises(ConfigError, match=r"^data\.train\.transforms\.2\.count = 0 in x\.yaml: expected an int >= 1"):
        reg.check({"name": "Typed", "count": 0}, "data.train of x.yaml transforms[2]")
    with pytest.raises(ConfigError, match=r"^count = 0 in create_model\('t'\): expected an int >= 1"):
        reg.check({"name": "Typed", "count": 0}, "create_model('t')")


def test_supplied_arguments_are_not_type_checked():
    reg = Registry("thing")

    @reg.register
    def Built(model: int, lr: float = 0.1):
        return model

    assert reg.build({"name": "Built"}, "x", model="not an int") == "not an int"


def test_a_component_argument_is_checked_with_its_registry():
    parts, wholes = Registry("part"), Registry("whole")

    @parts.register
    def Part(size: PositiveInt, parent: int):
        return size

    @wholes.register
    def Whole(part: Annotated[Mapping[str, Any], Component(parts, supplied=("parent",))],
              spare: Optional[Annotated[Mapping[str, Any], Component(parts, supplied=("parent",))]] = None):
        return part

    wholes.check({"name": "Whole", "part": {"name": "Part", "size": 2}}, "w of x.yaml")
    with pytest.raises(ConfigError, match=r"^w\.part\.size = 0 in x\.yaml: expected an int >= 1 \(Part\)$"):
        wholes.check({"name": "Whole", "part": {"name": "Part", "size": 0}}, "w of x.yaml")
    with pytest.raises(ConfigError, match=r"unknown part 'Nope' in w\.spare of x\.yaml"):
        wholes.check({"name": "Whole", "part": {"name": "Part", "size": 1}, "spare": {"name": "Nope"}}, "w of x.yaml")


def test_annotations_written_as_union_operators_resolve_on_every_python():
    from passl_tl.utils.registry import _resolve
    assert _resolve("int | None", {}) == Optional[int]
    assert _resolve("PositiveInt | tuple[int, int]", {"PositiveInt": PositiveInt}) == Union[PositiveInt, tuple[int, int]]
    assert _resolve("NoSuchName | None", {}) is Any


def test_every_registered_component_has_resolvable_annotations_and_defaults_that_fit_them():
    """The type check is only as good as the annotations: each resolves, and each default value fits its own."""
    import passl_tl.batch.mixup  # noqa: F401  (registers the batch stages)
    import passl_tl.batch.soft_targets  # noqa: F401
    import passl_tl.batch.teacher  # noqa: F401
    import passl_tl.engine  # noqa: F401  (hooks, optimizers, schedulers)
    import passl_tl.models  # noqa: F401
    import passl_tl.token_labels.mixtoken  # noqa: F401
    import passl_tl.token_labels.targets  # noqa: F401
    from passl_tl.engine.optim_wrapper import OptimWrapper
    from passl_tl.utils import registry

    targets = [OptimWrapper] + [reg.get(name) for reg in vars(registry).values() if isinstance(reg, Registry)
                                for name in reg.names()]
    assert len(targets) > 40
    for target in targets:
        hints = argument_hints(target)
        for p in inspect.signature(target).parameters.values():
            if p.annotation is not p.empty and p.annotation != "Any":
                assert hints[p.name] is not Any, f"{target.__name__}({p.name}: {p.annotation}) does not resolve"
            if p.name in hints and p.default is not p.empty:
                assert matches(p.default, hints[p.name]), f"{target.__name__}({p.name}={p.default!r}) misfits"


def test_literal_annotations_match_the_constructors_own_lists():
    from typing import get_args

    from passl_tl.datasets.imagenet_token_label import LabelFormat
    from passl_tl.token_labels.store import LABEL_FORMATS
    assert get_args(LabelFormat) == tuple(LABEL_FORMATS)


def test_every_model_preset_passes_its_own_check():
    import passl_tl.models  # noqa: F401
    from passl_tl.utils.registry import MODELS
    for name in MODELS.names():
        if name != "Classifier":
            MODELS.check({"name": name}, f"model of {name}.yaml")
    with pytest.raises(ConfigError, match=r"^model\.drop_path_rate = 1\.0 in t\.yaml: expected a finite number in "
                                          r"\[0, 1\) \(DeiT\)$"):
        MODELS.check({"name": "deit_tiny_patch16_224", "drop_path_rate": 1.0}, "model of t.yaml")
    with pytest.raises(ConfigError, match=r"unknown key 'dpr' for model 'lvvit_tiny'.*\(in model of t\.yaml\)"):
        MODELS.check({"name": "lvvit_tiny", "dpr": 0.1}, "model of t.yaml")
