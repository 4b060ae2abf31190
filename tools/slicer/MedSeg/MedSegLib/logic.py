"""What the MedSeg module does, without its panel: export, run medseg, import the segmentation.

A run goes through three steps, so that the panel stays responsive and the run can be cancelled:

1. :meth:`SegmentationLogic.start` checks the inputs, exports the volumes to a temporary folder as
   ``case_0000.nii.gz``, ``case_0001.nii.gz``, ... (in the checkpoint's channel order, with their
   geometry) and starts ``medseg predict`` as a child process;
2. :meth:`SegmentationLogic.step` (from a timer) streams its progress lines;
3. :meth:`SegmentationLogic.finish` loads the ``.seg.nrrd`` medseg wrote with Slicer's segmentation loader
   (one segment per label of the model's label table, named, coloured and coded by medseg) and removes the
   temporary folder in every outcome.

:meth:`SegmentationLogic.segment` does all three blocking, for scripts and the self-test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slicer

from MedSegLib.bridge import bridge, protocol
from MedSegLib.process import STDOUT, ChildProcess

OnLine = Callable[[str, str, Any], None]
"""Called with each line of the child's output: its stream, its text and its progress event (or ``None``)."""


class MedSegRunError(RuntimeError):
    """A run failed; the message is medseg's own one-line reason where it gave one."""


@dataclass
class SegmentationRequest:
    """What the user asked for.

    Attributes:
        model: path of the medseg checkpoint.
        model_info: what ``medseg info --json`` said about it (``medseg.protocol.ModelDescription``).
        volumes: one scalar volume node per channel, in the checkpoint's channel order.
        python_executable: the Python with medseg installed ("" for Slicer's own).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        backend: ``auto``, ``torch`` or ``openvino``.
        mirror: test-time mirroring (8 passes).
        min_piece_ml: remove predicted pieces smaller than this many mL from every region (0: the
            model's own setting).
        segmentation: the segmentation node to fill (its segments are replaced), or ``None`` to create one.
        extra_args: further ``medseg predict`` arguments.
    """

    model: str
    model_info: protocol.ModelDescription
    volumes: Sequence[Any]
    python_executable: str = ""
    device: str = "auto"
    backend: str = "auto"
    mirror: bool = False
    min_piece_ml: float = 0.0
    segmentation: Any = None
    extra_args: tuple[str, ...] = ()


@dataclass
class Run:
    """One running ``medseg predict``: its temporary folder, command, child process and progress."""

    request: SegmentationRequest
    temp_dir: Path
    parameters: protocol.PredictParameters
    process: ChildProcess
    progress: bridge.RunProgress = field(default_factory=bridge.RunProgress)
    started: float = field(default_factory=time.monotonic)

    @property
    def output_dir(self) -> Path:
        return Path(self.parameters.output_dir)


def is_slicer_python(python_executable: str) -> bool:
    """Whether ``python_executable`` is Slicer's own ``PythonSlicer`` launcher."""
    return Path(python_executable).name.lower().startswith("pythonslicer")


def child_environment(python_executable: str) -> dict[str, str]:
    """The environment to run ``python_executable`` in.

    Slicer's launcher sets ``PYTHONHOME``, ``PYTHONPATH`` and library paths for Slicer's own Python;
    an external Python must not inherit them, so it gets the environment Slicer was started with.
    """
    if is_slicer_python(python_executable) or not hasattr(slicer.util, "startupEnvironment"):
        return dict(os.environ)
    return dict(slicer.util.startupEnvironment())


def volume_grid(volume_node: Any) -> Any:
    """The :class:`VolumeGrid` of a scalar volume node (RAS, mm)."""
    directions = [[0.0] * 3 for _ in range(3)]
    volume_node.GetIJKToRASDirections(directions)
    return bridge.VolumeGrid(
        dimensions=tuple(int(d) for d in volume_node.GetImageData().GetDimensions()),
        spacing=tuple(float(s) for s in volume_node.GetSpacing()),
        origin=tuple(float(o) for o in volume_node.GetOrigin()),
        directions=tuple(tuple(float(x) for x in row) for row in directions),
    )


