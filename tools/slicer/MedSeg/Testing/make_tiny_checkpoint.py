"""Write a tiny, untrained medseg checkpoint for tests of the Slicer module.

Runs in the Python that has medseg and torch (not in Slicer's GUI process):

    python make_tiny_checkpoint.py OUT.pt [--labels brats2021]

The network is a two-level MONAI U-Net with 4 and 8 features and random weights: its predictions are
meaningless, but it has the channels (T1, T1ce, T2, FLAIR) and label table of a BraTS model and runs
in a second on a CPU. Used by the module's self-test (``MedSegTest``) and by
``tests/integrations/test_slicer_end_to_end.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def make_tiny_checkpoint(path: Path, *, labels: str = "brats2021", seed: int = 0) -> Path:
    """Build and save the checkpoint; return its path."""
    import torch

    from medseg.checkpoint import Checkpoint, save_checkpoint
    from medseg.config import Config
    from medseg.labels import get_label_table
    from medseg.networks import build_network

    torch.manual_seed(seed)
    table = get_label_table(labels)
    network = {"name": "unet", "kwargs": {"channels": [4, 8], "strides": [2]}}
    model = build_network(network["name"], in_channels=4, out_channels=table.num_outputs, kwargs=network["kwargs"])
    config = Config().to_dict()
    config["network"] = network
    config["data"]["labels"] = labels
    config["inference"]["roi_size"] = [32, 32, 32]
    checkpoint = Checkpoint(
        network=network,
        channels=["T1", "T1ce", "T2", "FLAIR"],
        label_table=table,
        config=config,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
    )
    return save_checkpoint(checkpoint, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--labels", default="brats2021")
    args = parser.parse_args()
    print(make_tiny_checkpoint(args.out, labels=args.labels))


if __name__ == "__main__":
    main()
