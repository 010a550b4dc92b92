"""Loading ESMFold checkpoints: transformers directories (safetensors / bin, both rotary layouts), fair-esm's
esmfold + ESM-2 ``.pt`` pair, the local hub cache, and the errors a bad checkpoint must raise."""

from __future__ import annotations

import argparse
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from _esmfold_hf import REDUCED_TRUNK, hf_folding_model, save_hf
from esmfold_fast import ESM2, CheckpointError, ESMFold

SEQS = ["MKTAYIAKQRQISFVKSHF", "GSHMLEDPA"]
LM_SIZES = dict(encoder_layers=2, encoder_embed_dim=48, encoder_attention_heads=2, token_dropout=True)
FAIR_SM = dict(c_s=32, c_z=16, c_ipa=8, c_resnet=16, no_heads_ipa=4, no_qk_points=4, no_v_points=8, dropout_rate=0.1,
               no_blocks=3, no_transition_layers=1, no_resnet_blocks=2, no_angles=7, trans_scale_factor=10,
               epsilon=1e-8, inf=1e5)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A randomised transformers checkpoint directory and the outputs our loader gives for it."""
    directory = save_hf(hf_folding_model(REDUCED_TRUNK, seed=21), tmp_path_factory.mktemp("hf"))
    model = ESMFold.from_pretrained(directory, backend="torch")
    return directory, model, model.infer(SEQS, num_recycles=0)


def _same_outputs(model: ESMFold, expected: dict) -> None:
    out = model.infer(SEQS, num_recycles=0)
    for key in ("positions", "plddt", "ptm", "predicted_aligned_error"):
        torch.testing.assert_close(out[key], expected[key], rtol=0, atol=0)


def _copy_dir(src, dst):
    shutil.copytree(src, dst)
    return dst


def _rewrite(directory, edit):
    path = directory / "model.safetensors"
    sd = dict(load_file(str(path)))
    edit(sd)
    save_file(sd, str(path), metadata={"format": "pt"})
    return path


def test_safetensors_and_bin_load_the_same(saved, tmp_path):
    directory, model, expected = saved
    assert model.esm_s_combine.dtype == torch.float32 and not model.training
    save_hf_bin = _copy_dir(directory, tmp_path / "bin")
    sd = load_file(str(save_hf_bin / "model.safetensors"))
    torch.save(dict(sd), save_hf_bin / "pytorch_model.bin")
    (save_hf_bin / "model.safetensors").unlink()
    _same_outputs(ESMFold.from_pretrained(save_hf_bin, backend="torch"), expected)


def test_float64_load_and_to(saved):
    directory, model, _ = saved
    m64 = ESMFold.from_pretrained(directory, backend="reference", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m64.parameters())
    assert m64.backend.name == "reference"
    converted = ESMFold.from_pretrained(directory, backend="reference").to(torch.float64)
    out_a, out_b = m64.infer(SEQS[1], num_recycles=0), converted.infer(SEQS[1], num_recycles=0)
    torch.testing.assert_close(out_a["positions"], out_b["positions"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", ["per_layer", "model_level"])
def test_rotary_layouts(saved, tmp_path, layout):
    """Old checkpoints keep inv_freq per layer, transformers 5.x one model-level key: both load, values kept."""
    directory, _, expected = saved
    target = _copy_dir(directory, tmp_path / layout)

    def edit(sd):
        (shared_key,) = [k for k in sd if k.endswith("rotary_embeddings.inv_freq")]
        inv = sd.pop(shared_key)
        if layout == "per_layer":
            for i in range(2):
                sd[f"esm.encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = inv.clone()
        else:
            sd["esm.rotary_embeddings.inv_freq"] = inv.clone()

    _rewrite(target, edit)
    model = ESMFold.from_pretrained(target, backend="torch")
    _same_outputs(model, expected)
    if layout == "per_layer":  # stored values are used, not recomputed
        def bump(sd):
            sd["esm.encoder.layer.1.attention.self.rotary_embeddings.inv_freq"] *= 1.5

        path = _rewrite(target, bump)
        stored = load_file(str(path))["esm.encoder.layer.1.attention.self.rotary_embeddings.inv_freq"]
        bumped = ESMFold.from_pretrained(target, backend="torch")
        torch.testing.assert_close(bumped.esm.layers[1].self_attn.rot_emb.inv_freq, stored.float(), rtol=0, atol=0)
        assert not torch.equal(bumped.esm.layers[1].self_attn.rot_emb.inv_freq, model.esm.layers[1].self_attn.rot_emb.inv_freq)


@pytest.mark.parametrize(
    "edit, names",
    [
        (lambda sd: sd.pop("trunk.blocks.1.tri_att_end.mha.linear_g.bias"), "trunk.blocks.1.tri_att_end.mha.linear_g.bias"),
        (lambda sd: sd.__setitem__("trunk.blocks.0.extra.weight", torch.ones(2)), "trunk.blocks.0.extra.weight"),
        (lambda sd: sd.pop("esm.encoder.layer.1.attention.self.query.weight"), "layers.1.self_attn.q_proj.weight"),
        (lambda sd: sd.__setitem__("ptm_head.weight", torch.ones(64, 31)), "ptm_head.weight"),
    ],
    ids=["missing", "unexpected", "missing_lm", "wrong_shape"],
)
def test_mismatched_checkpoint_names_file_and_key(saved, tmp_path, edit, names):
    target = _copy_dir(saved[0], tmp_path / "bad")
    path = _rewrite(target, edit)
    with pytest.raises(CheckpointError) as err:
        ESMFold.from_pretrained(target)
    assert str(path) in str(err.value) and names in str(err.value)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_truncated_file_names_the_file(saved, tmp_path, fmt):
    target = _copy_dir(saved[0], tmp_path / "trunc")
    path = target / "model.safetensors"
    if fmt == "bin":
        torch.save(dict(load_file(str(path))), target / "pytorch_model.bin")
        path.unlink()
        path = target / "pytorch_model.bin"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        ESMFold.from_pretrained(target)


def _fair_esm_files(saved, directory, cfg_kind: str, esm_name: str):
    """Write fair-esm's layouts: esmfold ``.pt`` without the LM, and the ESM-2 ``.pt`` in its raw layout."""
    hf_dir, model, _ = saved
    sd = load_file(str(hf_dir / "model.safetensors"))
    folding = {k: v for k, v in sd.items() if not k.startswith("esm.")}
    trunk = {k: v for k, v in REDUCED_TRUNK.items() if k != "structure_module"}
    top = dict(esm_type="esm2_8M_270K", fp16_esm=True, use_esm_attn_map=False, esm_ablate_pairwise=False,
               esm_ablate_sequence=False, esm_input_dropout=0.0, embed_aa=True, bypass_lm=False,
               lddt_head_hid_dim=128)
    if cfg_kind == "namespace":
        cfg = {"model": argparse.Namespace(**top, trunk=argparse.Namespace(**trunk,
                                                                          structure_module=argparse.Namespace(**FAIR_SM)))}
    else:
        cfg = {"model": dict(top, trunk=dict(trunk, _name="FoldingTrunkConfig", structure_module=dict(FAIR_SM)))}
    if cfg_kind == "omegaconf":  # as the released esmfold_3B_v1.pt pickles it: the whole cfg a DictConfig
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(cfg)
    esmfold_path = directory / "esmfold_test_v1.pt"
    torch.save({"cfg": cfg, "model": folding}, esmfold_path)
    lm = {"encoder.sentence_encoder." + k: v.clone() for k, v in model.esm.state_dict().items()}
    c = LM_SIZES["encoder_embed_dim"]
    lm.update({"encoder.lm_head.dense.weight": torch.randn(c, c), "encoder.lm_head.dense.bias": torch.randn(c),
               "encoder.lm_head.layer_norm.weight": torch.randn(c), "encoder.lm_head.layer_norm.bias": torch.randn(c),
               "encoder.lm_head.weight": lm["encoder.sentence_encoder.embed_tokens.weight"].clone(),
               "encoder.lm_head.bias": torch.randn(33)})
    esm_path = directory / esm_name
    torch.save({"cfg": {"model": argparse.Namespace(**LM_SIZES)}, "model": lm}, esm_path)
    return esmfold_path, esm_path


