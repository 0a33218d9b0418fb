"""Optimizer parameter groups: no weight decay on biases, norms and the model's no_weight_decay names."""
import numpy as np
import paddle

from passl_tl.engine.optimizers import AdamW, decay_parameter_names
from passl_tl.models import create_model


def test_no_weight_decay_groups():
    class Net(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc = paddle.nn.Linear(4, 4)
            self.norm = paddle.nn.LayerNorm(4)
            self.pos_embed = self.create_parameter([1, 3, 4])

        def no_weight_decay(self):
            return {"pos_embed"}

    net = Net()
    assert decay_parameter_names(net) == {net.fc.weight.name}


def test_adamw_decays_only_matrices_on_lvvit():
    """One step with zero gradients: Adam's update is 0, so only decoupled decay moves weights."""
    model = create_model("lvvit_tiny", depth=1, num_classes=4, img_size=32, embed_dim=48, num_heads=2)
    opt = AdamW(model, lr=0.1, weight_decay=0.5)
    before = {n: p.numpy().copy() for n, p in model.named_parameters() if not p.stop_gradient}
    (sum(p.sum() for p in model.parameters() if not p.stop_gradient) * 0.0).backward()
    opt.step()
    after = dict(model.named_parameters())
    for name, value in before.items():
        decayed = value.ndim > 1 and name not in ("backbone.pos_embed", "backbone.cls_token")
        np.testing.assert_allclose(after[name].numpy(), value * (0.95 if decayed else 1.0), rtol=1e-6,
                                   err_msg=name)
    assert "backbone.blocks.0.attn.qkv.weight" in before and "backbone.norm.weight" in before
