"""Golden checks of GDT and STiCA against outputs of the official facebookresearch/GDT code. What a case checks is
read from its tensors and json, never from its name:

- a model case (`input.audio`, like `gdt_model`): the official `GDT(**kwargs)` with the case's procedural
  weights (the json's rule, regenerated here for every key the json lists and checked against its
  `debug.weight_probe.*`), loaded through `create_model` as an in-memory official `{'model': ...}`
  checkpoint; encoder features, the layer4 map, head outputs, the audio front end on the stored waveform
  (each `audio_features.cases` entry); then the official checkpoint file of `files/` (strided weights)
  loaded by `create_model` alone against its `expected_outputs`.
- a text case (`input.token_ids`, like `gdt_text`): the word2vec tower and text head (word vectors from the
  case, the rest procedural), the tokenisation of the json's sentences with the vocabulary file, and the
  word2vec / dict.npy files through the model config.
- a loss case (`input.rank<r>.*`, like `gdt_loss`): every rank's stored features through `gdt_loss`, the
  function training calls, in one thread per rank whose gather is an all-gather among the threads (what
  torch.distributed does between processes); world size = the ranks the case holds; the symbolic plan of
  negatives against the json's bookkeeping rows; `nce_loss` standalone at each temperature the case names.
- a STiCA case (`check_stica`, like `stica_pooling`): `TransformerPooling` alone and the feature-map crop path
  (pooling sequence, pooled crops through the video head) on the stored map, with the json's crop parameters.
"""

from __future__ import annotations

import json
import math
import re
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from vidlab.data.audio import GDT_FILTERS, gdt_spectrogram
from vidlab.golden import (
    TENSOR_ATOL,
    TENSOR_RTOL,
    GoldenCase,
    Mismatches,
    Outputs,
    compare_outputs,
    expected_outputs,
    suggested_tolerance,
)
from vidlab.losses.gdt import GDT_TEMPERATURE, Gather, gdt_loss, gdt_plan, nce_logits, nce_loss
from vidlab.models import create_model, create_model_with_report
from vidlab.models.checkpoint import MappedStateDict, load_state_dict_strict
from vidlab.models.factory import apply_overrides
from vidlab.models.gdt import (
    GDT,
    FeatureCrops,
    TransformerPooling,
    build_gdt,
    draw_feature_crops,
    gdt_config_from_official,
    map_official_gdt_state_dict,
)
from vidlab.models.word2vec import Word2VecTokenizer, read_vocabulary

_RANK_INPUT = re.compile(r"input\.rank(\d+)\.(\w+)$")
_RANK_OUTPUT = re.compile(r"output\.rank(\d+)\.hyp(\d+)\.loss(?:_(\w+))?$")
_GET_LOSS = re.compile(r"output\.get_loss\.t(\d+(?:p\d+)?)\.(loss|prob)$")  # t0p07: temperature 0.07
_CROP = re.compile(r"(?:output|debug)\.crop\.(spatial|temporal)\.(large|small)\.(\d+)(\.sequence)?$")
_PROBE = "debug.weight_probe."
T = TypeVar("T")


def procedural_tensor(name: str, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """The golden cases' weight rule: a tensor seeded by the crc32 of its official key (see a case's `weights`)."""
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode("utf-8")))
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return 0.5 + torch.rand(shape, generator=generator)
    values = torch.randn(shape, generator=generator)
    if leaf == "running_mean":
        return 0.1 * values
    if len(shape) >= 2:
        return values * math.sqrt(2.0 / math.prod(shape[1:]))
    return 1.0 + 0.1 * values if leaf == "weight" else 0.05 * values


def procedural_state_dict(keys: Mapping[str, Sequence[Any]]) -> dict[str, Tensor]:
    """{official key: [shape, dtype name]} (a case's key listing) -> the procedural tensors."""
    return {key: procedural_tensor(key, shape, getattr(torch, dtype)) for key, (shape, dtype) in keys.items()}


