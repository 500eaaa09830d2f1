"""Hugging Face transformers families from tiny configs (2 layers, hidden 64, 4 heads; no downloads).

Each model is wrapped so it takes one tensor and returns one tensor (the logits), which both tools trace
the same way. Models without a task head (T5 encoder, CLIP vision) get a Linear ``head`` on the pooled
hidden states; the head (or the model's own classifier / lm_head) is the kept module.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .spec import Built, Spec

VOCAB, SEQ = 100, 16


class Logits(nn.Module):
    """``m(**{key: x}).logits`` or, with ``head``, ``head(pool(m(**{key: x}).<hidden>))``."""

    def __init__(self, m: nn.Module, key: str, head: nn.Module | None = None, hidden: str = "last_hidden_state"):
        super().__init__()
        self.m, self.key, self.hidden = m, key, hidden
        if head is not None:
            self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.m(**{self.key: x})
        if not hasattr(self, "head"):
            return out.logits
        h = getattr(out, self.hidden)
        return self.head(h.mean(1) if h.dim() == 3 else h)  # (B, T, C) -> (B, C)


def _ids() -> torch.Tensor:
    return torch.randint(1, VOCAB, (1, SEQ))


def _text(cls_name: str, cfg_name: str, head: str, **cfg) -> Callable[[], Built]:
    def build() -> Built:
        import transformers

        torch.manual_seed(0)
        config = getattr(transformers, cfg_name)(**cfg)
        model = Logits(getattr(transformers, cls_name)(config), "input_ids").eval()
        return Built(model, (_ids(),), [f"m.{head}"])
    return build


_LM = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64, use_cache=False)
_ENC = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=64, num_labels=10)


def _t5_encoder() -> Built:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                use_cache=False)
    model = Logits(transformers.T5EncoderModel(cfg), "input_ids", nn.Linear(64, 10)).eval()
    return Built(model, (_ids(),), ["head"])


def _clip_vision() -> Built:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4)
    model = Logits(transformers.CLIPVisionModel(cfg), "pixel_values", nn.Linear(64, 10), "pooler_output").eval()
    return Built(model, (torch.randn(1, 3, 32, 32),), ["head"])


def _vit() -> Built:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=128, num_labels=10)
    model = Logits(transformers.ViTForImageClassification(cfg), "pixel_values").eval()
    return Built(model, (torch.randn(1, 3, 32, 32),), ["m.classifier"])


def _swin() -> Built:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.SwinConfig(image_size=32, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                                  window_size=4, num_labels=10)
    model = Logits(transformers.SwinForImageClassification(cfg), "pixel_values").eval()
    return Built(model, (torch.randn(1, 3, 32, 32),), ["m.classifier"])


def _whisper_encoder() -> Built:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2, encoder_attention_heads=4,
                                     encoder_ffn_dim=128, decoder_layers=1, decoder_attention_heads=4,
                                     decoder_ffn_dim=128, num_mel_bins=16, max_source_positions=16,
                                     max_target_positions=16, classifier_proj_size=32, num_labels=10,
                                     use_cache=False)
    model = Logits(transformers.WhisperForAudioClassification(cfg), "input_features").eval()
    return Built(model, (torch.randn(1, 16, 32),), ["m.classifier"])  # (B, mel bins, 2 * max_source_positions)


_BUILDERS: dict[str, Callable[[], Built]] = {
    "hf_bert": _text("BertForSequenceClassification", "BertConfig", "classifier", **_ENC),
    "hf_roberta": _text("RobertaForSequenceClassification", "RobertaConfig", "classifier.out_proj",
                        **{**_ENC, "max_position_embeddings": 64 + 2, "pad_token_id": 0}),
    "hf_distilbert": _text("DistilBertForSequenceClassification", "DistilBertConfig", "classifier",
                           vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                           max_position_embeddings=64, num_labels=10),
    "hf_deberta_v2": _text("DebertaV2ForSequenceClassification", "DebertaV2Config", "classifier", **_ENC),
    "hf_gpt2": _text("GPT2LMHeadModel", "GPT2Config", "lm_head", vocab_size=VOCAB, n_embd=64, n_layer=2,
                     n_head=4, n_positions=64, use_cache=False),
    "hf_gpt_neox": _text("GPTNeoXForCausalLM", "GPTNeoXConfig", "embed_out",
                         **{k: v for k, v in _LM.items() if k != "num_key_value_heads"}, rotary_pct=0.25),
    "hf_opt": _text("OPTForCausalLM", "OPTConfig", "lm_head", vocab_size=VOCAB, hidden_size=64, ffn_dim=128,
                    num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                    word_embed_proj_dim=64, use_cache=False),
    "hf_llama": _text("LlamaForCausalLM", "LlamaConfig", "lm_head", **_LM),
    "hf_mistral": _text("MistralForCausalLM", "MistralConfig", "lm_head", **_LM, sliding_window=None),
    "hf_qwen2": _text("Qwen2ForCausalLM", "Qwen2Config", "lm_head", **_LM),
    "hf_phi3": _text("Phi3ForCausalLM", "Phi3Config", "lm_head", **_LM, pad_token_id=0),
    "hf_t5_encoder": _t5_encoder,
    "hf_vit": _vit,
    "hf_clip_vision": _clip_vision,
    "hf_whisper_encoder": _whisper_encoder,
    "hf_swin": _swin,
}

SPECS: list[Spec] = [Spec(name, "hf", b) for name, b in _BUILDERS.items()]
