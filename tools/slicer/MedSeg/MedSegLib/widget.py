"""The MedSeg panel: choose a checkpoint, one volume per channel, device and backend; Apply, Cancel.

Both child processes (``medseg info`` when a checkpoint is chosen, ``medseg predict`` on Apply) are
polled from one ``QTimer``, so the panel never blocks. The widget names used here (``self.ui.<name>``)
are those of ``Resources/UI/MedSeg.ui``; a test checks that both agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import qt
import slicer

from MedSegLib.bridge import bridge, protocol
from MedSegLib.logic import MedSegRunError, SegmentationLogic, SegmentationRequest
from MedSegLib.process import STDOUT, ChildProcess

SETTINGS_PREFIX = "MedSeg/"
POLL_INTERVAL_MS = 100
MAX_LOG_LINES = 2000


class Panel:
    """The module's panel; created by ``MedSegWidget.setup`` and torn down by its ``cleanup``.

    Args:
        parent_layout: the module widget's layout.
        ui_path: ``Resources/UI/MedSeg.ui``.
        logic: the logic that exports, runs and imports.
    """

    def __init__(self, parent_layout: Any, ui_path: str, logic: SegmentationLogic) -> None:
        self.logic = logic
        ui_widget = slicer.util.loadUI(ui_path)
        parent_layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)

        self.model_info: protocol.ModelDescription | None = None  # of the chosen checkpoint
        self.channel_selectors: list[Any] = []
        self.info_process: ChildProcess | None = None
        self.info_stdout: list[str] = []
        self.run: Any = None  # logic.Run while medseg predict runs

        self.ui.deviceComboBox.clear()
        self.ui.deviceComboBox.addItems(list(bridge.DEVICES))
        self.ui.backendComboBox.clear()
        self.ui.backendComboBox.addItems(list(protocol.BACKENDS))
        self._restore_settings()

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self._on_timer)

        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self._on_model_changed)
        self.ui.pythonPathLineEdit.connect("currentPathChanged(QString)", self._on_python_changed)
        self.ui.reloadModelButton.connect("clicked(bool)", lambda _checked=False: self.read_model_info())
        self.ui.applyButton.connect("clicked(bool)", lambda _checked=False: self.on_apply())
        self.ui.cancelButton.connect("clicked(bool)", lambda _checked=False: self.on_cancel())
        self.ui.clearLogButton.connect("clicked(bool)", lambda _checked=False: self.ui.logTextEdit.clear())

        self.ui.progressBar.setRange(0, 1000)
        self.ui.progressBar.setValue(0)
        self._update_buttons()
        if self.ui.modelPathLineEdit.currentPath:
            self.read_model_info()

    # -- settings ----------------------------------------------------------------------------------

    def _restore_settings(self) -> None:
        settings = qt.QSettings()
        self.ui.modelPathLineEdit.currentPath = settings.value(SETTINGS_PREFIX + "model", "")
        self.ui.pythonPathLineEdit.currentPath = settings.value(SETTINGS_PREFIX + "python", "")
        for combo, key in ((self.ui.deviceComboBox, "device"), (self.ui.backendComboBox, "backend")):
            index = combo.findText(settings.value(SETTINGS_PREFIX + key, "auto"))
            combo.setCurrentIndex(max(index, 0))
        self.ui.mirrorCheckBox.checked = str(settings.value(SETTINGS_PREFIX + "mirror", "false")).lower() == "true"
        try:
            self.ui.minPieceSpinBox.value = float(settings.value(SETTINGS_PREFIX + "min_piece_ml", 0.0))
        except (TypeError, ValueError):
            self.ui.minPieceSpinBox.value = 0.0

    def _save_settings(self) -> None:
        settings = qt.QSettings()
        settings.setValue(SETTINGS_PREFIX + "model", self.ui.modelPathLineEdit.currentPath)
        settings.setValue(SETTINGS_PREFIX + "python", self.ui.pythonPathLineEdit.currentPath)
        settings.setValue(SETTINGS_PREFIX + "device", self.ui.deviceComboBox.currentText)
        settings.setValue(SETTINGS_PREFIX + "backend", self.ui.backendComboBox.currentText)
        settings.setValue(SETTINGS_PREFIX + "mirror", "true" if self.ui.mirrorCheckBox.checked else "false")
        settings.setValue(SETTINGS_PREFIX + "min_piece_ml", str(self.ui.minPieceSpinBox.value))

    # -- model metadata ----------------------------------------------------------------------------

    def _on_model_changed(self, _path: str) -> None:
        self.read_model_info()

    def _on_python_changed(self, _path: str) -> None:
        if self.model_info is None and self.ui.modelPathLineEdit.currentPath:
            self.read_model_info()

    def read_model_info(self) -> None:
        """Ask medseg (in a child process; reading a checkpoint needs torch) for the checkpoint's
        channels and labels, then rebuild the channel selectors."""
        self._stop_info_process()
        self.model_info = None
        self._set_channels([])
        model = self.ui.modelPathLineEdit.currentPath
        if not model:
            self.ui.modelInfoLabel.text = "Choose a medseg checkpoint (.pt)."
            self._update_buttons()
            return
        if not Path(model).is_file():
            self.ui.modelInfoLabel.text = f"Not a file: {model}"
            self._update_buttons()
            return
        try:
            self.info_process = self.logic.info_process(self.ui.pythonPathLineEdit.currentPath, model)
            self.info_stdout = []
            self.info_process.start()
        except (OSError, ValueError) as exc:
            self.info_process = None
            self.ui.modelInfoLabel.text = f"Cannot run medseg: {exc}"
            self._update_buttons()
            return
        self._log(f"$ {bridge.format_command(self.info_process.args)}")
        self.ui.modelInfoLabel.text = "Reading the checkpoint..."
        self.timer.start()
        self._update_buttons()

    def _poll_info(self) -> None:
        process = self.info_process
        for stream, text in process.poll():
            if stream == STDOUT:
                self.info_stdout.append(text)
            else:
                self._log(text)
        if not process.is_finished():
            return
        self.info_process = None
        try:
            stdout = "\n".join(self.info_stdout)
            info = self.logic.model_info_from_output(process.returncode, stdout, process.stderr_text)
        except MedSegRunError as exc:
            self.ui.modelInfoLabel.text = f"Cannot read the checkpoint: {exc}"
            self._log(f"error: {exc}")
        else:
            self.model_info = info
            self._save_settings()
            names = ", ".join(segment.display_name for segment in info.labels.segments())
            network = info.network.get("name", "?")
            self.ui.modelInfoLabel.text = f"{network}; inputs: {', '.join(info.channels)}; segments: {names}"
            self._set_channels(list(info.channels))
        self._update_buttons()

    def _stop_info_process(self) -> None:
        if self.info_process is not None:
            self.info_process.kill()
            self.info_process = None

    # -- channel selectors -------------------------------------------------------------------------

    def _set_channels(self, channels: list[str]) -> None:
        """Replace the per-channel volume selectors with one per channel name."""
        layout = self.ui.channelsContainer.layout()
        while layout.rowCount() > 0:
            layout.removeRow(0)
        self.channel_selectors = []
        volume_nodes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        volumes = [n for n in volume_nodes if not n.IsA("vtkMRMLLabelMapVolumeNode")]
        guesses = bridge.match_channel_volumes(channels, [v.GetName() for v in volumes])
        for channel, guess in zip(channels, guesses, strict=True):
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.hideChildNodeTypes = ["vtkMRMLLabelMapVolumeNode"]
            selector.addEnabled = False
            selector.removeEnabled = False
            selector.noneEnabled = True
            selector.showHidden = False
            selector.setMRMLScene(slicer.mrmlScene)
            selector.setToolTip(f"The volume to use as the model's {channel} input.")
            selector.setCurrentNode(volumes[guess] if guess is not None else None)
            selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda _node: self._update_buttons())
            layout.addRow(f"{channel}:", selector)
            self.channel_selectors.append(selector)
        self.ui.channelsContainer.setVisible(bool(channels))

    # -- run ---------------------------------------------------------------------------------------

    def on_apply(self) -> None:
        """Start segmenting the chosen volumes."""
        if self.run is not None or self.model_info is None:
            return
        self._save_settings()
        request = SegmentationRequest(
            model=self.ui.modelPathLineEdit.currentPath,
            model_info=self.model_info,
            volumes=[s.currentNode() for s in self.channel_selectors],
            python_executable=self.ui.pythonPathLineEdit.currentPath,
            device=self.ui.deviceComboBox.currentText,
            backend=self.ui.backendComboBox.currentText,
            mirror=self.ui.mirrorCheckBox.checked and self._mirroring_allowed(),
            min_piece_ml=float(self.ui.minPieceSpinBox.value),
            segmentation=self.ui.outputSegmentationSelector.currentNode(),
        )
        try:
            self.run = self.logic.start(request)
        except Exception as exc:  # MedSegRunError, or anything Slicer raised while exporting
            slicer.util.errorDisplay(f"MedSeg cannot start:\n{exc}", windowTitle="MedSeg")
            return
        self._log(f"$ {bridge.format_command(self.run.parameters.command())}")
        self.ui.statusLabel.text = "Starting medseg..."
        self.ui.progressBar.setValue(0)
        self.timer.start()
        self._update_buttons()

    def on_cancel(self) -> None:
        """Stop the running segmentation (the child and everything it started)."""
        if self.run is not None:
            self.logic.cancel(self.run)
            self.ui.statusLabel.text = "Cancelling..."
            self._log("cancel requested")
        self._update_buttons()

    def _poll_run(self) -> None:
        run = self.run
        if not self.logic.step(run, self._log_line):
            self.ui.progressBar.setValue(round(1000 * run.progress.fraction))
            if not run.process.cancelled:
                self.ui.statusLabel.text = run.progress.message()
            return
        self.run = None
        try:
            segmentation = self.logic.finish(run)
        except Exception as exc:  # MedSegRunError carries medseg's own message; others come from Slicer
            self.ui.statusLabel.text = "Failed."
            self._log(f"error: {exc}")
            slicer.util.errorDisplay(f"MedSeg failed:\n{exc}", windowTitle="MedSeg")
        else:
            if segmentation is None:
                self.ui.statusLabel.text = "Cancelled."
                self.ui.progressBar.setValue(0)
            else:
                self.ui.progressBar.setValue(1000)
                count = segmentation.GetSegmentation().GetNumberOfSegments()
                self.ui.statusLabel.text = f"Done: {segmentation.GetName()} ({count} segments)."
                self.ui.outputSegmentationSelector.setCurrentNode(segmentation)
                slicer.util.setSliceViewerLayers(background=run.request.volumes[0], fit=False)
        self._update_buttons()

    # -- plumbing ----------------------------------------------------------------------------------

    def _on_timer(self) -> None:
        try:
            if self.info_process is not None:
                self._poll_info()
            if self.run is not None:
                self._poll_run()
        finally:
            if self.info_process is None and self.run is None:
                self.timer.stop()

    def _log_line(self, _stream: str, text: str, event: protocol.ProgressEvent | None) -> None:
        # Progress events drive the bar; the log shows everything else (and per-case results).
        if event is None:
            self._log(text)
        elif isinstance(event, protocol.CaseFinished):
            detail = f" ({event.reason})" if event.reason else ""
            self._log(f"{event.case}: {event.status} in {event.seconds:.1f} s{detail}")

    def _log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)
        document = self.ui.logTextEdit.document()
        if document.blockCount() > MAX_LOG_LINES:
            self.ui.logTextEdit.setPlainText("\n".join(self.ui.logTextEdit.toPlainText().splitlines()[-MAX_LOG_LINES:]))

    def _update_buttons(self) -> None:
        running = self.run is not None
        ready = self.model_info is not None and self.info_process is None
        problems = ["choose a medseg checkpoint"]
        if ready:
            ids = [node.GetID() if node else None for node in (s.currentNode() for s in self.channel_selectors)]
            problems = bridge.validate_inputs(list(self.model_info.channels), ids)
        self.ui.applyButton.enabled = ready and not running and not problems
        self.ui.applyButton.toolTip = "\n".join(problems) if problems else "Segment the chosen volumes with medseg."
        self.ui.cancelButton.enabled = running and not self.run.process.cancelled
        inputs = (
            self.ui.modelPathLineEdit,
            self.ui.pythonPathLineEdit,
            self.ui.reloadModelButton,
            self.ui.channelsContainer,
            self.ui.deviceComboBox,
            self.ui.backendComboBox,
            self.ui.minPieceSpinBox,
            self.ui.outputSegmentationSelector,
        )
        for widget in inputs:
            widget.enabled = not running
        self.ui.mirrorCheckBox.enabled = not running and self._mirroring_allowed()

    def _mirroring_allowed(self) -> bool:
        """False once medseg has said the chosen model refuses test-time mirroring."""
        return self.model_info is None or self.model_info.mirroring

    def cleanup(self) -> None:
        """Stop whatever runs (the module is closing or being reloaded) and remove temporary files."""
        self.timer.stop()
        self._stop_info_process()
        if self.run is not None:
            self.logic.cleanup(self.run)
            self.run = None
