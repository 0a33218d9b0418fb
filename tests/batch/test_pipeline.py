"""The batch pipeline checks each stage against the model when bound, before the first iteration."""
import paddle
import pytest

from passl_tl.batch.pipeline import BatchPipeline
from passl_tl.models import create_model
from passl_tl.token_labels.mixtoken import MixToken
from passl_tl.token_labels.targets import TokenLabelTargets
from passl_tl.utils.registry import ConfigError


def test_cnn_backbones_refuse_token_features_clearly():
    """RegNet without img_size has no token grid: MixToken and per-token targets are config errors naming it
    (and the ways out) when the batch stages are bound to it (the trainer is built), not at the first iteration."""
    with paddle.LazyGuard():
        cnn = create_model("regnety_002", num_classes=10)
        deit = create_model("deit_tiny_patch16_224", depth=1, num_classes=10)
    with pytest.raises(ConfigError, match="MixToken needs a backbone with a token grid; RegNet"):
        BatchPipeline({"mixtoken": MixToken()}).bind(cnn)
    with pytest.raises(ConfigError, match=r"TokenLabelTargets\) needs a model with a token grid for per-token "
                                          r"targets; RegNet has none \(a CNN: set model.img_size\)"):
        BatchPipeline({"target": TokenLabelTargets()}).bind(cnn)
    with pytest.raises(ConfigError, match="MixToken needs a head that un-mixes per-token outputs.*LinearHead"):
        BatchPipeline({"mixtoken": MixToken()}).bind(deit)