def _check_probes(found: Mismatches, tensors: Mapping[str, Tensor], weights: Mapping[str, Mapping[str, Tensor]]) -> None:
    """`debug.weight_probe.[<set>.]<key>`: the first values of the generated weight (the recipe is followed)."""
    for name in (k for k in tensors if k.startswith(_PROBE)):
        key = name[len(_PROBE) :]
        source = next(
            (state[key[len(prefix) :]] for prefix, state in weights.items() if key.startswith(prefix) and key[len(prefix) :] in state),
            None,
        )
        if source is None:
            found.expect(False, f"{name}: no generated weight of that name")
            continue
        want = tensors[name]
        found.expect(torch.equal(source.flatten()[: want.numel()], want), f"{name}: generated weights differ from the recipe's")


def _case_files(case: GoldenCase) -> dict[str, dict[str, Any]]:
    """The case's entries of files/files.json (official-format files), by file name."""
    listing = case.folder / "files" / "files.json"
    return json.loads(listing.read_text())["cases"].get(case.spec.get("case", ""), {}) if listing.is_file() else {}


def _load_parts(model: nn.Module, mapped: MappedStateDict, parts: Sequence[str], source: str) -> None:
    """Load the mapped weights of the named submodules strictly (each must get exactly its own keys)."""
    for part in parts:
        prefix = f"{part}."
        sub = MappedStateDict({k[len(prefix) :]: v for k, v in mapped.tensors.items() if k.startswith(prefix)})
        load_state_dict_strict(getattr(model, part), sub, f"{source} ({part})")


# ---------------------------------------------------------------------------------------------------------
# model case


