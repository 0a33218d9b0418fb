"""Model benchmark: images/s of the full training step and of the eval forward, and peak memory.

The training step is the trainer's own: a ``Trainer`` built from the preset's config (model,
AdamW from the optimizer registry, the batch stages ``TokenLabelTargets`` i.e. ``make_token_targets``
and MixToken, the LR-scheduler hook, AMP from ``amp_context_from``) runs ``Trainer.train``
over a loader that hands it the same synthetic batch (random images, ``[B, 3, 5, 18, 18]`` packed
token labels) every iteration. One timed iteration is the whole loop body, from the loader handing
over the batch to asking for the next: target building, MixToken box, forward in train mode with
the box, ``model.loss``, backward, ``optimizer.step()``, ``clear_grad()`` (the trainer's ``OptimWrapper``).
Not run: EMA, logging, evaluation and checkpoint hooks, and the data loader (``tools/benchmark.py data``
times that).

The eval forward is ``evaluate``'s: ``model.eval()``, ``paddle.no_grad()``, ``eval_forward`` on the
configured ``eval_backend`` (``auto``: oneDNN through Paddle Inference on the CPU; its one-off
compilation falls in the warm-up) or the dygraph model under the AMP context.

With ``deploy_backends``, the same model is also exported (``passl_tl.deploy.export_model``, with ONNX for
``onnxruntime``) and its predictor on each runtime (``paddle``: Paddle Inference with oneDNN; ``onnxruntime``:
ONNX Runtime's CPU provider) timed on the same batch, fp32, batched as ``tools/predict.py`` runs it, with the
same thread count; its logits are compared with the dygraph model's.

Each phase runs in a fresh subprocess (thread variables set before Paddle is imported), so the
peak resident memory (``ru_maxrss``) of one phase does not mask the other's.

With ``official_repo`` (a zihangJiang/TokenLabeling checkout) each phase runs ``pairs`` times next to the official
PyTorch step or eval forward (``official_step.py`` under ``official_python``), in interleaved pairs whose order
alternates, each process fresh, the load average recorded at every start: the ratio of images/s is what transfers
between machines, absolute figures do not. The checks are those ratios against the targets.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping

from .official_step import OFFICIAL_PRESETS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "lvvit", "lvvit_tiny.yaml")
PRECISIONS = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}
PHASES = ("train", "eval")
DEPLOY_BACKENDS = ("paddle", "onnxruntime")  # passl_tl.deploy.BACKENDS, each a phase run on the exported model
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
TRAIN_HOOKS = ("lr_scheduler",)  # the hooks a timed training step runs (from the config)
# Targets against the official step on the same machine: images/s ratios (ours / official) and peak memory.
TARGET_RATIOS = {"train": 0.6, "eval": 1.0}
# The settings the targets were set for (any of these models and batch sizes, at 224 px, fp32, 2 threads).
TARGET_SETTINGS = dict(model=("lvvit_tiny", "lvvit_small"), batch_size=(16, 32), img_size=(224,), threads=(2,),
                       precision=("fp32",))
OFFICIAL_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "official_step.py")
OFFICIAL_FILES = ("tlt/models/lvvit.py", "tlt/loss/cross_entropy.py")  # what marks a TokenLabeling checkout


@dataclass
class ModelSettings:
    model: str = "lvvit_tiny"
    batch_size: int = 16
    img_size: int = 224
    threads: int = 2
    precision: str = "fp32"
    eval_backend: str = "auto"      # see passl_tl.engine.eval_forward
    warmup: int = 2
    repeats: int = 10
    num_classes: int = 1000
    classes_per_image: int = 32     # distinct classes a synthetic label map mentions (see synthetic_token_labels)
    config: str = DEFAULT_CONFIG    # training recipe: optimizer, target builder, hooks, AMP settings
    overrides: list[str] = field(default_factory=list)  # extra -o KEY=VALUE on that config
    subprocess: bool = True         # each phase in a fresh process (separate peak RSS)
    deploy_backends: list[str] = field(default_factory=list)  # also time the exported model on these runtimes
    official_repo: str | None = None  # a zihangJiang/TokenLabeling checkout: the official step side by side
    official_python: str = sys.executable  # an interpreter with torch, torchvision and timm
    pairs: int = 3                  # interleaved (ours, official) runs per phase

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.threads < 1 or self.batch_size < 1 or self.repeats < 1 or self.warmup < 0 or self.pairs < 1:
            raise ValueError("need threads, batch_size, repeats, pairs >= 1 and warmup >= 0")
        unknown = [b for b in self.deploy_backends if b not in DEPLOY_BACKENDS]
        if unknown:
            raise ValueError(f"deploy backends must be among {', '.join(DEPLOY_BACKENDS)}, got {', '.join(unknown)}")


def run_model_benchmark(settings: ModelSettings) -> dict[str, Any]:
    """Both phases (each in a fresh subprocess unless ``settings.subprocess`` is false) as a JSON-ready dict."""
    from .timing import machine
    results: dict[str, Any] = {"machine": machine(), "settings": asdict(settings)}
    if settings.official_repo:
        check_official(settings)
        results["side_by_side"] = {phase: _side_by_side(settings, phase) for phase in PHASES}
        for phase in PHASES:  # our figures: those of the pair with the median ratio
            results[phase] = results["side_by_side"][phase]["median_pair"]["ours"]
    for phase in PHASES:
        if phase not in results:
            results[phase] = _our_phase(settings, phase)
    if settings.deploy_backends:
        results["export"], results["deploy"] = _deploy_phases(settings)
    results["machine"]["load_average_after"] = machine()["load_average"]
    results["checks"] = checks(results)
    return results


def _our_phase(settings: ModelSettings, phase: str) -> dict[str, Any]:
    return _phase_in_subprocess(settings, phase) if settings.subprocess else run_phase(settings, phase)


def check_official(settings: ModelSettings) -> None:
    """A ValueError naming what is missing unless the official step can run: a TokenLabeling checkout, an
    interpreter with its packages, a model it has, fp32."""
    repo = settings.official_repo
    missing = [f for f in OFFICIAL_FILES if not os.path.isfile(os.path.join(repo, f))]
    if missing:
        raise ValueError(f"--official-repo {repo}: not a zihangJiang/TokenLabeling checkout (no {missing[0]})")
    if settings.model not in OFFICIAL_PRESETS:
        raise ValueError(f"the official step has the models {', '.join(OFFICIAL_PRESETS)}, not {settings.model!r}")
    if settings.precision != "fp32":
        raise ValueError(f"the official step is timed in fp32, not {settings.precision}")
    probe = subprocess.run([settings.official_python, "-c", "import torch, torchvision, timm"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValueError(f"--official-python {settings.official_python} cannot import torch, torchvision and timm "
                         f"({last}); see the README's recipe for a PyTorch environment")


def _side_by_side(settings: ModelSettings, phase: str) -> dict[str, Any]:
    """``settings.pairs`` pairs of our ``phase`` and the official one, the order alternating (ours first in even
    pairs), each process fresh; the ratio of median images/s per pair, summarised, and the median pair."""
    pairs = []
    for i in range(settings.pairs):
        pair: dict[str, Any] = {}
        for side in ("ours", "official") if i % 2 == 0 else ("official", "ours"):
            load = os.getloadavg()[0]
            pair[side] = (_our_phase(settings, phase) if side == "ours"
                          else _official_in_subprocess(settings, phase))
            pair[side]["load_average_at_start"] = load
        pair["ratio"] = pair["ours"]["images_per_s"]["median"] / pair["official"]["images_per_s"]["median"]
        pairs.append(pair)
    ranked = sorted(pairs, key=lambda p: p["ratio"])
    from .timing import summary
    return {"pairs": pairs, "ratio": summary([p["ratio"] for p in pairs]), "median_pair": ranked[len(ranked) // 2]}


def _official_in_subprocess(settings: ModelSettings, phase: str) -> dict[str, Any]:
    """The official ``phase`` (official_step.py) in a fresh ``official_python`` process with the same threads."""
    env = {**os.environ, **{name: str(settings.threads) for name in THREAD_VARIABLES}}
    job = {"official_repo": os.path.abspath(settings.official_repo), "phase": phase,
           **{k: getattr(settings, k) for k in ("model", "batch_size", "img_size", "threads", "warmup", "repeats",
                                                "num_classes")}}
    with tempfile.TemporaryDirectory(prefix="passl_tl_bench_official_") as tmp:
        out = os.path.join(tmp, "official.json")
        done = subprocess.run([settings.official_python, OFFICIAL_SCRIPT, json.dumps(job), out], env=env, cwd=tmp,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the official {phase} process failed ({done.returncode}):\n{done.stderr[-4000:]}")
        with open(out, encoding="utf-8") as f:
            result = json.load(f)
    seconds = result.pop("seconds")
    return {**_timing_stats(seconds, settings), **result}


def _deploy_phases(settings: ModelSettings) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The export phase, then one phase per deploy backend on the exported directory, each with the largest
    difference of its logits from the dygraph model's."""
    import numpy as np
    with tempfile.TemporaryDirectory(prefix="passl_tl_bench_export_") as model_dir:
        runs = {}
        for phase in ("export", *settings.deploy_backends):
            runs[phase] = (_phase_in_subprocess(settings, phase, model_dir) if settings.subprocess
                           else run_deploy_phase(settings, phase, model_dir))
        dygraph = np.load(_logits_file(model_dir, "export"))
        for backend in settings.deploy_backends:
            logits = np.load(_logits_file(model_dir, backend))
            runs[backend]["max_abs_diff_vs_dygraph"] = float(np.abs(logits - dygraph).max())
    return runs.pop("export"), runs


