"""What the testbed's visual tokens are taught directly: per-cell labels of a frame's objects,
the training-only auxiliary heads that read them, and random stills to train them on."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stc.eval.synthetic.episodes import QUADRANTS
from stc.eval.synthetic.scene import COLOURS, GLYPH, GLYPHS, SHAPES, SceneConfig, render_still

AUX_CLASSES = (1 + len(COLOURS), 2 + len(SHAPES), 1 + len(GLYPHS), len(QUADRANTS))  # colour, kind, character (0 = none), quadrant


def cell_labels(objects, frame_size: int, grid: int) -> torch.Tensor:
    """[grid*grid, 4] labels of each token cell: colour, kind and character of the object
    covering it (a cell takes an object whose box covers at least 30% of the cell or of the
    object; larger objects win), and the cell's quadrant (index into QUADRANTS)."""
    labels = torch.zeros(grid * grid, 4, dtype=torch.long)
    rows, cols = torch.arange(grid * grid) // grid, torch.arange(grid * grid) % grid
    labels[:, 3] = 2 * (rows >= grid / 2) + (cols >= grid / 2)  # QUADRANTS order: top/bottom x left/right
    colours = list(COLOURS)
    cell = frame_size / grid
    for obj in sorted((o for o in objects if o.visible), key=lambda o: o.size):
        half = obj.size / 2
        kind = len(SHAPES) + 1 if obj.shape == GLYPH else SHAPES.index(obj.shape) + 1
        glyph = GLYPHS.index(obj.glyph) + 1 if obj.shape == GLYPH else 0
        target = torch.tensor([colours.index(obj.colour) + 1, kind, glyph])
        for row in range(grid):
            for col in range(grid):
                dy = min(obj.y + half, (row + 1) * cell) - max(obj.y - half, row * cell)
                dx = min(obj.x + half, (col + 1) * cell) - max(obj.x - half, col * cell)
                if dx > 0 and dy > 0 and dx * dy >= 0.3 * min(cell * cell, obj.size * obj.size):
                    labels[row * grid + col, :3] = target
    return labels


def frames_labels(states, frame_size: int, grid: int) -> torch.Tensor:
    """`cell_labels` of several frames, stacked in the order of their visual tokens."""
    return torch.cat([cell_labels(objects, frame_size, grid) for objects in states])


class AuxiliaryHeads(torch.nn.Module):
    """Training-only linear readouts of visual tokens (not part of the saved model)."""

    def __init__(self, width: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, classes) for classes in AUX_CLASSES)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Colour (or background) and quadrant on every cell; kind on object cells; character on
        character cells."""
        colour, kind, character, quadrant = self.heads
        objects, characters = labels[:, 0] > 0, labels[:, 2] > 0
        loss = F.cross_entropy(colour(features).float(), labels[:, 0])
        loss = loss + F.cross_entropy(quadrant(features).float(), labels[:, 3])
        if objects.any():
            loss = loss + F.cross_entropy(kind(features[objects]).float(), labels[objects, 1])
        if characters.any():
            loss = loss + F.cross_entropy(character(features[characters]).float(), labels[characters, 2])
        return loss / 4

    @torch.no_grad()
    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, tuple[int, int]]:
        """(right, asked) per head, on the cells each head is trained on."""
        everywhere, objects, characters = torch.ones_like(labels[:, 0], dtype=torch.bool), labels[:, 0] > 0, labels[:, 2] > 0
        out = {}
        for name, head, column, cells in zip(("colour", "kind", "character", "quadrant"), self.heads, (0, 1, 2, 3),
                                             (everywhere, objects, characters, everywhere)):
            right = head(features[cells]).argmax(-1) == labels[cells, column]
            out[name] = (int(right.sum()), int(cells.sum()))
        return out


def visual_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """[frames * tokens_per_frame, width]: the LLM-side visual tokens of these frames, as the
    model builds them for a video (vision tower, projector, 2x2 pooling; no newline token)."""
    return model.model.get_video_features(pixels[None], return_dict=True).pooler_output[0, :-1]


def still_batch(rng, preprocessing, scene: SceneConfig, grid: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, cell labels) of `size` random stills."""
    stills = [render_still(rng, scene) for _ in range(size)]
    pixels = preprocessing(np.stack([image for image, _ in stills]))
    return pixels, frames_labels([objects for _, objects in stills], scene.size, grid)


__all__ = ["AUX_CLASSES", "AuxiliaryHeads", "cell_labels", "frames_labels", "still_batch", "visual_features"]
