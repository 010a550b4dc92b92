"""fair-esm-style entry points (``esmfold_fast.pretrained``): the name table against fair-esm's own functions,
loading from the torch hub cache and from the Hugging Face cache (outputs equal to the fair-esm / transformers
peer on the same random weights), the error when nothing is there, and ``download=True`` with the
downloaders replaced by fakes that serve tiny random checkpoints. No test touches the network: every
test runs with the real downloaders replaced by ones that fail it (the ``offline`` fixture)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import fnmatch
import inspect
import re
import shutil
import sys
import types
from pathlib import Path

import esm
import huggingface_hub
import pytest
import torch

from _esmfold_hf import REDUCED_TRUNK, encode, hf_folding_model, save_hf
from _util import max_rel_err, randomize_
from esmfold_fast import pretrained
from esmfold_fast.alphabet import Alphabet
from esmfold_fast.checkpoints import CheckpointError
from esmfold_fast.config import ESMFoldConfig
from esmfold_fast.checkpoints.esm2 import esm2_state_dict_from_transformers
from esmfold_fast.checkpoints.esmfold import _FAIR_ESM_SM_NAMES, FAIR_ESM_LM_FOR_ESM_TYPE, esm2_name_for
from esmfold_fast.esm2 import ESM2
from esmfold_fast.esmfold import ESMFold

# fair-esm's structure-module-only entry points: in its repository (esm/pretrained.py) after the 2.0.0
# release, so not in the installed wheel; each loads the fair-esm file of its own name.
FAIR_ESM_AFTER_2_0_0 = [
    f"esmfold_structure_module_only_{size}"
    for size in ("8M", "8M_270K", "35M", "35M_270K", "150M", "150M_270K", "650M", "650M_270K", "3B", "3B_270K", "15B")
]
# fair-esm's esm_registry (esm/esmfold/v1/esmfold.py in its repository): the LM each esm_type loads.
FAIR_ESM_REGISTRY = {
    "esm2_8M": "esm2_t6_8M_UR50D_500K",
    "esm2_8M_270K": "esm2_t6_8M_UR50D",
    "esm2_35M": "esm2_t12_35M_UR50D_500K",
    "esm2_35M_270K": "esm2_t12_35M_UR50D",
    "esm2_150M": "esm2_t30_150M_UR50D_500K",
    "esm2_150M_270K": "esm2_t30_150M_UR50D_270K",
    "esm2_650M": "esm2_t33_650M_UR50D",
    "esm2_650M_270K": "esm2_t33_650M_270K_UR50D",
    "esm2_3B": "esm2_t36_3B_UR50D",
    "esm2_3B_270K": "esm2_t36_3B_UR50D_500K",
    "esm2_15B": "esm2_t48_15B_UR50D",
}
# The Hugging Face repos (transformers layout) of the models that are on the hub.
HUB_REPOS = {**{n: f"facebook/{n}" for n in pretrained.PRETRAINED if n.startswith("esm2_")},
             "esmfold_v1": "facebook/esmfold_v1"}  # fmt: skip
LM_CFG = dict(encoder_layers=2, encoder_embed_dim=48, encoder_attention_heads=2, encoder_ffn_embed_dim=192,
              token_dropout=True)  # fmt: skip
SEQ = "MKTAYIAKQRQISFVKSHF"


def _fair_esm_entry_points() -> list[str]:
    """fair-esm's own ESM-2 and ESMFold entry points: the installed ``esm.pretrained``'s, and the later ones."""
    names = [n for n, f in inspect.getmembers(esm.pretrained, inspect.isfunction) if re.match(r"esm2_|esmfold_", n)]
    return sorted(set(names) | set(FAIR_ESM_AFTER_2_0_0))


# ----------------------------------------------------------------------------------------------
# caches, fakes and peers
# ----------------------------------------------------------------------------------------------


class Forbidden:
    """A downloader that must not be called: records the call and fails the test."""

    def __init__(self, what: str):
        self.what, self.calls = what, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        raise AssertionError(f"{self.what} called without download=True: {args} {kwargs}")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every test: the real downloaders fail it, so the default path is seen never to download."""
    fakes = {name: Forbidden(name) for name in ("download_url_to_file", "snapshot_download", "hf_hub_download")}
    monkeypatch.setattr(torch.hub, "download_url_to_file", fakes["download_url_to_file"])
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fakes["snapshot_download"])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fakes["hf_hub_download"])
    return fakes