def _logits_file(model_dir: str, phase: str) -> str:
    return os.path.join(model_dir, f"benchmark_logits_{phase}.npy")


def _phase_in_subprocess(settings: ModelSettings, phase: str, model_dir: str | None = None) -> dict[str, Any]:
    env = {**os.environ, **{name: str(settings.threads) for name in THREAD_VARIABLES}}
    with tempfile.TemporaryDirectory(prefix="passl_tl_bench_model_") as tmp:
        out = os.path.join(tmp, "phase.json")
        command = [sys.executable, "-m", __name__, phase, json.dumps(asdict(settings)), out,
                   *([model_dir] if model_dir else [])]
        done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the {phase} benchmark process failed ({done.returncode}):\n{done.stderr[-4000:]}")
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def _model_and_batch(settings: ModelSettings) -> tuple[Any, Any, Any]:
    """(config, model, synthetic image batch as NumPy) on the CPU with ``settings.threads``: the model is built
    after seeding with the config's seed, so every phase gets the same weights."""
    import numpy as np
    import paddle

    from ..engine.run_config import apply_device, load_run_config
    from ..models import build_model

    dtype = PRECISIONS[settings.precision]
    amp = [f"amp.enable={dtype is not None}"] + ([f"amp.dtype={dtype}"] if dtype else [])
    cfg = load_run_config(settings.config, [f"model.name={settings.model}", f"model.img_size={settings.img_size}",
                                            f"model.num_classes={settings.num_classes}",
                                            f"eval_backend={settings.eval_backend}", "device=cpu",
                                            f"threads={settings.threads}", *amp, *settings.overrides])
    apply_device(cfg)  # as tools/train.py: the CPU, its threads, freed memory kept
    paddle.seed(cfg["seed"])
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((settings.batch_size, 3, settings.img_size, settings.img_size), dtype=np.float32)
    return cfg, model, batch


