"""The golden harness itself: folder lookup, integrity checks, family dispatch, and that a checker catches a
wrong value (a harness that cannot fail proves nothing)."""

import copy
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vidlab import golden

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_GOLDEN = golden.golden_dir(REPO_ROOT)


def real_case(what: str, matches) -> tuple[str, dict]:
    """The first case of the golden set for which `matches(name, spec)` holds, whatever the set names its cases;
    a set without one skips the test (the second golden set need not hold every kind)."""
    try:
        names = golden.list_cases(REAL_GOLDEN)
    except golden.GoldenError as e:
        pytest.fail(str(e), pytrace=False)
    for name in names:
        spec = json.loads((REAL_GOLDEN / f"{name}.json").read_text())
        if matches(name, spec):
            return name, spec
    pytest.skip(f"the golden set at {REAL_GOLDEN} has no {what} case")


def real_sampling_spec() -> dict:
    return real_case("sampling", lambda name, spec: golden.family_of(name) == "sampling")[1]


def fit_entry(spec: dict) -> dict:
    """A FiT sampling entry with a one-frame-per-segment range wider than one frame, and its checker label."""
    return next(e for e in spec["fit_sample_frames"] if e["rand_support"]["per_segment_choices"][0][1] > 1)


def first_usable_fps_entry(spec: dict) -> dict:
    return next(e for e in spec["singularity_get_frame_indices_fps"] if e["indices"] and e["indices"][0] != 1)


def write_folder(folder: Path, cases: dict[str, dict], record_hashes: bool = True) -> Path:
    """A golden folder in the official format: <case>.json files plus an index listing them."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, spec in cases.items():
        data = json.dumps(spec).encode()
        (folder / f"{name}.json").write_bytes(data)
        files[f"{name}.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    index = {"cases": {name: {"summary": name, "files": [f"{name}.json"]} for name in cases}}
    if record_hashes:
        index["files"] = files
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def test_golden_dir_defaults_beside_the_repo_and_follows_the_env(monkeypatch, tmp_path):
    monkeypatch.delenv(golden.GOLDEN_DIR_ENV, raising=False)
    assert golden.golden_dir(tmp_path / "repo") == tmp_path / "shared" / "golden"
    monkeypatch.setenv(golden.GOLDEN_DIR_ENV, str(tmp_path / "elsewhere"))
    assert golden.golden_dir(tmp_path / "repo") == tmp_path / "elsewhere"


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(golden.GoldenError, match=f"no golden index at .*{golden.GOLDEN_DIR_ENV}"):
        golden.list_cases(tmp_path / "absent")


def test_case_names_resolve_to_families():
    assert golden.family_of("sampling") == "sampling"
    assert golden.family_of("fit_spacetime") == "fit"
    assert golden.family_of("vimpac_model_t_h_w") == "vimpac"
    assert golden.family_of("clip_visual") == "clip_visual"
    with pytest.raises(golden.GoldenError, match="no known family"):
        golden.family_of("fitness")


def test_a_real_sampling_subset_in_another_folder_passes(tmp_path):
    spec = real_sampling_spec()
    subset = {key: value[:3] if isinstance(value, list) and key != "notes" else value for key, value in spec.items()}
    folder = write_folder(tmp_path / "g", {"sampling": subset})
    assert golden.list_cases(folder) == ["sampling"]
    golden.run_case(folder, "sampling")


@pytest.mark.parametrize(
    "mutate, reported",
    [
        (lambda s: fit_entry(s)["uniform"]["indices"].__setitem__(0, fit_entry(s)["vlen"] + 13), "fit num_frames="),
        (lambda s: s["evl_eval_temporal_crops"][-1]["views"][0].__setitem__(1, -17), "evl eval"),
        (lambda s: first_usable_fps_entry(s)["indices"].__setitem__(0, 1), "singularity fps"),
        (lambda s: fit_entry(s)["rand_support"].__setitem__("per_segment_choices", [[0, 1]] * fit_entry(s)["num_frames"]),
         "segment 0 drew"),
        (lambda s: s.__setitem__("brand_new_mode", []), "not a sampling mode vidlab knows"),
    ],
)
def test_sampling_checker_reports_a_wrong_golden_value(tmp_path, mutate, reported):
    spec = copy.deepcopy(real_sampling_spec())
    mutate(spec)
    folder = write_folder(tmp_path / "g", {"sampling": spec})
    with pytest.raises(golden.GoldenMismatch, match=reported):
        golden.run_case(folder, "sampling")


def test_a_case_with_nothing_to_compare_fails(tmp_path):
    folder = write_folder(tmp_path / "g", {"sampling": {"case": "sampling", "notes": []}})
    with pytest.raises(golden.GoldenMismatch, match="nothing vidlab knows how to compare"):
        golden.run_case(folder, "sampling")


def test_corrupt_golden_file_is_detected(tmp_path):
    folder = write_folder(tmp_path / "g", {"sampling": {"case": "sampling"}})
    (folder / "sampling.json").write_text(json.dumps({"case": "sampling!"}))
    with pytest.raises(golden.GoldenError, match="differs from index.json"):
        golden.run_case(folder, "sampling")


def test_case_tensors_load_and_tensor_tolerance(tmp_path):
    folder = write_folder(tmp_path / "g", {"fit_tiny": {"case": "fit_tiny"}}, record_hashes=False)
    expected = torch.linspace(-1, 1, 12).reshape(3, 4)
    save_file({"output.x": expected}, str(folder / "fit_tiny.safetensors"))
    case = golden.load_case(folder, "fit_tiny")
    loaded = case.tensors()["output.x"]
    golden.assert_tensor_close(loaded + 5e-6, expected, "output.x")
    with pytest.raises(golden.GoldenMismatch, match="output.x"):
        golden.assert_tensor_close(loaded + 1e-3, expected, "output.x")


def copy_case_renamed(source: Path, folder: Path, name: str, new_name: str) -> None:
    """A shared case under another name, its json's `case` and its official files following the name."""
    spec = json.loads((source / f"{name}.json").read_text())
    spec["case"] = new_name
    (folder / f"{new_name}.json").write_text(json.dumps(spec))
    (folder / f"{new_name}.safetensors").write_bytes((source / f"{name}.safetensors").read_bytes())
    listing_path = folder / "files" / "files.json"
    listing = json.loads(listing_path.read_text()) if listing_path.is_file() else {"cases": {}}
    entries = json.loads((source / "files" / "files.json").read_text())["cases"].get(name, {})
    for file_name, entry in entries.items():
        target = folder / "files" / new_name / file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((source / entry["path"]).read_bytes())
        entries[file_name] = {**entry, "path": f"files/{new_name}/{file_name}"}
    listing["cases"][new_name] = entries
    listing_path.parent.mkdir(parents=True, exist_ok=True)
    listing_path.write_text(json.dumps(listing))


