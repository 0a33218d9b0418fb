"""Shared test helpers: where the reference fixtures live, the demo training run every end-to-end test
starts from, 2-process launches, and writers of files in other tools' formats; and the hang guard that fails a
test running over $PASSL_TL_TEST_TIMEOUT seconds (default 300)."""
import faulthandler
import importlib
import logging
import os
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

import passl_tl  # noqa: F401  (first, as the tools: selects MKL's code path before any kernel runs)
import paddle  # noqa: E402

FIXTURES_ENV = "PASSL_TL_FIXTURES"
REQUIRE_ENV = "PASSL_TL_REQUIRE_FIXTURES"  # set by .ci/run: a missing fixture fails instead of skipping
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_FIXTURES = os.path.join(REPO_ROOT, "..", "shared", "fixtures", "reference")
TOOLS_DIR = os.path.join(REPO_ROOT, "tools")
DEMO_CONFIG = os.path.join(REPO_ROOT, "configs", "lvvit", "lvvit_demo.yaml")



def import_tool(name: str):
    """The script ``tools/<name>.py`` as a module; tools/ goes on sys.path as when the script runs."""
    if TOOLS_DIR not in sys.path:
        sys.path.insert(0, TOOLS_DIR)
    return importlib.import_module(name)


train = import_tool("train")


def fixtures_dir() -> str:
    return os.path.abspath(os.environ.get(FIXTURES_ENV, DEFAULT_FIXTURES))


def fixture_path(name: str) -> str:
    """Path of a reference fixture file; skips the test (naming the variable) when absent."""
    path = os.path.join(fixtures_dir(), name)
    if not os.path.exists(path):
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"reference fixture {name} not found in {fixtures_dir()} ({FIXTURES_ENV})")
        pytest.skip(f"reference fixture {name} not found in {fixtures_dir()}; "
                    f"set {FIXTURES_ENV} to the fixtures directory")
    return path


def load_npz(name: str) -> dict:
    with np.load(fixture_path(name)) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def ref(case):
    """The reference arrays of the module's parametrized fixture ``case``."""
    return load_npz(f"{case}.npz")


def capture(layer, pre: bool = False):
    """Record a layer's output (or, with ``pre``, its first input) at its next forward;
    returns the dict that will hold it under ``"value"`` and the hook handle."""
    seen = {}

    def keep(_, inputs, output=None):
        seen["value"] = (inputs[0] if pre else output).numpy()

    handle = layer.register_forward_pre_hook(keep) if pre else layer.register_forward_post_hook(keep)
    return seen, handle


def recorded_train_step(model, ref, first_stage) -> dict:
    """One train-mode forward of the fixture's ``x`` with its recorded MixToken box (``train/bbox``), the loss
    against ``train/target`` and one backward; the stem output (``backbone.patch_embed``) and ``first_stage``'s
    input are captured on the way."""
    from passl_tl.batch.pipeline import Batch

    model.train()
    box = tuple(int(v) for v in ref["train/bbox"])
    stem, h1 = capture(model.backbone.patch_embed)
    stage_in, h2 = capture(first_stage, pre=True)
    outputs = model(paddle.to_tensor(ref["x"]), box)
    h1.remove(), h2.remove()
    loss = model.loss(outputs, Batch(paddle.to_tensor(ref["x"]), paddle.to_tensor(ref["train/target"])))
    loss.backward()
    return dict(model=model, box=box, outputs=outputs, loss=float(loss), stem=stem["value"],
                tokens_in=stage_in["value"], grads={n: p.grad.numpy() for n, p in model.named_parameters()
                                                     if p.grad is not None})


def assert_batchnorm_state(ref, model) -> None:
    """The stem BatchNorms' tensors equal the fixture's ``sd_after_train/`` (official names), atol 1e-6."""
    ours = {"running_mean": "_mean", "running_var": "_variance", "weight": "weight", "bias": "bias"}
    state = model.state_dict()
    keys = [k for k in ref if k.startswith("sd_after_train/") and not k.endswith("num_batches_tracked")]
    assert len(keys) == 12
    for key in keys:
        layer, _, leaf = key[len("sd_after_train/"):].rpartition(".")
        close(state[f"backbone.{layer}.{ours[leaf]}"].numpy(), ref[key], atol=1e-6)


def close(actual, expected, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)


@pytest.fixture(autouse=True)
def logger_propagates_after_each_test():
    """``setup_logger`` (run by the tools) stops the ``passl_tl`` logger propagating; undo it so that
    ``caplog`` sees the records of whatever test runs next."""
    yield
    logging.getLogger("passl_tl").propagate = True


