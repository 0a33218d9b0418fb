"""Datasets and joint image/label transforms; importing registers them."""
from . import demo, imagenet_token_label, rand_augment, random_erasing, transforms  # noqa: F401
