"""VIMPAC: every layout agrees with a slow loop-by-loop reference of the official algorithm, [PAD] keys are masked,
the MLM head is tied to the embedding, official state dicts load strictly with a readable report, positional
tables interpolate only when asked, config errors are one line; block masking matches a loop reference of the
official `mask_3d`; the DALL-E encoder reads `encoder.pkl` without running pickled code; the golden checker fails
on a wrong value."""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vidlab import golden
from vidlab.errors import ConfigError
from vidlab.losses import nt_xent_loss
from vidlab.losses.block_masking import mask_token_grid
from vidlab.models import create_model, create_model_with_report, model_config, save_vidlab_checkpoint
from vidlab.models.checkpoint import load_pickled_checkpoint, recorded_module_state_dict
from vidlab.models.errors import CheckpointError, ModelInputError, StateDictMismatchError, UnsafeCheckpointError
from vidlab.models.factory import apply_overrides
from vidlab.models.vimpac import Vimpac, vimpac_config_from_official

GOLDEN_DIR = golden.golden_dir(Path(__file__).resolve().parents[2])
LAYOUTS = ("T,H|W", "T,H,W", "T|H|W", "T", "T,H", "H|W,T")
VOCAB = 50  # [PAD] = 51, [MASK] = 54
GRID = (3, 4, 5)


def small_config(**overrides):
    """24-d / 6 heads: splits into 3 parallel attentions of 2 heads, also with halve_att (4 dims each)."""
    base = dict(vocab_size=VOCAB, num_frames=GRID[0], height=GRID[1], width=GRID[2], hid_dim=24, heads=6, layers=2)
    return apply_overrides(model_config("vimpac-tiny"), {**base, "nce.hidden_dim": 16, **overrides})


def random_model(**overrides) -> Vimpac:
    torch.manual_seed(0)
    model = create_model(small_config(**overrides)).double()
    with torch.no_grad():  # move everything off its init so every parameter matters
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


def codes_with_pad(batch: int = 2, pad_id: int = VOCAB + 1) -> torch.Tensor:
    codes = torch.randint(0, VOCAB, (batch, *GRID), generator=torch.Generator().manual_seed(1))
    codes[1, -1, 2:] = pad_id  # the bottom rows of sample 1's last frame
    codes[0, 0, 0, 0] = VOCAB + 4  # a [MASK]
    return codes


# ---------------------------------------------------------------------------------------------------------
# A slow reference of the official TransformerLayout, loop by loop (float64)


def _ln(x, weight, bias):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps=1e-12)


def _reference_attention(sd, prefix, seq, keep, heads):
    """One official BertSelfAttention over a single sequence (S, D), masked_fill(-inf) on dropped keys."""
    q, k, v = (seq @ sd[f"{prefix}.{n}.weight"].T + sd[f"{prefix}.{n}.bias"] for n in ("query", "key", "value"))
    head_dim = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        scores = q[:, part] @ k[:, part].T / math.sqrt(head_dim)
        scores = scores.masked_fill(~keep[None, :], float("-inf"))
        outs.append(scores.softmax(-1) @ v[:, part])
    return torch.cat(outs, -1)


