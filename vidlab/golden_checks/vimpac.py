"""Golden checks of VIMPAC against outputs of the official code, told apart by the case json (never its name):

- a model case (`constructor.TransformerLayout_kwargs`, like `vimpac_model`): the model is built from the
  official arguments (`cli_equivalent` + the TransformerLayout arguments) through `vimpac_config_from_official`
  and loaded through `create_model` from the case's `state_dict.*` (an official in-memory `classifier.pt`, the
  tied alias added back as a real checkpoint holds it) and, where `files/files.json` lists one, from the official
  `classifier.pt` and its snapshot folder (whose `args.pickle` must give the same architecture). Checked: [CLS], token states, MLM logits at the [MASK]
  positions and their argmax everywhere (exact), the NCE projection, mean pooling, the positional table; the
  positional-table interpolation into another grid (`interpolation`), the seeded block / i.i.d. / 80-10-10 masks
  (`output.masking.<input>.mask_3d[_rand_replace]_{blocks<n>|uniform<ratio*1000>}_[torch]seed<s>.*`) and the NCE
  loss (`output.nce_loss.[no_norm_][features_div<k>_]t<temperature>`, '0p2' = 0.2).
- a DALL-E encoder case (`constructor.Encoder_kwargs`): `encoder.pkl` through `create_model` (no pickled code
  runs) and the plain state dict; logits, every group's output, tokens, pixel maps. Tokens are exact except at a
  documented near-tie: a flip is accepted only where the golden top-1/top-2 logit margin is below the logit atol
  (the case records its smallest margin, which is checked too).
- a video2token case (`variants` + `video`): each variant's frames through vidlab's reader and the official cut
  (`vidlab.data.video_tokens.token_frames`), normalisation, and the DALL-E tokens of the case's encoder.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vidlab.data.video_tokens import TokenFrameSpec, crop_origin, normalize_frames, resize_dims, token_frames
from vidlab.golden import (
    TENSOR_ATOL,
    GoldenCase,
    GoldenMismatch,
    Mismatches,
    Outputs,
    compare_outputs,
    suggested_tolerance,
)
from vidlab.io import probe, read_frames
from vidlab.losses import nt_xent_loss
from vidlab.losses.block_masking import mask_token_grid
from vidlab.models import create_model, create_model_with_report
from vidlab.models.dalle_encoder import DalleEncoder, dalle_encoder_config_from_state_dict, map_pixels, unmap_pixels
from vidlab.models.factory import apply_overrides, model_config
from vidlab.models.vimpac import (
    Vimpac,
    mask_token_id,
    official_cli_args,
    pad_token_id,
    vimpac_config_from_official,
)

_MASKING = re.compile(
    r"output\.masking\.(\w+?)\.mask_3d_(rand_replace_)?(blocks|uniform)(\d+)_(?:torch)?seed(\d+)\.(masked_codes|labels)$"
)
_NCE = re.compile(r"output\.nce_loss\.(no_norm_)?(?:features_div(\d+)_)?t(\d+(?:p\d+)?)$")
_TIED_ALIASES = {"mlm_head.decoder.weight": "backbone.embedding.weight"}


def _official_files(spec: Mapping[str, Any], folder: Path) -> dict[str, Path]:
    """The case's official files (name -> path), as files/files.json lists them."""
    listing = folder / "files" / "files.json"
    if not listing.is_file():
        return {}
    entries = json.loads(listing.read_text()).get("cases", {}).get(spec.get("case", ""), {})
    return {name: folder / entry["path"] for name, entry in entries.items() if "path" in entry}


# ---------------------------------------------------------------------------------------------------------
# The token transformer


def _model_outputs(model: Vimpac, tensors: Mapping[str, Tensor]) -> Outputs:
    codes = tensors["input.codes"]
    cache: dict[str, Any] = {}

    def encoded() -> tuple[Tensor, Tensor]:
        if "out" not in cache:
            cache["out"] = model.encode(codes)
        return cache["out"]

    def logits_at_mask() -> Tensor:
        b, t, h, w = tensors["input.mask_positions"].unbind(1)
        return model.mlm_logits(encoded()[1])[b, t, h, w]

    return {
        "output.cls": lambda: encoded()[0],
        "output.hiddens": lambda: encoded()[1],
        "output.mlm_logits_at_mask": logits_at_mask,
        "output.mlm_argmax_all": lambda: model.mlm_logits(encoded()[1]).argmax(-1),
        "output.nce_head": lambda: model.nce_projection(encoded()[0]),
        "output.pooling": lambda: model.forward_features(codes, pooling="mean"),
        "debug.positional_embedding_table": lambda: model.backbone.positional_embedding(),
    }