def _audio_outputs(spec: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> Outputs:
    cases = spec.get("audio_features", {}).get("cases", {})
    waveform = tensors["input.waveform_int16"].numpy()

    def spectrogram(entry: Mapping[str, Any]) -> Tensor:
        if entry.get("aug_audio") or entry.get("use_volume_jittering") or entry.get("use_temporal_jittering"):
            raise AssertionError("random audio augmentation cannot be compared")
        filters = GDT_FILTERS["gdt"] if entry["aud_spec_type"] == 1 else GDT_FILTERS["stica"]
        return gdt_spectrogram(
            waveform, entry["fr_sec"], entry["num_sec"], entry["sample_rate"], filters, entry["z_normalize"]
        )

    outputs: Outputs = {f"output.audio.{name}": (lambda e=entry: spectrogram(e)) for name, entry in cases.items()}
    for name in (k for k in tensors if k.startswith("debug.audio.logfbank_float64_")):
        # the float64 filterbank of the case whose name, without its raw / znorm tag, is the suffix
        suffix = name.removeprefix("debug.audio.logfbank_float64_")
        entry = next((e for n, e in cases.items() if re.sub(r"_(raw|znorm)", "", n) == suffix), None)
        if entry is not None:
            raw = dict(entry, z_normalize=False)
            outputs[name] = lambda e=raw: spectrogram(e)[0].double()
    return outputs


def _model_outputs(model: GDT, video: Tensor, audio: Tensor) -> Outputs:
    return {
        "output.video_encoder": lambda: model.video_features(video),
        "output.audio_encoder": lambda: model.audio_features(audio),
        "output.video_nce": lambda: model(video, audio)[0],
        "output.audio_nce": lambda: model(video, audio)[1],
        "debug.video_mlp_unnormalized": lambda: model.encode_video(video),
        "debug.audio_mlp_unnormalized": lambda: model.encode_audio(audio),
        "debug.video_layer4": lambda: model.video_feature_map(video),
    }


def _check_model_case(case: GoldenCase, found: Mismatches) -> None:
    spec, tensors = case.spec, case.tensors()
    weights = procedural_state_dict(spec["checkpoint_format"]["keys"])
    _check_probes(found, tensors, {"": weights})
    video = tensors["input.video"].transpose(1, 2)  # official (B, C, T, H, W) -> vidlab (B, T, C, H, W)
    audio = tensors["input.audio"]
    cfg = gdt_config_from_official(spec["constructor"]["kwargs"])
    created = create_model_with_report(cfg, checkpoint={"model": weights})
    ignored = set(created.report.ignored)
    found.expect(created.report.loaded + len(ignored) == len(weights), f"load report: {created.report.format()}")
    model_tensors = [k for k in expected_outputs(tensors) if not k.startswith((_PROBE, "output.audio.", "debug.audio."))]
    atol, rtol = suggested_tolerance(spec)
    compare_outputs(found, tensors, _model_outputs(created.model, video, audio), model_tensors, (atol, rtol), "procedural weights")
    audio_tensors = [k for k in expected_outputs(tensors) if k.startswith(("output.audio.", "debug.audio."))]
    audio_tol = suggested_tolerance(spec, "audio_spec_atol")
    compare_outputs(found, tensors, _audio_outputs(spec, tensors), audio_tensors, audio_tol, "audio front end")
    for entry in _case_files(case).values():
        expected_file = entry.get("expected_outputs", {}).get("path")
        if not entry.get("path", "").endswith(".pth") or expected_file is None:
            continue
        file_model = create_model(checkpoint=case.folder / entry["path"])  # the architecture from the file alone
        expected = load_file(case.folder / expected_file)
        outputs = _model_outputs(file_model, video, audio)  # type: ignore[arg-type]
        compare_outputs(found, expected, outputs, list(expected), (atol, rtol), f"official file {entry['path']}")


# ---------------------------------------------------------------------------------------------------------
# text case


def _check_text_case(case: GoldenCase, found: Mismatches) -> None:
    spec, tensors = case.spec, case.tensors()
    constructor = spec["constructor"]
    word_vectors = tensors["state_dict.text_network.word_embd.weight"]
    cfg = apply_overrides(
        gdt_config_from_official(constructor["TextVid_GDT_kwargs"]),
        {"text.vocab_size": word_vectors.shape[0], "text.word_dim": word_vectors.shape[1]},
    )
    keys = spec["weights"]["text_branch_keys"]
    official = {**procedural_state_dict({k: v for k, v in keys.items() if k != "text_network.word_embd.weight"}),
                "text_network.word_embd.weight": word_vectors}
    model = build_gdt(cfg, init_weights=False).eval()
    mapped = map_official_gdt_state_dict(official)
    found.expect(not mapped.unmapped, f"unmapped text keys {mapped.unmapped}")
    _load_parts(model, mapped, ("text_encoder", "text_head"), "text branch")

    files = {name: case.folder / entry["path"] for name, entry in _case_files(case).items()}
    tokenisation = spec["tokenisation"]
    words = read_vocabulary(files["dict.npy"]) if "dict.npy" in files else tokenisation["words"]
    sentences = tokenisation["sentences"]
    outputs: Outputs = {}
    for name in (k for k in tensors if k.startswith("output.raw.") and k.endswith("_token_ids")):
        max_words = tensors[name].shape[1]  # the dataset's 20, or the model path's 16
        outputs[name] = lambda m=max_words: Word2VecTokenizer(words, m)(sentences)
    for tag, ids in (("ids", tensors["input.token_ids"]), ("raw", tensors.get("output.raw.dataset_token_ids"))):
        if ids is None:
            continue
        outputs[f"output.{tag}.text_features"] = lambda i=ids: model.text_features(i)
        outputs[f"debug.{tag}.word_embd"] = lambda i=ids: model.text_encoder.word_embedding(i)
        outputs[f"debug.{tag}.mlp_t"] = lambda i=ids: model.encode_text(i)
        outputs[f"output.{tag}.nce_text"] = lambda i=ids: model.encode_text(i, normalize=model.normalize)
    atols = spec.get("tolerances", {}).get("suggested_atol", {})

    def tolerance(name: str) -> tuple[float, float]:
        return float(atols.get(name.rsplit(".", 1)[-1], TENSOR_ATOL)), TENSOR_RTOL

    compare_outputs(found, tensors, outputs, expected_outputs(tensors), tolerance, "text tower")
    if "word2vec.pth" in files:  # the official files through the config: word vectors and vocabulary
        from_files = build_gdt(apply_overrides(cfg, {"text.word2vec": str(files["word2vec.pth"])}))
        found.expect(torch.equal(from_files.text_encoder.word_embedding.weight, word_vectors), "word2vec.pth differs from the case's word vectors")


# ---------------------------------------------------------------------------------------------------------
# loss case


class ThreadGroup:
    """An all-gather among `world` threads, one per rank: each thread's `gather(rank)` returns every rank's
    tensor concatenated in rank order, as `torch.distributed.all_gather` does between processes."""

    def __init__(self, world: int, timeout_s: float = 60.0):
        self.world = world
        self.slots: list[Tensor | None] = [None] * world
        self.barrier = threading.Barrier(world, timeout=timeout_s)

    def gather(self, rank: int) -> Gather:
        def all_gather(local: Tensor) -> Tensor:
            self.slots[rank] = local
            self.barrier.wait()
            everything = torch.cat([s for s in self.slots if s is not None])
            self.barrier.wait()  # nobody overwrites a slot before every rank has read them
            return everything

        return all_gather

    def run(self, job: Callable[[int, Gather], T]) -> list[T]:
        """`job(rank, gather)` on every rank at once; the first failure is raised."""
        results: list[Any] = [None] * self.world
        errors: list[BaseException] = []

        def worker(rank: int) -> None:
            try:
                results[rank] = job(rank, self.gather(rank))
            except BaseException as e:  # noqa: BLE001 - re-raised below, after the other ranks stop
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=worker, args=(rank,)) for rank in range(self.world)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results


