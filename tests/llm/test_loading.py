"""llm/loading.py: blocks from safetensors shards one at a time, and models dispatched with offload device maps."""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")

from prunekit.llm.loading import OffloadedSource, ShardedSource, save_streamed  # noqa: E402
from prunekit.llm.pipeline import run_blocks  # noqa: E402
from prunekit.llm.sparse import sparsify_llm_  # noqa: E402
from prunekit.llm.tiny import tiny_model  # noqa: E402

AutoLM = transformers.AutoModelForCausalLM
WINDOWS = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))  # [n, T]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tiny_model("llama").save_pretrained(folder, max_shard_size="60KB")  # several shards
    assert len(list(folder.glob("*.safetensors"))) > 2
    return folder


def _resident_wanda(folder):
    model = AutoLM.from_pretrained(folder).eval()
    sparsify_llm_(model, WINDOWS, "wanda", 0.5, progress=False)
    return model


def _logits(model):
    with torch.no_grad():
        return model(WINDOWS).logits


def test_sharded_source_one_block_resident_and_same_result(saved, tmp_path):
    probe = ShardedSource(saved)  # no out: blocks are dropped after their visit
    blocks = probe.layout.blocks
    assert all(p.is_meta for p in blocks.parameters())  # nothing of the blocks read yet
    resident = []

    embed = probe.model.model.embed_tokens
    head = probe.model.lm_head

    def visit(i, block, inputs):
        resident.append([j for j, b in enumerate(blocks) if not any(p.is_meta for p in b.parameters())])
        assert embed.weight.is_meta and head.weight.is_meta  # released once block 0's inputs were captured

    run_blocks(probe.model, WINDOWS, visit, source=probe, progress=False)
    assert resident == [[0], [1]]  # exactly one block with weights at each visit
    assert all(p.is_meta for p in blocks.parameters())
    assert not embed.weight.is_meta  # read again after the last block: a second pass works
    run_blocks(probe.model, WINDOWS, lambda i, b, x: None, source=probe, progress=False)

    src = ShardedSource(saved, tmp_path / "out")
    blocks = src.layout.blocks

    sparsify_llm_(src.model, WINDOWS, "wanda", 0.5, progress=False, source=src)
    assert src.loads == 2 and all(p.is_meta for p in blocks.parameters())
    out = src.finish()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model-block-00000.safetensors", "model-block-00001.safetensors",
                                                 "model-rest.safetensors"}
    back = AutoLM.from_pretrained(out).eval()
    ref = _resident_wanda(saved)
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k  # block by block from disk == all in memory, bit for bit
    w = back.model.layers[1].mlp.down_proj.weight
    assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    torch.testing.assert_close(_logits(back), _logits(ref), rtol=0, atol=0)


def test_save_streamed_reads_back_with_safetensors(tmp_path):
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    tensors = {"b.w": torch.randn(5, 3, generator=g), "a.bias": torch.randn(7, generator=g).to(torch.bfloat16),
               "c.mask": torch.rand(4, 4, generator=g) > 0.5, "d.ids": torch.arange(6).view(2, 3), "e.s": torch.tensor(2.5)}
    size = save_streamed(tmp_path / "x.safetensors", tensors)
    assert size == (tmp_path / "x.safetensors").stat().st_size
    back = load_file(tmp_path / "x.safetensors")
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], v) for k, v in tensors.items())
    save_streamed(tmp_path / "y.safetensors", tensors, torch.bfloat16)  # floats cast while written, others kept
    back = load_file(tmp_path / "y.safetensors")
    assert back["b.w"].dtype == torch.bfloat16 and torch.equal(back["b.w"], tensors["b.w"].to(torch.bfloat16))
    assert torch.equal(back["c.mask"], tensors["c.mask"]) and back["d.ids"].dtype == torch.int64
    with pytest.raises(TypeError, match="complex"):  # negative control: a dtype safetensors cannot hold here
        save_streamed(tmp_path / "z.safetensors", {"z": torch.zeros(2, dtype=torch.complex64)})