KINDS = {  # a kind of case -> how to recognise it from its json
    "FiT model": lambda name, spec: "kwargs" in spec.get("constructor", {}) and golden.family_of(name) == "fit",
    "FiT curriculum": lambda name, spec: "source_model" in spec.get("constructor", {}),
    "Singularity temporal model": lambda name, spec: golden.family_of(name) == "singularity"
    and spec.get("constructor", {}).get("config", {}).get("temporal_vision_encoder", {}).get("enable", False),
    "Singularity re-ranking": lambda name, spec: "input.itm_score_table" in spec.get("inputs", {}),
}


@pytest.mark.parametrize("kind, new_name", [
    ("FiT model", "fit_model_other"),
    ("FiT curriculum", "fit_frames_other"),
    ("Singularity temporal model", "singularity_other_temporal"),
    ("Singularity re-ranking", "singularity_rerank_other"),
])
def test_a_shared_case_under_another_name_is_checked_by_its_content(tmp_path, kind, new_name):
    """Checkers read what a case is from its json: a second golden set names its cases as it likes."""
    name, _ = real_case(kind, KINDS[kind])
    folder = tmp_path / "g"
    folder.mkdir()
    copy_case_renamed(REAL_GOLDEN, folder, name, new_name)
    index = {"cases": {new_name: {"summary": new_name, "files": [f"{new_name}.json", f"{new_name}.safetensors"]}}}
    (folder / "index.json").write_text(json.dumps(index))
    golden.run_case(folder, new_name)
    tensors = golden.load_case(folder, new_name).tensors()
    key = next(k for k in tensors if k.startswith("output."))
    tensors[key] = tensors[key] + 1.0
    save_file(tensors, str(folder / f"{new_name}.safetensors"))
    with pytest.raises(golden.GoldenMismatch, match=re.escape(key)):
        golden.run_case(folder, new_name)


def test_similarities_at_a_temperature_of_the_cases_own_choosing_are_checked(tmp_path):
    """get_sim divides the frame-mean cosine by t: a case may store it at any t, named t<digits with p for '.'>."""
    name, _ = real_case("Singularity re-ranking", KINDS["Singularity re-ranking"])
    folder = tmp_path / "g"
    folder.mkdir()
    copy_case_renamed(REAL_GOLDEN, folder, name, "singularity_ensemble")
    (folder / "index.json").write_text(json.dumps({"cases": {"singularity_ensemble": {"summary": "-", "files": []}}}))
    tensors = golden.load_case(folder, "singularity_ensemble").tensors()
    at_one = next(k for k in tensors if re.fullmatch(r"output\.get_sim\.t1\.sim_i2t", k))
    tensors["output.get_sim.t0p07.sim_i2t"] = tensors[at_one] / 0.07
    tensors["output.get_sim.t0p07.sim_t2i"] = (tensors[at_one].T / 0.07).contiguous()
    save_file(tensors, str(folder / "singularity_ensemble.safetensors"))
    golden.run_case(folder, "singularity_ensemble")
    tensors["output.get_sim.t0p07.sim_i2t"] = tensors[at_one] / 0.08
    save_file(tensors, str(folder / "singularity_ensemble.safetensors"))
    with pytest.raises(golden.GoldenMismatch, match="t0p07.sim_i2t"):
        golden.run_case(folder, "singularity_ensemble")