def reference_forward(model: Vimpac, cfg, codes: torch.Tensor):
    sd = {k: v for k, v in model.state_dict().items()}
    pad = codes == cfg.vocab_size + 1
    pos = model.backbone.positional_embedding()
    frames, height, width = GRID
    dim = cfg.hid_dim
    cls_all, grid_all = [], []
    for b in range(codes.shape[0]):
        cls = _ln(sd["backbone.cls_param"] + pos[0], sd["backbone.ln_pre.weight"], sd["backbone.ln_pre.bias"])
        x = sd["backbone.embedding.weight"][codes[b]] + pos[1:].reshape(frames, height, width, dim)
        x = _ln(x, sd["backbone.ln_pre.weight"], sd["backbone.ln_pre.bias"])
        for layer in range(cfg.layers):
            lp = f"backbone.transformer.resblocks.{layer}"
            for j, patterns in enumerate(cfg.layout.split(",")):
                att_cls, att_x = [], []
                for k, pattern in enumerate(patterns.split("|")):
                    heads = cfg.heads // len(patterns.split("|"))
                    prefix = f"{lp}.attention_blocks.{j}.attentions.{k}.attention"
                    out_dim = sd[f"{prefix}.query.weight"].shape[0]
                    out_x = torch.zeros(frames, height, width, out_dim, dtype=x.dtype)
                    cls_outs = []
                    axis = "THW".index(pattern)
                    others = [range(n) for i, n in enumerate(GRID) if i != axis]
                    for a in others[0]:
                        for c in others[1]:
                            index = [a, c]
                            index.insert(axis, slice(None))
                            seq = torch.cat([cls[None], x[tuple(index)]])
                            keep = torch.cat([torch.ones(1, dtype=torch.bool), ~pad[b][tuple(index)]])
                            out = _reference_attention(sd, prefix, seq, keep, heads)
                            cls_outs.append(out[0])
                            out_x[tuple(index)] = out[1:]
                    att_cls.append(torch.stack(cls_outs).mean(0))
                    att_x.append(out_x)
                op = f"{lp}.attention_blocks.{j}.output"
                dense = lambda h: h @ sd[f"{op}.dense.weight"].T + sd[f"{op}.dense.bias"]  # noqa: E731
                cls = _ln(dense(torch.cat(att_cls, -1)) + cls, sd[f"{op}.LayerNorm.weight"], sd[f"{op}.LayerNorm.bias"])
                x = _ln(dense(torch.cat(att_x, -1)) + x, sd[f"{op}.LayerNorm.weight"], sd[f"{op}.LayerNorm.bias"])

            def mlp(h, lp=lp):
                h = torch.nn.functional.gelu(h @ sd[f"{lp}.mlp.c_fc.weight"].T + sd[f"{lp}.mlp.c_fc.bias"])
                return h @ sd[f"{lp}.mlp.c_proj.weight"].T + sd[f"{lp}.mlp.c_proj.bias"]

            cls = _ln(cls + mlp(cls), sd[f"{lp}.ln.weight"], sd[f"{lp}.ln.bias"])
            x = _ln(x + mlp(x), sd[f"{lp}.ln.weight"], sd[f"{lp}.ln.bias"])
        cls_all.append(cls)
        grid_all.append(x)
    return torch.stack(cls_all), torch.stack(grid_all)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_matches_the_loop_reference(layout):
    overrides = {"layout": layout, "halve_att": layout == "T,H|W", "halve_mlp": layout == "T,H,W"}
    cfg = small_config(**overrides)
    model = random_model(**overrides).eval()
    codes = codes_with_pad()
    with torch.no_grad():
        cls, grid = model.encode(codes)
        ref_cls, ref_grid = reference_forward(model, cfg, codes)
    torch.testing.assert_close(cls, ref_cls, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grid, ref_grid, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("pos_emb", ["default", "temporal_separation", "hw_separation"])
def test_positional_options_build_the_official_table(pos_emb):
    model = random_model(pos_emb=pos_emb)
    table = model.backbone.positional_embedding()
    names = sorted(name for name, _ in model.backbone.positional_embedding.named_parameters())
    assert table.shape == (1 + math.prod(GRID), 24)
    pe = model.backbone.positional_embedding
    if pos_emb == "default":
        assert names == ["positional_embedding"]
    elif pos_emb == "temporal_separation":
        assert names == ["cls_pos_embedding", "spatial_pos_embedding", "temporal_pos_embedding"]
        torch.testing.assert_close(table[1 + 7], pe.temporal_pos_embedding[0] + pe.spatial_pos_embedding[7])
    else:
        t, h, w = 2, 1, 3
        expected = pe.temporal_pos_embedding[t] + pe.height_pos_embedding[h] + pe.width_pos_embedding[w]
        torch.testing.assert_close(table[1 + (t * GRID[1] + h) * GRID[2] + w], expected)
    with torch.no_grad():  # and the model runs with it (against the reference for the 2-axis layout)
        cls, _ = model.encode(codes_with_pad())
        torch.testing.assert_close(cls, reference_forward(model, small_config(pos_emb=pos_emb), codes_with_pad())[0])


def test_pad_keys_are_masked_but_pad_positions_count_in_mean_pooling():
    model = random_model().eval()
    codes = codes_with_pad()
    pad = codes == VOCAB + 1
    with torch.no_grad():
        cls, grid = model.encode(codes)
        pooled = model.forward_features(codes, pooling="mean")
        model.backbone.embedding.weight[VOCAB + 1] += torch.randn(24, dtype=torch.float64)  # must not leak
        cls2, grid2 = model.encode(codes)
        pooled2 = model.forward_features(codes, pooling="mean")
    torch.testing.assert_close(cls2, cls, atol=1e-12, rtol=0)
    torch.testing.assert_close(grid2[~pad], grid[~pad], atol=1e-12, rtol=0)
    assert not torch.allclose(grid2[pad], grid[pad])
    assert not torch.allclose(pooled2[1], pooled[1])  # official 'pooling' averages PAD positions too
    torch.testing.assert_close(pooled2[0], pooled[0])  # sample 0 has no [PAD]


def test_mlm_head_is_tied_to_the_input_embedding():
    model = random_model().eval()
    assert not any(k.startswith("mlm_head.decoder") for k in model.state_dict())
    hidden = torch.randn(2, 24, dtype=torch.float64)
    with torch.no_grad():
        transformed = model.mlm_head.transform(hidden)
        expected = transformed @ model.backbone.embedding.weight.T + model.mlm_head.bias
        torch.testing.assert_close(model.mlm_logits(hidden), expected)
    assert model.mlm_logits(hidden).shape == (2, VOCAB + 5)
    model.mlm_logits(hidden).sum().backward()
    assert model.backbone.embedding.weight.grad.abs().sum() > 0  # the MLM loss trains the input embedding


def test_classifier_is_zero_initialised_on_cls_and_forward_is_the_interface():
    model = create_model(small_config(num_classes=7, mlm_head=False, **{"nce.enabled": False}))
    assert model.mlm_head is None and model.nce_head is None
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    codes = codes_with_pad()
    with torch.no_grad():
        assert torch.equal(model(codes), model.forward_head(model.forward_features(codes)))
    assert model(codes).shape == (2, 7)


def official_state_dict(model: Vimpac) -> dict[str, torch.Tensor]:
    """The model's weights under the official names (`ModelWithHead.state_dict()`, tied aliases included)."""
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("nce_head.", "cls_head.", 1) if key.startswith("nce_head.") else key
        state[key.replace("head.", "cls_fc.", 1) if key.startswith("head.") else key] = value
    if "mlm_head.bias" in state:
        state["mlm_head.decoder.weight"] = state["backbone.embedding.weight"]
        state["mlm_head.decoder.bias"] = state["mlm_head.bias"]
    return state


def test_official_state_dict_loads_strictly_with_a_report():
    source = random_model().float()
    official = official_state_dict(source)
    created = create_model_with_report(small_config(), checkpoint=official)
    assert created.report.ok and created.report.loaded == len(official) - 2
    assert sorted(created.report.ignored) == ["mlm_head.decoder.bias", "mlm_head.decoder.weight"]
    codes = codes_with_pad()
    with torch.no_grad():
        torch.testing.assert_close(created.model.encode(codes)[0], source.encode(codes)[0])
    # into a classifier: the pre-training heads are ignored on purpose, the classifier starts at zero
    classifier = small_config(num_classes=3, mlm_head=False, **{"nce.enabled": False})
    report = create_model_with_report(classifier, checkpoint=official).report
    assert report.kept_from_init == ["head.weight", "head.bias"]
    assert any(k.startswith("cls_head.mlp.") for k in report.ignored)
    # a missing and a stray key name themselves
    broken = dict(official)
    del broken["backbone.transformer.resblocks.1.ln.weight"]
    broken["backbone.transformer.resblocks.1.ln_post.weight"] = torch.zeros(24)
    with pytest.raises(StateDictMismatchError) as failure:
        create_model(small_config(), checkpoint=broken)
    assert "backbone.transformer.resblocks.1.ln.weight" in str(failure.value)
    assert "backbone.transformer.resblocks.1.ln_post.weight" in str(failure.value)


def test_vidlab_checkpoint_round_trip_is_not_taken_for_an_official_one(tmp_path):
    model = create_model(small_config(num_classes=3))
    folder = save_vidlab_checkpoint(model, small_config(num_classes=3), tmp_path / "ckpt")
    loaded = create_model(checkpoint=folder)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_positional_tables_interpolate_only_when_asked():
    official = official_state_dict(random_model().float())
    bigger = {"num_frames": 5, "height": 6, "width": 7}
    with pytest.raises(CheckpointError, match="interpolate_pos_embed=true"):
        create_model(small_config(**bigger), checkpoint=official)
    created = create_model_with_report(small_config(**bigger, interpolate_pos_embed=True), checkpoint=official)
    assert any("temporal_pos_embedding (3, 24) -> (5, 24)" in note for note in created.report.adapted)
    table = created.model.backbone.positional_embedding.temporal_pos_embedding
    source = official["backbone.positional_embedding.temporal_pos_embedding"]
    torch.testing.assert_close(table[0], source[0])  # align_corners=False: the ends stay, the middle blends
    torch.testing.assert_close(table[2], source[1])


def test_larger_vocabulary_is_truncated_and_reported():
    official = official_state_dict(random_model(mlm_head=False).float())
    created = create_model_with_report(small_config(vocab_size=40, mlm_head=False), checkpoint=official)
    assert any("truncated from 55 to 45" in note for note in created.report.adapted)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"layout": "T,X"}, "layout 'T,X'"),
        ({"layout": "T|H|W", "hid_dim": 512, "heads": 8}, "must split into 3 parallel attentions"),
        ({"pos_emb": "pre_defined"}, "pos_emb must be one of"),
        ({"dropout": 1.0}, "dropout must be in"),
    ],
)
def test_config_errors_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as failure:
        create_model(small_config(**overrides))
    assert "\n" not in str(failure.value)