@pytest.fixture
def caches(tmp_path, monkeypatch, hf_cache):
    """Empty caches: the torch hub checkpoint directory (``TORCH_HOME``) and the Hugging Face cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub_dir = tmp_path / "torch" / "hub" / "checkpoints"
    assert pretrained.torch_hub_checkpoint_dir() == hub_dir
    hub_dir.mkdir(parents=True)
    return hub_dir, hf_cache


def _into_hf_cache(cache: Path, repo: str, source: Path, patterns=None, revision: str = "0123abc") -> Path:
    """Lay ``source``'s files (those matching ``patterns``) out as huggingface_hub does: a snapshot and refs/main."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if patterns is None or any(fnmatch.fnmatch(f.name, p) for p in patterns):
            shutil.copy(f, snapshot / f.name)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot


class FakeHub:
    """``huggingface_hub.snapshot_download`` serving local directories into the (test's) Hugging Face cache,
    honouring ``allow_patterns`` as the real one does."""

    def __init__(self, cache: Path, repos: dict[str, Path]):
        self.cache, self.repos, self.calls = cache, repos, []

    def __call__(self, repo_id, *, revision=None, allow_patterns=None, **kwargs):
        self.calls.append((repo_id, tuple(allow_patterns or ())))
        if repo_id not in self.repos:
            raise huggingface_hub.errors.RepositoryNotFoundError(f"404 {repo_id}")
        return str(_into_hf_cache(self.cache, repo_id, self.repos[repo_id], allow_patterns))


class FakeServer:
    """``torch.hub.download_url_to_file`` serving the files of a local directory by their URL's file name."""

    def __init__(self, directory: Path):
        self.directory, self.urls = directory, []

    def __call__(self, url, dst, hash_prefix=None, progress=True):
        self.urls.append(url)
        source = self.directory / url.rsplit("/", 1)[-1]
        if not source.is_file():
            raise OSError(f"HTTP Error 404: Not Found ({url})")
        shutil.copy(source, dst)


def _fair_esm2_model(seed: int, heads: int = 3):
    model = esm.model.esm2.ESM2(num_layers=2, embed_dim=48, attention_heads=heads, alphabet="ESM-1b", token_dropout=True)
    return randomize_(model, seed=seed).eval()


def _write_fair_esm2(model, directory: Path, name: str) -> Path:
    """fair-esm's raw hub layout: ``<name>.pt`` and ``<name>-contact-regression.pt`` (float32 here)."""
    raw, regression = {}, {}
    for key, value in model.state_dict().items():
        if key.startswith("contact_head."):
            regression[key] = value
        else:
            raw[("encoder." if key.startswith("lm_head.") else "encoder.sentence_encoder.") + key] = value
    cfg = argparse.Namespace(encoder_layers=model.num_layers, encoder_embed_dim=model.embed_dim,
                             encoder_ffn_embed_dim=4 * model.embed_dim, encoder_attention_heads=model.attention_heads,
                             token_dropout=model.token_dropout, arch="ESM2")  # fmt: skip
    torch.save({"cfg": {"model": cfg}, "model": raw}, directory / f"{name}.pt")
    torch.save({"model": regression}, directory / f"{name}-contact-regression.pt")
    return directory / f"{name}.pt"