# ---- a hung test fails instead of stalling the suite ----

TEST_TIMEOUT_ENV = "PASSL_TL_TEST_TIMEOUT"
DEFAULT_TEST_TIMEOUT_S = 300.0  # the slowest test takes ~25 s on a 2-core CPU VM
_guard_stderr: list[int] = []  # a duplicate of the real stderr, taken before pytest captures it


def hang_limit() -> float:
    """Seconds a test may take (setup, call and teardown) before the hang guard ends the run: the value of
    ``$PASSL_TL_TEST_TIMEOUT`` (default 300; 0 turns the guard off)."""
    return float(os.environ.get(TEST_TIMEOUT_ENV) or DEFAULT_TEST_TIMEOUT_S)


def pytest_configure(config):
    if not _guard_stderr:
        _guard_stderr.append(os.dup(sys.stderr.fileno()))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """The hang guard (pytest-timeout is not a dependency): a test still running after ``hang_limit()``
    seconds, its fixtures' setup and teardown included, ends the whole pytest process with exit code 1 after
    printing every thread's stack to stderr, so that CI fails at once and shows where it hung.
    ``faulthandler``'s watchdog is a C thread: it fires even when the hung thread holds the GIL or waits in C++
    (a DataLoader read, a collective), where a Python-level timeout never runs."""
    limit = hang_limit()
    if limit > 0:
        faulthandler.dump_traceback_later(limit, exit=True,
                                          file=_guard_stderr[0] if _guard_stderr else sys.__stderr__)
    try:
        yield
    finally:
        if limit > 0:
            faulthandler.cancel_dump_traceback_later()


# ---- the demo training run ----

def small_run_overrides(data_root: str, out_dir: str, epochs: int = 2, workers: int = 0) -> list[str]:
    """The demo recipe on a smaller demo set: 80 train images (5 iterations of 16), 30 val images."""
    sizes = "train_per_class=8 val_per_class=3".split()
    return ([f"data.{split}.root={data_root}" for split in ("train", "val")]
            + [f"data.{split}.{s}" for split in ("train", "val") for s in sizes]
            + [f"output_dir={out_dir}", f"epochs={epochs}", "data.batch_size=16", "data.val_batch_size=8",
               f"data.num_workers={workers}", "model.drop_path_rate=0.1", "hooks.logger.interval=2",
               "lr_scheduler.warmup_lr=3e-5", "hooks.checkpoint.interval_iters=2", "hooks.checkpoint.keep_last=4"])


@dataclass(frozen=True)
class ReferenceRun:
    data_root: str  # the small demo set (written by the run)
    out: str  # its output dir: read it, never write into it
    metrics: dict  # what train.main returned
    scalars: list  # (tag, step, value) of every VisualDL add_scalar call


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> ReferenceRun:
    """One uninterrupted demo run (2 epochs of 5 iterations, checkpoints at iterations 2, 4 and 5) that the
    end-to-end and fault tests compare against and start from."""
    from visualdl import LogWriter
    base = tmp_path_factory.mktemp("reference_run")
    data_root, out, scalars = str(base / "demo"), str(base / "out"), []
    add_scalar = LogWriter.add_scalar

    def recording_add_scalar(self, tag, value, step, *args, **kwargs):
        scalars.append((tag, step, float(value)))
        return add_scalar(self, tag, value, step, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LogWriter, "add_scalar", recording_add_scalar)
        metrics = train.main(["-c", DEMO_CONFIG, "-o", *small_run_overrides(data_root, out)])
    return ReferenceRun(data_root, out, metrics, scalars)


def state(path: str) -> dict:
    return {k: v.numpy() for k, v in paddle.load(path).items()}


def assert_same_state(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{what}: {k}")


def flatten(state: dict, prefix: str = "") -> dict:
    """Every array of a (nested) checkpoint state, by path."""
    out = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, paddle.Tensor):
            out[name] = value.numpy()
        else:
            out[name] = np.asarray(value)
    return out


def assert_same_final_state(reference_dir: str, out_dir: str,
                            names: tuple = ("final.pdparams", "final_ema.pdparams", "ckpt_e0001_i000005.pdckpt")):
    """Weights, EMA, optimizer moments, LR schedule, hook states and sampler position all equal (by default
    those of the reference run's end)."""
    for name in names:
        a = flatten(paddle.load(os.path.join(reference_dir, name)))
        b = flatten(paddle.load(os.path.join(out_dir, name)))
        assert a.keys() == b.keys(), name
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")


# ---- subprocesses ----

