"""The BraTS dataset layout (2021's file names, and 2023's, which 2024 and 2025 keep), detected from the file
names; the label table from the file names and the case ids' sub-challenge
(:func:`~medseg.labels.brats_label_candidates`)."""

from __future__ import annotations

from pathlib import Path

from medseg.data.layouts import IMAGE_ENDINGS, ScannedCase, ScannedDataset, register_layout
from medseg.errors import MedsegInputError
from medseg.labels import BratsRelease, brats_label_candidates, brats_namings, choose_label_table


def _listed(path: Path) -> bool:
    """A file, or a symbolic link that leads nowhere (read, and failing naming itself)."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def release_file(case_dir: Path, release: BratsRelease, suffix: str) -> Path:
    """The file of one modality (or ``"seg"``) of the case in ``case_dir``, in whichever image format it is
    stored: ``<case><separator><suffix>`` with the first of :data:`~medseg.data.layouts.IMAGE_ENDINGS` that
    exists (``.nii.gz``, ``.nii``, ``.nrrd``, ...); the ``.nii.gz`` name when none does (a missing file)."""
    named = release.file_name(case_dir.name, suffix)  # the release's NIfTI name
    stem = named.removesuffix(IMAGE_ENDINGS[0])
    return next((p for p in (case_dir / f"{stem}{e}" for e in IMAGE_ENDINGS) if _listed(p)), case_dir / named)


def detect_release(case_dir: Path) -> BratsRelease:
    """The release whose file naming matches the files in ``case_dir`` (any image format; 2023 for 2023-style
    names, which later releases keep: :func:`~medseg.labels.brats_namings`).

    Raises:
        MedsegInputError: no file in the folder follows either naming.
    """
    for release in brats_namings():
        if any(_listed(release_file(case_dir, release, m)) for m in (*release.modalities, "seg")):
            return release
    raise MedsegInputError(
        "not a BraTS case folder (no <case>_t1.nii.gz or <case>-t1n.nii.gz style files)", path=case_dir
    )


def case_files(case_dir: Path, release: BratsRelease) -> tuple[list[Path], Path | None]:
    """The modality files (in release channel order) and the segmentation of one case, if present.

    Raises:
        MedsegInputError: a modality file is missing (naming that file).
    """
    images = [release_file(case_dir, release, m) for m in release.modalities]
    for path in images:
        if not path.is_file():
            raise MedsegInputError("missing modality file", path=path)
    seg = release_file(case_dir, release, "seg")
    return images, seg if seg.is_file() else None


def find_case_dirs(root: Path) -> list[Path]:
    """Case folders directly under ``root`` (or ``root`` itself when it is one case), sorted by name."""
    if not root.is_dir():
        raise MedsegInputError("dataset folder not found", path=root)
    if any(p.name.lower().endswith(IMAGE_ENDINGS) and p.name.startswith(root.name) for p in root.iterdir()):
        return [root]
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise MedsegInputError("no case folders found", path=root)
    return dirs


def patient_id(case_id: str, release: BratsRelease) -> str:
    """BraTS ids since 2023 end in a timepoint (``-000``): cases of one patient share the rest."""
    return case_id if release.name == "2021" else case_id.rsplit("-", 1)[0]


@register_layout("brats")
def scan_brats(root: Path) -> ScannedDataset:
    """Scan a BraTS-layout folder: one sub-folder per case holding four modalities and maybe a seg.

    All cases must be of one release. Channels are stacked in the fixed order T1, T1ce, T2, FLAIR. The label
    table is the one :func:`~medseg.labels.choose_label_table` takes among the tables the file names and
    case ids allow; none when those give label values different meanings (the table must be named).
    """
    root = Path(root)
    cases = []
    release: BratsRelease | None = None
    for case_dir in find_case_dirs(root):
        this = detect_release(case_dir)
        if release is not None and this is not release:
            raise MedsegInputError(f"mixes BraTS {release.name} and {this.name} cases", path=case_dir)
        release = this
        images, seg = case_files(case_dir, release)
        cases.append(
            ScannedCase(
                id=case_dir.name,
                images=tuple(str(p.relative_to(root)) for p in images),
                label=str(seg.relative_to(root)) if seg is not None else None,
                patient=patient_id(case_dir.name, release),
            )
        )
    assert release is not None
    candidates = brats_label_candidates((c.id for c in cases), release)
    try:
        table = choose_label_table(candidates)
    except MedsegInputError:
        table = None
    names = tuple(t.name for t in candidates)
    return ScannedDataset("brats", table, release.channel_names, tuple(cases), label_candidates=names)
