"""Default values of every top-level config section (a config may only use these keys), and the bounds of
the plain numbers among them (:data:`BOUNDS`; component mappings are checked by their constructors' annotations)."""
from ..utils.registry import NonNegativeInt, PositiveFloat, PositiveInt

DEFAULTS = {
    "seed": 0,
    "device": "cpu",             # "cpu", "gpu" (the launcher picks the card), "gpu:N"; a GPU without CUDA: the CPU
    "threads": 0,                # CPU threads of Paddle's kernels per process (0: all available CPUs)
    "compile": False,            # train with a compiled (static-graph) forward + loss; false: eager
    "eval_backend": "auto",      # "dygraph", "onednn" (CPU: Paddle Inference), "auto" (onednn on CPU without AMP)
    "output_dir": "output/run",
    "class_names": None,         # a name per class (a list): what exported models and predictions call the classes
    "epochs": 300,               # cosine epochs; the scheduler's cooldown epochs come on top
    "amp": {"enable": False, "dtype": "float16", "level": "O1", "init_loss_scaling": 65536.0},
    "model": {},
    "data": {
        "batch_size": 128,        # per process
        "val_batch_size": 128,
        "num_workers": 8,
        "repeated_augmentation": 1,  # DeiT's repeated augmentation: 3 (needs several processes)
        "train": {},              # a dataset mapping (name: ...)
        "val": {},                # a dataset mapping (name: ...)
    },
    # What the trainer makes of each loader batch, in this order (any stage may be null).
    "batch": {
        "target": None,           # labels -> targets: TokenLabelTargets (token labels), SoftTargets (class ids)
        "mixup": None,            # Mixup (Mixup/CutMix of images and targets)
        "teacher": None,          # Teacher (distillation: the teacher's logits)
        "mixtoken": None,         # MixToken (a box of tokens swapped inside the model)
    },
    "optimizer": {"name": "AdamW", "lr": 1.6e-3, "weight_decay": 0.05},
    "optim_wrapper": {"accumulate_steps": 1, "max_nonfinite_steps": 10},
    "lr_scheduler": {"name": "CosineWarmup", "warmup_epochs": 5, "warmup_lr": 1e-6, "min_lr": 1e-5,
                     "cooldown_epochs": 10},
    "hooks": {
        "lr_scheduler": {"name": "LRSchedulerHook"},
        "logger": {"name": "LoggerHook", "interval": 50},
        "evaluate": {"name": "EvaluateHook", "interval": 1},
        "checkpoint": {"name": "CheckpointHook", "interval": 1, "keep_last": 5},
    },
}

# Values a number of DEFAULTS must have (``run_config.check_run_config``): the types of ``check_argument``
# (an int is not a bool nor 2.0), finite and within the bounds; the key path under the config's top level.
BOUNDS = {
    "seed": NonNegativeInt,
    "threads": NonNegativeInt,
    "epochs": PositiveInt,
    "amp.init_loss_scaling": PositiveFloat,
    "data.batch_size": PositiveInt,
    "data.val_batch_size": PositiveInt,
    "data.num_workers": NonNegativeInt,
    "data.repeated_augmentation": PositiveInt,
}
