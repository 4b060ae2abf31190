"""Datasets: layout scanners (BraTS, MSD, nnU-Net), manifests with patient-level folds."""