def _write_fair_esmfold(hf_model, directory: Path, name: str, esm_type: str, lm_name: str) -> None:
    """fair-esm's ESMFold pair from a transformers peer: ``<name>.pt`` (folding weights, config with OpenFold
    structure-module names) and the ESM-2 ``<lm_name>.pt`` its ``esm_type`` loads, in fair-esm's raw layout."""
    sd = hf_model.state_dict()
    config = ESMFoldConfig.from_dict(hf_model.config.esmfold_config.to_dict())  # transformers' fields only
    trunk = dataclasses.asdict(config.trunk)
    fair_name = {ours: fair for fair, ours in _FAIR_ESM_SM_NAMES.items()}
    sm = {fair_name.get(k, k): v for k, v in trunk.pop("structure_module").items()}
    cfg = dict(esm_type=esm_type, fp16_esm=True, use_esm_attn_map=False, esm_ablate_pairwise=False,
               esm_ablate_sequence=False, esm_input_dropout=0.0, embed_aa=True, bypass_lm=False,
               lddt_head_hid_dim=128, trunk=dict(trunk, _name="FoldingTrunkConfig", structure_module=sm))  # fmt: skip
    folding = {k: v for k, v in sd.items() if not k.startswith("esm.")}
    torch.save({"cfg": {"model": cfg}, "model": folding}, directory / f"{name}.pt")
    lm = esm2_state_dict_from_transformers({k: v for k, v in sd.items() if k.startswith("esm.")}, "esm.", lm_head=False)
    raw = {"encoder.sentence_encoder." + k: v for k, v in lm.items() if not k.startswith("contact_head.")}
    torch.save({"cfg": {"model": argparse.Namespace(**LM_CFG)}, "model": raw}, directory / f"{lm_name}.pt")


def _fold_peer(num_blocks: int, seed: int, directory: Path):
    trunk = copy.deepcopy(REDUCED_TRUNK)
    trunk["num_blocks"] = num_blocks
    hf = hf_folding_model(trunk, seed=seed)
    save_hf(hf, directory)
    with torch.no_grad():
        aatype, mask = encode([SEQ])
        ref = hf.double()(input_ids=aatype, attention_mask=mask, num_recycles=0)
    return hf, directory, ref


@pytest.fixture(scope="module")
def sm_only_peer(tmp_path_factory):
    """A structure-module-only (0 folding blocks) transformers peer, its directory and its float64 output."""
    return _fold_peer(0, 31, tmp_path_factory.mktemp("sm_only"))


@pytest.fixture(scope="module")
def fold_peer(tmp_path_factory):
    return _fold_peer(1, 32, tmp_path_factory.mktemp("fold"))


def _assert_fold_matches(model: ESMFold, ref: dict) -> None:
    assert isinstance(model, ESMFold) and not model.training
    out = model.infer(SEQ, num_recycles=0)
    assert ref["positions"][-1].abs().mean() > 1.0  # not a degenerate structure
    assert (out["positions"][-1] - ref["positions"][-1]).abs().max() < 1e-4
    assert (out["plddt"] - 100 * ref["plddt"]).abs().max() < 1e-3


@pytest.fixture(scope="module")
def hf_esm2(tmp_path_factory):
    """A random transformers ``EsmForMaskedLM`` (eager attention) and its save_pretrained directory."""
    from transformers import EsmConfig, EsmForMaskedLM

    config = EsmConfig(vocab_size=33, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                       intermediate_size=192, position_embedding_type="rotary", token_dropout=True, pad_token_id=1,
                       mask_token_id=32, layer_norm_eps=1e-5, emb_layer_norm_before=False,
                       vocab_list=Alphabet().all_toks)  # fmt: skip
    model = randomize_(EsmForMaskedLM(config), seed=41)
    directory = tmp_path_factory.mktemp("esm2_hf")
    model.save_pretrained(directory)
    return EsmForMaskedLM.from_pretrained(directory, attn_implementation="eager").eval(), directory


def _tokens() -> torch.Tensor:
    return Alphabet().get_batch_converter()([("a", SEQ), ("b", SEQ[:7])])[2]


def _assert_esm2_matches_hf(model: ESM2, hf) -> None:
    tokens = _tokens()
    with torch.no_grad():
        ours = model(tokens)["logits"]
        ref = hf(tokens, attention_mask=tokens.ne(1)).logits
    assert max_rel_err(ours, ref) < 1e-5


def _bin_only(directory: Path, target: Path) -> Path:
    """A copy of a save_pretrained directory with ``pytorch_model.bin`` instead of safetensors."""
    from safetensors.torch import load_file

    target.mkdir()
    shutil.copy(directory / "config.json", target / "config.json")
    torch.save(dict(load_file(str(directory / "model.safetensors"))), target / "pytorch_model.bin")
    return target


# ----------------------------------------------------------------------------------------------
# the name table
# ----------------------------------------------------------------------------------------------


