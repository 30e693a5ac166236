"""TensorBoard embedding projector with image thumbnails.

``SummaryWriter.add_embedding`` writes the vectors, a metadata table (class names) and a sprite
of the thumbnails under the writer's folder and registers them in ``projector_config.pbtxt``;
``tensorboard --logdir runs`` then shows them in its "Projector" tab (PCA / t-SNE / UMAP,
interactively), each point drawn as its image.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

#: side of a projector thumbnail in pixels (a sprite of 2,000 is 45 x 45 of them: 2,160 px)
PROJECTOR_THUMB = 48


def add_projector(writer, embeddings, labels: Sequence[int], class_names: Sequence[str], thumbnails: np.ndarray,
                  *, tag: str = "test_embeddings", global_step: int = 0) -> None:
    """Add ``embeddings`` (N, D) with their class names and ``thumbnails`` uint8 (N, h, w, 3) to
    ``writer``'s projector (under ``tag``)."""
    vectors = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    if vectors.shape[0] != len(labels) or vectors.shape[0] != len(thumbnails):
        raise ValueError(f"{vectors.shape[0]} embeddings, {len(labels)} labels and {len(thumbnails)} thumbnails")
    images = torch.from_numpy(np.ascontiguousarray(thumbnails)).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, h, w)
    metadata = [str(class_names[int(label)]) for label in labels]
    writer.add_embedding(vectors, metadata=metadata, label_img=images, global_step=global_step, tag=tag)
