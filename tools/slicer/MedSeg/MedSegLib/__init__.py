"""The code of the MedSeg Slicer module, kept out of the tiny ``MedSeg.py`` module file.

- :mod:`MedSegLib.bridge`: finds medseg's Slicer-free helpers (``medseg.integrations.slicer``).
- :mod:`MedSegLib.process`: runs medseg as a child process and streams its output; cancellable.
- :mod:`MedSegLib.logic`: exports volumes, runs ``medseg predict``, imports the segmentation (needs Slicer).
- :mod:`MedSegLib.widget`: the panel (needs Slicer and Qt).

``bridge`` and ``process`` import neither Slicer nor Qt, so they can be used and tested anywhere.
"""