def run_phase(settings: ModelSettings, phase: str) -> dict[str, Any]:
    """Time one phase in this process; ``peak_rss_mb`` is this process's peak so far."""
    import numpy as np
    import paddle

    from ..engine.eval_forward import eval_forward, resolve_eval_backend
    from ..engine.trainer import amp_context_from
    from .data import synthetic_token_labels

    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    cfg, model, batch = _model_and_batch(settings)
    images = paddle.to_tensor(batch)
    amp_probe = _AmpProbe(model)
    if phase == "train":
        labels = paddle.to_tensor(synthetic_token_labels(settings.batch_size, settings.num_classes,
                                                         min(settings.classes_per_image, settings.num_classes),
                                                         image_size=settings.img_size))
        seconds, extra = _train_seconds(cfg, model, images, labels, settings)
    else:
        amp_context = amp_context_from(cfg["amp"])
        model.eval()
        eval_step = eval_forward(model, cfg["eval_backend"], amp_context)

        @paddle.no_grad()
        def forward() -> None:
            eval_step(images)

        seconds = _repeat(forward, settings)
        extra = {"backend": resolve_eval_backend(cfg["eval_backend"], amp_context is not None)}
    return {**_timings(seconds, settings), "threads": threads_in_effect(settings.threads),
            "amp": amp_probe.report(cfg["amp"]),
            "parameters": int(sum(int(np.prod(p.shape)) for p in model.parameters())), **extra}


