"""What happened in an episode, read off its per-frame states: who appeared when, who left,
what changed. The question writers and the evidence both read it."""

from __future__ import annotations

from stc.eval.synthetic.scene import ObjectState, SceneStates


class History:
    """What happened in an episode, read off its per-frame states."""

    def __init__(self, states: SceneStates):
        self.states = states
        self.frames = len(states)
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        for frame, objects in enumerate(states):
            for obj in objects:
                if obj.visible:
                    self.first.setdefault(obj.id, frame)
                    self.last[obj.id] = frame
        self.order = sorted(self.first, key=self.first.__getitem__)  # ids by first appearance
        self.appearance = {i: states[self.first[i]][i] for i in self.order}
        self.nouns = {obj.noun for objects in states for obj in objects if obj.visible}
        self.changes: list[tuple[int, ObjectState, ObjectState]] = []  # (frame, before, after)
        for frame in range(1, self.frames):
            for before, after in zip(states[frame - 1], states[frame]):
                if before.visible and after.visible and (before.colour, before.noun) != (after.colour, after.noun):
                    self.changes.append((frame, before, after))

    def visible(self, frame: int) -> list[ObjectState]:
        return [obj for obj in self.states[frame] if obj.visible]

    def appeared(self, frame: int) -> list[int]:
        """Ids of the objects seen at or before frame, in order of appearance."""
        return [i for i in self.order if self.first[i] <= frame]

    def description(self, object_id: int) -> str:
        """Colour and noun when it first appeared, e.g. "red circle"."""
        obj = self.appearance[object_id]
        return f"{obj.colour} {obj.noun}"
