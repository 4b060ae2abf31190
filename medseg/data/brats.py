"""The BraTS dataset layout (2021 and 2023 releases), detected from the file names."""

from __future__ import annotations

from pathlib import Path

from medseg.data.layouts import IMAGE_ENDINGS, ScannedCase, ScannedDataset, register_layout
from medseg.errors import MedsegInputError
from medseg.labels import BRATS_RELEASES, BratsRelease


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
    """The release whose file naming matches the files in ``case_dir`` (any image format).

    Raises:
        MedsegInputError: no file in the folder follows either release's naming.
    """
    for release in BRATS_RELEASES.values():
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
    """BraTS 2023 ids end in a timepoint (``-000``): cases of one patient share the rest."""
    return case_id.rsplit("-", 1)[0] if release.name == "2023" else case_id


@register_layout("brats")
def scan_brats(root: Path) -> ScannedDataset:
    """Scan a BraTS-layout folder: one sub-folder per case holding four modalities and maybe a seg.

    All cases must be of one release. Channels are stacked in the fixed order T1, T1ce, T2, FLAIR.
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
    return ScannedDataset("brats", release.label_table, release.channel_names, tuple(cases))
