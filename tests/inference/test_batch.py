"""Batch prediction: per-case failures, progress events, resuming (also after SIGKILL), shards, safety."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.cli import main
from medseg.data.cases import Shard
from medseg.inference.batch import QUALITY_SUFFIX, RUN_RECORD, merge_summaries, predict_folder
from medseg.io import Image, read_image
from medseg.protocol import LABELS_JSON, CaseFinished, CaseStarted, RunFinished, RunStarted, parse_event_line

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"


def _phantoms(brats_root: Path, dst: Path, n: int) -> list[str]:
    """Copy the T1 images of ``n`` BraTS phantom cases to ``dst/<case>.nii.gz``; return the case ids."""
    dst.mkdir(parents=True, exist_ok=True)
    ids = []
    for case_dir in sorted(p for p in brats_root.iterdir() if p.is_dir())[:n]:
        shutil.copy(case_dir / f"{case_dir.name}_t1.nii.gz", dst / f"{case_dir.name}.nii.gz")
        ids.append(case_dir.name)
    return ids


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as fh:
        return {row["case"]: row for row in csv.DictReader(fh)}


def _assert_valid_output(out: Path, source: Path) -> None:
    labels = read_image(out)
    image = read_image(source)
    assert labels.geometry.shape == image.geometry.shape
    np.testing.assert_allclose(labels.geometry.affine, image.geometry.affine, atol=1e-5)
    assert set(np.unique(labels.array).tolist()) <= {0, 1}


def _no_temporaries(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_corrupt_and_wrong_shape_cases_fail_and_the_rest_succeed(
    brats_root: Path, one_channel_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _phantoms(brats_root, tmp_path / "in", 3)
    good = (tmp_path / "in" / f"{ids[0]}.nii.gz").read_bytes()
    (tmp_path / "in" / "corrupt.nii.gz").write_bytes(good[: len(good) // 3])
    nib.save(nib.Nifti1Image(np.zeros((48, 48), np.float32), np.eye(4)), str(tmp_path / "in" / "flat.nii.gz"))
    out = tmp_path / "out"
    argv = ["predict", "--model", str(one_channel_checkpoint), "--input", str(tmp_path / "in")]
    code = main([*argv, "--output", str(out), "--progress", "none"])
    assert code == 1
    rows = _rows(out / "summary.csv")
    assert sorted(rows) == sorted([*ids, "corrupt", "flat"])
    assert rows["corrupt"]["status"] == "failed" and "corrupt.nii.gz" in rows["corrupt"]["reason"]
    assert rows["flat"]["status"] == "failed" and "flat.nii.gz" in rows["flat"]["reason"]
    assert "3-D" in rows["flat"]["reason"]
    for case in ids:
        assert rows[case]["status"] == "ok"
        assert float(rows[case]["tissue_ml"]) >= 0.0 and rows[case]["output"] == str(out / f"{case}.nii.gz")
        _assert_valid_output(out / f"{case}.nii.gz", tmp_path / "in" / f"{case}.nii.gz")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            *(f"{c}{suffix}" for c in ids for suffix in (".nii.gz", QUALITY_SUFFIX)),
            "summary.csv",
            RUN_RECORD,
            LABELS_JSON,
        ]
    )
    # what the label values mean, for medseg evaluate: the checkpoint's table
    assert json.loads((out / LABELS_JSON).read_text()) == load_checkpoint(one_channel_checkpoint).label_table.to_dict()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert sum(line.startswith("medseg: error:") for line in err.splitlines()) == 2


def test_json_progress_resume_overwrite_and_stale_temporaries(
    brats_root: Path, one_channel_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _phantoms(brats_root, tmp_path / "in", 3)
    out = tmp_path / "out"
    args = ["predict", "--model", str(one_channel_checkpoint), "--input", str(tmp_path / "in"), "--output", str(out)]
    assert main([*args, "--progress", "json"]) == 0
    events = [parse_event_line(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0] == RunStarted(total=3)
    assert events[-1] == RunFinished(ok=3, failed=0, skipped=0)
    starts = [e for e in events if isinstance(e, CaseStarted)]
    done = [e for e in events if isinstance(e, CaseFinished)]
    assert len(starts) + len(done) + 2 == len(events)  # every line is an event of the protocol
    assert [e.case for e in starts] == [e.case for e in done] == ids
    for index, event in enumerate(done):
        assert event.index == index and event.total == 3 and event.status == "ok" and event.reason is None
        assert event.output == str(out / f"{ids[index]}.nii.gz") and event.volumes_ml["tissue"] >= 0.0

    # a killed run may leave a temporary file; a lost output is redone, the others are skipped
    (out / f"{ids[1]}.nii.gz").unlink()
    (out / f".{ids[1]}.abcd_123.nii.gz").write_bytes(b"partial")
    assert main([*args, "--progress", "json"]) == 0
    events = [parse_event_line(line) for line in capsys.readouterr().out.splitlines()]
    status = {e.case: e.status for e in events if isinstance(e, CaseFinished)}
    assert status == {ids[0]: "skipped", ids[1]: "ok", ids[2]: "skipped"}
    assert events[-1] == RunFinished(ok=1, failed=0, skipped=2)
    _no_temporaries(out)
    rows = _rows(out / "summary.csv")
    assert rows[ids[0]]["status"] == "skipped" and float(rows[ids[0]]["tissue_ml"]) >= 0.0

    assert main([*args, "--progress", "none", "--overwrite"]) == 0
    assert {r["status"] for r in _rows(out / "summary.csv").values()} == {"ok"}


def test_killed_run_resumes_to_complete_outputs(brats_root: Path, one_channel_checkpoint: Path, tmp_path: Path) -> None:
    ids = _phantoms(brats_root, tmp_path / "in", 6)
    out = tmp_path / "out"
    args = ["predict", "--model", str(one_channel_checkpoint), "--input", str(tmp_path / "in"), "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medseg", *args, "--progress", "json", "--device", "cpu"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.endswith(".nii.gz") and not p.name.startswith(".") for p in out.glob("*")):
            assert proc.poll() is None, "medseg predict exited before writing its first output"
            assert time.monotonic() < deadline, "no output within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "summary.csv").exists()
    finished = sorted(p.name[: -len(".nii.gz")] for p in out.glob("*.nii.gz") if not p.name.startswith("."))
    assert finished and set(finished) < set(ids)  # killed mid-batch
    for case in finished:  # whatever the killed run left is complete
        _assert_valid_output(out / f"{case}.nii.gz", tmp_path / "in" / f"{case}.nii.gz")

    assert main([*args, "--progress", "none"]) == 0
    rows = _rows(out / "summary.csv")
    assert sorted(rows) == ids
    assert sorted(c for c, r in rows.items() if r["status"] == "skipped") == finished
    assert {r["status"] for c, r in rows.items() if c not in finished} == {"ok"}
    for case in ids:
        _assert_valid_output(out / f"{case}.nii.gz", tmp_path / "in" / f"{case}.nii.gz")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            *(f"{c}{suffix}" for c in ids for suffix in (".nii.gz", QUALITY_SUFFIX)),
            "summary.csv",
            RUN_RECORD,
            LABELS_JSON,
        ]
    )


def test_shards_share_one_output_folder(brats_root: Path, one_channel_checkpoint: Path, tmp_path: Path) -> None:
    from medseg.inference import Predictor

    ids = _phantoms(brats_root, tmp_path / "in", 6)
    predictor = Predictor.from_checkpoint(one_channel_checkpoint, device="cpu")
    out = tmp_path / "out"
    seen: list[str] = []
    for index in (1, 2):
        summary = predict_folder(
            model=predictor, input_path=tmp_path / "in", output_dir=out, shard=Shard(index, 2), progress="none"
        )
        assert summary.summary_path == out / f"summary.shard-{index}-of-2.csv"
        seen += [r.case for r in summary.results]
    assert sorted(seen) == ids  # union is everything, nothing twice
    assert not (out / "summary.csv").exists()
    merged = _rows(merge_summaries(out))
    assert sorted(merged) == ids and {r["status"] for r in merged.values()} == {"ok"}


def test_cases_json_and_probabilities(brats_root: Path, one_channel_checkpoint: Path, tmp_path: Path) -> None:
    ids = _phantoms(brats_root, tmp_path / "in", 2)
    spec = [{"id": f"subject{n}", "images": [f"in/{case}.nii.gz"]} for n, case in enumerate(ids)]
    (tmp_path / "cases.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    argv = ["predict", "--model", str(one_channel_checkpoint), "--cases", str(tmp_path / "cases.json")]
    code = main([*argv, "--output", str(out), "--save-probabilities", "--progress", "none"])
    assert code == 0
    for n in range(len(ids)):
        labels = nib.load(str(out / f"subject{n}.nii.gz"))
        probs = nib.load(str(out / f"subject{n}_probabilities.nii.gz"))
        assert probs.shape == (*labels.shape, 2) and probs.get_data_dtype() == np.float32
        np.testing.assert_allclose(probs.affine, labels.affine)
        p = np.asarray(probs.dataobj)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(labels.dataobj), p.argmax(-1))
    # a rerun asking for probabilities again skips; one whose probabilities are gone is redone
    (out / "subject1_probabilities.nii.gz").unlink()
    summary = predict_folder(
        model=one_channel_checkpoint, input_path=None, output_dir=out, cases_file=tmp_path / "cases.json",
        save_probabilities=True, progress="none",
    )  # fmt: skip
    assert {r.case: r.status for r in summary.results} == {"subject0": "skipped", "subject1": "ok"}


def test_bad_requests_are_one_line_errors(
    one_channel_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nifti_dir = tmp_path / "in"
    nifti_dir.mkdir()
    shutil.copy(DATA / "itk_kmeans_t1" / "KmeansTest_T1UCharRaw.nii.gz", nifti_dir / "t1.nii.gz")
    dicom_dir = tmp_path / "dicom"
    shutil.copytree(DATA / "dicom_mr_oblique", dicom_dir)
    model = ["predict", "--model", str(one_channel_checkpoint), "--progress", "none"]
    cases = [
        ([*model, "--input", str(nifti_dir), "--output", str(tmp_path / "o1"), "--format", "dicom-seg"], "dicom-seg"),
        ([*model, "--input", str(nifti_dir), "--output", str(nifti_dir)], "overwrite the input"),
        ([*model, "--input", str(dicom_dir), "--output", str(dicom_dir / "seg")], "overwrite the input"),
        ([*model, "--output", str(tmp_path / "o2")], "--input"),
        ([*model, "--input", str(nifti_dir), "--output", str(tmp_path / "o3"), "--shard", "3/2"], "--shard"),
        ([*model, "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o4")], "not found"),
    ]
    before = {p: p.stat().st_mtime_ns for p in [*nifti_dir.iterdir(), *dicom_dir.iterdir()]}
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("medseg: error:") and message in err[0], err
    assert {p: p.stat().st_mtime_ns for p in [*nifti_dir.iterdir(), *dicom_dir.iterdir()]} == before
    assert not (tmp_path / "o1").exists()


def test_gzip_truncation_is_really_corrupt(brats_root: Path, tmp_path: Path) -> None:
    """Guard for the failure test: a third of a .nii.gz cannot be decompressed."""
    case = sorted(p for p in brats_root.iterdir() if p.is_dir())[0]
    data = (case / f"{case.name}_t1.nii.gz").read_bytes()
    with pytest.raises((EOFError, OSError)):
        gzip.decompress(data[: len(data) // 3])


def test_resuming_into_another_models_output_folder_is_refused(
    brats_root: Path, one_channel_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _phantoms(brats_root, tmp_path / "in", 2)
    out = tmp_path / "out"
    other = tmp_path / "other.pt"
    checkpoint = load_checkpoint(one_channel_checkpoint, training=False)
    name = next(k for k, v in checkpoint.state_dict.items() if v.is_floating_point())
    checkpoint.state_dict = {**checkpoint.state_dict, name: checkpoint.state_dict[name] + 0.01}  # retrained
    save_checkpoint(checkpoint, other)
    args = ["predict", "--input", str(tmp_path / "in"), "--output", str(out), "--progress", "none"]
    assert main([*args, "--model", str(one_channel_checkpoint)]) == 0
    (out / f"{ids[1]}.nii.gz").unlink()  # an interrupted run, resumed with other weights: cases would mix
    before = (out / f"{ids[0]}.nii.gz").read_bytes()
    capsys.readouterr()

    assert main([*args, "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert err == f"medseg: error: {out}: holds predictions of another model or other inference settings;" + (
        " use --overwrite to redo every case, or another output folder\n"
    )
    assert (out / f"{ids[0]}.nii.gz").read_bytes() == before and not (out / f"{ids[1]}.nii.gz").exists()

    assert main([*args, "--model", str(one_channel_checkpoint)]) == 0  # the same model resumes
    assert {r["status"] for r in _rows(out / "summary.csv").values()} == {"ok", "skipped"}
    assert main([*args, "--model", str(other), "--overwrite"]) == 0
    assert {r["status"] for r in _rows(out / "summary.csv").values()} == {"ok"}
    assert main([*args, "--model", str(other)]) == 0  # and now the folder is the other model's
    assert {r["status"] for r in _rows(out / "summary.csv").values()} == {"skipped"}


def test_an_unexpected_error_in_one_case_is_one_line_and_the_batch_goes_on(
    brats_root: Path, one_channel_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from medseg.inference import Predictor

    ids = _phantoms(brats_root, tmp_path / "in", 3)
    predict = Predictor.predict

    def out_of_memory_on_the_second_case(self: Predictor, image: Image) -> np.ndarray:
        if image.path is not None and image.path.name == f"{ids[1]}.nii.gz":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nGPU 0 has a total capacity of 8 GiB")
        return predict(self, image)

    monkeypatch.setattr(Predictor, "predict", out_of_memory_on_the_second_case)
    argv = ["predict", "--model", str(one_channel_checkpoint), "--input", str(tmp_path / "in")]
    assert main([*argv, "--output", str(tmp_path / "out"), "--progress", "none"]) == 1
    rows = _rows(tmp_path / "out" / "summary.csv")
    assert rows[ids[1]]["reason"] == f"{ids[1]}: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert rows[ids[0]]["status"] == rows[ids[2]]["status"] == "ok"
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"medseg: error: {rows[ids[1]]['reason']}" and "GPU 0" not in "".join(err)


def test_study_folder_with_ge_names_and_a_localizer_series(
    one_channel_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GE ``I.MRDC.N`` files are found by content; a localizer-only series beside them is no case, said in one
    note, and the run exits 0."""
    import pydicom
    from pydicom.uid import generate_uid

    sources = sorted((DATA / "dicom_mr_oblique").glob("*.dcm"))
    study = tmp_path / "study"
    (study / "series2").mkdir(parents=True)
    for k, src in enumerate(sources, start=1):
        shutil.copy(src, study / "series2" / f"I.MRDC.{k}")
    (study / "series1").mkdir()
    for k, src in enumerate(sources[4:7]):  # not brain_001.dcm, whose padding parses as a command group
        ds = pydicom.dcmread(str(src))
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["localizer"])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["loc", str(k)])
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(str(study / "series1" / f"I.MRDC.{k + 1}"))
    out = tmp_path / "out"
    argv = ["predict", "--model", str(one_channel_checkpoint), "--input", str(study), "--output", str(out)]
    assert main([*argv, "--progress", "none"]) == 0
    assert {case: row["status"] for case, row in _rows(out / "summary.csv").items()} == {"series2": "ok"}
    err = capsys.readouterr().err.splitlines()
    notes = [line for line in err if "localizer" in line]
    assert len(notes) == 1 and notes[0].startswith("medseg: note:") and "series1" in notes[0], err
    assert not any("Warning" in line or "warn(" in line for line in err), err