def _temperature(text: str) -> float:
    return float(text.replace("p", "."))


def _negative_rows(names: Sequence[str], ranks: Sequence[int], batch: int) -> list[str]:
    return [f"{name}@rank{rank}[{i}]" for name in names for rank in ranks for i in range(batch)]


def _check_bookkeeping(found: Mismatches, spec: Mapping[str, Any], world: int, batch: int) -> None:
    """The json's negatives of the last `get_losses` call of each hypothesis (`rank<r>.hyp<h>.negatives`:
    `pairs<1|2>.feat_<v|a>_neg` rows or shapes) against `gdt_plan`'s last pair-set, with the official aliasing."""
    for entry, content in spec.get("negatives_bookkeeping", {}).items():
        match = re.fullmatch(r"rank(\d+)\.hyp(\d+)\.negatives", entry)
        if not match:
            continue
        rank, hypothesis = int(match.group(1)), int(match.group(2))
        terms = gdt_plan(hypothesis)[-1].terms
        others = [r for r in range(world) if r != rank]
        rows = content.get("rows", {})
        for label, shape in ((k, v) for k, v in content.items() if k != "rows"):
            pair, modality = re.fullmatch(r"pairs(\d)\.feat_(v|a)_neg", label).groups()  # type: ignore[union-attr]
            term = terms[2 * (int(pair) - 1) + (modality == "a")]
            planned = _negative_rows(term.negatives, others, batch) + _negative_rows(term.local_negatives, [rank], batch)
            found.expect(len(planned) == shape[0], f"{entry}.{label}: {len(planned)} negatives planned, golden {shape[0]}")
            if label in rows:
                found.expect(planned == rows[label], f"{entry}.{label}: planned {planned}, golden {rows[label]}")


