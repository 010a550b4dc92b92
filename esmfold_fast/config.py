"""Model configurations for ESM-2 and ESMFold.

Field names follow transformers' ``EsmConfig`` / ``EsmFoldConfig`` / ``TrunkConfig`` /
``StructureModuleConfig`` so a ``config.json`` written by ``save_pretrained`` maps onto these
dataclasses field by field. Sizes come from REFERENCE.md section 1 (the ESM-2 paper's table and
ESMFold v1's hyperparameters).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

# name -> (layers, embed dim, heads); FFN is 4 x embed dim for every size.
ESM2_SIZES: dict[str, tuple[int, int, int]] = {
    "esm2_t6_8M_UR50D": (6, 320, 20),
    "esm2_t12_35M_UR50D": (12, 480, 20),
    "esm2_t30_150M_UR50D": (30, 640, 20),
    "esm2_t33_650M_UR50D": (33, 1280, 20),
    "esm2_t36_3B_UR50D": (36, 2560, 40),
    "esm2_t48_15B_UR50D": (48, 5120, 40),
}


@dataclass
class ESM2Config:
    """ESM-2 hyperparameters (fair-esm ``encoder_*`` names in comments)."""

    num_layers: int = 33  # encoder_layers
    embed_dim: int = 1280  # encoder_embed_dim
    attention_heads: int = 20  # encoder_attention_heads
    token_dropout: bool = True
    alphabet_size: int = 33
    padding_idx: int = 1
    mask_idx: int = 32
    cls_idx: int = 0
    eos_idx: int = 2
    layer_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.attention_heads

    @property
    def ffn_embed_dim(self) -> int:
        return 4 * self.embed_dim

    @classmethod
    def named(cls, name: str) -> "ESM2Config":
        if name not in ESM2_SIZES:
            raise ValueError(f"unknown ESM-2 size {name!r}; known: {', '.join(ESM2_SIZES)}")
        layers, dim, heads = ESM2_SIZES[name]
        return cls(num_layers=layers, embed_dim=dim, attention_heads=heads)

    def validate(self) -> None:
        if self.embed_dim % self.attention_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by attention_heads {self.attention_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dim, got {self.head_dim}")


@dataclass
class StructureModuleConfig:
    """AlphaFold2 structure module (Algorithm 20) hyperparameters, transformers' names."""

    sequence_dim: int = 384
    pairwise_dim: int = 128
    ipa_dim: int = 16
    resnet_dim: int = 128
    num_heads_ipa: int = 12
    num_qk_points: int = 4
    num_v_points: int = 8
    dropout_rate: float = 0.1
    num_blocks: int = 8
    num_transition_layers: int = 1
    num_resnet_blocks: int = 2
    num_angles: int = 7
    trans_scale_factor: float = 10
    epsilon: float = 1e-8
    inf: float = 1e5


@dataclass
class TrunkConfig:
    """ESMFold folding trunk hyperparameters, transformers' names."""

    num_blocks: int = 48
    sequence_state_dim: int = 1024
    pairwise_state_dim: int = 128
    sequence_head_width: int = 32
    pairwise_head_width: int = 32
    position_bins: int = 32
    dropout: float = 0.0
    layer_drop: float = 0.0
    cpu_grad_checkpoint: bool = False
    max_recycles: int = 4
    # Most pair rows per chunk (esmfold_fast.memory); None (fair-esm's default): planned from the memory budget.
    chunk_size: int | None = None
    structure_module: StructureModuleConfig = field(default_factory=StructureModuleConfig)

    def validate(self) -> None:
        for dim, width, what in (
            (self.sequence_state_dim, self.sequence_head_width, "sequence"),
            (self.pairwise_state_dim, self.pairwise_head_width, "pairwise"),
        ):
            if dim % width:
                raise ValueError(f"{what}_state_dim {dim} is not a multiple of {what}_head_width {width}")
        if self.pairwise_state_dim % 2:
            raise ValueError("pairwise_state_dim must be even")
        if self.max_recycles < 0:
            raise ValueError("max_recycles must be >= 0")