def test_fair_esm_has_the_names_we_expect():
    """The parametrised checks below take fair-esm's names from the installed package: it must have them."""
    names = _fair_esm_entry_points()
    assert {"esm2_t6_8M_UR50D", "esm2_t48_15B_UR50D", "esmfold_v0", "esmfold_v1"} <= set(names)
    assert set(names) == set(pretrained.PRETRAINED)


def _fair_esm_file_of(name: str, monkeypatch) -> str:
    """The checkpoint name fair-esm's own ``esm.pretrained.<name>()`` asks for, recorded instead of loaded.
    fair-esm's ESMFold module needs openfold, so a stand-in takes its place (its loader is never run)."""
    if name in FAIR_ESM_AFTER_2_0_0:
        return name  # fair-esm's repository: _load_model("<its own name>")
    asked = []
    if name.startswith("esm2_"):
        monkeypatch.setattr(esm.pretrained, "load_model_and_alphabet_hub", lambda n: asked.append(n))
    else:
        monkeypatch.setitem(sys.modules, "esm.esmfold.v1.esmfold", types.SimpleNamespace(ESMFold=None))
        monkeypatch.delitem(sys.modules, "esm.esmfold.v1.pretrained", raising=False)
        import esm.esmfold.v1.pretrained as fold_pretrained

        monkeypatch.setattr(fold_pretrained, "_load_model", lambda n: asked.append(n))
    getattr(esm.pretrained, name)()
    return asked[0]


@pytest.mark.parametrize("name", _fair_esm_entry_points())
def test_every_fair_esm_entry_point_maps_to_fair_esms_files(name, monkeypatch):
    function = getattr(pretrained, name)
    entry = pretrained.PRETRAINED[name]
    assert function.__name__ == name and name in pretrained.__all__ and function.__doc__
    assert entry.kind == ("esm2" if name.startswith("esm2_") else "esmfold")
    assert entry.fair_esm_file == _fair_esm_file_of(name, monkeypatch) + ".pt"
    assert entry.hub == HUB_REPOS.get(name)
    assert pretrained.lookup(entry.fair_esm) is pretrained.lookup(name) is entry
    if entry.kind == "esmfold":  # the LM the fair-esm file needs: fair-esm's for the file's esm_type
        size = name.rsplit("structure_module_only_", 1)[-1] if "structure_module_only" in name else "3B"
        assert entry.lm == FAIR_ESM_REGISTRY[f"esm2_{size}"]
        assert entry.fair_esm_files() == [entry.fair_esm_file, f"{entry.lm}.pt"]
        assert "download" in inspect.signature(function).parameters
        assert "esm_path" in inspect.signature(function).parameters
    else:
        assert entry.lm is None and entry.optional_files() == [f"{name}-contact-regression.pt"]
        assert {"download", "lm_head", "fair_esm_half_rotary"} <= set(inspect.signature(function).parameters)


@pytest.mark.parametrize("esm_type", FAIR_ESM_REGISTRY)
def test_esm_type_names_the_lm_fair_esm_loads(esm_type):
    """The loader pairs a fair-esm ESMFold file with the ESM-2 file fair-esm's esm_registry loads."""
    assert esm2_name_for(esm_type) == FAIR_ESM_REGISTRY[esm_type]
    assert FAIR_ESM_LM_FOR_ESM_TYPE == FAIR_ESM_REGISTRY


# ----------------------------------------------------------------------------------------------
# nothing there: one error, and no download
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(pretrained.PRETRAINED))
def test_missing_checkpoint_names_the_files_and_where_they_go(name, caches, offline):
    hub_dir, hf_cache = caches
    entry = pretrained.PRETRAINED[name]
    with pytest.raises(CheckpointError) as err:
        getattr(pretrained, name)()
    message = str(err.value)
    assert "\n" not in message and message.startswith(name)
    assert "download=True" in message and "--download" in message
    assert str(hub_dir) in message and "TORCH_HOME" in message
    for file_name in entry.fair_esm_files():
        assert file_name in message and pretrained._url(file_name) in message
    if entry.hub is not None:
        assert entry.hub in message and str(hf_cache) in message
    else:
        assert "Hugging Face" not in message
    assert not any(f.calls for f in offline.values())


