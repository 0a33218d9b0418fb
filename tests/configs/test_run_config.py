"""What a run config chooses besides its components: the device (a GPU config on a Paddle without CUDA) and the
class names that exports store."""
import logging

import paddle
import pytest

from passl_tl.datasets.demo import make_demo_dataset
from passl_tl.deploy.class_names import read_class_names
from passl_tl.engine import run_config
from passl_tl.engine.run_config import apply_device, choose_device, load_run_config
from passl_tl.utils.registry import ConfigError

from tests.conftest import DEMO_CONFIG, REPO_ROOT

GPU_CONFIG = f"{REPO_ROOT}/configs/lvvit/lvvit_tiny.yaml"  # device: gpu, as every ImageNet config


@pytest.mark.parametrize("device", ["gpu", "gpu:1"])
def test_a_gpu_config_runs_on_the_cpu_of_a_paddle_without_cuda(monkeypatch, caplog, device):
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: False)
    cfg = load_run_config(GPU_CONFIG, [f"device={device}"])
    with caplog.at_level(logging.WARNING, "passl_tl"):
        assert choose_device(cfg) == "cpu" == cfg["device"]
    assert [r.getMessage() for r in caplog.records] == [
        f"device {device} in {GPU_CONFIG}: this Paddle is built without CUDA, running on the CPU "
        f"(-o device=cpu says so and silences this warning)"]


@pytest.mark.parametrize("cuda, config, overrides, device", [
    (True, GPU_CONFIG, [], "gpu"), (False, GPU_CONFIG, ["device=cpu"], "cpu"), (False, DEMO_CONFIG, [], "cpu")])
def test_a_device_that_exists_is_kept_silently(monkeypatch, caplog, cuda, config, overrides, device):
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: cuda)
    cfg = load_run_config(config, overrides)
    with caplog.at_level(logging.WARNING, "passl_tl"):
        assert choose_device(cfg) == device == cfg["device"]
    assert not caplog.records


@pytest.mark.parametrize("device, kept", [("cpu", True), ("gpu", False)])
def test_apply_device_sets_threads_and_keeps_freed_memory_on_the_cpu(monkeypatch, device, kept):
    calls = []
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle, "set_device", lambda d: calls.append(("device", d)))
    monkeypatch.setattr(run_config, "set_cpu_threads", lambda n: calls.append(("threads", n)))
    monkeypatch.setattr(run_config, "keep_freed_memory", lambda: calls.append(("kept",)))
    assert apply_device(load_run_config(DEMO_CONFIG, [f"device={device}", "threads=3"])) == device
    assert calls == [("device", device), ("threads", 3)] + ([("kept",)] if kept else [])


def test_the_demo_config_names_the_classes_of_the_demo_data(tmp_path):
    root = make_demo_dataset(str(tmp_path), num_classes=10, train_per_class=1, val_per_class=0, image_size=18)
    cfg = load_run_config(DEMO_CONFIG)
    assert cfg["class_names"] == read_class_names(f"{root}/classes.txt")
    assert len(set(cfg["class_names"])) == cfg["model"]["num_classes"]


def test_class_names_are_a_list_of_strings():
    assert load_run_config(GPU_CONFIG)["class_names"] is None  # ImageNet: the bundled names (deploy)
    with pytest.raises(ConfigError, match=r"class_names in .*lvvit_demo.yaml must be a list of names \(strings\), "
                                          r"got \['cat', 3\]"):
        load_run_config(DEMO_CONFIG, ["class_names=[cat, 3]"])