def _check_loss_case(case: GoldenCase, found: Mismatches) -> None:
    spec, tensors = case.spec, case.tensors()
    features: dict[int, dict[str, Tensor]] = {}
    for name, tensor in tensors.items():
        if match := _RANK_INPUT.match(name):
            features.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    world = len(features)
    found.expect(sorted(features) == list(range(world)), f"ranks {sorted(features)} are not 0..{world - 1}")
    temperature = float(spec.get("setup", {}).get("nce_t", GDT_TEMPERATURE))
    hypotheses = sorted({int(m.group(2)) for k in tensors if (m := _RANK_OUTPUT.match(k))})
    outputs: Outputs = {}
    for hypothesis in hypotheses:
        results = ThreadGroup(world).run(
            lambda rank, gather, h=hypothesis: gdt_loss(features[rank], h, temperature, gather=gather, rank=rank)
        )
        for rank, result in enumerate(results):
            prefix = f"output.rank{rank}.hyp{hypothesis}.loss"
            outputs[prefix] = lambda r=result: r.loss
            for pair_set, value in result.pair_sets.items():
                outputs[f"{prefix}_{pair_set}"] = lambda v=value: v
    q, k, noise = (tensors.get(f"input.get_loss.{n}") for n in ("q", "k", "noise"))
    for name in (n for n in tensors if _GET_LOSS.match(n)):
        t, what = _GET_LOSS.match(name).groups()  # type: ignore[union-attr]
        if what == "loss":
            outputs[name] = lambda t=_temperature(t): nce_loss(q, k, noise, t)
        else:  # official `prob`: % of rows whose column 0 is their max (column 0, not the diagonal: a quirk)
            outputs[name] = lambda t=_temperature(t): (lambda lg: (lg[:, 0] == lg.max(1).values).float().mean() * 100)(nce_logits(q, k, noise, t))
    atol, rtol = suggested_tolerance(spec)
    compare_outputs(found, tensors, outputs, expected_outputs(tensors), (atol, rtol), "gdt loss")
    batch = next(iter(features[0].values())).shape[0] if features else 0
    _check_bookkeeping(found, spec, world, batch)


def check_gdt(case: GoldenCase) -> None:
    """Golden-harness entry of the `gdt` family: model, text or loss case, told apart by the case's inputs."""
    names = set(case.tensors())
    found = Mismatches(case.name)
    if any(_RANK_INPUT.match(n) for n in names):
        _check_loss_case(case, found)
    elif "input.token_ids" in names:
        _check_text_case(case, found)
    elif "input.audio" in names and "input.video" in names:
        _check_model_case(case, found)
    found.raise_if_any()


# ---------------------------------------------------------------------------------------------------------
# STiCA


def _embedded_json(text: Any) -> dict[str, Any]:
    """A json object given as such, or inside a description string ('... defaults: {...}')."""
    if isinstance(text, Mapping):
        return dict(text)
    return json.loads(text[text.index("{") :]) if isinstance(text, str) and "{" in text else {}


def _crops(params: Sequence[Any]) -> FeatureCrops:
    """The official `fmcrop_params` layout [[spatial large, small], [temporal large, small]] -> FeatureCrops."""
    (spatial_large, spatial_small), (temporal_large, temporal_small) = params
    return FeatureCrops(*(tuple(tuple(int(v) for v in c) for c in group) for group in (spatial_large, spatial_small, temporal_large, temporal_small)))


_OFFICIAL_CROP_ARGS = {"duration": "duration", "s_large_crops": "spatial_large", "s_small_crops": "spatial_small",
                       "t_large_crops": "temporal_large", "t_small_crops": "temporal_small"}


def _check_crop_draws(found: Mismatches, official: str, crops: FeatureCrops, map_size: int) -> None:
    """`np.random.seed(S); fmcrop_params(k=v, ...)` (the json's account of the draw) -> `draw_feature_crops`
    with a RandomState(S) must draw the stored crops."""
    seed = re.search(r"seed\((\d+)\)", official)
    call = re.search(r"fmcrop_params\(([^)]*)\)", official)
    if seed is None or call is None:
        return
    kwargs = {_OFFICIAL_CROP_ARGS[k]: int(v) for k, v in re.findall(r"(\w+)\s*=\s*(\d+)", call.group(1)) if k in _OFFICIAL_CROP_ARGS}
    drawn = draw_feature_crops(np.random.RandomState(int(seed.group(1))), map_size=map_size, **kwargs)
    found.expect(drawn == crops, f"crop draws: {drawn}, golden {crops}")