def test_partly_there_says_what_is_missing(sm_only_peer, caches):
    hub_dir, _ = caches
    _write_fair_esmfold(sm_only_peer[0], hub_dir, "esmfold_structure_module_only_8M", "esm2_8M", "lm")
    (hub_dir / "lm.pt").rename(hub_dir / "esm2_t6_8M_UR50D.pt")  # the 270K LM: not the one this model needs
    with pytest.raises(CheckpointError) as err:
        pretrained.esmfold_structure_module_only_8M()
    message = str(err.value)
    assert "put esm2_t6_8M_UR50D_500K.pt (" in message
    assert "esmfold_structure_module_only_8M.pt is there already" in message


# ----------------------------------------------------------------------------------------------
# loading from the caches (the downloaders still forbidden)
# ----------------------------------------------------------------------------------------------


def test_esm2_from_the_torch_hub_cache_matches_fair_esm(caches):
    hub_dir, _ = caches
    ref = _fair_esm2_model(seed=3)
    _write_fair_esm2(ref, hub_dir, "esm2_t6_8M_UR50D")
    model, alphabet = pretrained.esm2_t6_8M_UR50D()
    assert isinstance(model, ESM2) and isinstance(alphabet, Alphabet) and not model.training
    assert alphabet.all_toks == esm.data.Alphabet.from_architecture("ESM-1b").all_toks
    assert model.contacts_unavailable is None
    tokens = _tokens()
    with torch.no_grad():
        ours = model(tokens, repr_layers=[0, 2], return_contacts=True)
        exp = ref(tokens, repr_layers=[0, 2], return_contacts=True)
    for key in ("logits", "contacts"):
        assert max_rel_err(ours[key], exp[key]) < 1e-5, key
    for layer in (0, 2):
        assert max_rel_err(ours["representations"][layer], exp["representations"][layer]) < 1e-5
    # keyword arguments reach from_pretrained
    half, _ = pretrained.esm2_t6_8M_UR50D(dtype=torch.float64, lm_head=False, fair_esm_half_rotary=True)
    assert half.embed_tokens.weight.dtype == torch.float64 and half.lm_head is None and half.fair_esm_half_rotary


def test_esm2_from_the_hf_cache_matches_transformers(hf_esm2, caches):
    hf, directory = hf_esm2
    _, hf_cache = caches
    _into_hf_cache(hf_cache, "facebook/esm2_t12_35M_UR50D", directory)
    assert pretrained.resolve_pretrained("esm2_t12_35M_UR50D") == "facebook/esm2_t12_35M_UR50D"
    model, alphabet = pretrained.esm2_t12_35M_UR50D()
    assert isinstance(alphabet, Alphabet)
    _assert_esm2_matches_hf(model, hf)


def test_esmfold_from_the_hf_cache_matches_transformers(fold_peer, caches):
    _, directory, ref = fold_peer
    _, hf_cache = caches
    _into_hf_cache(hf_cache, "facebook/esmfold_v1", directory)
    _assert_fold_matches(pretrained.esmfold_v1(backend="torch", dtype=torch.float64), ref)


def test_structure_module_only_from_the_torch_hub_cache_matches_transformers(sm_only_peer, caches):
    """0 folding blocks, esm_type esm2_8M: the LM is esm2_t6_8M_UR50D_500K.pt, not the released 8M file
    (a decoy with other weights lies beside it; taking it would change the output)."""
    hf, _, ref = sm_only_peer
    hub_dir, _ = caches
    _write_fair_esmfold(hf, hub_dir, "esmfold_structure_module_only_8M", "esm2_8M", "esm2_t6_8M_UR50D_500K")
    _write_fair_esm2(_fair_esm2_model(seed=9, heads=2), hub_dir, "esm2_t6_8M_UR50D")  # the peer LM's sizes
    model = pretrained.esmfold_structure_module_only_8M(backend="torch", dtype=torch.float64)
    assert model.config.trunk.num_blocks == 0 and len(model.trunk.blocks) == 0
    _assert_fold_matches(model, ref)


