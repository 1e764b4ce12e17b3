"""TensorBoard event files of a training run, written by rank 0 into the run folder's `tensorboard/`
(`RunFolder.tensorboard_dir`), so that `tensorboard --logdir runs/<row>` (or `make tensorboard RUN=...`)
shows a run while it trains.

Tags (the x axis is the iteration: completed optimiser steps):
- `loss/total`, `loss/coarse` (the coarse head's weighted CE), `loss/point` (the point head's), each the mean
  over the logged window; `lr`; `speed/images_per_second`; `speed/data_wait_seconds` (mean wait per step);
- at each evaluation: `eval/mIoU_refined`, `eval/mIoU_coarse`, `eval/boundary_IoU_refined`,
  `eval/boundary_IoU_coarse` (percent), and the image `eval/predictions`: a few validation images, each a
  row of image | ground truth | refined | coarse, in the dataset's colours.
A resumed run continues the same curves: its writer purges the events after the checkpoint's iteration
(`purge_step`), which the interrupted session may have written, so no step appears twice.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pointrend_core.config import RowConfig
from pointrend_core.data.transforms import denormalize, eval_transforms
from pointrend_core.engine.records import RunRecord
from pointrend_core.engine.run_folder import RunFolder
from pointrend_core.engine.train_log import LogLine
from pointrend_core.labels import IGNORE_INDEX

LOSS_TAGS = {"loss_aux": "loss/coarse", "loss_point": "loss/point"}
SAMPLE_IMAGES = 3


class TrainingBoard:
    """The TensorBoard writer of one training session (rank 0 only: other ranks pass `enabled=False`)."""

    def __init__(self, folder: RunFolder, start_iteration: int, enabled: bool = True) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only where it writes

            # Events of steps after the checkpoint resumed from were written by the session that died after it:
            # TensorBoard drops them when this writer starts at the next step.
            self.writer = SummaryWriter(log_dir=str(folder.tensorboard_dir),
                                        purge_step=start_iteration + 1 if start_iteration else None)

    def window(self, line: LogLine) -> None:
        """The scalars of one logged training window."""
        if self.writer is None:
            return
        step = line.iteration
        if line.loss is not None:
            self.writer.add_scalar("loss/total", line.loss, step)
        for name, value in line.losses.items():
            self.writer.add_scalar(LOSS_TAGS.get(name, f"loss/{name}"), value, step)
        for tag, value in (("lr", line.lr), ("speed/images_per_second", line.images_per_second),
                           ("speed/data_wait_seconds", line.data_seconds)):
            if value is not None:
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def evaluation(self, iteration: int, record: RunRecord, model: nn.Module, row: RowConfig, data_root) -> None:
        """The evaluation's scores and sample predictions of `model` (in eval mode) at `iteration`."""
        if self.writer is None:
            return
        refined, coarse = record.metrics.refined, record.metrics.coarse
        for tag, value in (("eval/mIoU_refined", refined.mIoU), ("eval/mIoU_coarse", coarse.mIoU),
                           ("eval/boundary_IoU_refined", refined.boundary_mIoU),
                           ("eval/boundary_IoU_coarse", coarse.boundary_mIoU)):
            if value is not None:
                self.writer.add_scalar(tag, value, iteration)
        panels = prediction_panels(model, row, data_root)
        if panels is not None:
            self.writer.add_image("eval/predictions", panels, iteration, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> TrainingBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prediction_panels(model: nn.Module, row: RowConfig, data_root, count: int = SAMPLE_IMAGES) -> np.ndarray | None:
    """uint8 (count * h, 4 * w, 3): per validation image, image | ground truth | refined | coarse at the
    network's input size, void in black; None when the validation split cannot be opened."""
    from pointrend_core.engine.evaluate import predict  # evaluate imports this module's neighbours

    try:
        dataset = row.data.dataset(row.data.resolve_root(data_root), row.data.val_split,
                                   transforms=eval_transforms(row.data))
    except (OSError, ValueError):
        return None
    palette = np.concatenate([np.asarray(dataset.palette, np.uint8), np.zeros((256, 3), np.uint8)])[:256].copy()
    palette[IGNORE_INDEX] = 0
    device = next(model.parameters()).device
    rows = []
    for i in range(min(count, len(dataset))):
        try:
            image, gt = dataset[i]
        except (OSError, ValueError):  # the evaluation reports a bad file; a figure does without it
            continue
        size = image.shape[-2:]
        with torch.no_grad():
            refined, coarse = predict(model, image[None].to(device), size, row.eval)
        gt = torch.nn.functional.interpolate(gt[None, None].float(), size=size, mode="nearest")[0, 0].long()
        picture = denormalize(image).permute(1, 2, 0).numpy()
        masks = [palette[m.cpu().numpy().astype(np.int64) % 256] for m in (gt, refined.argmax(1)[0], coarse.argmax(1)[0])]
        rows.append(np.concatenate([picture, *masks], axis=1))
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)


__all__ = ["TrainingBoard", "prediction_panels", "LOSS_TAGS"]
