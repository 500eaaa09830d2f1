"""timm architectures for the zoo benchmark: the smallest variant of each family, random init, small inputs.

Each entry is ``name -> (timm kwargs, input side)``. ``img_size`` is passed where the model accepts it so
position embeddings, attention biases and windows are built for the small input.
"""
from __future__ import annotations

from typing import Any

from .spec import Built, Spec

S64: dict[str, Any] = {"img_size": 64}

# name: (create_model kwargs, input side)
TIMM: dict[str, tuple[dict[str, Any], int]] = {
    # ViT / DeiT / BEiT / EVA and other plain transformers
    "vit_tiny_patch16_224": (S64, 64),
    "deit_tiny_patch16_224": (S64, 64),
    "deit_tiny_distilled_patch16_224": (S64, 64),
    "beit_base_patch16_224": (S64, 64),
    "eva02_tiny_patch14_224": ({"img_size": 56, "num_classes": 1000}, 56),
    "cait_xxs24_224": (S64, 64),
    "convit_tiny": (S64, 64),
    "pit_ti_224": (S64, 64),
    "xcit_nano_12_p16_224": (S64, 64),
    "tnt_s_patch16_224": (S64, 64),
    "crossvit_tiny_240": ({}, 240),  # its two branches crop/rescale the input: default size only
    # hybrids and hierarchical transformers
    "coat_tiny": (S64, 64),
    "coatnet_nano_rw_224": (S64, 64),
    "levit_128s": (S64, 64),
    "efficientformer_l1": ({}, 224),  # attention biases fixed at 7x7: default size only
    "efficientformerv2_s0": (S64, 64),
    "mobilevit_xxs": ({}, 64),
    "edgenext_xx_small": ({}, 64),
    "fastvit_t8": ({}, 64),
    "pvt_v2_b0": ({}, 64),
    "twins_pcpvt_small": ({}, 64),
    "tiny_vit_5m_224": ({"num_classes": 1000}, 64),
    "gcvit_xxtiny": ({"img_size": 224}, 224),
    "efficientvit_b0": ({}, 64),
    "halonet26t": ({"img_size": 256}, 256),  # blocks of 8 at stride 32: no smaller size
    "botnet26t_256": ({"img_size": 64}, 64),
    # MLPs and metaformers
    "poolformer_s12": ({}, 64),
    "poolformerv2_s12": ({}, 64),
    "mixer_s32_224": (S64, 64),
    "resmlp_12_224": (S64, 64),
    "gmlp_ti16_224": (S64, 64),
    "sequencer2d_s": (S64, 64),
    "mambaout_femto": ({}, 64),
    # ConvNets
    "convnext_atto": ({}, 64),
    "cspresnet50": ({}, 64),
    "cspdarknet53": ({}, 64),
    "dpn48b": ({}, 64),
    "res2net50_14w_8s": ({}, 64),
    "skresnet18": ({}, 64),
    "eca_nfnet_l0": ({}, 64),
    "nf_resnet26": ({}, 64),
    "ecaresnet26t": ({}, 64),
    "repvgg_a0": ({}, 64),
    "ghostnet_050": ({}, 64),
    "ghostnetv2_100": ({}, 64),
    "rexnet_100": ({}, 64),
    "hrnet_w18_small": ({}, 64),
    "mobileone_s0": ({}, 64),
    "efficientnet_b0": ({}, 64),
    "mobilenetv3_small_100": ({}, 64),
    "mobilenetv4_conv_small": ({}, 64),
    "regnetx_002": ({}, 64),
    "dla34": ({}, 64),
    "selecsls42b": ({}, 64),
    "ese_vovnet19b_dw": ({}, 64),
    "hgnetv2_b0": ({}, 64),
    "repvit_m0_9": ({}, 64),
    "lambda_resnet26t": ({"img_size": 64}, 64),
}


def _head_paths(model) -> list[str]:
    """Module paths of timm's classifier(s): ``get_classifier()`` (a module or a tuple of them)."""
    heads = model.get_classifier()
    heads = heads if isinstance(heads, (tuple, list)) else (heads,)
    paths = {id(m): p for p, m in model.named_modules()}
    return [paths[id(h)] for h in heads if id(h) in paths and paths[id(h)]]


def _builder(name: str, kwargs: dict[str, Any], side: int):
    def build() -> Built:
        import timm
        import torch

        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
        x = torch.randn(1, 3, side, side)
        return Built(model, (x,), _head_paths(model))
    return build


SPECS: list[Spec] = [Spec(name, "timm", _builder(name, kw, side)) for name, (kw, side) in TIMM.items()]