def test_torch_hub_cache_is_preferred_and_esm_path_replaces_the_lm(sm_only_peer, fold_peer, caches, tmp_path):
    hub_dir, hf_cache = caches
    _into_hf_cache(hf_cache, "facebook/esmfold_v1", fold_peer[1])  # other weights: must not be taken
    _write_fair_esmfold(sm_only_peer[0], hub_dir, "esmfold_3B_v1", "esm2_3B", "esm2_t36_3B_UR50D")
    assert pretrained.resolve_pretrained("esmfold_v1") == str(hub_dir / "esmfold_3B_v1.pt")
    _assert_fold_matches(pretrained.esmfold_v1(backend="torch", dtype=torch.float64), sm_only_peer[2])
    lm = (hub_dir / "esm2_t36_3B_UR50D.pt").rename(tmp_path / "my_lm.pt")
    assert pretrained.resolve_pretrained("esmfold_v1") == "facebook/esmfold_v1"  # the fair-esm set is incomplete
    model = pretrained.esmfold_v1(backend="torch", dtype=torch.float64, esm_path=lm)
    _assert_fold_matches(model, sm_only_peer[2])


# ----------------------------------------------------------------------------------------------
# download=True (fakes serve the files)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_download_fetches_the_hub_repo_into_the_hf_cache(hf_esm2, caches, monkeypatch, tmp_path, fmt):
    hf, directory = hf_esm2
    _, hf_cache = caches
    served = directory if fmt == "safetensors" else _bin_only(directory, tmp_path / "bin")
    hub = FakeHub(hf_cache, {"facebook/esm2_t6_8M_UR50D": served})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    model, _ = pretrained.esm2_t6_8M_UR50D(download=True)
    _assert_esm2_matches_hf(model, hf)
    # one weight format only: safetensors asked for first, pytorch_model.bin only when the repo has none
    assert [r for r, _ in hub.calls] == ["facebook/esm2_t6_8M_UR50D"] * (1 if fmt == "safetensors" else 2)
    assert all("config.json" in patterns for _, patterns in hub.calls)
    assert not any(fnmatch.fnmatch("tf_model.h5", p) for _, patterns in hub.calls for p in patterns)
    # now it is there: neither call downloads again
    pretrained.esm2_t6_8M_UR50D(download=True)
    pretrained.esm2_t6_8M_UR50D()
    assert len(hub.calls) == (1 if fmt == "safetensors" else 2)


def test_download_fetches_fair_esm_files_and_the_lm_the_config_names(sm_only_peer, caches, monkeypatch, tmp_path):
    hf, _, ref = sm_only_peer
    hub_dir, _ = caches
    server = FakeServer(tmp_path / "server")
    server.directory.mkdir()
    _write_fair_esmfold(hf, server.directory, "esmfold_structure_module_only_150M_270K", "esm2_150M_270K",
                        "esm2_t30_150M_UR50D_270K")  # fmt: skip
    monkeypatch.setattr(torch.hub, "download_url_to_file", server)
    model = pretrained.esmfold_structure_module_only_150M_270K(download=True, backend="torch", dtype=torch.float64)
    _assert_fold_matches(model, ref)
    base = "https://dl.fbaipublicfiles.com/fair-esm/models/"
    assert server.urls == [base + "esmfold_structure_module_only_150M_270K.pt", base + "esm2_t30_150M_UR50D_270K.pt"]
    assert sorted(p.name for p in hub_dir.iterdir()) == ["esm2_t30_150M_UR50D_270K.pt",
                                                          "esmfold_structure_module_only_150M_270K.pt"]


def test_download_completes_a_partial_fair_esm_set_from_fair_esm(sm_only_peer, caches, monkeypatch, tmp_path, offline):
    """esmfold_3B_v1.pt there, its LM not: the LM is fetched from fair-esm, not the whole model from the hub."""
    hub_dir, _ = caches
    server = FakeServer(tmp_path / "server")
    server.directory.mkdir()
    _write_fair_esmfold(sm_only_peer[0], server.directory, "esmfold_3B_v1", "esm2_3B", "esm2_t36_3B_UR50D")
    shutil.move(server.directory / "esmfold_3B_v1.pt", hub_dir / "esmfold_3B_v1.pt")
    monkeypatch.setattr(torch.hub, "download_url_to_file", server)
    model = pretrained.esmfold_v1(download=True, backend="torch", dtype=torch.float64)
    _assert_fold_matches(model, sm_only_peer[2])
    assert server.urls == ["https://dl.fbaipublicfiles.com/fair-esm/models/esm2_t36_3B_UR50D.pt"]
    assert not offline["snapshot_download"].calls