@dataclass
class ESMFoldConfig:
    """Whole-model configuration: the ESM-2 language model plus the folding head."""

    esm: ESM2Config = field(default_factory=lambda: ESM2Config.named("esm2_t36_3B_UR50D"))
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    esm_type: str = "esm2_3B"
    fp16_esm: bool = True
    use_esm_attn_map: bool = False
    esm_ablate_pairwise: bool = False
    esm_ablate_sequence: bool = False
    esm_input_dropout: float = 0.0
    embed_aa: bool = True
    bypass_lm: bool = False
    lddt_head_hid_dim: int = 128

    def validate(self) -> None:
        self.esm.validate()
        self.trunk.validate()
        if self.use_esm_attn_map:
            raise ValueError("use_esm_attn_map=True is not part of ESMFold v1 and is not supported")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ESMFoldConfig":
        d = dict(d)
        trunk = dict(d.pop("trunk", {}))
        sm = StructureModuleConfig(**_known(StructureModuleConfig, trunk.pop("structure_module", {})))
        cfg = cls(
            esm=ESM2Config(**_known(ESM2Config, d.pop("esm", {}))),
            trunk=TrunkConfig(structure_module=sm, **_known(TrunkConfig, trunk)),
            **_known(cls, d),
        )
        cfg.validate()
        return cfg


def _known(klass, d: Mapping[str, Any]) -> dict[str, Any]:
    """Keep the keys that are fields of ``klass`` (transformers adds bookkeeping keys)."""
    names = {f.name for f in dataclasses.fields(klass)}
    out = {}
    for k, v in dict(d or {}).items():
        if k in names and k not in ("esm", "trunk", "structure_module"):
            out[k] = v
    return out


def named_config(name: str, **overrides: Any) -> ESMFoldConfig:
    """Named ESMFold configurations for benchmarks, profiling and tests.

    ``esmfold_v1`` is the released model (ESM-2 3B + 48 blocks). ``esm`` may be overridden by an
    ESM-2 size name, and any trunk field (``num_blocks=1``) by keyword.
    """
    if name == "esmfold_v1":
        cfg = ESMFoldConfig()
    elif name == "esmfold_v1_8M":  # the CPU benchmark shape: 8M LM, full-width trunk
        cfg = ESMFoldConfig(esm=ESM2Config.named("esm2_t6_8M_UR50D"), esm_type="esm2_8M_270K")
    elif name == "tiny":  # unit tests: every part present, seconds to run
        cfg = ESMFoldConfig(
            esm=ESM2Config(num_layers=2, embed_dim=48, attention_heads=2),
            trunk=TrunkConfig(
                num_blocks=2,
                sequence_state_dim=64,
                pairwise_state_dim=32,
                sequence_head_width=16,
                pairwise_head_width=16,
                max_recycles=1,
                structure_module=StructureModuleConfig(sequence_dim=32, pairwise_dim=16, num_blocks=2,
                                                       resnet_dim=16, num_heads_ipa=4),
            ),
            esm_type="tiny",
        )
    else:
        raise ValueError(f"unknown ESMFold config {name!r}; known: esmfold_v1, esmfold_v1_8M, tiny")
    return with_overrides(cfg, **overrides)


def with_overrides(config: ESMFoldConfig, **overrides: Any) -> ESMFoldConfig:
    """A validated copy of ``config`` with fields replaced: ``esm`` (an ESM-2 size name or an
    :class:`ESM2Config`), any trunk field (``num_blocks=1``) or any top-level field."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        if key == "esm":
            config.esm = ESM2Config.named(value) if isinstance(value, str) else value
        elif hasattr(config.trunk, key):
            setattr(config.trunk, key, value)
        elif hasattr(config, key):
            setattr(config, key, value)
        else:
            raise ValueError(f"unknown config field {key!r}")
    config.validate()
    return config