def test_input_errors_and_official_argument_errors_are_one_line():
    model = create_model(small_config())
    with pytest.raises(ModelInputError, match=r"token ids must be \(B, 3, 4, 5\)") as failure:
        model.encode(torch.zeros(1, 3, 4, 4, dtype=torch.long))
    assert "\n" not in str(failure.value)
    with pytest.raises(ConfigError, match="pre-activation"):
        vimpac_config_from_official({"model": "efflayoutT,H|W", "pre_activation": True})
    with pytest.raises(ConfigError, match="only the 'efflayout"):
        vimpac_config_from_official({"model": "bert"})


def test_official_arguments_give_the_paper_sizes():
    small = vimpac_config_from_official(
        {
            "model": "efflayoutT,H|W",
            "pos_emb": "hw_separation",
            "vocab_size": 8192,
            "clip_len": 5,
            "nce_proj_hid_dim": 2048,
        }
    )
    assert small == model_config("vimpac-small")
    large = vimpac_config_from_official(
        dict(model="efflayoutT,H|W", pos_emb="hw_separation", vocab_size=8192, clip_len=5, layers=24, hid_dim=1024)
        | dict(halve_att=True, halve_mlp=True, nce_proj_layers=3, nce_proj_hid_dim=4096)
    )
    assert large == model_config("vimpac-large-half")