def _interpolation_outputs(
    spec: Mapping[str, Any], cfg: Any, checkpoint: Any, tensors: Mapping[str, Tensor]
) -> Outputs:
    """`output.<group>.*` of the model of the `interpolation.target` grid loaded from the case's checkpoint."""
    target = spec["interpolation"]["target"]
    size = int(target["frame_size"]) // 8  # the official token grid: frame_size / the dVAE's 8x downsampling
    grid = {"num_frames": int(target["clip_len"]), "height": size, "width": size}
    overrides = {**grid, "interpolate_pos_embed": True, "mlm_head": False, "nce.enabled": False}
    model = create_model(apply_overrides(cfg, overrides), checkpoint=checkpoint)
    computed: Outputs = {}
    groups = {
        k.split(".")[1] for k in tensors if k.startswith("output.") and f"input.{k.split('.')[1]}.codes" in tensors
    }
    for group in groups:
        codes = tensors[f"input.{group}.codes"]
        table = model.backbone.positional_embedding
        for name, _ in table.named_parameters():
            computed[f"output.{group}.{name}"] = lambda p=getattr(table, name): p
        computed[f"output.{group}.positional_embedding_table"] = table
        computed[f"output.{group}.backbone_cls"] = lambda c=codes: model.encode(c)[0]
    return computed


def _temperature(text: str) -> float:
    return float(text.replace("p", "."))


def _loss_and_masking_outputs(cfg: Any, tensors: Mapping[str, Tensor]) -> Outputs:
    pad, mask, vocab = pad_token_id(cfg.vocab_size), mask_token_id(cfg.vocab_size), cfg.vocab_size
    computed: Outputs = {}
    for name in tensors:
        if m := _MASKING.match(name):
            group, rand_replace, kind, number, seed, field = m.groups()
            codes = tensors.get(f"input.masking.codes_{group}", tensors["input.clean_codes"])
            blocks = int(number) if kind == "blocks" else -int(number)

            def masked(c=codes, n=blocks, r=bool(rand_replace), s=int(seed), f=field) -> Tensor:
                generator = torch.Generator().manual_seed(s)
                out = mask_token_grid(c, n, pad, mask, vocab, rand_replace=r, rng=random.Random(s), generator=generator)
                return out.codes if f == "masked_codes" else out.labels

            computed[name] = masked
        elif m := _NCE.match(name):
            no_norm, divisor, temperature = m.groups()
            features = tensors["input.nce_features"] / (int(divisor) if divisor else 1)
            computed[name] = lambda f=features, t=_temperature(temperature), n=not no_norm: nt_xent_loss(f, t, n)
    return computed


