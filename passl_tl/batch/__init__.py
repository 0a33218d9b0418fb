"""The training batch and its stages: targets -> Mixup/CutMix -> teacher -> MixToken (see ``pipeline``).

Kept free of eager imports: models import MixToken, which builds on ``pipeline``; the engine imports the
stage modules, which registers them.
"""