def test_official_snapshot_folder_loads_with_its_args_pickle():
    folder = GOLDEN_DIR / "files" / "vimpac_model" / "last"
    if not (folder / "args.pickle").is_file():
        pytest.skip(f"golden VIMPAC snapshot not found under {GOLDEN_DIR}")
    with pytest.raises(ConfigError, match="must split into 2 parallel attentions"):  # heads = 64 // 64 = 1
        create_model(checkpoint=folder)
    created = create_model_with_report(checkpoint=folder, heads=2)  # the tiny case's heads (see its heads_note)
    assert created.config.layout == "T,H|W" and created.config.nce.hidden_dim == 128
    assert created.report.ok and created.report.ignored == ["mlm_head.decoder.weight", "mlm_head.decoder.bias"]
    tensors = load_file(str(GOLDEN_DIR / "vimpac_model.safetensors"))
    with torch.no_grad():
        cls, _ = created.model.encode(tensors["input.codes"])
    torch.testing.assert_close(cls, tensors["output.cls"], atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Masking and the contrastive loss


def official_mask_3d(codes, blocks, pad, mask, seed):
    """The official per-sample loop (vimpac/masking.py mask_3d), for comparison."""
    rng = random.Random(seed)
    b, t, h, w = codes.shape
    chosen = torch.zeros_like(codes, dtype=torch.bool)
    for i in range(b):
        for _ in range(blocks):
            lt, lh, lw = rng.randint(1, t * 2 // 3), rng.randint(1, h // 2), rng.randint(1, w // 2)
            t1, h1, w1 = rng.randint(0, t - lt), rng.randint(0, h - lh), rng.randint(0, w - lw)
            chosen[i, t1 : t1 + lt, h1 : h1 + lh, w1 : w1 + lw] = True
    chosen &= codes != pad
    return codes.masked_fill(chosen, mask), codes.masked_fill(~chosen, -100)


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_block_masking_equals_the_official_loop(seed):
    codes = codes_with_pad(batch=3)
    codes[codes == VOCAB + 4] = 0
    masked = mask_token_grid(codes, 4, VOCAB + 1, VOCAB + 4, VOCAB, rng=random.Random(seed))
    want_codes, want_labels = official_mask_3d(codes, 4, VOCAB + 1, VOCAB + 4, seed)
    assert torch.equal(masked.codes, want_codes) and torch.equal(masked.labels, want_labels)
    replaced = mask_token_grid(codes, 4, VOCAB + 1, VOCAB + 4, VOCAB, rand_replace=True, rng=random.Random(seed))
    pad = codes == VOCAB + 1
    assert torch.equal(replaced.codes[pad], codes[pad])  # [PAD] stays [PAD] and is never predicted
    assert (replaced.labels[pad] == -100).all()


def test_nt_xent_gathered_over_two_ranks_averages_to_the_whole_batch_loss():
    features = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    unit = torch.nn.functional.normalize(features, dim=-1)
    first, second = unit.chunk(2)  # 4 videos: first views, then second views
    per_rank = []
    for rank in range(2):
        rows = slice(2 * rank, 2 * rank + 2)
        local = torch.cat([features[:4][rows], features[4:][rows]])
        gathered = iter([first, second])  # the engine's all_gather: every rank's rows in rank order

        def gather(tensor, gathered=gathered):
            return next(gathered)

        per_rank.append(nt_xent_loss(local, 0.2, gather=gather, rank=rank))
    torch.testing.assert_close(torch.stack(per_rank).mean(), nt_xent_loss(features, 0.2))


# ---------------------------------------------------------------------------------------------------------
# DALL-E encoder


@pytest.fixture(scope="module")
def encoder_pkl() -> Path:
    path = GOLDEN_DIR / "files" / "vimpac_dalle_encoder" / "encoder.pkl"
    if not path.is_file():
        pytest.skip(f"golden DALL-E encoder.pkl not found under {GOLDEN_DIR}")
    return path


def test_encoder_pkl_loads_without_importing_dall_e(tmp_path, monkeypatch, encoder_pkl):
    marker = tmp_path / "imported"
    package = tmp_path / "dall_e"
    package.mkdir()
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (package / "encoder.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Encoder: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # an installed dall_e package must not be imported either
    created = create_model_with_report(checkpoint=encoder_pkl)
    assert not marker.exists() and "dall_e" not in sys.modules
    assert created.report.ok and created.config.n_hid == 32 and created.config.vocab_size == 64


def test_encoder_state_dict_and_a_code_running_module_pickle(tmp_path, encoder_pkl):
    state = recorded_module_state_dict(load_pickled_checkpoint(encoder_pkl))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "encoder.safetensors"))
    cfg = {"family": "dalle_encoder", "n_hid": 32, "n_blk_per_group": 1, "vocab_size": 64}
    plain = create_model(cfg, checkpoint=load_file(str(tmp_path / "encoder.safetensors")))
    assert torch.equal(plain.blocks.output.conv.w, state["blocks.output.conv.w"])

    class Evil(torch.nn.Module):
        def __reduce__(self):
            return (eval, (f"open({str(tmp_path / 'ran')!r}, 'w').close()",))

    torch.save(torch.nn.Sequential(torch.nn.ReLU(), Evil()), tmp_path / "evil.pkl")
    with pytest.raises(UnsafeCheckpointError, match="eval"):
        load_pickled_checkpoint(tmp_path / "evil.pkl")
    assert not (tmp_path / "ran").exists()


# ---------------------------------------------------------------------------------------------------------
# The golden checker can fail


def test_golden_checker_reports_a_wrong_output(tmp_path):
    if "vimpac_model_t_h_w" not in golden.list_cases(GOLDEN_DIR):
        pytest.skip("the golden set has no vimpac_model_t_h_w case")
    name = "vimpac_model_t_h_w"
    tensors = load_file(str(GOLDEN_DIR / f"{name}.safetensors"))
    tensors["output.cls"] = tensors["output.cls"] + 1e-3
    save_file(tensors, str(tmp_path / f"{name}.safetensors"))
    shutil.copy(GOLDEN_DIR / f"{name}.json", tmp_path / f"{name}.json")
    (tmp_path / "index.json").write_text(json.dumps({"cases": {name: {"files": [f"{name}.json"]}}}))
    with pytest.raises(golden.GoldenMismatch, match="output.cls: max abs diff"):
        golden.run_case(tmp_path, name)