def run_deploy_phase(settings: ModelSettings, phase: str, model_dir: str) -> dict[str, Any]:
    """``"export"``: the model the other phases build, exported to ``model_dir`` (with ONNX if ``onnxruntime`` is
    among ``settings.deploy_backends``); a backend of ``DEPLOY_BACKENDS``: its predictor of ``model_dir`` timed on
    the synthetic batch. Both save their logits of that batch next to the model (``_logits_file``)."""
    import numpy as np
    import paddle

    from ..deploy import BACKENDS, Preprocessor, export_model, read_metadata

    if phase == "export":
        _, model, batch = _model_and_batch(settings)
        start = time.perf_counter()
        export_model(model, model_dir, Preprocessor([{"name": "ResizeCropPct", "size": settings.img_size},
                                                     {"name": "Normalize"}], "the benchmark"),
                     onnx="onnxruntime" in settings.deploy_backends)
        seconds = time.perf_counter() - start
        with paddle.no_grad():
            np.save(_logits_file(model_dir, phase), model(paddle.to_tensor(batch)).numpy())
        versions = {name: importlib.metadata.version(name) for name in ("paddle2onnx", "onnxruntime")
                    if importlib.util.find_spec(name)}
        return {"seconds": seconds, "onnx": read_metadata(model_dir)["onnx"], "versions": versions}
    if phase not in DEPLOY_BACKENDS:
        raise ValueError(f"phase must be export or one of {DEPLOY_BACKENDS}, got {phase!r}")
    _, _, batch = _model_and_batch(settings)
    predictor = BACKENDS[phase](model_dir, settings.threads)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    seconds = _repeat(lambda: predictor(batch), settings)
    cpu_per_wall = (_cpu_seconds() - cpu_start) / (time.perf_counter() - start)
    np.save(_logits_file(model_dir, phase), predictor(batch))
    # The predictor's own count: Paddle Inference sets it for each run and OpenMP's back to 1 after it; ONNX Runtime
    # has its own pool. CPU seconds per wall second over the runs show the parallelism reached.
    threads = {**threads_in_effect(settings.threads), "in_effect": predictor.threads, "cpu_per_wall": cpu_per_wall}
    return {**_timings(seconds, settings), "threads": threads, "backend": phase}


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _timings(seconds: list[float], settings: ModelSettings) -> dict[str, Any]:
    """``_timing_stats`` and the peak RSS of this process so far."""
    return {**_timing_stats(seconds, settings),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def _timing_stats(seconds: list[float], settings: ModelSettings) -> dict[str, Any]:
    """Images/s and seconds of the timed repeats (after the warm-up), and the warm-up seconds."""
    from .timing import rates, summary
    timed = seconds[settings.warmup:]
    return {"images_per_s": rates(timed, settings.batch_size), "seconds": summary(timed),
            "warmup_seconds": seconds[:settings.warmup]}


def _repeat(fn, settings: ModelSettings) -> list[float]:
    seconds = []
    for _ in range(settings.warmup + settings.repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def _train_seconds(cfg, model, images, labels, settings: ModelSettings) -> tuple[list[float], dict[str, Any]]:
    """``Trainer.train`` (built by ``Trainer.from_config``) for one epoch of ``warmup + repeats`` iterations of
    the same batch, with the LR hook only."""
    from ..engine.fixed_batches import FixedBatches
    from ..engine.hooks.hook import Hook
    from ..engine.trainer import Trainer

    class TimedBatches(FixedBatches):
        """Records the seconds of every loop iteration (from handing over a batch to being asked for the next)."""

        def __iter__(self) -> Iterator:
            for batch in super().__iter__():
                start = time.perf_counter()
                yield batch
                seconds.append(time.perf_counter() - start)

    class LastStep(Hook):
        def after_train_iter(self, trainer, batch, outputs) -> None:
            self.batch, self.outputs = batch, outputs

    seconds: list[float] = []
    last = LastStep()
    with tempfile.TemporaryDirectory(prefix="passl_tl_bench_train_") as tmp:
        cfg["output_dir"] = tmp
        cfg["data"]["val"] = {}
        cfg["hooks"] = {key: cfg["hooks"][key] for key in TRAIN_HOOKS}
        trainer = Trainer.from_config(cfg, model, TimedBatches([(images, labels)] * (settings.warmup + settings.repeats)))
        trainer.hooks["last_step"] = last
        trainer.max_epochs = 1
        trainer.train()
    box = last.batch.mix_box
    return seconds, {"loss": float(last.outputs.loss), "hooks": [type(h).__name__ for h in trainer.hooks.values()
                                                                  if h is not last],
                     "batch_stages": {name: type(t).__name__ for name, t in trainer.batch_pipeline.stages.items()},
                     "last_mix_box": list(box) if box is not None else None,
                     "grad_scaler": trainer.optim_wrapper.scaler is not None}


class _AmpProbe:
    """Records the output dtypes of the model's Linear layers (does AMP act on this device?)."""

    def __init__(self, model):
        import paddle
        self.dtypes: set[str] = set()
        for layer in model.sublayers():
            if isinstance(layer, paddle.nn.Linear):
                layer.register_forward_post_hook(self._hook)

    def _hook(self, layer, inputs, output) -> None:
        self.dtypes.add(str(output.dtype).replace("paddle.", ""))

    def report(self, amp: Mapping[str, Any]) -> dict[str, Any]:
        requested = amp["dtype"] if amp["enable"] else "float32"
        return {"requested": requested, "linear_output_dtypes": sorted(self.dtypes),
                "applied": requested == "float32" or requested in self.dtypes}


def threads_in_effect(requested: int) -> dict[str, Any]:
    """What the loaded OpenMP/MKL runtimes report, the thread variables, and the OS threads now."""
    found: dict[str, Any] = {"requested": requested,
                             "env": {name: os.environ.get(name) for name in THREAD_VARIABLES}}
    with open("/proc/self/maps", encoding="utf-8") as f:
        libs = sorted({line.split()[-1] for line in f if "/" in line and any(
            key in line.rsplit("/", 1)[-1] for key in ("libiomp5", "libmklml", "libgomp"))})
    for path in libs:
        lib = ctypes.CDLL(path)
        for function in ("omp_get_max_threads", "mkl_get_max_threads"):
            if hasattr(lib, function):
                found[f"{os.path.basename(path).split('.so')[0]}.{function}"] = int(getattr(lib, function)())
    omp = [v for k, v in found.items() if k.startswith(("libiomp5", "libmklml"))]
    found["in_effect"] = omp[0] if omp and len(set(omp)) == 1 else (omp or None)
    with open("/proc/self/status", encoding="utf-8") as f:
        found["os_threads"] = int(next(line.split()[1] for line in f if line.startswith("Threads:")))
    return found


def checks(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The targets against the official step measured side by side: the median ratio of images/s per phase,
    and our training peak memory against the official's (medians over the pairs); judged at the targets'
    settings only. None without a side-by-side measurement (absolute figures do not transfer between machines)."""
    if "side_by_side" not in results:
        return []
    s, sides = results["settings"], results["side_by_side"]
    comparable = all(s[k] in allowed for k, allowed in TARGET_SETTINGS.items())
    out = []
    for phase, target in TARGET_RATIOS.items():
        ratio = sides[phase]["ratio"]["median"]
        out.append({"check": f"{phase} images/s, ours / official", "value": ratio, "target": f">= {target:g}x",
                    "met": ratio >= target, "comparable": comparable})
    peaks = {side: _median([p[side]["peak_rss_mb"] for p in sides["train"]["pairs"]]) for side in ("ours", "official")}
    out.append({"check": "train peak RSS MB, ours / official's", "value": peaks["ours"],
                "target": f"<= {peaks['official']:.0f}", "met": peaks["ours"] <= peaks["official"],
                "comparable": comparable})
    return out


def side_by_side_report(results: Mapping[str, Any]) -> str:
    """Ours and the official per phase: medians over the pairs, the ratio's median and range, and the load."""
    from .timing import format_table
    rows = []
    for phase, side in results["side_by_side"].items():
        pairs, ratio = side["pairs"], side["ratio"]
        loads = [p[who]["load_average_at_start"] for p in pairs for who in ("ours", "official")]
        rows.append([phase, *(_median([p[who]["images_per_s"]["median"] for p in pairs]) for who in ("ours", "official")),
                     f"{ratio['median']:.2f}x", f"{ratio['min']:.2f}-{ratio['max']:.2f}",
                     *(_median([p[who]["peak_rss_mb"] for p in pairs]) for who in ("ours", "official")),
                     f"{min(loads):.2f}-{max(loads):.2f}"])
    official = results["side_by_side"]["train"]["pairs"][0]["official"]
    return (f"side by side with the official PyTorch code ({official['official_model']}, torch {official['torch']}, "
            f"TokenLabeling {str(official['official_commit'])[:7]}): {results['settings']['pairs']} interleaved pairs "
            f"per phase, each process fresh; images/s and peaks are medians over the pairs\n\n"
            + format_table(["phase", "ours images/s", "official images/s", "ratio (median)", "ratio min-max",
                            "ours peak RSS MB", "official peak RSS MB", "load average at starts"], rows))


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def report(results: Mapping[str, Any]) -> str:
    """The results as Markdown tables; the checks against the targets are judged only at the targets' settings
    (never in a ``--quick`` smoke test)."""
    from .timing import format_table, verdict
    m, s = results["machine"], results["settings"]
    rows = []
    for phase in PHASES:
        r = results[phase]
        ips = r["images_per_s"]
        name = phase + (f" ({r['backend']})" if "backend" in r else "")
        rows.append([name, ips["median"], f"{_num(ips['min'])}-{_num(ips['max'])}",
                     1000.0 * r["seconds"]["median"], r["peak_rss_mb"], str(r["threads"]["in_effect"]),
                     r["amp"]["requested"] + ("" if r["amp"]["applied"] else " (not applied: "
                                              + "/".join(r["amp"]["linear_output_dtypes"]) + ")")])
    train = results["train"]
    lines = [
        f"machine: {m['cpu']}, {m['cpus']} CPUs, load average {m['load_average'][0]} -> "
        f"{m['load_average_after'][0]}; {m['system']}; Python {m['python']}, Paddle {m['paddle']}, numpy {m['numpy']}",
        f"model: {s['model']} ({train['parameters'] / 1e6:.2f}M parameters), batch {s['batch_size']}, "
        f"{s['img_size']}x{s['img_size']}, {s['threads']} threads, {s['precision']}; median of {s['repeats']} "
        f"after {s['warmup']} warm-up; each phase in {'a fresh process' if s['subprocess'] else 'this process'}",
        f"train step: Trainer.train with batch stages {', '.join(train['batch_stages'].values())}, hooks "
        f"{', '.join(train['hooks'])} (synthetic [B, 3, 5, 18, 18] labels), forward with MixToken, loss, backward, AdamW step; "
        f"last loss {train['loss']:.4f}",
        format_table(["phase", "images/s", "min-max", "ms/batch", "peak RSS MB", "threads", "precision"], rows),
    ]
    if "deploy" in results:
        lines.append(deploy_report(results))
    if "side_by_side" not in results:
        lines.append("targets: ratios to the official PyTorch step on the same machine; measure them with "
                     "--official-repo (README: Speed and memory on CPU)")
        return "\n\n".join(lines)
    lines.append(side_by_side_report(results))
    comparable = results["checks"][0]["comparable"]
    check_rows = [[c["check"], _num(c["value"]), c["target"], verdict(c["met"], comparable)]
                  for c in results["checks"]]
    note = "" if comparable else ": not judged (the settings differ from these)"
    lines += [f"targets (LV-ViT-T/S, batch 16/32, 224 px, fp32, 2 threads){note}",
              format_table(["check", "value", "target", "met"], check_rows)]
    return "\n\n".join(lines)


RUNTIMES = {"paddle": "Paddle Inference (oneDNN)", "onnxruntime": "ONNX Runtime (CPU)"}


def deploy_report(results: Mapping[str, Any]) -> str:
    """The exported model's eval on each runtime: a table, and which is faster by how much."""
    from .timing import format_table
    s, export, deploy = results["settings"], results["export"], results["deploy"]
    rows = [[RUNTIMES[name], r["images_per_s"]["median"],
             f"{_num(r['images_per_s']['min'])}-{_num(r['images_per_s']['max'])}", 1000.0 * r["seconds"]["median"],
             r["peak_rss_mb"], str(r["threads"]["in_effect"]), r["threads"]["cpu_per_wall"],
             f"{r['max_abs_diff_vs_dygraph']:.1e}"]
            for name, r in deploy.items()]
    onnx = f", ONNX opset {export['onnx']['opset']}" if export["onnx"] else ""
    versions = "".join(f", {name} {version}" for name, version in export["versions"].items())
    text = (f"exported model (fp32{onnx}{versions}; export {export['seconds']:.1f} s): predictor on batches of "
            f"{s['batch_size']}, {s['threads']} threads, each runtime in "
            f"{'a fresh process' if s['subprocess'] else 'this process'}\n\n"
            + format_table(["runtime", "images/s", "min-max", "ms/batch", "peak RSS MB", "threads",
                            "CPU s / wall s", "max abs logit diff vs dygraph"], rows))
    if len(deploy) > 1:
        ranked = sorted(deploy, key=lambda name: -deploy[name]["images_per_s"]["median"])
        ratio = deploy[ranked[0]]["images_per_s"]["median"] / deploy[ranked[1]]["images_per_s"]["median"]
        text += f"\n\nfaster: {RUNTIMES[ranked[0]]}, {ratio:.2f}x {RUNTIMES[ranked[1]]}'s images/s (medians)"
    return text


def _num(value: float) -> str:
    from .timing import format_number
    return format_number(float(value))


if __name__ == "__main__":  # python -m passl_tl.benchmarks.model PHASE SETTINGS_JSON OUT [MODEL_DIR]
    _phase, _settings, _out = sys.argv[1:4]
    _result = (run_phase(ModelSettings(**json.loads(_settings)), _phase) if len(sys.argv) == 4
               else run_deploy_phase(ModelSettings(**json.loads(_settings)), _phase, sys.argv[4]))
    with open(_out, "w", encoding="utf-8") as _f:
        json.dump(_result, _f)
