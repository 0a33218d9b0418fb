"""Config engine: _base_ inheritance, typed overrides, unknown keys named with file and choices."""
import pytest

from passl_tl.engine import DEFAULTS
from passl_tl.utils.config import ConfigError, load_config
from passl_tl.utils.registry import Registry


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
