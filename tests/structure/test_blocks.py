"""Depth pruning: find shape-preserving blocks, score them, remove them."""
import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from prunekit.structure.blocks import block_scores, find_blocks, prune_blocks_, remove_blocks_


def test_resnet_blocks_found_scored_and_removed():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    blocks = find_blocks(m, x[:1])
    assert blocks == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    data = [(torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,)))]
    sim = block_scores(m, blocks, data)
    assert all(0 <= v <= 2 for v in sim.values())
    loss = block_scores(m, blocks, data, "loss", loss_fn=F.cross_entropy)
    assert set(loss) == set(blocks)
    remove_blocks_(m, ["layer2.1", "layer3.1"])
    assert len(m.layer2) == 1 and len(m.layer3) == 1
    assert m(x).shape == (2, 10)


class _Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return x + self.fc(x)


def _residual_chain() -> nn.Sequential:
    """Three residual blocks between two Linears; block 2's branch is zeroed (an identity block)."""
    m = nn.Sequential(nn.Linear(4, 8), _Res(), _Res(), _Res(), nn.Linear(8, 2)).eval()
    with torch.no_grad():
        m[2].fc.weight.zero_()
        m[2].fc.bias.zero_()
    return m


def test_zeroed_residual_branch_scores_zero_and_goes_first():
    torch.manual_seed(0)
    m = _residual_chain()
    x = torch.randn(16, 4)
    with torch.no_grad():
        ref = m(x)
    scores = prune_blocks_(m, x[:1], [x], n=1)
    assert scores["2"] == pytest.approx(0.0, abs=1e-12)
    assert len(m) == 4
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref)  # an identity block: removal is exact


def test_llama_layer_removal_keeps_config_and_cache_consistent():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (1, 8))
    assert find_blocks(model, (), {"input_ids": ids}) == [f"model.layers.{i}" for i in range(4)]
    remove_blocks_(model, ["model.layers.1", "model.layers.2"])
    assert model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 11)
    with pytest.raises(ValueError):
        remove_blocks_(model, ["model.layers.0", "model.layers.1"])


def test_loss_scores_are_the_loss_rise_when_the_block_is_skipped():
    """Negative control for ``method="loss"``: each score must equal the measured rise of the loss
    with that block deleted (an identity block rises by exactly 0, the others by known amounts)."""
    import copy

    torch.manual_seed(0)
    m = _residual_chain()
    with torch.no_grad():
        m[3].fc.weight.mul_(3.0)  # block 3 matters more than block 1
    x = torch.randn(32, 4)
    with torch.no_grad():
        y = m(x) + 0.1 * torch.randn(32, 2)  # targets near the model's outputs: base loss small, not 0
    data = [(x[:16], y[:16]), (x[16:], y[16:])]
    scores = block_scores(m, ["1", "2", "3"], data, "loss", loss_fn=F.mse_loss)

    def loss(model):
        with torch.no_grad():
            return sum(float(F.mse_loss(model(xb), yb)) for xb, yb in data) / len(data)

    base = loss(m)
    for b in ("1", "2", "3"):
        skipped = copy.deepcopy(m)
        del skipped[int(b)]
        assert scores[b] == pytest.approx(loss(skipped) - base, rel=1e-5, abs=1e-9), b
    assert scores["2"] == pytest.approx(0.0, abs=1e-9)
    assert scores["3"] > scores["1"] > 0.01