def test_bf16_checkpoint_computed_in_float32(tmp_path):
    tiny_model("llama").to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    src = ShardedSource(tmp_path / "bf16", tmp_path / "out", compute_dtype=torch.float32)
    sparsify_llm_(src.model, WINDOWS, "sparsegpt", 0.5, progress=False, source=src)
    back = AutoLM.from_pretrained(src.finish(), dtype="auto")
    w = back.model.layers[0].self_attn.q_proj.weight
    assert w.dtype == torch.bfloat16
    assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert torch.isfinite(_logits(back)).all()


def _offload_map():
    return {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
            "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "cpu"}


def test_disk_offload_device_map(saved, tmp_path):
    model = AutoLM.from_pretrained(saved, device_map=_offload_map(), offload_folder=str(tmp_path / "off")).eval()
    assert all(p.is_meta for p in model.model.layers[1].parameters())  # block 1 lives on disk
    with OffloadedSource(model, offload_dir=tmp_path / "off2") as src:
        assert src.offloaded_blocks == [1]
        sparsify_llm_(model, WINDOWS, "wanda", 0.5, progress=False, source=src)
    assert all(p.is_meta for p in model.model.layers[1].parameters())  # offloaded again
    ref = _resident_wanda(saved)
    torch.testing.assert_close(_logits(model), _logits(ref), rtol=0, atol=0)  # the disk copy holds the pruned weights


def test_cpu_ram_offload(saved):
    model = AutoLM.from_pretrained(saved).eval()
    accelerate.cpu_offload(model, execution_device="cpu")  # every weight in a CPU map, modules on meta
    assert model.model.embed_tokens.weight.is_meta
    with OffloadedSource(model) as src:
        assert src.offloaded_blocks == [0, 1]
        sparsify_llm_(model, WINDOWS, "wanda", 0.5, progress=False, source=src)
    assert model.model.embed_tokens.weight.is_meta and model.model.layers[0].mlp.up_proj.weight.is_meta
    torch.testing.assert_close(_logits(model), _logits(_resident_wanda(saved)), rtol=0, atol=0)


def test_negative_controls(saved, tmp_path):
    (tmp_path / "empty").mkdir()
    AutoLM.from_pretrained(saved).config.save_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        ShardedSource(tmp_path / "empty")
    with pytest.raises(ValueError, match="must differ"):
        ShardedSource(saved, saved)
    src = ShardedSource(saved, tmp_path / "half")
    src.store(0, src.load(0))
    with pytest.raises(RuntimeError, match="not stored"):
        src.finish()
    # an offloaded model pruned WITHOUT the source: the pipeline cannot reach the weights on disk
    model = AutoLM.from_pretrained(saved, device_map=_offload_map(), offload_folder=str(tmp_path / "off")).eval()
    before = _logits(model)
    try:
        sparsify_llm_(model, WINDOWS, "wanda", 0.5, progress=False)
    except Exception:
        pass
    else:
        assert torch.equal(_logits(model), before), "pruning without the source changed nothing on disk"
        pytest.fail("sparsify_llm_ on an offloaded model without a source finished silently")


def test_magnitude_from_shards_needs_no_windows(saved, tmp_path):
    """Uniform magnitude reads each block from the shards and prunes it without any calibration pass
    (before, a source without windows failed inside the pipeline); the result equals the in-memory one."""
    src = ShardedSource(saved, tmp_path / "mag")
    sparsify_llm_(src.model, None, "magnitude", 0.5, progress=False, source=src)
    assert src.loads == 2
    back = AutoLM.from_pretrained(src.finish()).eval()
    ref = AutoLM.from_pretrained(saved).eval()
    sparsify_llm_(ref, None, "magnitude", 0.5, progress=False)
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert (back.model.layers[0].mlp.down_proj.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