def _head_args_of(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """The heads' official arguments read off the case's weights, for a case whose `cli_equivalent` does not
    state them (pretrain.py hard-codes the heads' composition, not their sizes)."""
    args: dict[str, Any] = {"mlm_weight": 1.0 if "mlm_head.bias" in state else 0.0}
    linears = [k for k in state if re.fullmatch(r"cls_head\.mlp\.linear_\d+\.weight", k)]
    if not linears:
        return {**args, "nce_weight": 0.0}
    args.update(nce_proj_layers=len(linears), nce_bn_after_proj=f"cls_head.mlp.bn_{len(linears) - 1}.weight" in state)
    if len(linears) > 1:
        args["nce_proj_hid_dim"] = int(state["cls_head.mlp.linear_0.weight"].shape[0])
    return args


def check_vimpac_model(spec: Mapping[str, Any], tensors: Mapping[str, Tensor], folder: Path) -> None:
    atol, rtol = suggested_tolerance(spec)
    found = Mismatches(spec.get("case", "vimpac"))
    constructor = spec["constructor"]
    layout_kwargs = constructor["TransformerLayout_kwargs"]
    state = {k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")}
    args = {**_head_args_of(state), **official_cli_args(constructor.get("cli_equivalent", ""))}
    cfg = vimpac_config_from_official(args, layout_kwargs)
    for alias, original in _TIED_ALIASES.items():
        state.setdefault(alias, state[original])
    sources: dict[str, Any] = {"state_dict tensors": state}
    files = _official_files(spec, folder)
    snapshot = next((p.parent for name, p in files.items() if name.endswith("classifier.pt")), None)
    if snapshot is not None:
        sources["official classifier.pt"] = snapshot / "classifier.pt"
        sources["official snapshot folder"] = snapshot
        # the architecture from args.pickle alone (heads: see the case's heads_note)
        recorded = create_model_with_report(checkpoint=snapshot, heads=layout_kwargs["heads"]).config
        found.expect(recorded == cfg, f"args.pickle gives {dict(recorded)}, the case's constructor {dict(cfg)}")
    for label, checkpoint in sources.items():
        model = create_model(cfg, checkpoint=checkpoint)
        computed = {**_model_outputs(model, tensors), **_loss_and_masking_outputs(cfg, tensors)}
        if "interpolation" in spec:
            computed.update(_interpolation_outputs(spec, cfg, checkpoint, tensors))
        compare_outputs(found, tensors, computed, tolerance=(atol, rtol), label=label)
    found.raise_if_any()


# ---------------------------------------------------------------------------------------------------------
# The DALL-E encoder


def near_tie_flips(got: Tensor, want: Tensor, logits: Tensor, atol: float) -> tuple[int, int]:
    """(tokens that differ, of which at a near-tie: golden top-1/top-2 logit margin below `atol`)."""
    top2 = logits.topk(2, dim=1).values
    tie = (top2[:, 0] - top2[:, 1]) < atol
    differ = got != want
    return int(differ.sum()), int((differ & tie).sum())


def check_dalle_encoder(spec: Mapping[str, Any], tensors: Mapping[str, Tensor], folder: Path) -> None:
    found = Mismatches(spec.get("case", "dalle_encoder"))
    atol = float(spec.get("tolerances", {}).get("suggested_atol", {}).get("output.logits", TENSOR_ATOL))
    kwargs = spec["constructor"]["Encoder_kwargs"]
    sizes = {
        k: kwargs[k] for k in ("group_count", "n_hid", "n_blk_per_group", "input_channels", "vocab_size") if k in kwargs
    }
    cfg = apply_overrides(
        model_config("dalle-encoder"), {**sizes, "mixed_precision": kwargs.get("use_mixed_precision", True)}
    )
    state = {k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")}
    sources: dict[str, Any] = {"state_dict tensors": (cfg, state)}
    for name, path in _official_files(spec, folder).items():
        if name.endswith(".pkl"):
            sources[f"official {name}"] = (None, path)  # the architecture from the pickled module's attributes
    images, golden_logits = tensors["input.images"], tensors["output.logits"]
    margin = golden_logits.topk(2, dim=1).values
    margin = float((margin[:, 0] - margin[:, 1]).min())
    if "min_top1_top2_logit_margin" in spec:
        found.expect(abs(margin - spec["min_top1_top2_logit_margin"]) < 1e-6, f"golden near-tie margin {margin}")
    for label, (model_cfg, checkpoint) in sources.items():
        model: DalleEncoder = create_model(model_cfg, checkpoint=checkpoint)  # type: ignore[assignment]
        with torch.no_grad():
            logits = model(map_pixels(images))
            stages, x = {}, map_pixels(images)
            for name, stage in model.blocks.named_children():
                x = stages[name] = stage(x)
        computed: Outputs = {
            "output.map_pixels": lambda: map_pixels(images),
            "output.logits": lambda lg=logits: lg,
            "output.unmap_pixels_roundtrip": lambda: unmap_pixels(map_pixels(images)),
            "output.unmap_pixels_wide": lambda: unmap_pixels(tensors["input.unmap_pixels_wide"]),
            **{f"debug.{name}": lambda v=value: v for name, value in stages.items()},
        }
        compare_outputs(found, {k: v for k, v in tensors.items() if not k.endswith("tokens")}, computed, tolerance=(atol, 0.0), label=label)
        for name, got in (
            ("output.tokens", logits.argmax(1)),
            ("output.vimpac_extractor_tokens", model.tokenize(tensors["input.images_pm1"])),
        ):
            differ, at_ties = near_tie_flips(got, tensors[name], golden_logits, atol)
            found.expect(
                differ == at_ties, f"{label}: {name}: {differ} tokens differ, {differ - at_ties} not at a near-tie"
            )
    found.raise_if_any()


# ---------------------------------------------------------------------------------------------------------
# video2token


def _variant_spec(variant: Mapping[str, Any]) -> TokenFrameSpec:
    """A variant's official extractor options; its keys carry the official argument in brackets."""
    value = {key.split(" (")[0]: v for key, v in variant.items()}
    return TokenFrameSpec(
        fps=float(value["fps"]),
        short_side=int(value["size"]),
        output_size=int(value["output_size"]),
        crop=str(value["crop_type"]),
        hflip=bool(value["hflip"]),
    )


def check_video2token(spec: Mapping[str, Any], tensors: Mapping[str, Tensor], folder: Path) -> None:
    """Frames through vidlab's reader and the official crop rules (uint8 frames within the 1-level swscale
    allowance the case documents), normalisation exact, tokens exact from the golden frames and, where the
    frames agree exactly, from vidlab's own."""
    found = Mismatches(spec.get("case", "video2token"))
    video = folder / spec["video"]["file"]
    state = {k.removeprefix("state_dict."): v for k, v in tensors.items() if k.startswith("state_dict.")}
    encoder: DalleEncoder = create_model(dalle_encoder_config_from_state_dict(state), checkpoint=state)  # type: ignore[assignment]
    batch_size = int(spec.get("batch_size", 0)) or None
    if "input.video_rgb24" in tensors:
        decoded = read_frames(video, range(probe(video).num_frames))
        found.expect(torch.equal(decoded, tensors["input.video_rgb24"]), "the video decodes to other frames")
    for name, variant in spec["variants"].items():
        options = _variant_spec(variant)
        info = probe(video)
        resized = resize_dims(info.height, info.width, options.short_side)
        found.expect(list(resized) == list(variant.get("resize_hw", resized)), f"{name}: resize {resized}")
        if variant.get("crop_xy") is not None:
            origin = crop_origin(*resized, options.output_size, options.crop)
            found.expect(list(origin) == list(variant["crop_xy"]), f"{name}: crop origin {origin}")
        golden_uint8 = tensors[f"output.{name}.frames_uint8"]
        frames = token_frames(video, options)
        if frames.shape != golden_uint8.shape:
            found.expect(False, f"{name}: frames {tuple(frames.shape)}, golden {tuple(golden_uint8.shape)}")
            continue
        levels = int((frames.int() - golden_uint8.int()).abs().max()) if frames.numel() else 0
        found.expect(levels <= 1, f"{name}: frames differ by up to {levels} levels (allowance: 1)")
        normalized = normalize_frames(golden_uint8)
        found.expect(torch.equal(normalized, tensors[f"output.{name}.frames"]), f"{name}: normalised frames differ")
        golden_tokens = tensors[f"output.{name}.tokens"]
        tokens = encoder.tokenize(normalized, batch_size).to(golden_tokens.dtype)
        found.expect(
            torch.equal(tokens, golden_tokens), f"{name}: {int((tokens != golden_tokens).sum())} tokens differ"
        )
        if levels == 0:
            own = encoder.tokenize(normalize_frames(frames), batch_size).to(golden_tokens.dtype)
            found.expect(torch.equal(own, golden_tokens), f"{name}: tokens of vidlab's frames differ")
    found.raise_if_any()


def check_vimpac(case: GoldenCase) -> None:
    """Golden-harness entry of the `vimpac` family: a model, DALL-E encoder or video2token case."""
    constructor = case.spec.get("constructor", {})
    if "TransformerLayout_kwargs" in constructor:
        check_vimpac_model(case.spec, case.tensors(), case.folder)
    elif "Encoder_kwargs" in constructor:
        check_dalle_encoder(case.spec, case.tensors(), case.folder)
    elif "variants" in case.spec and "video" in case.spec:
        check_video2token(case.spec, case.tensors(), case.folder)
    else:
        raise GoldenMismatch(
            f"golden case {case.name!r}: its json has none of constructor.TransformerLayout_kwargs (a VIMPAC model), "
            "constructor.Encoder_kwargs (the DALL-E encoder), variants + video (video2token)"
        )
