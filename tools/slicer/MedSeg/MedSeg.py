"""MedSeg: segment volumes in 3D Slicer with a medseg checkpoint.

This file only declares the module; the code lives in ``MedSegLib`` (panel, logic, child process).
Inference runs in a separate Python process (``python -m medseg predict``), so a crash in PyTorch
cannot take Slicer down and a run can be cancelled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)


class MedSeg(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["medseg developers"]
        self.parent.helpText = (
            "Segment volumes with a medseg checkpoint (e.g. brain tumour from T1, T1ce, T2 and FLAIR). "
            "Choose the checkpoint, one volume per input channel and Apply. Inference runs in a separate "
            "Python process that has medseg installed; see the README for installation."
        )
        self.parent.acknowledgementText = "Built on medseg, MONAI and PyTorch."


class MedSegWidget(ScriptedLoadableModuleWidget):
    """The module panel; see ``MedSegLib.widget.Panel``."""

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.panel = None
        try:
            from MedSegLib.widget import Panel
        except ImportError as exc:  # medseg's helpers cannot be found: say how to fix it
            import qt

            label = qt.QLabel(f"MedSeg cannot start: {exc}")
            label.wordWrap = True
            self.layout.addWidget(label)
            return
        self.panel = Panel(self.layout, self.resourcePath("UI/MedSeg.ui"), MedSegLogic())
        self.layout.addStretch(1)

    def cleanup(self):
        if self.panel is not None:
            self.panel.cleanup()


class MedSegLogic(ScriptedLoadableModuleLogic):
    """Scriptable entry point: ``MedSegLogic().segment(request)``; see ``MedSegLib.logic``."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        from MedSegLib.logic import SegmentationLogic

        self.impl = SegmentationLogic()

    def __getattr__(self, name):
        # Delegate everything else (start, step, finish, cancel, segment, read_model_info, ...).
        if name == "impl":
            raise AttributeError(name)
        return getattr(self.impl, name)


class MedSegTest(ScriptedLoadableModuleTest):
    """Runs a tiny checkpoint on a phantom inside Slicer and checks the segmentation it produces.

    Needs a Python with medseg and torch: Slicer's own (``PythonSlicer``) or the one set in the
    module's settings (``MedSeg/python``), or ``MEDSEG_TEST_PYTHON``.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_phantom()

    def _python(self):
        import qt
        from MedSegLib.bridge import bridge

        configured = os.environ.get("MEDSEG_TEST_PYTHON") or qt.QSettings().value("MedSeg/python", "")
        return bridge.resolve_python_executable(configured)

    def _phantom_volumes(self):
        """Four co-registered volumes (40 x 48 x 36 voxels, 1.5 mm, oblique origin) with a bright ball."""
        import numpy as np

        shape_kji = (36, 48, 40)
        k, j, i = np.indices(shape_kji)
        ball = ((i - 20) ** 2 + (j - 24) ** 2 + (k - 18) ** 2) < 8**2
        volumes = []
        rng = np.random.default_rng(0)
        for index, channel in enumerate(["T1", "T1ce", "T2", "FLAIR"]):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"phantom_{channel.lower()}")
            array = rng.normal(100.0, 5.0, shape_kji).astype(np.float32) + ball * (50.0 + 20.0 * index)
            slicer.util.updateVolumeFromArray(node, array)
            node.SetSpacing(1.5, 1.5, 1.5)
            node.SetOrigin(-30.0, -36.0, 10.0)
            volumes.append(node)
        return volumes

    def test_segment_phantom(self):
        from MedSegLib.logic import SegmentationRequest

        self.delayDisplay("Making a tiny checkpoint")
        python = self._python()
        work = Path(tempfile.mkdtemp(prefix="medseg-test-", dir=slicer.app.temporaryPath))
        try:
            checkpoint = work / "tiny.pt"
            script = Path(__file__).resolve().parent / "Testing" / "make_tiny_checkpoint.py"
            from MedSegLib.logic import child_environment

            subprocess.run([python, str(script), str(checkpoint)], check=True, env=child_environment(python))

            logic = MedSegLogic()
            info = logic.read_model_info(python, str(checkpoint))
            self.assertEqual(list(info.channels), ["T1", "T1ce", "T2", "FLAIR"])

            self.delayDisplay("Segmenting the phantom")
            volumes = self._phantom_volumes()
            self.assertEqual(logic.check_inputs(info.channels, volumes), [])
            self.assertTrue(logic.check_inputs(info.channels, [volumes[0]] * 4))  # same volume twice
            request = SegmentationRequest(
                model=str(checkpoint), model_info=info, volumes=volumes, python_executable=python, device="cpu"
            )
            segmentation = logic.segment(request, timeout=600)

            expected = info.labels.segments()  # every label, named, coloured and coded as medseg wrote it
            seg = segmentation.GetSegmentation()
            self.assertEqual(seg.GetNumberOfSegments(), len(expected))
            for want in expected:
                segment = seg.GetSegment(seg.GetSegmentIdBySegmentName(want.display_name))
                self.assertIsNotNone(segment, want.display_name)
                for got, channel in zip(segment.GetColor(), want.color, strict=True):
                    self.assertAlmostEqual(got, channel / 255, places=3)
                tag = vtk.mutable("")
                self.assertTrue(segment.GetTag("TerminologyEntry", tag))
                self.assertEqual(str(tag), want.concept.slicer_terminology())

            # The segmentation is on the input grid: its labelmap export has the volume's geometry.
            label_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
            slicer.modules.segmentations.logic().ExportAllSegmentsToLabelmapNode(
                segmentation, label_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
            )
            for axis in range(3):
                self.assertAlmostEqual(label_node.GetSpacing()[axis], 1.5, places=4)
                self.assertAlmostEqual(label_node.GetOrigin()[axis], volumes[0].GetOrigin()[axis], places=3)
            self.assertEqual(
                tuple(slicer.util.arrayFromVolume(label_node).shape),
                tuple(slicer.util.arrayFromVolume(volumes[0]).shape),
            )
            self.assertEqual(list(Path(slicer.app.temporaryPath).glob("medseg-*/input")), [])  # cleaned up
            self.delayDisplay("MedSeg test passed")
        finally:
            shutil.rmtree(work, ignore_errors=True)