@pytest.mark.parametrize("cfg_kind", ["dict", "namespace", "omegaconf"])
def test_fair_esm_layout_with_separate_esm2(saved, tmp_path, cfg_kind):
    esmfold_path, esm_path = _fair_esm_files(saved, tmp_path, cfg_kind, "lm.pt")
    model = ESMFold.from_pretrained(esmfold_path, backend="torch", esm_path=esm_path)
    assert model.config.trunk.structure_module.num_heads_ipa == 4
    _same_outputs(model, saved[2])


def test_omegaconf_config_without_omegaconf_says_what_to_install(saved, tmp_path, monkeypatch):
    from esmfold_fast.checkpoints import files

    esmfold_path, esm_path = _fair_esm_files(saved, tmp_path, "omegaconf", "lm.pt")

    def missing():
        raise ImportError("No module named 'omegaconf'")

    monkeypatch.setattr(files, "_omegaconf_globals", missing)
    with pytest.raises(CheckpointError) as err:
        ESMFold.from_pretrained(esmfold_path, esm_path=esm_path)
    message = str(err.value)
    assert str(esmfold_path) in message and "pip install" in message and "omegaconf" in message
    assert "\n" not in message


def test_fair_esm_finds_its_esm2_beside_the_file_or_says_where(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    esmfold_path, esm_path = _fair_esm_files(saved, tmp_path, "dict", "esm2_t6_8M_UR50D.pt")
    _same_outputs(ESMFold.from_pretrained(esmfold_path, backend="torch"), saved[2])
    esm_path.unlink()
    with pytest.raises(CheckpointError, match="esm2_t6_8M_UR50D.pt") as err:
        ESMFold.from_pretrained(esmfold_path)
    assert str(esmfold_path) in str(err.value)


def test_hub_name_from_local_cache(saved, hf_cache):
    cache = hf_cache
    with pytest.raises(CheckpointError, match="facebook/esmfold_v1"):
        ESMFold.from_pretrained("facebook/esmfold_v1")
    repo = cache / "models--facebook--esmfold_v1"
    shutil.copytree(saved[0], repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    _same_outputs(ESMFold.from_pretrained("facebook/esmfold_v1", backend="torch"), saved[2])


def test_config_json_must_be_a_folding_model(saved, tmp_path):
    target = _copy_dir(saved[0], tmp_path / "notfold")
    config = json.loads((target / "config.json").read_text())
    config["is_folding_model"] = False
    config.pop("esmfold_config")
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json"):
        ESMFold.from_pretrained(target)


def test_transformers_chunk_size_is_not_our_cap(saved, tmp_path):
    """transformers writes trunk.chunk_size = 128 for its own attention; ours is planned from memory, so a
    loaded model has no cap (set_chunk_size sets one)."""
    directory, model, _ = saved
    config = json.loads((directory / "config.json").read_text())
    assert config["esmfold_config"]["trunk"]["chunk_size"] == 128
    assert model.trunk.chunk_size is None and model.config.trunk.chunk_size is None
    fresh = ESMFold.from_pretrained(directory, backend="torch")
    fresh.set_chunk_size(16)
    assert fresh.trunk.chunk_size == 16


def test_from_config_named_sizes():
    tiny = ESMFold.from_config("tiny", backend="torch", seed=1)
    # no weight matrix is left at zero (residual outputs and gates included); LayerNorm biases may be 0
    assert all(p.abs().sum() > 0 for p in tiny.parameters() if p.dim() >= 2)
    assert tiny.trunk.blocks[0].tri_mul_out.linear_z.bias.abs().sum() > 0
    out = tiny.infer("ACDEFGHIKLMNPQRSTVWY", num_recycles=0)
    assert torch.isfinite(out["positions"]).all() and out["positions"][-1].std() > 0.5
    again = ESMFold.from_config("tiny", backend="torch", seed=1).infer("ACDEFGHIKLMNPQRSTVWY", num_recycles=0)
    torch.testing.assert_close(out["positions"], again["positions"], rtol=0, atol=0)
    v1_8m = ESMFold.from_config("esmfold_v1_8M", backend="torch", num_blocks=1)
    assert v1_8m.config.trunk.sequence_state_dim == 1024 and len(v1_8m.trunk.blocks) == 1
    with pytest.raises(ValueError):
        ESMFold.from_config("tiny", backend="nonsense")


def test_loading_builds_on_meta_without_torchs_python_decompositions(saved):
    """Loading builds the model on the meta device, then gives it storage. Random init or ``empty_like`` on meta
    tensors would run torch's Python decompositions, whose import (torch._dynamo, sympy) costs ~70 MB of RSS."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from esmfold_fast import ESMFold\n"
        f"model = ESMFold.from_pretrained({str(saved[0])!r}, backend='torch')\n"
        f"out = model.infer({SEQS[0]!r}, num_recycles=0)\n"
        "torch.save(out['positions'], sys.argv[1])\n"
        "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))\n"
    )
    out = saved[0].parent / "meta_positions.pt"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    # buffers refilled after materialising: the same fold as the in-process model's
    expected = saved[1].infer(SEQS[0], num_recycles=0)["positions"]
    assert torch.equal(torch.load(out, weights_only=True), expected)


def test_an_lm_that_runs_in_fp16_on_cuda_is_built_in_fp16(monkeypatch):
    """The dtype plan of a CUDA load, checked on the meta device: the 3B LM is never held in fp32 on the GPU."""
    from esmfold_fast.checkpoints import esmfold as loader
    from esmfold_fast.checkpoints import files
    from esmfold_fast.config import named_config

    def meta_only(make, device, dtype, before_materialize=None):
        with files.default_dtype(dtype or torch.float32), torch.device("meta"):
            model = make()
        before_materialize(model)
        return model

    monkeypatch.setattr(loader, "build_empty", meta_only)
    plan = {dev: loader._empty_esmfold(ESMFold, named_config("tiny"), dev, torch.float32) for dev in ("cuda", "cpu")}
    assert {p.dtype for p in plan["cuda"].esm.parameters()} == {torch.float16}
    assert {p.dtype for p in plan["cpu"].esm.parameters()} == {torch.float32}
    for model in plan.values():  # the folding head stays float32 either way
        assert model.trunk.blocks[0].tri_mul_out.linear_z.weight.dtype == torch.float32
        assert model.esm.layers[0].self_attn.rot_emb.inv_freq.dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# lean loading: peak resident memory of a load, measured in a fresh process
# ----------------------------------------------------------------------------------------------

# Big enough that fixed costs do not dominate: an ESM-2 LM of 4 x 1280 (esm2_t33_650M's width), 315 MB in fp32.
BIG_LM = dict(num_layers=4, embed_dim=1280, attention_heads=20)
PEAK_RATIO = 1.15

_MEASURE = """
import json, sys
import torch
import esmfold_fast
from esmfold_fast import ESM2, ESMFold

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

def load(kind, path, dtype, esm_path=None):
    if kind == "esm2":
        return ESM2.from_pretrained(path, dtype=getattr(torch, dtype))
    return ESMFold.from_pretrained(path, backend="torch", dtype=getattr(torch, dtype), esm_path=esm_path)

warmup, spec, fp16_lm = json.loads(sys.argv[1])
if fp16_lm:  # the dtype layout of a CUDA load (the LM in fp16), on the CPU
    ESMFold.lm_in_fp16 = lambda self, device, dtype=None: self.config.fp16_esm
cold = status("VmRSS")  # after importing torch and the package
load(*warmup)  # a tiny checkpoint of the same layout: torch's code pages and lazy state, then freed
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
warm = status("VmHWM")
model = load(*spec)
peak = status("VmHWM")
size = sum({t.data_ptr(): t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]}.values())
dtypes = sorted({str(p.dtype) for p in model.parameters()})
print(json.dumps({"cold": cold, "warm": warm, "peak": peak, "model": size, "dtypes": dtypes}))
"""


def _esm_config(num_layers, embed_dim, attention_heads, **folding):
    """A transformers ``EsmConfig`` of an ESM-2 of these sizes (``folding``: an ``EsmForProteinFolding``'s)."""
    from transformers import EsmConfig

    from esmfold_fast.alphabet import Alphabet

    return EsmConfig(
        vocab_size=33, position_embedding_type="rotary", token_dropout=True, pad_token_id=1, mask_token_id=32,
        layer_norm_eps=1e-5, emb_layer_norm_before=False, vocab_list=Alphabet().all_toks,
        max_position_embeddings=1026, hidden_size=embed_dim, num_hidden_layers=num_layers,
        num_attention_heads=attention_heads, intermediate_size=4 * embed_dim, **folding,
    )  # fmt: skip


def _fair_esm_lm_cfg(sizes):
    return argparse.Namespace(encoder_layers=sizes["num_layers"], encoder_embed_dim=sizes["embed_dim"],
                              encoder_attention_heads=sizes["attention_heads"], token_dropout=True)  # fmt: skip


def _write_lm_checkpoints(directory, sizes):
    """The same random ESM-2 in transformers' ``EsmForMaskedLM`` safetensors layout and fair-esm's ``.pt``."""
    from transformers import EsmForMaskedLM

    torch.manual_seed(0)
    hf = EsmForMaskedLM(_esm_config(**sizes)).eval()
    hf.save_pretrained(directory / "hf")
    ours = ESM2.from_pretrained(directory / "hf")
    del hf
    raw = {("encoder." if k.startswith("lm_head.") else "encoder.sentence_encoder.") + k: v
           for k, v in ours.state_dict().items() if not k.startswith("contact_head.")}  # fmt: skip
    torch.save({"cfg": {"model": _fair_esm_lm_cfg(sizes)}, "model": raw}, directory / "esm2.pt")
    return directory / "hf", directory / "esm2.pt"


def _write_esmfold_checkpoints(directory, sizes):
    """An ESMFold with a big LM stored in fp32 (config ``fp16_esm``: it runs in fp16 on CUDA) as a
    transformers directory, and as fair-esm's pair (the trunk's ``.pt`` + the ESM-2 ``.pt``)."""
    from transformers import EsmForProteinFolding

    config = _esm_config(**sizes, is_folding_model=True, esmfold_config={"trunk": REDUCED_TRUNK, "fp16_esm": False})
    torch.manual_seed(0)
    hf = EsmForProteinFolding(config).eval()  # fp16_esm=False: transformers keeps the LM in fp32 to save it
    hf.save_pretrained(directory / "fold")
    del hf
    cfg_path = directory / "fold" / "config.json"
    saved_config = json.loads(cfg_path.read_text())
    saved_config["esmfold_config"]["fp16_esm"] = True
    cfg_path.write_text(json.dumps(saved_config))
    sd = load_file(str(directory / "fold" / "model.safetensors"))
    trunk = {k: v for k, v in sd.items() if not k.startswith("esm.")}
    top = dict(esm_type="esm2_650M", fp16_esm=True, embed_aa=True, bypass_lm=False, lddt_head_hid_dim=128)
    fair_trunk = {k: v for k, v in REDUCED_TRUNK.items() if k != "structure_module"}
    cfg = {"model": dict(top, trunk=dict(fair_trunk, structure_module=dict(FAIR_SM)))}
    torch.save({"cfg": cfg, "model": trunk}, directory / "esmfold.pt")
    ours = ESMFold.from_pretrained(directory / "fold", backend="torch")
    raw = {"encoder.sentence_encoder." + k: v for k, v in ours.esm.state_dict().items()}
    torch.save({"cfg": {"model": _fair_esm_lm_cfg(sizes)}, "model": raw}, directory / "esmfold_lm.pt")
    return directory / "fold", directory / "esmfold.pt", directory / "esmfold_lm.pt"


@pytest.fixture(scope="module")
def lean_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("lean")
    tiny, big = root / "tiny", root / "big"
    tiny.mkdir()
    big.mkdir()
    sizes = {"tiny": dict(num_layers=1, embed_dim=48, attention_heads=2), "big": BIG_LM}
    paths = {}
    for name, directory in (("tiny", tiny), ("big", big)):
        (directory / "lm").mkdir()
        (directory / "fold").mkdir()
        hf_lm, fair_lm = _write_lm_checkpoints(directory / "lm", sizes[name])
        hf_fold, fair_fold, fair_fold_lm = _write_esmfold_checkpoints(directory / "fold", sizes[name])
        paths[name] = {  # layout -> (model kind, path, esm_path)
            "esm2_safetensors": ("esm2", str(hf_lm), None), "esm2_pt": ("esm2", str(fair_lm), None),
            "esmfold_safetensors": ("esmfold", str(hf_fold), None),
            "esmfold_pt": ("esmfold", str(fair_fold), str(fair_fold_lm)),
        }  # fmt: skip
    return paths


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS is read from Linux's /proc")
@pytest.mark.parametrize(
    "layout, dtype, fp16_lm",
    [
        ("esm2_safetensors", "float32", False),
        ("esm2_pt", "float32", False),
        ("esm2_safetensors", "float16", False),
        ("esm2_pt", "bfloat16", False),
        ("esmfold_safetensors", "float32", True),
        ("esmfold_pt", "float32", True),
    ],
)
def test_peak_memory_of_a_load_is_close_to_the_model(lean_checkpoints, layout, dtype, fp16_lm):
    """The file is mapped and copied tensor by tensor into a model built in its final dtypes, the pages of
    each copied piece given back: a load's peak resident memory stays within 1.15x of the loaded model,
    also when that model is half the size of the fp32 checkpoint (an fp16 LM, or ``dtype=float16``)."""
    import subprocess
    import sys

    def spec(name):
        kind, path, esm_path = lean_checkpoints[name][layout]
        return [kind, path, dtype, esm_path]

    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps([spec("tiny"), spec("big"), fp16_lm])],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    warm_ratio = (got["peak"] - got["warm"]) / got["model"]
    cold_ratio = (got["peak"] - got["cold"]) / got["model"]
    print(f"{layout} {dtype} fp16_lm={fp16_lm}: model {got['model'] / 2**20:.0f} MiB {got['dtypes']}, "
          f"peak - baseline = {warm_ratio:.3f}x the model ({cold_ratio:.3f}x counting torch's first-use costs)")
    if fp16_lm:
        assert "torch.float16" in got["dtypes"]
    assert warm_ratio <= PEAK_RATIO


def test_sharded_safetensors_load_the_same(saved, tmp_path):
    """Each shard is its own mapping; tensors from all of them land in the one model."""
    hf_folding_model(REDUCED_TRUNK, seed=21).save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    _same_outputs(ESMFold.from_pretrained(tmp_path / "sharded", backend="torch"), saved[2])


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip_mapped", "legacy_read_whole"])
def test_fair_esm_pt_with_shared_storage_loads_exactly(tmp_path, zipfile):
    """fair-esm saves its tied LM head and token embedding as one storage: the pages a copy gives back are read
    again for the tensor sharing them. A legacy (non-zip) file cannot be mapped and is read whole."""
    import esm

    alphabet = esm.Alphabet.from_architecture("ESM-1b")
    peer = esm.model.esm2.ESM2(num_layers=2, embed_dim=48, attention_heads=2, alphabet=alphabet)
    raw = {("encoder." if k.startswith("lm_head.") else "encoder.sentence_encoder.") + k: v
           for k, v in peer.state_dict().items() if not k.startswith("contact_head.")}  # fmt: skip
    assert raw["encoder.lm_head.weight"].data_ptr() == raw["encoder.sentence_encoder.embed_tokens.weight"].data_ptr()
    cfg = argparse.Namespace(encoder_layers=2, encoder_embed_dim=48, encoder_attention_heads=2, token_dropout=True)
    path = tmp_path / "esm2_tied.pt"
    torch.save({"cfg": {"model": cfg}, "model": raw}, path, _use_new_zipfile_serialization=zipfile)
    ours = ESM2.from_pretrained(path).state_dict()
    for key, value in peer.state_dict().items():
        if not key.startswith("contact_head."):
            assert torch.equal(ours[key], value), key


def test_safetensors_reader_maps_aligned_tensors_and_copies_unaligned_ones(tmp_path):
    """safetensors' writers align each tensor, the format does not promise it: an unaligned one is copied
    out of the mapping (and its anonymous pages are never handed back)."""
    import struct

    from esmfold_fast.checkpoints.files import load_state_dict_file

    weights = {"w": torch.randn(3, 5), "h": torch.randn(7).half(), "i": torch.arange(4)}
    save_file(weights, str(tmp_path / "aligned.safetensors"))
    for name, stored in load_state_dict_file(tmp_path / "aligned.safetensors").items():
        assert stored.mapped and torch.equal(stored.tensor, weights[name])
    header = json.dumps({"w": {"dtype": "F32", "shape": [3, 5], "data_offsets": [0, 60]}})
    header += " " * ((1 - len(header)) % 4)  # 8 + len(header) = 1 (mod 4): the data start is unaligned
    (tmp_path / "unaligned.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header.encode() + weights["w"].numpy().tobytes()
    )
    stored = load_state_dict_file(tmp_path / "unaligned.safetensors")["w"]
    target = torch.empty(3, 5, dtype=torch.float64)
    stored.copy_to(target)
    assert not stored.mapped and torch.equal(target, weights["w"].double())


def test_only_tensors_inside_the_files_mapping_count_as_mapped(tmp_path):
    """Pages are handed back only for views of the file's mapping; anonymous memory would read back as zeros."""
    from esmfold_fast.checkpoints.files import load_state_dict_file, stored_tensors

    weights = {"w": torch.randn(64, 64)}
    torch.save(weights, tmp_path / "zip.bin")
    assert load_state_dict_file(tmp_path / "zip.bin")["w"].mapped
    torch.save(weights, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    assert not load_state_dict_file(tmp_path / "legacy.bin")["w"].mapped
    # told "mapped" for tensors that are not views of the file (a torch that copied them): not trusted
    assert not stored_tensors(weights, True, tmp_path / "zip.bin")["w"].mapped