def clean_env(**extra: str) -> dict:
    """This process's environment without Paddle's launch variables, with the repo importable (scripts under
    tests/ import ``tests.conftest``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PADDLE_", "FLAGS_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    return {**env, **extra}


def launch_two(args: list[str], log_dir, timeout: float = 300, check: bool = True, **env: str):
    """``python -m paddle.distributed.launch`` of 2 CPU processes running ``args`` (a script and its arguments);
    returns the finished process and each rank's log. ``check``: a non-zero exit fails, showing the logs' tails."""
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(log_dir),
           *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=clean_env(**env), capture_output=True, text=True, timeout=timeout)
    paths = [os.path.join(str(log_dir), f"workerlog.{r}") for r in (0, 1)]
    logs = [open(p, encoding="utf-8").read() if os.path.exists(p) else "" for p in paths]
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs[0][-3000:] + logs[1][-3000:]
    return proc, logs


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose command line holds ``marker`` (zombies have none; DataLoader workers keep
    their parent's)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


# ---- files in other tools' formats ----

TORCH_STORAGES = {np.dtype("float32"): "FloatStorage", np.dtype("float16"): "HalfStorage",
                  np.dtype("int64"): "LongStorage"}


def write_torch_zip(path, obj) -> str:
    """What ``torch.save(obj, path)`` writes (zip format, pickle protocol 2) for nested dicts of
    str -> NumPy array / int; each array becomes a tensor with its own storage."""
    storages = []

    def text(value):
        data = value.encode()
        return b"X" + struct.pack("<I", len(data)) + data

    def tup(items):
        return b"(" + b"".join(items) + b"t"

    def put(value):
        if isinstance(value, dict):
            return b"}(" + b"".join(text(k) + put(v) for k, v in value.items()) + b"u"
        if isinstance(value, (int, np.integer)):
            return b"J" + struct.pack("<i", int(value))
        array = np.ascontiguousarray(value)
        storages.append(array)
        storage = b"ctorch\n" + TORCH_STORAGES[array.dtype].encode() + b"\n"
        pid = tup([text("storage"), storage, text(str(len(storages) - 1)), text("cpu"), put(array.size)]) + b"Q"
        strides = [int(np.prod(array.shape[i + 1:])) for i in range(array.ndim)]
        hooks = b"ccollections\nOrderedDict\n)R"
        return (b"ctorch._utils\n_rebuild_tensor_v2\n"
                + tup([pid, put(0), tup(map(put, array.shape)), tup(map(put, strides)), b"\x89", hooks]) + b"R")

    pickled = b"\x80\x02" + put(obj) + b"."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        for i, array in enumerate(storages):
            archive.writestr(f"archive/data/{i}", array.tobytes())
    return str(path)


# ---- a tiny ImageNet-layout split with token labels ----

WNIDS = ("n02000000", "n01000000", "n03000000")  # sorted: n01.., n02.., n03..
COLOURS = {"n01000000": (255, 0, 0), "n02000000": (0, 255, 0), "n03000000": (0, 0, 255)}
PER_CLASS = 3
AUGMENT = [{"name": "RandomHorizontalFlipWithLabel"},
           {"name": "RandomResizedCropWithCoords", "size": 16, "scale": [0.2, 1.0]},
           {"name": "Normalize"}]


def label_map(seed: int, dtype=np.float16) -> np.ndarray:
    """A [2, 3, 9, 9] map: descending logits, a random permutation of the 3 class ids per cell."""
    rs = np.random.RandomState(seed)
    logits = -np.sort(-rs.uniform(0, 10, (3, 9, 9)), axis=0)
    ids = np.argsort(rs.rand(3, 9, 9), axis=0)
    return np.stack([logits, ids]).astype(dtype)


def write_split(root, label_root=None, wnids=WNIDS, label_dtype=np.float16) -> dict:
    """PNG images (exact pixels) with a coloured left half; returns {relative path: label array}."""
    labels = {}
    for c, wnid in enumerate(wnids):
        os.makedirs(os.path.join(root, wnid), exist_ok=True)
        for n in range(PER_CLASS):
            img = np.full((24, 32, 3), 40 * n, np.uint8)
            img[:, :16] = COLOURS[wnid]
            rel = f"{wnid}/{wnid}_{n}.png"
            cv2.imwrite(os.path.join(root, rel), img[:, :, ::-1])  # cv2 writes BGR
            if label_root is not None:
                labels[rel] = label_map(10 * c + n, label_dtype)
                os.makedirs(os.path.join(label_root, wnid), exist_ok=True)
                np.save(os.path.join(label_root, wnid, f"{wnid}_{n}.npy"), labels[rel])
    return labels
