"""Loading ESMFold checkpoints: transformers directories (safetensors / bin, both rotary layouts), fair-esm's
esmfold + ESM-2 ``.pt`` pair, the local hub cache, and the errors a bad checkpoint must raise."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from _esmfold_hf import REDUCED_TRUNK, hf_folding_model, save_hf
from esmfold_fast import CheckpointError, ESMFold

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
    top = dict(esm_type="esm2_8M", fp16_esm=True, use_esm_attn_map=False, esm_ablate_pairwise=False,
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