def test_download_adds_the_contact_regression_to_a_present_esm2_file(caches, monkeypatch, tmp_path):
    """As fair-esm fetches an ESM-2 model's regression with it, download=True fetches it when only the .pt is
    there (without download the model loads, contacts unavailable)."""
    hub_dir, _ = caches
    ref = _fair_esm2_model(seed=5)
    server = FakeServer(tmp_path / "server")
    server.directory.mkdir()
    _write_fair_esm2(ref, server.directory, "esm2_t6_8M_UR50D")
    shutil.copy(server.directory / "esm2_t6_8M_UR50D.pt", hub_dir)
    monkeypatch.setattr(torch.hub, "download_url_to_file", server)
    assert pretrained.esm2_t6_8M_UR50D()[0].contacts_unavailable is not None
    assert server.urls == []
    model, _ = pretrained.esm2_t6_8M_UR50D(download=True)
    assert server.urls == ["https://dl.fbaipublicfiles.com/fair-esm/regression/esm2_t6_8M_UR50D-contact-regression.pt"]
    tokens = _tokens()
    with torch.no_grad():
        assert max_rel_err(model(tokens, return_contacts=True)["contacts"], ref(tokens, return_contacts=True)["contacts"]) < 1e-5
    pretrained.esm2_t6_8M_UR50D(download=True)
    assert len(server.urls) == 1


def test_a_failed_download_is_one_checkpoint_error(caches, monkeypatch, tmp_path):
    server = FakeServer(tmp_path / "empty")  # serves nothing: every URL is a 404
    monkeypatch.setattr(torch.hub, "download_url_to_file", server)
    with pytest.raises(CheckpointError, match=r"esmfold_3B_v0\.pt: download to .* failed \(HTTP Error 404") as err:
        pretrained.esmfold_v0(download=True)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(caches[1], {}))
    with pytest.raises(CheckpointError, match="facebook/esmfold_v1: download from the Hugging Face hub failed"):
        pretrained.esmfold_v1(download=True)


# ----------------------------------------------------------------------------------------------
# ensure_local (the CLI's --download)
# ----------------------------------------------------------------------------------------------


def test_ensure_local_for_the_cli(hf_esm2, fold_peer, caches, monkeypatch, tmp_path, offline):
    _, hf_cache = caches
    # local paths and names already cached: returned as they are, nothing fetched
    assert pretrained.ensure_local(str(fold_peer[1]), "esmfold") == str(fold_peer[1])
    assert pretrained.ensure_local("missing/esmfold.pt", "esmfold") == "missing/esmfold.pt"
    # a pretrained name (entry point, fair-esm stem or hub repo) is fetched, the hub repo preferred
    hub = FakeHub(hf_cache, {"facebook/esmfold_v1": fold_peer[1], "someone/esm2": hf_esm2[1]})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    for name in ("esmfold_v1", "esmfold_3B_v1", "facebook/esmfold_v1"):
        assert pretrained.ensure_local(name, "esmfold") == "facebook/esmfold_v1"
    assert len(hub.calls) == 1
    _assert_fold_matches(ESMFold.from_pretrained("facebook/esmfold_v1", backend="torch", dtype=torch.float64),
                         fold_peer[2])  # fmt: skip
    # any other hub repo is fetched as one
    assert pretrained.ensure_local("someone/esm2", "esm2") == "someone/esm2"
    _assert_esm2_matches_hf(ESM2.from_pretrained("someone/esm2"), hf_esm2[0])
    with pytest.raises(CheckpointError, match="is an ESM-2 model, not ESMFold"):
        pretrained.ensure_local("esm2_t6_8M_UR50D", "esmfold")
    with pytest.raises(CheckpointError, match="not a file, a hub repo .*esm2_t6_8M_UR50D") as err:
        pretrained.ensure_local("esm2_t99_1T", "esm2")
    assert "esmfold_v1" not in str(err.value)  # lists the names of the kind asked for
    assert not offline["download_url_to_file"].calls