def check_stica(case: GoldenCase) -> None:
    """Golden-harness entry of the `stica` family: the transformer pooling and the feature-map crop path."""
    spec, tensors = case.spec, case.tensors()
    found = Mismatches(case.name)
    keys = spec["checkpoint_format"]
    outputs: Outputs = {}
    generated: dict[str, dict[str, Tensor]] = {}
    pooling_spec = spec["constructor"].get("pooling")
    if pooling_spec is not None and "input.pooling.x" in tensors:
        kwargs = pooling_spec["kwargs"]
        weights = procedural_state_dict(keys["pooling_keys"])
        generated["pooling."] = weights
        ffn = next(v[0][0] for k, v in keys["pooling_keys"].items() if k.endswith("ffn.lin1.weight"))
        pooling = TransformerPooling(
            kwargs["hidden_dim"], kwargs["num_layer"], kwargs["num_head"], ffn, kwargs["dp"], kwargs["qkv_mha"], kwargs["positional_emb"]
        ).eval()
        mapped = map_official_gdt_state_dict({f"video_pooling.2.{k}": v for k, v in weights.items()})
        found.expect(not mapped.unmapped, f"unmapped pooling keys {mapped.unmapped}")
        _load_parts(nn.ModuleDict({"video_pooling": pooling}), mapped, ("video_pooling",), "pooling")
        x = tensors["input.pooling.x"]
        outputs["output.pooling.cls"] = lambda: pooling(x)
        outputs["output.pooling.all_states"] = lambda: pooling(x, all_states=True)
    stica_spec = spec["constructor"].get("stica")
    if stica_spec is not None and "input.crop.feature_map" in tensors:
        args = _embedded_json(stica_spec.get("args"))
        found.expect(
            args.get("transformer_time_dim", 4) == stica_spec.get("duration", 4),
            "transformer_time_dim differs from the duration: the official pooling reshapes the batch",
        )
        model = build_gdt(gdt_config_from_official(stica_spec["kwargs"], args), init_weights=False).eval()
        weights = procedural_state_dict(keys["stica_keys_pooling_and_heads"])
        generated["stica."] = weights
        mapped = map_official_gdt_state_dict(weights)
        parts = ("video_pooling", "video_head", "audio_head") if model.video_pooling is not None else ("video_head", "audio_head")
        _load_parts(model, mapped, parts, "stica pooling and heads")
        feature_map, audio = tensors["input.crop.feature_map"], tensors["input.crop.audio_features"]
        params_key = next(k for k in spec["crop_params"] if k.startswith("params"))
        crops = _crops(spec["crop_params"][params_key])
        _check_crop_draws(found, spec["crop_params"].get("official", ""), crops, feature_map.shape[-1])
        embedded = model.crop_embeddings(feature_map, crops)
        windows = {
            ("spatial", "large"): [lambda m, c=c: m[..., c[0] : c[1], c[2] : c[3]] for c in crops.spatial_large],
            ("spatial", "small"): [lambda m, c=c: m[..., c[0] : c[1], c[2] : c[3]] for c in crops.spatial_small],
            ("temporal", "large"): [lambda m, c=c: m[:, :, c[0] : c[1]] for c in crops.temporal_large],
            ("temporal", "small"): [lambda m, c=c: m[:, :, c[0] : c[1]] for c in crops.temporal_small],
        }
        outputs["output.crop.video_nce"] = lambda: model.project(model.pool_video(feature_map), "video", model.normalize)
        outputs["output.crop.audio_nce"] = lambda: model.project(audio, "audio", model.normalize)
        outputs["debug.crop.full.sequence"] = lambda: model.pooling_sequence(feature_map)
        for name in tensors:
            match = _CROP.match(name)
            if not match:
                continue
            kind, size, index, sequence = match.group(1), match.group(2), int(match.group(3)), match.group(4)
            crop_list = windows[(kind, size)]
            # the official forward appends every small crop once per large crop: entry j is small crop j mod count
            position = index % len(crop_list) if size == "small" else index
            if sequence:
                outputs[name] = lambda w=crop_list[position]: model.pooling_sequence(w(feature_map))
            else:
                outputs[name] = lambda e=getattr(embedded, f"{kind}_{size}")[position]: e
    _check_probes(found, tensors, generated)
    atol, rtol = suggested_tolerance(spec)
    compare_outputs(found, tensors, outputs, [k for k in expected_outputs(tensors) if not k.startswith(_PROBE)], (atol, rtol), "stica")
    found.raise_if_any()


__all__ = ["ThreadGroup", "check_gdt", "check_stica", "procedural_state_dict", "procedural_tensor"]
