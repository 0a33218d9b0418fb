"""Datasets, joint image/label transforms and token-label targets; importing registers them."""
from . import demo, imagenet_token_label, rand_augment, random_erasing, soft_targets, token_label, transforms  # noqa: F401