def test_bad_paths_fail_only_their_case(
    brats_root: Path, one_channel_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A symbolic link to itself or to nothing, a folder cycle, a file name too long to name the outputs,
    and a name that is not UTF-8: one failed case each (or none), the others predicted, the summary written."""
    source = tmp_path / "in"
    ids = _phantoms(brats_root, source, 1)
    nested = _phantoms(brats_root, source / "sub", 2)[1:]  # another case, one level down
    (source / "sub" / f"{ids[0]}.nii.gz").unlink()
    (source / "sub" / "back").symlink_to("..", target_is_directory=True)  # in/sub/back/sub/back/... forever
    (source / "loop.nii.gz").symlink_to("loop.nii.gz")
    (source / "dangling.nii.gz").symlink_to("nowhere.nii.gz")
    long_id = "x" * 240  # the file name fits (247 bytes); the temporary name of its quality record does not (263)
    shutil.copy(source / f"{ids[0]}.nii.gz", source / f"{long_id}.nii.gz")
    latin1 = os.fsdecode(b"caf\xe9")  # a file name that is not UTF-8
    shutil.copy(source / f"{ids[0]}.nii.gz", source / f"{latin1}.nii.gz")
    out = tmp_path / "out"
    argv = ["predict", "--model", str(one_channel_checkpoint), "--input", str(source), "--output", str(out)]
    assert main([*argv, "--progress", "none"]) == 1

    text = (out / "summary.csv").read_text(encoding="utf-8")  # UTF-8 throughout, the Latin-1 byte escaped
    rows = _rows(out / "summary.csv")
    assert sorted(rows) == sorted([*ids, *nested, "loop", "dangling", long_id, "caf\\udce9"])
    for case in [*ids, *nested, "caf\\udce9"]:
        assert rows[case]["status"] == "ok", rows[case]
    assert "caf\\udce9.nii.gz" in text and (out / f"{latin1}.nii.gz").is_file()
    assert rows["loop"]["reason"] == f"{source / 'loop.nii.gz'}: file not found: a symbolic link that loops" + (
        " (to itself or round a cycle)"
    )
    assert "a symbolic link to nowhere.nii.gz, which does not exist" in rows["dangling"]["reason"]
    assert "cannot name an output file: it is too long" in rows[long_id]["reason"]
    assert "(names of 263 bytes with its endings; the file system takes 255)" in rows[long_id]["reason"]
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected" not in err
    assert sum(line.startswith("medseg: error:") for line in err.splitlines()) == 3
    _no_temporaries(out)


def _two_channel_checkpoint(one_channel: Path, path: Path) -> Path:
    """An untrained two-channel (``a``, ``b``) version of the one-channel checkpoint."""
    from medseg.checkpoint import Checkpoint
    from medseg.networks import build_network

    base = load_checkpoint(one_channel, training=False)
    model = build_network("unet", in_channels=2, out_channels=2, kwargs=base.network["kwargs"])
    return save_checkpoint(
        Checkpoint(base.network, ["a", "b"], base.label_table, base.config, model.state_dict()), path
    )


def test_a_channel_file_linked_to_itself_fails_its_case(
    brats_root: Path, one_channel_checkpoint: Path, tmp_path: Path
) -> None:
    ids = _phantoms(brats_root, tmp_path / "flat", 2)
    source = tmp_path / "in"
    source.mkdir()
    for case in ids:
        for channel in ("0000", "0001"):
            shutil.copy(tmp_path / "flat" / f"{case}.nii.gz", source / f"{case}_{channel}.nii.gz")
    looped = source / f"{ids[1]}_0000.nii.gz"
    looped.unlink()
    looped.symlink_to(looped.name)
    model = _two_channel_checkpoint(one_channel_checkpoint, tmp_path / "two.pt")
    summary = predict_folder(model=model, input_path=source, output_dir=tmp_path / "out", progress="none")
    assert {r.case: r.status for r in summary.results} == {ids[0]: "ok", ids[1]: "failed"}
    assert summary.results[1].reason == f"{looped}: file not found: a symbolic link that loops" + (
        " (to itself or round a cycle)"
    )
    assert _rows(tmp_path / "out" / "summary.csv")[ids[1]]["status"] == "failed"


def test_case_ids_that_cannot_name_a_file_fail_only_their_case(
    brats_root: Path, one_channel_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _phantoms(brats_root, tmp_path / "in", 1)
    image = f"in/{ids[0]}.nii.gz"
    bad = {
        "a\0b": "it holds '\\x00', which a file name cannot",
        "y" * 300: "it is too long (names of 323 bytes with its endings; the file system takes 255)",
        "../escape": "it holds '/', which a file name cannot",
        "a\ud800b": "it holds characters the file system cannot encode",
        ".hidden": "it starts with '.' (a hidden file, as medseg's temporary files are)",
    }
    spec = [{"id": "good", "images": [image]}, *({"id": case, "images": [image]} for case in bad)]
    (tmp_path / "cases.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    argv = ["predict", "--model", str(one_channel_checkpoint), "--cases", str(tmp_path / "cases.json")]
    assert main([*argv, "--output", str(out), "--progress", "json"]) == 1

    summary = {row["case"]: row for row in csv.DictReader((out / "summary.csv").open(newline="", encoding="utf-8"))}
    assert summary["good"]["status"] == "ok" and (out / "good.nii.gz").is_file()
    assert len(summary) == 1 + len(bad)
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    failed = {e["case"]: e["reason"] for e in events if e["event"] == "case_done" and e["status"] == "failed"}
    assert sorted(failed) == sorted(bad)
    for case, problem in bad.items():
        assert failed[case].startswith("case id ") and failed[case].endswith(problem), failed[case]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["good.nii.gz", f"good{QUALITY_SUFFIX}", "summary.csv", RUN_RECORD, LABELS_JSON]
    )
    assert not (tmp_path / "escape.nii.gz").exists()


def test_a_full_disk_names_the_summary_and_keeps_the_label_maps(
    brats_root: Path, one_channel_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    full_disk: Callable[..., None], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    ids = _phantoms(brats_root, tmp_path / "in", 2)
    out = tmp_path / "out"
    argv = ["predict", "--model", str(one_channel_checkpoint), "--input", str(tmp_path / "in"), "--output", str(out)]
    full_disk("summary.csv")
    assert main([*argv, "--progress", "none"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"medseg: error: {out / 'summary.csv'}: cannot write: No space left on device (2 ok, 0 skipped, 0 failed:"
        " the label maps written are kept, and a rerun skips their cases and writes the summary)"
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(f"{c}{suffix}" for c in ids for suffix in (".nii.gz", QUALITY_SUFFIX)), RUN_RECORD, LABELS_JSON]
    )
    monkeypatch.undo()  # room again: the rerun keeps the label maps and writes the summary
    assert main([*argv, "--progress", "none"]) == 0
    assert {row["status"] for row in _rows(out / "summary.csv").values()} == {"skipped"}
    _no_temporaries(out)


def test_two_series_in_one_folder_are_told_apart_in_the_summary(
    one_channel_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cases ``study`` and ``study_2`` of a folder holding two series: summary.csv and the progress events
    name each one's SeriesInstanceUID and SeriesDescription."""
    import pydicom
    from pydicom.uid import generate_uid

    sources = sorted((DATA / "dicom_mr_oblique").glob("*.dcm"))
    study = tmp_path / "study"
    study.mkdir()
    for src in sources:
        shutil.copy(src, study / src.name)
    original = pydicom.dcmread(str(sources[1]), stop_before_pixels=True)
    copy_uid = generate_uid(entropy_srcs=["second series"])
    for k, src in enumerate(sources[1:]):  # not brain_001.dcm, whose padding parses as a command group
        ds = pydicom.dcmread(str(src))
        ds.SeriesInstanceUID, ds.SeriesDescription = copy_uid, "second look"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["copy", str(k)])
        ds.save_as(str(study / f"copy_{k:03d}.dcm"))
    out = tmp_path / "out"
    argv = ["predict", "--model", str(one_channel_checkpoint), "--input", str(study), "--output", str(out)]
    assert main([*argv, "--progress", "json"]) == 0
    rows = _rows(out / "summary.csv")
    assert sorted(rows) == ["study", "study_2"]
    assert {(r["SeriesInstanceUID"], r["SeriesDescription"]) for r in rows.values()} == {
        (str(original.SeriesInstanceUID), str(original.SeriesDescription)),
        (copy_uid, "second look"),
    }
    events = [parse_event_line(line) for line in capsys.readouterr().out.splitlines()]
    done = {e.case: e for e in events if isinstance(e, CaseFinished)}
    assert {c: (e.series_uid, e.series_description) for c, e in done.items()} == {
        c: (r["SeriesInstanceUID"], r["SeriesDescription"]) for c, r in rows.items()
    }