class SegmentationLogic:
    """Runs medseg on volumes in the scene and imports the result as a segmentation."""

    case_id = bridge.CASE_ID

    # -- model metadata ----------------------------------------------------------------------------

    def info_process(self, python_executable: str, model: str) -> ChildProcess:
        """A (not yet started) child that prints the checkpoint's metadata (``medseg info --json``)."""
        python = bridge.resolve_python_executable(python_executable)
        parameters = protocol.InfoParameters(python_executable=python, model=model)
        return ChildProcess(parameters.command(), env=child_environment(python))

    def read_model_info(self, python_executable: str, model: str, *, timeout: float = 300.0) -> Any:
        """The checkpoint's ``medseg.protocol.ModelDescription``, blocking.

        Raises:
            MedSegRunError: medseg could not read it; the message is medseg's own.
        """
        process = self.info_process(python_executable, model)
        process.start()
        stdout: list[str] = []

        def keep_stdout(stream: str, text: str) -> None:
            if stream == STDOUT:
                stdout.append(text)

        code = process.wait(on_line=keep_stdout, timeout=timeout)
        return self.model_info_from_output(code, "\n".join(stdout), process.stderr_text)

    @staticmethod
    def model_info_from_output(returncode: int, stdout: str, stderr: str) -> Any:
        """Parse a finished ``medseg info`` run, raising :class:`MedSegRunError` with medseg's reason."""
        if returncode != 0:
            raise MedSegRunError(bridge.error_message_from_stderr(stderr, exit_code=returncode))
        try:
            return protocol.ModelDescription.from_json(stdout)
        except protocol.ProtocolError as exc:
            raise MedSegRunError(f"cannot read the model's metadata: {exc}") from None

    # -- checks ------------------------------------------------------------------------------------

    def check_inputs(self, channels: Sequence[str], volumes: Sequence[Any]) -> list[str]:
        """Problems with the chosen volumes (empty when they are fine): missing or repeated volumes,
        volumes on different grids or under different transforms."""
        ids = [v.GetID() if v is not None else None for v in volumes]
        problems = bridge.validate_inputs(list(channels), ids)
        if problems:
            return problems
        for channel, volume in zip(channels, volumes, strict=True):
            if volume.GetImageData() is None:
                problems.append(f"the volume for {channel} ({volume.GetName()}) holds no image")
            elif volume.GetImageData().GetNumberOfScalarComponents() != 1:
                problems.append(f"the volume for {channel} ({volume.GetName()}) is not a scalar volume")
        if problems:
            return problems
        problems += bridge.check_same_grid([volume_grid(v) for v in volumes], list(channels))
        if len({v.GetTransformNodeID() for v in volumes}) > 1:
            problems.append("the volumes are under different transforms; harden them first")
        return problems

    # -- a run, step by step -----------------------------------------------------------------------

    def start(self, request: SegmentationRequest) -> Run:
        """Check the inputs, export them and start ``medseg predict``.

        Raises:
            MedSegRunError: the inputs are unusable or medseg cannot be started; nothing is left behind.
        """
        channels = list(request.model_info.channels)
        problems = self.check_inputs(channels, request.volumes)
        if problems:
            raise MedSegRunError("\n".join(problems))
        python = bridge.resolve_python_executable(request.python_executable)
        temp_dir = Path(tempfile.mkdtemp(prefix="medseg-", dir=slicer.app.temporaryPath))
        try:
            input_dir, output_dir = temp_dir / "input", temp_dir / "output"
            input_dir.mkdir()
            output_dir.mkdir()
            self.export_volumes(request.volumes, input_dir)
            parameters = protocol.PredictParameters(
                python_executable=python,
                model=request.model,
                input_dir=input_dir,
                output_dir=output_dir,
                output_format=bridge.OUTPUT_FORMAT,
                device=request.device,
                backend=request.backend,
                mirror=request.mirror,
                min_piece_ml=request.min_piece_ml,
                piece_names=tuple(request.model_info.labels.output_sets()) if request.min_piece_ml else (),
                extra_args=tuple(request.extra_args),
            )
            process = ChildProcess(parameters.command(), env=child_environment(python))
            process.start()
        except Exception as exc:
            shutil.rmtree(temp_dir, ignore_errors=True)
            if isinstance(exc, MedSegRunError):
                raise
            raise MedSegRunError(f"cannot start medseg: {exc}") from exc
        return Run(request=request, temp_dir=temp_dir, parameters=parameters, process=process)

    def step(self, run: Run, on_line: OnLine | None = None) -> bool:
        """Read what the child printed since the last call, update ``run.progress``; return whether
        the child has finished (then call :meth:`finish`).

        Args:
            run: the run.
            on_line: called with each line's stream, text and progress event (``None`` for a line that is no
                event, or a malformed one, which then shows as text).
        """
        for stream, text in run.process.poll():
            event = None
            if stream == STDOUT:
                try:
                    event = protocol.parse_event_line(text)
                except protocol.ProtocolError:
                    event = None
            if event is not None:
                run.progress.update(event)
            if on_line is not None:
                on_line(stream, text, event)
        return run.process.is_finished()

    def finish(self, run: Run) -> Any:
        """Import the result of a finished run; remove its temporary folder whatever happens.

        Returns:
            The segmentation node, or ``None`` if the run was cancelled.

        Raises:
            MedSegRunError: medseg failed (with its own message) or wrote no usable segmentation.
        """
        try:
            self.step(run)
            if run.process.cancelled:
                return None
            code = run.process.returncode
            if code != 0 or run.progress.failures:
                reasons = [f"{case}: {reason}" for case, reason in run.progress.failures]
                stderr = run.process.stderr_text
                raise MedSegRunError("\n".join(reasons) or bridge.error_message_from_stderr(stderr, exit_code=code))
            reported = run.progress.outputs.get(self.case_id)
            path = bridge.find_output_segmentation(run.output_dir, self.case_id, reported=reported)
            return self.load_segmentation(path, run.request.volumes[0], run.request.segmentation)
        except FileNotFoundError as exc:
            raise MedSegRunError(str(exc)) from None
        finally:
            self.cleanup(run)

    def cancel(self, run: Run) -> None:
        """Stop the child and its descendants; call :meth:`finish` once it has exited to clean up."""
        run.process.cancel()

    @staticmethod
    def cleanup(run: Run) -> None:
        """Kill the child if it still runs and remove the run's temporary folder."""
        run.process.kill()
        shutil.rmtree(run.temp_dir, ignore_errors=True)

    def segment(
        self,
        request: SegmentationRequest,
        *,
        on_line: OnLine | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run the whole segmentation, blocking (events are processed so Slicer stays drawn).

        Returns:
            The segmentation node.

        Raises:
            MedSegRunError: as :meth:`start` and :meth:`finish`; also when ``timeout`` seconds pass.
        """
        run = self.start(request)
        try:
            while not self.step(run, on_line):
                if timeout is not None and time.monotonic() - run.started > timeout:
                    raise MedSegRunError(f"medseg did not finish within {timeout} s")
                slicer.app.processEvents()
                time.sleep(0.05)
            return self.finish(run)
        finally:
            self.cleanup(run)

    # -- files and nodes ---------------------------------------------------------------------------

    def export_volumes(self, volumes: Sequence[Any], directory: Path) -> list[Path]:
        """Write the volumes as ``case_0000.nii.gz``, ... into ``directory``, in order, with their geometry.

        The nodes' own storage (file names, modified flags) is left untouched.
        """
        paths = [directory / name for name in bridge.export_file_names(self.case_id, len(volumes))]
        for volume, path in zip(volumes, paths, strict=True):
            if hasattr(slicer.util, "exportNode"):
                slicer.util.exportNode(volume, str(path))
            else:  # Slicer before 5.2: saveNode repoints the node's storage node, so point it back
                storage = volume.GetStorageNode()
                previous = storage.GetFileName() if storage is not None else None
                ok = slicer.util.saveNode(volume, str(path))
                if storage is not None:
                    storage.SetFileName(previous)
                if not ok:
                    raise MedSegRunError(f"{path}: cannot export {volume.GetName()}")
            if not path.is_file():
                raise MedSegRunError(f"{path}: cannot export {volume.GetName()}")
        return paths

    def load_segmentation(self, path: Path, reference_volume: Any, segmentation: Any) -> Any:
        """Load the ``.seg.nrrd`` medseg wrote with Slicer's segmentation loader, into ``segmentation`` or a new
        node. Its segments keep the names, colours and terminology medseg gave them (every label of the
        model's table, present or not).

        Args:
            path: the ``.seg.nrrd`` (on the grid of ``reference_volume``).
            reference_volume: the first input volume; gives the node's name, transform and reference geometry.
            segmentation: the node to fill (its segments are replaced), or ``None`` to keep the loaded node.
        """
        loaded = slicer.util.loadSegmentation(str(path))
        if not loaded:
            raise MedSegRunError(f"{path}: Slicer cannot read the segmentation medseg wrote")
        storage = loaded.GetStorageNode()  # its file is temporary: saving the scene must write the node anew
        if storage is not None:
            slicer.mrmlScene.RemoveNode(storage)
        if segmentation is None:
            segmentation = loaded
            segmentation.SetName(slicer.mrmlScene.GenerateUniqueName(f"{reference_volume.GetName()} medseg"))
        else:
            try:
                target, source = segmentation.GetSegmentation(), loaded.GetSegmentation()
                target.RemoveAllSegments()
                for index in range(source.GetNumberOfSegments()):
                    target.CopySegmentFromSegmentation(source, source.GetNthSegmentID(index))
            finally:
                slicer.mrmlScene.RemoveNode(loaded)
        segmentation.CreateDefaultDisplayNodes()  # also for a node created empty by the selector
        segmentation.SetAndObserveTransformNodeID(reference_volume.GetTransformNodeID())
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
        return segmentation
